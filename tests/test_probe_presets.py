"""Presets compose and run with the contract's metric names; post-hoc probing over checkpoints."""
import numpy as np
import pandas as pd
import pytest

from sparsity_exp.models import find_sites
from sparsity_exp.probes import PROBES, build_probes
from sparsity_exp.run import execute

# The contract: every registered probe and the metric names it declares (Probe.metrics). A new probe
# enters it by being in PROBES; nothing here names a probe.
CONTRACT = {name: set(cls.metrics) for name, cls in PROBES.items()}
# metrics a probe writes on gated blocks only (docs/paper.md §1.7; tests/test_gated.py checks them there)
GATED_ONLY = {name: set(getattr(cls, "gated_metrics", ())) for name, cls in PROBES.items()}
POSTHOC = {name for name, cls in PROBES.items() if cls.posthoc}
FAST = ["probes.hessian.samples=4", "probes.hessian.iterations=3", "probes.sharpness.samples=2",
        "probes.sharpness.steps=2"]


@pytest.mark.parametrize("preset", ["none", "cheap", "default", "full"])
def test_presets_compose_and_build(compose, preset):
    from sparsity_exp.data import build_data
    from sparsity_exp.models import build_model

    cfg = compose(f"probes={preset}")
    data = build_data(cfg.data)
    probes = build_probes(cfg.probes, find_sites(build_model(cfg.model, data.info, cfg.activation)))
    names = {p.name for p in probes}
    assert names <= set(CONTRACT)
    if preset == "full":
        assert names == set(CONTRACT)
    if preset == "default":
        assert {"sparsity", "gradients", "neurons", "spectrum"} <= names and "hessian" not in names


@pytest.mark.parametrize("model, expect", [("mlp", [-10.0, 5.0]), ("vit", [-10.0, 5.0]), ("t5", [-40.0, 0.0])])
def test_gradient_density_range_comes_from_the_model_preset(compose, model, expect):
    for preset in ("full", "checkpoints"):
        cfg = compose(f"model={model}", f"probes={preset}")
        assert list(cfg.probes.gradient_density.log10_range) == expect


def test_full_preset_run_writes_the_contract(compose, tiny, tmp_path):
    # V present (model.value) and a flat region off zero (activation=shifted): every declared metric is due
    cfg = compose(*tiny, "model.value=true", "model.d_ff=48", "activation=shifted", "probes=full", *FAST)
    execute(cfg, tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    for probe, metrics in CONTRACT.items():
        got = set(m[m.probe == probe].metric)
        assert got == metrics - GATED_ONLY[probe], (probe, metrics ^ got)
    assert np.isfinite(m[m.probe == "gradients"].value).all()
    # per-layer rows plus avg, with layers 0..depth-1
    layers = set(m[(m.probe == "gradients") & (m.metric == "eta_l2")].layer.astype(str))
    assert layers == {"0", "1", "avg"}
    spectrum = np.load(tmp_path / "arrays" / "spectrum_step00000030.npz")
    assert sorted(spectrum.files) == ["layer_0", "layer_1"] and spectrum["layer_0"].shape == (48,)
    neurons = np.load(tmp_path / "arrays" / "neurons_step00000030.npz")
    assert neurons["layer_1"].shape == (48,) and ((0 <= neurons["layer_1"]) & (neurons["layer_1"] <= 1)).all()


def test_value_free_model_skips_value_metrics(compose, tiny, tmp_path):
    cfg = compose(*tiny, "probes=none", "+probes.augmented_flatness.every=10")
    execute(cfg, tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    af = set(m[m.probe == "augmented_flatness"].metric)
    assert af == {"as_key", "coef_l0", "a2"}


def test_probes_do_not_change_training(compose, tiny, tmp_path):
    """Standalone measurements restore parameters, RNG and batch order: the training curve of a run
    with the full suite is the one without probes."""
    a, b = tmp_path / "a", tmp_path / "b"
    execute(compose(*tiny, "probes=none"), a)
    execute(compose(*tiny, "probes=full", "probes.hessian.measure_every=10", "probes.sharpness.measure_every=10",
                    *FAST), b)
    la = pd.read_csv(a / "metrics.csv").query("probe == 'train' and metric == 'loss'").value.to_numpy()
    lb = pd.read_csv(b / "metrics.csv").query("probe == 'train' and metric == 'loss'").value.to_numpy()
    np.testing.assert_array_equal(la, lb)


def test_posthoc_probe_command(cli, compose, tiny, tmp_path):
    import torch

    from sparsity_exp.lifecycle.checkpoint import load_checkpoint
    from sparsity_exp.errors import UserError
    from sparsity_exp.posthoc import probe_run

    run = tmp_path / "run"
    execute(compose(*tiny, "model.value=true", "model.d_ff=40", "trainer.checkpoint_every=15"), run)
    before = (run / "metrics.csv").read_bytes()
    res = cli("probe", str(run), "probes=full", "checkpoints=15,30", *FAST)
    assert res.returncode == 0, res.stderr
    assert "rmt" in res.stdout  # skipped post hoc, and said so
    assert (run / "metrics.csv").read_bytes() == before
    post = pd.read_csv(run / "posthoc_metrics.csv")
    assert sorted(set(post.step)) == [15, 30]
    assert POSTHOC == set(post.probe) and "rmt" not in POSTHOC
    # the lr-0 protocol measures the checkpoint's own weights (the spectrum matches them)
    k = load_checkpoint(run / "checkpoints" / "step_00000030.pt")["model"]["blocks.1.key.weight"].double()
    lam = np.load(run / "arrays" / "posthoc_spectrum_step00000030.npz")["layer_1"]
    np.testing.assert_allclose(lam[: min(k.shape)], np.sort(torch.linalg.svdvals(k).numpy() ** 2)[::-1], rtol=1e-8)
    assert (run / "arrays" / "posthoc_gradient_density_step00000015.npz").exists()
    # bad input: clear errors, nothing written
    with pytest.raises(UserError, match=r"available: \[0, 15, 30\]"):
        probe_run(run, ["checkpoints=7"])
    with pytest.raises(UserError, match="not a run folder"):
        probe_run(tmp_path, [])
    with pytest.raises(UserError, match="no such preset"):
        probe_run(run, ["probes=nope"])
    assert sorted(set(pd.read_csv(run / "posthoc_metrics.csv").step)) == [15, 30]


def test_misspelt_probe_setting_is_a_clear_error(compose):
    from sparsity_exp.errors import ConfigError

    with pytest.raises(ConfigError, match=r"probes.hessian: .*samplez"):
        build_probes({"hessian": {"samplez": 3}}, [])
    with pytest.raises(ConfigError, match="known probes"):
        build_probes({"hesian": {}}, [])


def test_posthoc_rebuilds_a_run_with_interventions(compose, tmp_path):
    """Checkpoints of a sparsified run hold zeroth biases and an affine restricted norm: post hoc
    rebuilds that architecture, loads them and measures."""
    import pandas as pd

    from sparsity_exp.posthoc import probe_run
    from sparsity_exp.run import execute

    cfg = compose("model.width=16", "model.depth=2", "trainer.steps=20", "trainer.log_every=10",
                  "trainer.eval_every=10", "trainer.progress=false", "modules=sparsified", "probes=cheap",
                  "optim.lr=0.01")
    execute(cfg, tmp_path)
    out = probe_run(tmp_path, ["probes=cheap", "checkpoints=last"])
    rows = pd.read_csv(out)
    assert set(rows.step) == {20}
    sparsity = rows[(rows.probe == "sparsity") & (rows.metric == "activation_sparsity") & (rows.split == "test")]
    final = pd.read_csv(tmp_path / "metrics.csv")
    final = final[(final.probe == "sparsity") & (final.metric == "activation_sparsity") & (final.split == "test")
                  & (final.step == 20)]
    # the same weights on the same test set: the same test sparsity as the run logged at its end
    assert sorted(sparsity.value) == pytest.approx(sorted(final.value))


def test_every_probe_declares_its_metrics_and_posthoc():
    """The declarations the contract is derived from: a name matching its registry key, its metric
    names (non-empty, no repeats), and a boolean post-hoc flag (rmt the only probe without)."""
    for name, cls in PROBES.items():
        assert cls.name == name
        assert cls.metrics and len(set(cls.metrics)) == len(cls.metrics), name
        assert all(isinstance(m, str) and m for m in cls.metrics), name
        assert isinstance(cls.posthoc, bool), name
    assert {n for n, c in PROBES.items() if not c.posthoc} == {"rmt"}
