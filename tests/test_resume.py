"""Checkpoints hold the whole state; a stopped run continues to the same metrics table as one that
never stopped (in-process with a real signal, and a real subprocess killed with SIGKILL)."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from sparsity_exp.lifecycle import folders
from sparsity_exp.lifecycle import checkpoint
from sparsity_exp.lifecycle.checkpoint import list_checkpoints, load_checkpoint
from sparsity_exp.lifecycle.preempt import Preempted
from sparsity_exp.probes import PROBES, Probe
from sparsity_exp.run import execute
from sparsity_exp.lifecycle.state import BatchStream, rng_state, set_rng_state
from sparsity_exp.train import Trainer

from .conftest import ROOT

# 5 steps per epoch (1437 digits // 256), so 30 steps cross epochs and stop mid-epoch
SHORT = ["trainer.batch_size=256", "trainer.log_every=2", "trainer.eval_every=7", "trainer.checkpoint_every=5",
         "+probes.draws.measure_every=3", "+probes.draws.at_end=true"]


class DrawsProbe(Probe):
    """Writes one draw of every global generator: a resumed run matches only if all are restored."""

    name = "draws"

    def measure(self, ctx):
        return [("train", "python", "avg", random.random()), ("train", "numpy", "avg", float(np.random.rand())),
                ("train", "torch", "avg", float(torch.rand(()))),
                # draws through the training loader's generator too (as a probe reading train batches would)
                ("train", "batch_sum", "avg", float(next(iter(ctx.train_batches))[0].sum()))]


@pytest.fixture
def draws(monkeypatch):
    monkeypatch.setitem(PROBES, "draws", DrawsProbe)


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(()).item(), np.random.randn())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(()).item(), np.random.randn()) == expected


def test_batch_stream_continues_mid_epoch_exactly():
    from torch.utils.data import TensorDataset

    from sparsity_exp.batches import make_batches

    ds = TensorDataset(torch.arange(10.0))

    def stream():
        return BatchStream(make_batches(ds, 3, shuffle=True, drop_last=True, seed=0, device=torch.device("cpu")))

    a = stream()
    first = [next(a)[0].tolist() for _ in range(4)]  # one epoch of 3 batches + 1
    saved = a.state_dict()
    rest = [next(a)[0].tolist() for _ in range(5)]
    b = stream()
    b.load_state_dict(saved)
    assert [next(b)[0].tolist() for _ in range(5)] == rest
    assert len(set(sum(first[:3], []))) == 9  # one epoch: distinct examples
    assert first[3] != first[0]  # the next epoch is shuffled anew


def test_checkpoint_holds_everything_and_loads_weights_only(compose, tiny, tmp_path, draws):
    execute(compose(*tiny, *SHORT), tmp_path)
    step, path = list_checkpoints(tmp_path)[1]
    state = torch.load(path, weights_only=True)
    assert step == 5 and state["step"] == 5
    assert set(checkpoint.REQUIRED) <= set(state)
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["data"]["taken"] == 0 and state["data"]["generator"].dtype == torch.uint8  # epoch boundary
    assert load_checkpoint(path)["optimizer"]["state"]  # the momentum buffers
    # the metrics position is the table's length when the checkpoint was written
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert state["recorder"]["rows"] == int((rows.step <= 5).sum())


def _stop_at(monkeypatch, step, signum):
    """Send a real signal to this process when ``step`` is reached (as a scheduler would)."""
    original = Trainer.train_step

    def train_step(self, batch):
        original(self, batch)
        if self.step == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return original


@pytest.mark.parametrize("signum,stop", [(signal.SIGUSR1, 13), (signal.SIGTERM, 16)])
def test_signal_saves_and_resume_matches_an_uninterrupted_run(compose, tiny, tmp_path, draws, monkeypatch, signum,
                                                              stop):
    cfg = compose(*tiny, *SHORT)
    execute(cfg, tmp_path / "whole")
    handler_before = signal.getsignal(signum)
    original = _stop_at(monkeypatch, stop, signum)
    with pytest.raises(Preempted) as info:
        execute(cfg, tmp_path / "cut")
    assert info.value.step == stop and info.value.signame == signal.Signals(signum).name
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] == stop
    assert list_checkpoints(tmp_path / "cut")[-1][0] == stop  # saved at the step boundary, mid-epoch
    assert load_checkpoint(list_checkpoints(tmp_path / "cut")[-1][1])["data"]["taken"] == stop % 5
    assert signal.getsignal(signum) == handler_before  # the handler is put back
    monkeypatch.setattr(Trainer, "train_step", original)
    done = execute(cfg, tmp_path / "cut")
    assert done["status"] == "completed" and done["resumed_from_step"] == stop
    whole, cut = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("whole", "cut"))
    pd.testing.assert_frame_equal(whole, cut)  # every row, exactly; none doubled or lost
    assert set(cut.metric) >= {"python", "numpy", "torch", "batch_sum", "loss", "activation_sparsity"}
    final = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert done["test"] == final["test"] and done["train"] == final["train"]


def test_rerunning_a_completed_run_does_nothing(compose, tiny, tmp_path):
    cfg = compose(*tiny)
    execute(cfg, tmp_path)
    before = (tmp_path / "metrics.csv").read_bytes()
    again = execute(cfg, tmp_path)
    assert again["status"] == "completed" and (tmp_path / "metrics.csv").read_bytes() == before


def test_auto_picks_the_newest_unfinished_run_of_the_same_config(compose, tiny, tmp_path, monkeypatch):
    results = tmp_path / "results"
    cfg = compose(*tiny, f"results_dir={results}", "trainer.resume=auto")
    other = compose(*tiny, f"results_dir={results}", "model.width=16")
    execute(other, results / "a_other")
    _stop_at(monkeypatch, 12, signal.SIGTERM)
    with pytest.raises(Preempted):
        execute(cfg, results / "b_same")
    fresh = results / "c_fresh"
    (fresh / ".hydra").mkdir(parents=True)
    assert folders.resolve_run_dir(cfg, fresh) == results / "b_same"
    folders.discard_if_empty(fresh)
    assert not fresh.exists()
    # a path works too; a checkpoint that is not the newest is refused
    assert folders.resolve_run_dir(compose(*tiny, f"trainer.resume={results / 'b_same'}"), fresh) == results / "b_same"
    # nothing of this config: a fresh folder
    assert folders.resolve_run_dir(compose(*tiny, f"results_dir={results}", "trainer.resume=auto", "seed=5"),
                                  fresh) == fresh


def _cli_command(run_dir, *extra, sleep=0.0):
    """The real CLI in a subprocess; ``sleep`` slows every step so a kill lands mid-run."""
    code = ("import sys, time\n"
            "from sparsity_exp.train import Trainer\n"
            "step = Trainer.train_step\n"
            f"Trainer.train_step = lambda self, b: (time.sleep({sleep}), step(self, b))[1]\n"
            "from sparsity_exp.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return [sys.executable, "-c", code, "run", "model.width=32", "model.depth=2", "trainer.steps=40",
            "trainer.batch_size=256", "trainer.log_every=2", "trainer.eval_every=7", "trainer.checkpoint_every=10",
            "trainer.progress=false", f"hydra.run.dir={run_dir}", *extra]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", OMP_NUM_THREADS="1")


def _wait_for(predicate, proc, timeout=120):
    end = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, "the run never reached the kill point"
        time.sleep(0.01)


def _reference_in_process(compose, run_dir):
    """The uninterrupted run of ``_cli_command``'s config, here, on one thread like the subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return execute(compose(*[a for a in _cli_command(run_dir)[4:] if not a.startswith("hydra.")]), run_dir)
    finally:
        torch.set_num_threads(threads)


def test_sigkill_mid_run_then_resume_gives_identical_metrics(compose, tmp_path):
    _reference_in_process(compose, tmp_path / "whole")
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_cli_command(cut, sleep=0.03), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)

    def past_first_checkpoint():  # a checkpoint exists and rows after it are already on disk
        ckpts = list_checkpoints(cut) if (cut / "checkpoints").exists() else []
        if not ckpts or ckpts[-1][0] != 10:
            return False
        lines = (cut / "metrics.csv").read_text().splitlines()
        return any(line.startswith("14,") for line in lines)

    _wait_for(past_first_checkpoint, proc)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    assert json.loads((cut / "summary.json").read_text())["status"] == "running"
    resumed = subprocess.run(_cli_command(cut), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing" in resumed.stderr and "step_00000010.pt" in resumed.stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole" / "metrics.csv"), pd.read_csv(cut / "metrics.csv"))
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_step"] == 10


# slow (two processes, 29 s): the default suite checks the same signal -> exit 75 -> interrupted summary ->
# checkpoint path in test_user_paths.py::test_sigterm_hint_resumes_when_pasted_into_a_shell, and that
# trainer.resume=auto finds the interrupted folder in process (test_auto_picks_the_newest_unfinished_run...)
@pytest.mark.slow
def test_sigterm_exits_with_the_requeue_code_and_auto_resumes(tmp_path):
    from sparsity_exp.lifecycle.preempt import REQUEUE_EXIT_CODE

    run = tmp_path / "results" / "job"
    proc = subprocess.Popen(_cli_command(run, sleep=0.03), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / "metrics.csv").exists() and "\n6," in (run / "metrics.csv").read_text(), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == REQUEUE_EXIT_CODE, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert list_checkpoints(run)[-1][0] == summary["step"] > 6
    assert "trainer.resume=auto" in err
    # the requeued command without hydra.run.dir: auto finds the folder
    cmd = [a for a in _cli_command(run) if not a.startswith("hydra.run.dir")] + ["trainer.resume=auto"]
    again = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["job"]  # no stray folder
    m = pd.read_csv(run / "metrics.csv")
    assert not m.duplicated(["step", "split", "probe", "metric", "layer"]).any() and m.step.max() == 40


def test_rmt_running_covariances_survive_a_resume(compose, tiny, tmp_path, monkeypatch):
    """The RMT probe's covariances accumulate over the whole run; a resumed run must go on with them."""
    cfg = compose(*tiny, *SHORT[:4], "optim.weight_decay=0.01", "+probes.rmt.every=2")
    execute(cfg, tmp_path / "whole")
    original = _stop_at(monkeypatch, 13, signal.SIGUSR1)
    with pytest.raises(Preempted):
        execute(cfg, tmp_path / "cut")
    monkeypatch.setattr(Trainer, "train_step", original)
    execute(cfg, tmp_path / "cut")
    whole, cut = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("whole", "cut"))
    assert (cut.probe == "rmt").any()
    pd.testing.assert_frame_equal(whole, cut)
