"""Standalone probe cadence and checkpoint files."""
import pandas as pd
import torch

from sparsity_exp.lifecycle.checkpoint import list_checkpoints, load_checkpoint
from sparsity_exp.probes import PROBES, Probe
from sparsity_exp.run import execute


class CountingProbe(Probe):
    name = "counting"

    def measure(self, ctx):
        # a real measurement through the context: the test loss of the model as it stands
        ctx.model.eval()
        with torch.no_grad():
            loss, _ = ctx.task(ctx.model, next(iter(ctx.test_batches)), train=False)
        return [("test", "loss_at_measure", "avg", float(loss)), ("test", "step_seen", "avg", ctx.step)]


def test_measure_cadence_and_checkpoints(compose, tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(PROBES, "counting", CountingProbe)
    cfg = compose(*tiny, "trainer.checkpoint_every=10", "trainer.keep_checkpoints=2",
                  "+probes.counting.measure_every=15", "+probes.counting.at_end=true")
    execute(cfg, tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    seen = m[(m.probe == "counting") & (m.metric == "step_seen")]
    assert sorted(seen.step) == [0, 15, 30] and (seen.step == seen.value).all()
    ckpts = list_checkpoints(tmp_path)
    assert [s for s, _ in ckpts] == [20, 30]  # 0, 10 pruned: newest 2 kept
    state = load_checkpoint(ckpts[-1][1])
    assert state["step"] == 30 and "blocks.0.key.weight" in state["model"] and "state" in state["optimizer"]
