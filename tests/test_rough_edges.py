"""Issue 15: refused commands leave the folder alone, Hydra's errors exit 2, sweeps close with a line,
run.log holds the run's log."""
import json

import pytest

from .conftest import TINY


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_refused_continuation_leaves_hydra_files_and_log_alone(cli, tmp_path):
    run = tmp_path / "run"
    done = cli("run", *TINY, f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr
    before = _files(run)
    for refused in (["optim.lr=0.5"], ["trainer.resume=false"], ["optim.lr=-1"]):
        out = cli("run", *TINY, *refused, f"hydra.run.dir={run}")
        assert out.returncode == 2 and "error:" in out.stderr, out.stderr
        assert _files(run) == before, refused  # .hydra/overrides.yaml, config.yaml, run.log unchanged


def test_hydra_errors_exit_2_with_an_error_line(cli):
    for args in (["model.no_such_key=1"], ["no_such_group=x"], ["optim.lr=[unclosed"]):
        out = cli("run", *TINY, *args)
        assert out.returncode == 2, (args, out.returncode, out.stderr)
        assert "error:" in out.stderr and "Traceback" not in out.stderr


def test_refused_at_validation_leaves_no_run_folder(cli, tmp_path):
    out = cli("run", *TINY, "optim.lr=-1", "model.depth=0")
    assert out.returncode == 2 and "optim.lr=-1" in out.stderr and "model.depth=0" in out.stderr
    assert not list((tmp_path / "results").glob("*")) if (tmp_path / "results").exists() else True


def test_sweep_of_successes_ends_with_a_closing_line(cli, tmp_path):
    out = cli("run", "-m", *TINY, "trainer.steps=5", "seed=0,1")
    assert out.returncode == 0, out.stderr
    assert "all 2 job(s) of the sweep completed" in out.stdout.strip().splitlines()[-1]


def test_run_log_holds_the_runs_output(cli, tmp_path):
    run = tmp_path / "run"
    out = cli("run", *TINY, f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr
    log = (run / "run.log").read_text()
    assert f"run folder: {run}" in log and "test  loss" in log


def test_run_help_mentions_the_launchers(cli):
    out = cli("run", "--help")
    assert out.returncode == 0 and "hydra/launcher=local" in out.stdout and "hydra/launcher=slurm" in out.stdout


def test_batch_larger_than_the_training_set_is_a_config_error(compose, tmp_path):
    from sparsity_exp.errors import ConfigError
    from sparsity_exp.run import execute

    with pytest.raises(ConfigError, match=r"trainer.batch_size=5000 is larger than the training set \(\d+ examples\)"):
        execute(compose(*TINY, "trainer.batch_size=5000"), tmp_path / "r")


def test_every_bad_activation_field_and_non_finite_value_is_listed_at_once(compose):
    import sparsity_exp.activations  # noqa: F401  registers the activation rules
    from sparsity_exp.validate import problems

    found = problems(compose(*TINY, "activation=shifted", "activation.inner=cubic", "activation.half_width=-1",
                             "activation.shift_x=nan", "+model.dropout=inf"))
    keys = sorted(p.split("=")[0].split(":")[0] for p in found)
    # model.dropout twice: not finite, and a ViT/T5 key that nothing reads under model=mlp
    assert keys == ["activation.half_width", "activation.inner", "activation.shift_x", "model.dropout",
                    "model.dropout"], found
    assert "model.dropout=inf: must be a finite number" in found  # a key without a rule (a ViT preset's)
    assert any(p.startswith("model.dropout: a setting of model") for p in found), found


def test_non_finite_config_value_is_not_reported_as_a_non_finite_loss(cli):
    out = cli("run", *TINY, "activation=shifted", "activation.shift_y=inf")
    assert out.returncode == 2 and "activation.shift_y=inf" in out.stderr and "non-finite" not in out.stderr
    assert "optim.lr" not in out.stderr


def _fake_run(folder, status, config=None, rows=True):
    import yaml

    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"status": status}))
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if rows:
        (folder / "metrics.csv").write_text("step,epoch,split,probe,metric,layer,value\n0,0.0,train,train,loss,avg,2.3\n")


def test_collect_keeps_ints_and_leaves_out_runs_that_never_started(tmp_path):
    from sparsity_exp.collect import collect

    _fake_run(tmp_path / "a", "completed", {"model": {"depth": 4, "width": 32}, "optim": {"lr": 0.1}})
    _fake_run(tmp_path / "b", "completed", {"model": {"depth": 6, "width": 32}, "optim": {"lr": 0.1}})
    _fake_run(tmp_path / "refused", "failed", rows=False)  # an old folder of a job refused at validation
    col = collect([tmp_path])
    assert col.keys == ["model.depth"] and list(col.runs.run) == ["a", "b"]
    assert col.table["model.depth"].dtype.kind == "i" and list(col.runs["model.depth"]) == [4, 6]
    assert [p.name for p in col.left_out] == ["refused"]
    every = collect([tmp_path], include_unstarted=True)
    assert every.keys == ["model.depth"] and len(every.runs) == 3
    assert str(every.runs["model.depth"].dtype) == "Int64"


@pytest.mark.slow
def test_a_sigkilled_run_is_dead_in_collect_and_auto_resume_continues_it(cli, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from sparsity_exp.collect import collect

    from .conftest import ROOT

    args = [*TINY, "trainer.steps=4000", "trainer.checkpoint_every=20", "trainer.log_every=5", "model.width=16"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    proc = subprocess.Popen([sys.executable, "-m", "sparsity_exp", "run", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "results").glob("*/checkpoints/step_00000020.pt")):
        time.sleep(0.05)
    assert collect([tmp_path / "results"]).runs.status.tolist() == ["running"], (proc.poll(), list((tmp_path / "results").glob("*/*")))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    summary = json.loads(next((tmp_path / "results").glob("*/summary.json")).read_text())
    assert summary["status"] == "running" and summary["pid"] == proc.pid and summary["host"]
    assert collect([tmp_path / "results"]).runs.status.tolist() == ["dead"]
    out = cli("run", *args, "trainer.resume=auto")
    assert out.returncode == 0 and "continuing" in out.stderr, out.stderr
    assert collect([tmp_path / "results"]).runs.status.tolist() == ["completed"]


def test_stale_on_another_host(tmp_path):
    from sparsity_exp.lifecycle.liveness import running_state

    (tmp_path / "metrics.csv").write_text("x\n")
    os_mtime = (tmp_path / "metrics.csv").stat().st_mtime
    summary = {"status": "running", "host": "elsewhere", "pid": 1}
    assert running_state(tmp_path, summary, stale_after_s=60, now=os_mtime + 10) == "running"
    assert running_state(tmp_path, summary, stale_after_s=60, now=os_mtime + 61) == "stale"


def _stopped_run(compose, folder, monkeypatch, at=17, sleep=0.0):
    """A run stopped by a real SIGTERM after step ``at`` (checkpoints every 5 steps)."""
    import os
    import signal
    import time

    from sparsity_exp.lifecycle.preempt import Preempted
    from sparsity_exp.run import execute
    from sparsity_exp.train import Trainer

    original = Trainer.train_step

    def train_step(self, batch):
        original(self, batch)
        time.sleep(sleep)
        if self.step == at:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    with pytest.raises(Preempted):
        execute(compose(*TINY, "trainer.checkpoint_every=5"), folder)
    monkeypatch.setattr(Trainer, "train_step", original)
    return compose(*TINY, "trainer.checkpoint_every=5")


def test_leftover_temporaries_are_removed_when_the_run_continues(compose, tmp_path, monkeypatch):
    from sparsity_exp.run import execute

    cfg = _stopped_run(compose, tmp_path, monkeypatch)
    junk = [tmp_path / "checkpoints" / ".step_abc123.tmp", tmp_path / ".summary.json.x1.tmp",
            tmp_path / "arrays" / "tmpq1w2.npz"]
    for path in junk:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\0" * 1000)  # a write cut short by SIGKILL
    execute(cfg, tmp_path)
    assert not any(p.exists() for p in junk)


def test_completed_run_missing_its_quicklook_gets_it(compose, tmp_path):
    from sparsity_exp.run import execute

    cfg = compose(*TINY)
    execute(cfg, tmp_path)
    (tmp_path / "quicklook.png").unlink()  # killed after the last checkpoint, before the figure
    execute(cfg, tmp_path)
    assert (tmp_path / "quicklook.png").stat().st_size > 0


def test_wall_time_sums_the_segments_of_a_resumed_run(compose, tmp_path, monkeypatch):
    from sparsity_exp.run import execute

    cfg = _stopped_run(compose, tmp_path, monkeypatch, at=17, sleep=0.1)  # >= 1.7 s until the checkpoint at the stop
    summary = execute(cfg, tmp_path)
    ledger = json.loads((tmp_path / "segments.json").read_text())
    assert len(ledger) == 2 and ledger[1]["resumed_from_step"] == summary["resumed_from_step"] == 17
    first = ledger[1]["checkpoint_written_at"] - ledger[0]["started_at"]
    assert first >= 1.7 and summary["wall_time_s"] > first  # the first segment plus the second


class _Images(__import__("torch").utils.data.Dataset):
    """A map-style dataset (not a TensorDataset), so make_batches builds a DataLoader."""

    def __init__(self, n=23):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch

        return torch.tensor([float(i)]), i % 3


@pytest.mark.parametrize("kind", ["repeated_augmentation", "distributed"])
def test_sampler_position_is_restored_exactly(kind):
    import torch

    from sparsity_exp.batches import make_batches
    from sparsity_exp.lifecycle.state import BatchStream

    def stream():
        kw = dict(repeats=2) if kind == "repeated_augmentation" else dict(rank=1, world_size=2)
        return BatchStream(make_batches(_Images(), 4, shuffle=True, drop_last=True, seed=5,
                                        device=torch.device("cpu"), **kw))

    for stop in (7, 10, 11):  # mid-epoch and at an epoch boundary, after more than one epoch
        first = stream()
        for _ in range(stop):
            next(first)
        state = first.state_dict()
        expected = [next(first)[0].flatten().tolist() for _ in range(12)]
        second = stream()
        second.load_state_dict(state)
        assert [next(second)[0].flatten().tolist() for _ in range(12)] == expected, (kind, stop)


def test_every_file_of_a_run_folder_has_one_mode(compose, tmp_path):
    import stat

    from sparsity_exp.run import execute

    execute(compose(*TINY, "trainer.checkpoint_every=10", "probes=full", "trainer.steps=10"), tmp_path)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in tmp_path.rglob("*") if p.is_file()}
    assert any(name.startswith("checkpoints/") for name in modes) and "summary.json" in modes
    assert len(set(modes.values())) == 1, modes


def test_summary_reports_the_last_steps_training_loss_and_the_bar_says_when_test_acc_was_measured(
        compose, tmp_path, monkeypatch):
    from sparsity_exp.run import execute
    from sparsity_exp.train import Trainer

    seen = {}
    original = Trainer._forward_backward

    def spy(self, batch, net=None, **kw):
        loss, stats = original(self, batch, net, **kw)
        seen[self.step] = (float(loss.detach()), float(stats["correct"]) / float(stats["count"]))
        return loss, stats

    monkeypatch.setattr(Trainer, "_forward_backward", spy)
    bars = []
    monkeypatch.setattr(Trainer, "_postfix", lambda self, f=Trainer._postfix: bars.append(f(self)) or bars[-1])
    summary = execute(compose(*TINY, "trainer.steps=23"), tmp_path)  # logs at 0, 10, 20; last step 22
    assert summary["train"]["loss"] == pytest.approx(seen[22][0], rel=1e-6)
    assert summary["train"]["accuracy"] == pytest.approx(seen[22][1])
    assert any("test_acc@0" in b for b in bars) and "test_acc@20" in bars[-2] and "test_acc@23" in bars[-1]


def test_names_drop_whole_items_never_digits():
    import re

    from sparsity_exp.config import run_name
    from sparsity_exp.plots.common import slug

    overrides = ("model.depth=6,model.width=512,optim.lr=0.05,optim.weight_decay=0.0001,trainer.batch_size=128,"
                 "trainer.steps=2000")
    name = run_name(overrides)
    summary = name.split("_", 1)[1].rsplit("_", 1)[0]
    assert len(summary) <= 60 and re.search(r"\+\d+$", summary)
    for item in summary.split(",")[:-1]:
        assert item in overrides.split(",")  # every item shown is whole
    assert run_name("trainer.steps=2000").split("_")[1] == "trainer.steps=2000"
    run = "multirun/20260101-000000/0_" + overrides + "_ab12cd"
    short = slug(run)
    assert len(short) <= 80 and short.endswith("_ab12cd") and "trainer.steps=20" not in short.replace("2000", "")
    for item in short[: -len("_ab12cd")].split(",")[1:-1]:
        assert item in overrides.split(",")


def _sparsity_table(tmp_path, names=("relu", "shifted")):
    import pandas as pd

    rows = []
    for run, act in zip(("a", "b"), names):
        for metric in ("activation_sparsity", "derivative_sparsity", "derivative2"):
            for layer in ("0", "avg"):
                for step in (0, 10):
                    rows.append(dict(run=run, status="completed", source="metrics", step=step, epoch=0.0,
                                     split="train", probe="sparsity", metric=metric, layer=layer, value=0.5,
                                     **{"activation.name": act, "noise.enabled": act == "shifted"},
                                     run_dir=str(tmp_path / run)))
    return pd.DataFrame(rows)


def test_figure_legends_use_full_keys_once_per_figure(tmp_path, monkeypatch):
    from sparsity_exp.plots import common, sparsity

    figures = []
    monkeypatch.setattr(common, "save", lambda fig, out, name: figures.append(fig) or [])
    monkeypatch.setattr(sparsity, "save", lambda fig, out, name: figures.append(fig) or [])
    sparsity.sparsity_vs_step(_sparsity_table(tmp_path), tmp_path, hue=["noise.enabled"])
    fig = figures[0]
    assert all(ax.get_legend() is None for ax in fig.axes)  # no legend inside one panel ...
    (legend,) = fig.legends  # ... one for the figure
    assert sorted(t.get_text() for t in legend.get_texts()) == ["noise.enabled=False", "noise.enabled=True"]


def test_flat_region_only_for_shifted_runs(tmp_path, monkeypatch):
    from sparsity_exp.plots import sparsity
    from sparsity_exp.plots.common import Skip

    figures = []
    monkeypatch.setattr(sparsity, "save", lambda fig, out, name: figures.append(fig) or [])
    with pytest.raises(Skip, match="shifted activation"):
        sparsity.flat_region(_sparsity_table(tmp_path, ("relu", "gelu")), tmp_path)
    sparsity.flat_region(_sparsity_table(tmp_path), tmp_path)
    titles = [ax.get_title() for ax in figures[0].axes if ax.get_title()]
    assert titles and all("relu" not in t for t in titles)  # run a (relu) is not drawn


def test_shifted_activation_trains_on_the_default_model(compose, tmp_path):
    """The README's `sparsity-exp run activation=shifted`: the paper's §4.1 gradient clip comes with
    the activation (it diverged at step 12 unclipped); other defaults keep grad_clip 0."""
    from sparsity_exp.run import execute

    cfg = compose("activation=shifted", "trainer.steps=60", "trainer.progress=false")
    assert cfg.trainer.grad_clip == 1.0 and compose().trainer.grad_clip == 0.0
    assert compose("activation=shifted", "trainer.grad_clip=0").trainer.grad_clip == 0.0
    summary = execute(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["train"]["loss"] < 1.0


def test_folder_with_an_unreadable_config_is_refused(compose, tmp_path, monkeypatch):
    from sparsity_exp.errors import ConfigError
    from sparsity_exp.run import execute

    cfg = _stopped_run(compose, tmp_path, monkeypatch)
    (tmp_path / "config.yaml").write_text("model: [unclosed\n")
    before = _files(tmp_path)
    with pytest.raises(ConfigError, match="config.yaml cannot be read"):
        execute(cfg, tmp_path)
    assert {k: v for k, v in _files(tmp_path).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}
