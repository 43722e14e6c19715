"""Bad input: a clear short message that says what to do, a non-zero exit, nothing already written
lost. One test per case (the unknown-choice and missing-dataset cases are in test_run.py)."""
import json
import re
import os
import shutil
import signal
import sys

import pytest

from sparsity_exp.lifecycle.checkpoint import list_checkpoints
from sparsity_exp.errors import ConfigError, UserError
from sparsity_exp.lifecycle.preempt import Preempted
from sparsity_exp.lifecycle.checkpoint import CheckpointError
from sparsity_exp.run import execute
from sparsity_exp.train import NonFiniteLoss, Trainer
from sparsity_exp.validate import RULES, Rule, add_rules, problems

from .conftest import ROOT


@pytest.mark.parametrize("override,says", [
    ("optim.lr=-0.1", "optim.lr=-0.1: must be a number > 0"),
    ("optim.lr=abc", "optim.lr='abc': must be a number > 0"),
    ("trainer.steps=0", "trainer.steps=0: must be an integer >= 1"),
    ("trainer.batch_size=0", "trainer.batch_size=0: must be an integer >= 1"),
    ("trainer.log_every=0", "trainer.log_every=0: must be an integer >= 1"),
    ("trainer.eval_every=-5", "trainer.eval_every=-5: must be an integer >= 1"),
    ("model.depth=2.5", "model.depth=2.5: must be an integer >= 1"),
    ("trainer.device=gpu", "trainer.device='gpu': must be auto, cpu, cuda or cuda:N"),
    ("optim=adam optim.betas=[0.9]", "optim.betas=[0.9]: must be a list of 2"),
    ("data.test_fraction=1.0", "data.test_fraction=1.0: must be a number > 0 and < 1"),
    ("optim.schedule.name=step", "optim.schedule.name='step': must be one of"),  # not the list: a new schedule changes it
])
def test_bad_values_fail_before_training(compose, tiny, tmp_path, override, says):
    with pytest.raises(ConfigError) as info:
        execute(compose(*tiny, *override.split()), tmp_path)
    assert says in str(info.value) and "on the command line" in str(info.value)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    assert not (tmp_path / "metrics.csv").exists()  # nothing was built or trained


def test_validation_reports_every_problem_and_refuses_unknown_keys(compose, tiny):
    cfg = compose(*tiny, "optim.lr=0", "trainer.batch_size=-3", "+model.new_knob=whatever",
                  "+probes.newprobe.every=-2", "trainer.epochs=2", "trainer.steps=0")
    found = problems(cfg)
    # probe names come from the probe registry: an unknown one is reported with the valid names; a key
    # no config group defines (added with +) is refused: no code would read it
    assert sorted(re.match(r"[^=:]*", p)[0] for p in found) == [
        "model.new_knob", "optim.lr", "probes.newprobe", "probes.newprobe.every", "trainer.batch_size"]
    assert problems(compose(*tiny)) == []


def test_rules_can_be_added_by_the_module_that_owns_the_keys(compose, tiny, monkeypatch):
    monkeypatch.setattr("sparsity_exp.validate.RULES", dict(RULES))
    add_rules({"model.patch_size": Rule("int", low=1)})
    assert problems(compose(*tiny, "+model.patch_size=0")) == ["model.patch_size=0: must be an integer >= 1"]


def test_cli_bad_value_is_a_short_error(cli, tiny, tmp_path):
    out = cli("run", *tiny, "optim.lr=-1", "trainer.batch_size=0")
    assert out.returncode == 2
    first = out.stderr.strip().splitlines()[0]  # the first line is the problem and its fix, not a heading
    assert first.startswith("error: optim.lr=-1: must be a number > 0 (fix optim.lr on the command line"), first
    assert "1 more problem below" in first
    assert "trainer.batch_size=0" in out.stderr and "Traceback" not in out.stderr


def _main(args, monkeypatch, capsys, tmp_path):
    """The command's entry point (cli.main) in this process from tmp_path: (exit code, stderr).
    tests/test_bad_input_table.py checks a few refusals through a real process too."""
    from sparsity_exp.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_cli_unwritable_results_dir(monkeypatch, capsys, tiny, tmp_path):
    (tmp_path / "taken").write_text("a file where the results folder should be")
    code, err = _main(["run", *tiny, "results_dir=taken/results"], monkeypatch, capsys, tmp_path)
    assert code == 2 and "Traceback" not in err
    assert "cannot write run folders under taken/results" in err and "set results_dir=" in err
    assert (tmp_path / "taken").read_text().startswith("a file")


def test_unwritable_run_folder_in_execute(compose, tiny, tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError, match="cannot write the run folder .*set results_dir="):
        execute(compose(*tiny), tmp_path / "taken" / "run")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_results_dir(compose, tiny, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write the run folder"):
            execute(compose(*tiny), ro / "run")
    finally:
        ro.chmod(0o700)


def _interrupted(compose, tiny, folder, monkeypatch, *extra, at=17):
    """An unfinished run in ``folder``: stopped by a real SIGTERM after step ``at``."""
    original = Trainer.train_step

    def train_step(self, batch):
        original(self, batch)
        if self.step == at:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    with pytest.raises(Preempted):
        execute(compose(*tiny, "trainer.checkpoint_every=5", *extra), folder)
    monkeypatch.setattr(Trainer, "train_step", original)
    return compose(*tiny, "trainer.checkpoint_every=5", *extra)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in (folder / "metrics.csv", folder / "summary.json")}


def test_corrupt_checkpoint_is_named_and_nothing_is_lost(compose, tiny, tmp_path, monkeypatch):
    cfg = _interrupted(compose, tiny, tmp_path, monkeypatch)
    newest = list_checkpoints(tmp_path)[-1][1]
    newest.write_bytes(b"not a checkpoint")
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError) as info:
        execute(cfg, tmp_path)
    message = str(info.value)
    assert str(newest) in message and "step_00000015.pt" in message and "Move it out" in message
    assert _snapshot(tmp_path) == before
    # doing what the message says works: continue from the previous checkpoint
    shutil.move(newest, tmp_path / "corrupt.pt")
    assert execute(cfg, tmp_path)["resumed_from_step"] == 15


def test_mismatched_checkpoint_is_refused(compose, tiny, tmp_path, monkeypatch):
    cfg = _interrupted(compose, tiny, tmp_path / "run", monkeypatch)
    execute(compose(*tiny, "model.width=16", "trainer.checkpoint_every=5"), tmp_path / "narrow")
    # a checkpoint of the narrow model lands in the wide run's folder as its newest
    shutil.copy(list_checkpoints(tmp_path / "narrow")[-1][1], tmp_path / "run" / "checkpoints" / "step_00000029.pt")
    before = _snapshot(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not fit the model.*size mismatch.*new run"):
        execute(cfg, tmp_path / "run")
    assert _snapshot(tmp_path / "run") == before


def test_resuming_with_another_config_is_refused(compose, tiny, tmp_path, monkeypatch):
    _interrupted(compose, tiny, tmp_path, monkeypatch)
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"differs in model.width: 32 -> 16.*sparsity-exp resume"):
        execute(compose(*tiny, "trainer.checkpoint_every=5", "model.width=16"), tmp_path)
    with pytest.raises(ConfigError, match="trainer.resume=false"):
        execute(compose(*tiny, "trainer.checkpoint_every=5", "trainer.resume=false"), tmp_path)
    with pytest.raises(ConfigError, match="optim.lr"):  # bad input in a resumed folder leaves it alone too
        execute(compose(*tiny, "trainer.checkpoint_every=5", "optim.lr=-1"), tmp_path)
    assert _snapshot(tmp_path) == before


def test_non_finite_loss_stops_saves_and_names_the_step(compose, tiny, tmp_path):
    with pytest.raises(NonFiniteLoss) as info:
        execute(compose(*tiny, "optim.lr=1e20", "trainer.checkpoint_every=5"), tmp_path)
    message = str(info.value)
    assert "non-finite at step 1." in message and "Lower optim.lr" in message
    saved = tmp_path / "checkpoints" / "nonfinite_step_00000005.pt"  # found at the checkpoint of step 5
    assert str(saved) in message and saved.exists()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [0]  # no resumable checkpoint holds NaNs
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "step 1" in summary["error"]
    assert "Traceback" in (tmp_path / "error.txt").read_text()
    assert (tmp_path / "metrics.csv").read_text().count("\n0,") > 0  # the rows logged before are kept


def test_sweep_keeps_going_and_exits_non_zero(monkeypatch, capsys, tmp_path, tiny):
    import sparsity_exp.run as r

    # a real crash (not a config mistake) in the seed=1 jobs, alongside a bad value in the lr=-1 jobs
    real = r._train

    def crash(cfg, *a, **k):
        if cfg.seed == 1:
            raise RuntimeError("boom")
        return real(cfg, *a, **k)

    monkeypatch.setattr(r, "_train", crash)
    code, err = _main(["run", "-m", *tiny, "seed=0,1", "optim.lr=0.05,-1"], monkeypatch, capsys, tmp_path)
    assert code == 1, err
    assert "3 of 4 job(s) of the sweep failed" in err
    assert "optim.lr=-1: must be a number > 0" in err  # the failure list keeps the whole config error
    jobs = sorted(p for p in (tmp_path / "results" / "multirun").glob("*/*") if p.is_dir())
    assert [j.name.split("_")[0] for j in jobs] == ["0", "2"]  # every job ran; refused ones left no folder
    status = {j.name.split("_")[0]: json.loads((j / "summary.json").read_text())["status"] for j in jobs}
    assert status == {"0": "completed", "2": "failed"}
    assert "RuntimeError: boom" in (jobs[1] / "error.txt").read_text()


def test_a_folder_being_written_is_refused(compose, tiny, tmp_path):
    from sparsity_exp.lifecycle.folders import RunLock

    with RunLock(tmp_path):  # another process (here: another open file) is writing the folder
        assert RunLock.held(tmp_path)
        with pytest.raises(ConfigError, match="being written by another process"):
            execute(compose(*tiny), tmp_path)
    assert not RunLock.held(tmp_path) and not (tmp_path / "summary.json").exists()
