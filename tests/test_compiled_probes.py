"""The cheap probes on a compiled model (issue 14, item 4): the sparsity probe's train-batch hooks are
traced into the compiled forward, so observed steps need no eager twin; the values equal the eager
run's; the compiled forward has no graph break; the statistics live in one preallocated tensor
written in place (what CUDA graphs of compile_mode=reduce-overhead need)."""
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch

from sparsity_exp.errors import ConfigError
from sparsity_exp.probes.sparsity import SparsityProbe
from sparsity_exp.run import _train, execute
from sparsity_exp.train import Trainer

KEY = ["step", "split", "probe", "metric", "layer"]


class _NoRecorder:
    def add(self, *a, **k): ...

    def flush(self): ...


class _NoEagerForward(torch.nn.Module):
    def forward(self, *a, **k):
        raise AssertionError("an observed step ran the eager model")


def _wired(cfg, tmp_path):
    """The trainer as run.py wires it, without training."""
    with mock.patch.object(Trainer, "fit", lambda self: None):
        return _train(cfg, tmp_path)


def _compiled(compose, tiny, tmp_path, *more):
    return _wired(compose(*tiny, "probes=cheap", "trainer.compile=true", "trainer.compile_backend=aot_eager",
                          *more), tmp_path)


EVERY_STEP = "+probes.sparsity.compiled_stats=every_step"


@pytest.mark.parametrize("when", ["log_steps", "every_step"])
def test_observed_step_runs_the_compiled_model_and_counts_like_numpy(compose, tiny, tmp_path, when):
    trainer = _compiled(compose, tiny, tmp_path, *([EVERY_STEP] if when == "every_step" else []))
    trainer.recorder = _NoRecorder()
    trainer.eager_model = _NoEagerForward()  # a log step must not need it
    probe = next(p for p in trainer.probes if isinstance(p, SparsityProbe))
    static, ptr = probe._static, probe._static.data_ptr()
    assert getattr(static, "_dynamo_static_input_type", None) is not None  # CUDA graphs keep its address
    batch = next(iter(trainer.train_batches))

    # the expected counts, by numpy from the eager forward of the same weights (ReLU: a = max(h, 0))
    seen = {}
    handles = [s.act.register_forward_hook(lambda m, i, o, k=s.index: seen.__setitem__(k, i[0].detach().numpy()))
               for s in probe.sites]
    with torch.no_grad():
        trainer.model(batch[0])
    for h in handles:
        h.remove()

    trainer.step = trainer.log_every  # a log step
    trainer.train_step(batch)
    for site in probe.sites:
        h = seen[site.index]
        a = np.maximum(h, 0)
        assert trainer.last[("train", "sparsity", "activation_sparsity", site.index)] == pytest.approx(
            (np.abs(a) <= 1e-6).mean(), abs=1e-12)
        assert trainer.last[("train", "sparsity", "derivative_sparsity", site.index)] == pytest.approx(
            (h <= 0).mean(), abs=1e-12)
        assert trainer.last[("train", "sparsity", "derivative2", site.index)] == pytest.approx((h > 0).mean(),
                                                                                           abs=1e-12)
    static.fill_(-7.0)
    trainer.train_step(batch)
    if when == "log_steps":  # a step that does not log leaves the statistics alone (its graph has none)
        assert (static == -7.0).all()
    else:  # every step overwrites them with its own batch's counts
        assert static[:, 3].tolist() == [float(seen[s.index].size) for s in probe.sites]  # entries counted
    assert static.data_ptr() == ptr and probe._static is static  # written in place, never reallocated


@pytest.mark.parametrize("when", ["log_steps", "every_step"])
def test_compiled_run_with_cheap_probes_logs_the_eager_rows(compose, tiny, tmp_path, when):
    if when == "log_steps":  # two micro-batches: the log step's graph accumulates over both
        _compiled_vs_eager(compose, tiny, tmp_path, "aot_eager", "trainer.grad_accum=2")
    else:
        _compiled_vs_eager(compose, tiny, tmp_path, "aot_eager", EVERY_STEP)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])  # on a CPU inductor skips the CUDA graphs
def test_inductor_run_with_cheap_probes_logs_the_eager_rows(compose, tiny, tmp_path, mode):
    _compiled_vs_eager(compose, tiny, tmp_path, "inductor",
                       *([] if mode == "default" else [f"trainer.compile_mode={mode}"]))


def _compiled_vs_eager(compose, tiny, tmp_path, backend, *more):
    cheap = [*tiny, "probes=cheap", *[o for o in more if "grad_accum" in o]]
    execute(compose(*cheap, "trainer.compile=true", f"trainer.compile_backend={backend}", *more), tmp_path / "c")
    execute(compose(*cheap), tmp_path / "e")
    compiled = pd.read_csv(tmp_path / "c" / "metrics.csv")
    eager = pd.read_csv(tmp_path / "e" / "metrics.csv")
    both = eager.merge(compiled, on=KEY, suffixes=("_eager", "_compiled"))
    assert len(both) == len(eager) == len(compiled)
    train = both[(both.probe == "sparsity") & (both.split == "train")]
    assert sorted(train.step.unique()) == [0, 10, 20]
    assert set(train.metric) >= {"activation_sparsity", "derivative_sparsity", "derivative2"}
    # the compiled step's products round differently in the last bits; no activation changes side here
    assert train.value_compiled.to_numpy() == pytest.approx(train.value_eager.to_numpy(), rel=1e-6, abs=1e-9)
    first = train[train.step == 0]
    assert first.value_compiled.to_numpy() == pytest.approx(first.value_eager.to_numpy(), rel=1e-12, abs=0)


@pytest.mark.parametrize("model", ["mlp", "vit"])
def test_compiled_forward_with_the_probe_has_no_graph_break(compose, tiny, tmp_path, model):
    if model == "vit":  # the tiny ViT (conf/model/vit.yaml), two blocks
        tiny = [o for o in tiny if not o.startswith("model.")] + ["model=vit", "model.num_layers=2"]
    trainer = _compiled(compose, tiny, tmp_path)
    probe = next(p for p in trainer.probes if isinstance(p, SparsityProbe))
    x = next(iter(trainer.train_batches))[0]
    for armed in (False, True):  # the graph of ordinary steps and the graph of log steps
        probe._armed = armed
        try:
            explained = torch._dynamo.explain(trainer.model)(x)
        finally:
            probe._armed = False
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1


def test_compile_mode_needs_inductor(compose, tiny, tmp_path):
    with pytest.raises(ConfigError, match="compile_backend=inductor"):
        _compiled(compose, tiny, tmp_path, "trainer.compile_mode=reduce-overhead")
