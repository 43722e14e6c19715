"""The one probe driver (probes/base.py ProbeSet): every cadence down to every step, rows written at
log steps, and the same rows online and post hoc."""
import json
from contextlib import contextmanager

import pandas as pd
import torch

from sparsity_exp.probes import PROBES, Probe, ProbeContext, ProbeSet
from sparsity_exp.run import execute


class StepCounter(Probe):
    """Counts the training batches it observes on the device; remembers their steps (for the test)."""

    name = "step_counter"
    seen: list = []

    def __init__(self, sites, every=0, **kw):
        super().__init__(sites, every, **kw)
        self._stats = None

    @contextmanager
    def observe(self, split):
        if split == "train":
            type(self).seen.append(self.ctx.step)
            one = torch.ones((), dtype=torch.float64)
            self._stats = one if self._stats is None else self._stats + one
        yield

    def rows(self, split):
        if split != "train" or self._stats is None:
            return []
        n, self._stats = float(self._stats), None
        return [(split, "observations", "avg", n)]


def test_every_one_observes_every_training_step(compose, tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(PROBES, "step_counter", StepCounter)
    monkeypatch.setattr(StepCounter, "seen", [])
    execute(compose(*tiny, "probes=none", "+probes.step_counter.every=1"), tmp_path)  # 30 steps, log every 10
    assert StepCounter.seen == list(range(30))
    m = pd.read_csv(tmp_path / "metrics.csv")
    rows = m[m.probe == "step_counter"].set_index("step").value
    # written at log steps (0, 10, 20) covering every observation since the last write; the rest at the end
    assert rows.to_dict() == {0: 1.0, 10: 10.0, 20: 10.0, 30: 9.0}


def test_cadence_off_the_log_steps(compose, tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(PROBES, "step_counter", StepCounter)
    monkeypatch.setattr(StepCounter, "seen", [])
    execute(compose(*tiny, "probes=none", "+probes.step_counter.every=7"), tmp_path)
    assert StepCounter.seen == [0, 7, 14, 21, 28]
    rows = pd.read_csv(tmp_path / "metrics.csv").query("probe == 'step_counter'").set_index("step").value
    assert rows.to_dict() == {0: 1.0, 10: 1.0, 20: 1.0, 30: 2.0}


def test_probe_set_shares_one_context_and_writes_through_it(tmp_path):
    from sparsity_exp.record import Recorder

    a, b = StepCounter([], every=2), StepCounter([], every=3)
    assert a.ctx is not b.ctx
    with Recorder(tmp_path) as rec:
        probes = ProbeSet([a, b], ProbeContext(recorder=rec, steps_per_epoch=4))
        assert a.ctx is b.ctx is probes.context
        for step in range(7):
            probes.context.step = step
            with probes.observe(probes.due(step), "train"):
                pass
        probes.write_train()
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert list(m.value) == [4.0, 3.0]  # a at 0,2,4,6; b at 0,3,6
    assert set(m.step) == {6} and set(m.epoch) == {1.5}


def test_online_and_post_hoc_agree_at_the_last_step(compose, tiny, tmp_path):
    """Deterministic probes that run both ways give the very rows the run wrote at its last step."""
    from sparsity_exp.posthoc import probe_run

    cfg = compose(*tiny, "probes=none", "+probes.sparsity.every=10", "+probes.neurons.dead_at_most=0.0",
                  "+probes.spectrum.at_end=true",
                  # the standalone data probes measure the run's measurement batches both ways
                  "+probes.hessian.at_end=true", "+probes.hessian.samples=4", "+probes.hessian.iterations=3",
                  "+probes.hessian.batches=2", "+probes.sharpness.at_end=true", "+probes.sharpness.samples=2",
                  "+probes.sharpness.steps=2")
    execute(cfg, tmp_path)
    recorded = json.loads((tmp_path / "measurement_batches.json").read_text())
    assert len(recorded["batches"]) == 2 and recorded["seed"] == cfg.seed
    out = probe_run(tmp_path, ["checkpoints=last"])
    assert json.loads((tmp_path / "measurement_batches.json").read_text()) == recorded
    online = pd.read_csv(tmp_path / "metrics.csv", dtype=str)
    post = pd.read_csv(out, dtype=str)
    assert set(post.step) == {"30"}
    keys = ["probe", "split", "metric", "layer"]
    for probe, split in (("sparsity", "test"), ("neurons", "test"), ("spectrum", None), ("hessian", None),
                         ("sharpness", None)):
        def pick(t):
            t = t[(t.probe == probe) & (t.step == "30")]
            t = t if split is None else t[t.split == split]
            return t.sort_values(keys)[keys + ["value"]].reset_index(drop=True)
        want, got = pick(online), pick(post)
        assert len(want) > 0
        pd.testing.assert_frame_equal(got, want)  # the same strings: the same numbers to the last digit
