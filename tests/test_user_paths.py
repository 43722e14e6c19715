"""Issue 26: every path a user can take works or says why. Resume as printed (through a shell), a
refused resume leaves the folder byte-identical, run settings never split a table or a figure,
sweeps under every launcher report their failed jobs last, and the tracebacks of the issue are
`error:` lines naming what to fix."""
import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import ROOT
from sparsity_exp.lifecycle.checkpoint import list_checkpoints

SMALL = ["model.width=16", "model.depth=1", "trainer.steps=4", "trainer.log_every=2", "trainer.eval_every=4",
         "trainer.checkpoint_every=2", "trainer.progress=false", "trainer.batch_size=64", "probes=cheap"]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", OMP_NUM_THREADS="1")


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny run (checkpoints at 0, 2, 4), made in a subprocess so that its folder name is
    Hydra's own: it holds = and , (the names the resume hint must survive)."""
    work = tmp_path_factory.mktemp("paths")
    out = subprocess.run([sys.executable, "-m", "sparsity_exp", "run", *SMALL], cwd=work, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (run,) = [p.parent for p in (work / "results").glob("*/summary.json")]
    assert "=" in run.name and "," in run.name
    return work, run


def _interrupted_copy(run: Path, dest: Path) -> Path:
    """A copy of a finished run as a kill after step 2's checkpoint would leave it."""
    import shutil

    shutil.copytree(run, dest)
    (dest / "checkpoints" / "step_00000004.pt").unlink()
    summary = json.loads((dest / "summary.json").read_text())
    (dest / "summary.json").write_text(json.dumps({"status": "interrupted", "step": 2, "run_dir": summary["run_dir"]}))
    (dest / "quicklook.png").unlink(missing_ok=True)
    return dest


# ------------------------------------------------------------------------- resume as printed


def _shim(folder: Path) -> Path:
    """A `sparsity-exp` on PATH that is this worktree's code (the console script may be another checkout)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "sparsity-exp"
    exe.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m sparsity_exp \"$@\"\n")
    exe.chmod(0o755)
    return bin_dir


def test_sigterm_hint_resumes_when_pasted_into_a_shell(tmp_path):
    """The hint printed after SIGTERM (exit 75) is run by bash as printed; the run completes in its
    folder (whose name holds = and ,), with every step's rows exactly once."""
    from sparsity_exp.lifecycle.preempt import REQUEUE_EXIT_CODE

    code = ("import sys, time\nfrom sparsity_exp.train import Trainer\nstep = Trainer.train_step\n"
            "Trainer.train_step = lambda self, b: (time.sleep(0.03), step(self, b))[1]\n"
            "from sparsity_exp.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    args = ["run", "model.width=16", "model.depth=1", "trainer.steps=40", "trainer.log_every=2",
            "trainer.eval_every=20", "trainer.checkpoint_every=10", "trainer.progress=false", "probes=none"]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600  # a loaded machine takes long to start
    while not list((tmp_path / "results").glob("*/metrics.csv")) or \
            "\n6," not in list((tmp_path / "results").glob("*/metrics.csv"))[0].read_text():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == REQUEUE_EXIT_CODE, err
    (stopped,) = list((tmp_path / "results").iterdir())
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert list_checkpoints(stopped)[-1][0] == summary["step"] > 6
    assert "trainer.resume=auto" in err  # a requeued job's form is said too
    hint = next(line for line in err.splitlines() if "to continue: " in line)
    command = hint.split("to continue: ", 1)[1].split(" (a requeued", 1)[0]
    assert command.startswith("sparsity-exp resume ")
    env = dict(_env(), PATH=f"{_shim(tmp_path)}:{os.environ['PATH']}")
    again = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    (run,) = list((tmp_path / "results").iterdir())
    assert "=" in run.name and "," in run.name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 40 and summary["resumed_from_step"] > 6
    m = pd.read_csv(run / "metrics.csv")
    assert not m.duplicated(["step", "split", "probe", "metric", "layer"]).any() and m.step.max() == 40


def test_readme_resume_text_uses_the_resume_command():
    readme = (ROOT / "README.md").read_text()
    resume = readme[readme.index("**Resume.**"):readme.index("**Preemption.**")]
    assert "sparsity-exp resume" in resume and "hydra.run.dir=results/<run folder>" not in resume
    assert "sparsity-exp resume" in readme[readme.index("**Preemption.**"):]


def test_resume_command_continues_a_killed_run_to_the_uninterrupted_table(finished, tmp_path):
    from sparsity_exp import cli

    _, run = finished
    cut = _interrupted_copy(run, tmp_path / "cut=1,b=2")
    assert cli.main(["resume", str(cut), "trainer.device=cpu"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics.csv"), pd.read_csv(cut / "metrics.csv"))
    assert json.loads((cut / "summary.json").read_text())["resumed_from_step"] == 2


# ------------------------------------------------------------------------- refused resume


def test_refused_resume_leaves_the_folder_byte_identical(finished, tmp_path, monkeypatch):
    """Refusals after the folder was chosen (another config; a device that is not there, refused while
    assembling, after config.yaml used to be rewritten) leave every byte, config.yaml and run.log included."""
    import torch

    from sparsity_exp import cli

    work, run = finished
    cut = _interrupted_copy(run, tmp_path / "cut")
    before = _files(cut)
    monkeypatch.chdir(work)
    refusals = [["run", *SMALL, f"trainer.resume={cut}", "optim.lr=0.5"],  # another config, found by trainer.resume
                ["resume", str(cut), "optim.lr=0.5"],
                ["resume", str(cut), "+trainer.stepz=1"]]
    if not torch.cuda.is_available():
        refusals += [["run", *SMALL, f"trainer.resume={cut}", "trainer.device=cuda"],
                     ["resume", str(cut), "trainer.device=cuda"]]
    for args in refusals:
        with pytest.raises(SystemExit) if args[0] == "run" else _returns(2):
            code = cli.main(args)
            if args[0] == "run":
                raise SystemExit(code)
        assert _files(cut) == before, args
    # and it still resumes afterwards
    assert cli.main(["resume", str(cut)]) == 0


class _returns:
    def __init__(self, code):
        self.code = code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------- run settings


def test_run_settings_never_split_a_table_or_a_figure_group(finished, tmp_path):
    """A resumed run records trainer.resume: auto (and may run on another device or thread count): the
    collected table lists only the seed as varying, and the figures put both seeds in one group."""
    import shutil

    from sparsity_exp.collect import collect
    from sparsity_exp.plots.common import hue_keys

    _, run = finished
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(run, a)
    shutil.copytree(run, b)
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    cfg["seed"] = 1
    cfg["trainer"].update(resume="auto", device="cuda", threads=1, progress=True, tensorboard=True)
    cfg["results_dir"] = "elsewhere"
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    col = collect([tmp_path])
    assert col.keys == ["seed"], col.keys
    assert hue_keys(col.table) == []


def test_resumed_sweep_closing_hint_names_every_folder(capsys):
    from sparsity_exp.cli import _Sweep

    sweep = _Sweep()
    sweep.record(0, Path("/r/multirun/old/0_a=1"), None)
    sweep.record(1, Path("/r/multirun/new/1_a=2"), None)
    assert sweep.report(True) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "sparsity-exp collect /r/multirun/new /r/multirun/old" in last


# ------------------------------------------------------------------------- sweeps


# [basic] is slow (a process, 15 s): the default launcher's failure count and kept folders are checked in
# process by test_bad_input.py::test_sweep_keeps_going_and_exits_non_zero; the line format here by [local]
@pytest.mark.parametrize("launcher", [pytest.param("basic", marks=pytest.mark.slow), "local"])
def test_sweep_with_failed_jobs_exits_1_and_lists_them_last(tmp_path, launcher):
    """Job 1 is refused at start-up (no folder), job 2 fails while training (a non-finite loss, its
    folder kept): the sweep exits 1 and its last lines name each with its error and folder."""
    if launcher == "local":
        pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    args = ["run", "-m", f"hydra/launcher={launcher}", "model.width=16", "model.depth=1", "trainer.steps=4",
            "trainer.log_every=2", "trainer.eval_every=4", "trainer.progress=false", "probes=none",
            "optim.lr=0.01,-1,1e30"]
    if launcher == "local":
        args.append("hydra.launcher.n_jobs=2")
    out = subprocess.run([sys.executable, "-m", "sparsity_exp", *args], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-3:]
    assert last[0].startswith("2 of 3 job(s) of the sweep failed"), last
    assert last[1].startswith("  job 1: error: optim.lr=-1: must be a number > 0") and "no folder" in last[1]
    assert last[2].startswith("  job 2: error:") and "non-finite" in last[2]
    folder = last[2].rsplit("[folder ", 1)[1].rstrip("]")
    assert json.loads((Path(folder) / "summary.json").read_text())["status"] == "failed"


def test_slurm_sweep_without_sbatch_is_an_error_line(monkeypatch, capsys):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from sparsity_exp import cli

    monkeypatch.setattr(cli.shutil, "which", lambda tool: None)
    assert cli.main(["run", "-m", "hydra/launcher=slurm", "seed=0,1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: hydra/launcher=slurm") and "sbatch" in err and "Traceback" not in err


# ------------------------------------------------------------------------- error lines


def test_validator_first_line_says_problem_and_fix(compose):
    from sparsity_exp.errors import ConfigError
    from sparsity_exp.validate import validate_config

    with pytest.raises(ConfigError) as info:
        validate_config(compose("seed=4294967296"))
    first = str(info.value).splitlines()[0]
    assert first.startswith("seed=4294967296: must be an integer >= 0 and <= 4.29497e+09") and "fix seed" in first


def test_seed_at_the_generator_limit_runs_and_beyond_is_refused(compose, tmp_path):
    from sparsity_exp.errors import ConfigError
    from sparsity_exp.run import execute

    execute(compose(*SMALL, "probes=none", "trainer.steps=1", f"seed={2**32 - 1}"), tmp_path / "ok")
    with pytest.raises(ConfigError, match="seed=4294967296"):
        execute(compose(*SMALL, f"seed={2**32}"), tmp_path / "no")
    assert not (tmp_path / "no" / "metrics.csv").exists()


def test_finetune_init_that_is_neither_folder_nor_checkpoint(compose, tmp_path):
    from sparsity_exp.errors import ConfigError
    from sparsity_exp.run import execute

    junk = tmp_path / "notes.txt"
    junk.write_text("not a checkpoint\n")
    with pytest.raises(ConfigError, match=rf"protocol.init={junk} is neither a run folder nor a readable checkpoint"):
        execute(compose(*SMALL, "protocol=sparsity_finetune", f"protocol.init={junk}"), tmp_path / "ft")


def test_full_disk_while_writing_is_an_error_line_and_the_summary_says_failed(finished, tmp_path, monkeypatch,
                                                                              capsys):
    """Every write after the first rows raises ENOSPC (metrics, and the atomic summary write too): one
    `error:` line naming the file, exit 1, and summary.json no longer says running."""
    from sparsity_exp import cli, record, run as run_module

    calls = {"n": 0}
    real_flush = record.Recorder.flush

    def flush(self, durable=False):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real_flush(self, durable)

    real_write_json = run_module.write_json

    def write_json(path, obj):
        if isinstance(obj, dict) and obj.get("status") == "failed":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write_json(path, obj)

    monkeypatch.setattr(record.Recorder, "flush", flush)
    monkeypatch.setattr(run_module, "write_json", write_json)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "full"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", *SMALL, f"hydra.run.dir={folder}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert "metrics.csv" in line and "No space left on device" in line and "sparsity-exp resume" in line
    assert json.loads((folder / "summary.json").read_text())["status"] == "failed"


def test_probe_on_truncated_or_mismatched_checkpoint_names_the_file(finished, tmp_path):
    import shutil

    from sparsity_exp import cli
    from sparsity_exp.errors import UserError
    from sparsity_exp.posthoc import probe_run

    _, run = finished
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    ckpt = bad / "checkpoints" / "step_00000002.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    with pytest.raises(UserError, match=r"step_00000002.pt cannot be read as a checkpoint"):
        probe_run(bad, ["checkpoints=2"])
    other = tmp_path / "other"
    shutil.copytree(run, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["model"]["width"] = 24  # the checkpoints are of width 16
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match=r"checkpoint .*step_00000004.pt does not fit the model rebuilt from"):
        probe_run(other, ["checkpoints=last"])
    assert cli.main(["probe", str(bad), "checkpoints=2"]) == 2


def test_settings_without_effect_under_the_chosen_value_are_refused(compose):
    """Keys that pass the key check (some YAML defines them) but that nothing reads under this choice,
    and compile_mode without compile; a key read through ${oc.select:...} (activation.grad_clip feeds
    trainer.grad_clip) and a neutral value stay allowed."""
    from sparsity_exp.validate import problems

    assert problems(compose("+model.patch_size=4")) == [
        "model.patch_size: a setting of model vit, which nothing reads under model.name=mlp; drop it, or choose "
        "that model"]
    assert problems(compose("+data.inputs_length=32"))[0].startswith("data.inputs_length: a setting of data c4 / text")
    assert problems(compose("+optim.betas=[0.9,0.99]"))[0].startswith("optim.betas: a setting of optim adam / adamw")
    assert problems(compose("trainer.compile_mode=max-autotune")) == [
        "trainer.compile_mode=max-autotune: has no effect without trainer.compile=true; add trainer.compile=true, "
        "or drop trainer.compile_mode"]
    assert problems(compose("+activation.grad_clip=2")) == []
    assert problems(compose("+data.mixup_alpha=0.0")) == []  # a setting left at its neutral value


def test_probe_settings_no_code_can_use_are_refused_at_start_up(compose):
    """Values of a probe setting's type that used to fail only when the probe first measured (after
    training: torch.histogram with 0 bins, a division by rmt.v=0, no batch to measure) or measured
    nothing (no powers): refused by the start-up check, each naming its key; the presets pass."""
    from sparsity_exp.validate import problems

    for preset in ("none", "cheap", "default", "full", "checkpoints"):
        assert problems(compose(f"probes={preset}")) == [], preset
    found = problems(compose("probes=full", "probes.rmt.v=0", "probes.gradient_density.bins=0",
                             "probes.sharpness.batches=0", "probes.diagonality.powers=[]", "probes.spectrum.mass=1.5",
                             "probes.neurons.dead_at_most=2.0", "probes.gradient_density.log10_range=[1.0]"))
    assert sorted(p.split("=")[0] for p in found) == sorted([
        "probes.rmt.v", "probes.gradient_density.bins", "probes.sharpness.batches", "probes.diagonality.powers",
        "probes.spectrum.mass", "probes.neurons.dead_at_most", "probes.gradient_density.log10_range"]), found


def test_probe_batches_option_must_be_a_positive_integer(finished):
    from sparsity_exp.errors import UserError
    from sparsity_exp.posthoc import probe_run

    _, run = finished
    for value in ("0", "many", "-2"):
        with pytest.raises(UserError, match=rf"batches={value}: must be an integer >= 1"):
            probe_run(run, [f"batches={value}"])


def test_threads_and_compile_mode_values_no_code_can_use(compose):
    from sparsity_exp.validate import problems

    assert problems(compose("trainer.threads=many")) == [
        "trainer.threads='many': must be auto or an integer >= 1 (torch threads)"]
    assert problems(compose("trainer.threads=0"))[0].startswith("trainer.threads=0")
    assert problems(compose("trainer.compile=true", "trainer.compile_mode=fastest"))[0].startswith(
        "trainer.compile_mode='fastest': must be one of default, reduce-overhead")
    assert problems(compose("trainer.threads=2", "trainer.compile=true", "trainer.compile_mode=max-autotune")) == []


def test_figures_with_an_unknown_hue_key_is_refused_before_drawing(cli, tmp_path):
    """`figures --hue KEY` with a KEY no run has used to skip every grouped figure and exit 0."""
    for lr in ("0.05", "0.1"):
        assert cli("run", *SMALL, f"optim.lr={lr}", cwd=tmp_path).returncode == 0
    out = cli("figures", "results", "--hue", "nope.key", "--out", "figs", cwd=tmp_path)
    first = out.stderr.strip().splitlines()[0]
    assert out.returncode == 2 and first.startswith("error: --hue nope.key: not a config key that varies"), out.stderr
    assert first.endswith("choose from: optim.lr") and not list((tmp_path / "figs").glob("*.png"))
    assert cli("figures", "results", "--hue", "optim.lr", "--out", "figs", cwd=tmp_path).returncode == 0


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_probe_command_leaves_the_run_folder_byte_identical(cli, tmp_path):
    """`sparsity-exp probe` refused before its first measurement (a setting the probe rejects when it is
    built, an unreadable newest checkpoint) used to leave a header-only posthoc_metrics.csv behind."""
    assert cli("run", *SMALL, cwd=tmp_path).returncode == 0
    (run,) = list((tmp_path / "results").iterdir())
    before = _digest(run)
    refused = cli("probe", str(run), "probes=full", "probes.hessian.samples=1", cwd=tmp_path)
    assert refused.returncode == 2 and "probes.hessian" in refused.stderr.splitlines()[0], refused.stderr[-1500:]
    assert _digest(run) == before
    newest = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:200])
    before = _digest(run)
    refused = cli("probe", str(run), "checkpoints=last", cwd=tmp_path)
    assert refused.returncode == 2 and "cannot be read as a checkpoint" in refused.stderr, refused.stderr[-1500:]
    assert _digest(run) == before
