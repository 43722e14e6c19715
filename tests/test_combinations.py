"""Issue 26: every documented combination runs. Each combination of model preset x probe preset x
protocol x modules (with the activation and noise groups riding along) trains two steps of a tiny
version of the model and is then probed post hoc (`sparsity-exp probe` over its checkpoints); the
choices are read from conf/ (tests/combos.py), so a new preset joins without an edit.

Default suite (one module fixture, one process): every choice of every group at least once
(tests/combos.each_once) plus the combinations that once crashed (REGRESSIONS: the Hessian of a ViT at
step 0, whose zero-initialised head makes it exactly zero, a three-way interaction model x probes x
protocol that the pairwise set missed). `-m slow`: the pairwise (all-pairs) set over the six groups
(tests/combos.all_pairs, 30 combinations) and the full product of the four main axes (model x probes x
protocol x modules, 150 combinations)."""
import numpy as np
import pytest
import torch

from .combos import all_pairs, each_once, factors, full_product, run_combo
from .tiny import exact_hessian, probe_context, tiny_batch, tiny_mlp

PAIRS = all_pairs(factors())
REGRESSIONS = [{"model": "vit", "probes": "full", "protocol": "vanilla", "modules": "none", "activation": "relu",
                "noise": "off"}]
FAST = each_once(factors()) + REGRESSIONS


def _id(combo):
    return "-".join(combo.values())


def _run_all(combos, folder):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sources = {}
        return {_id(c): run_combo(c, folder / f"c{i}", sources) for i, c in enumerate(combos)}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fast_set(tmp_path_factory):
    return _run_all(FAST, tmp_path_factory.mktemp("combos"))


def test_pairwise_set_covers_every_pair_of_choices():
    f = factors()
    names = list(f)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            seen = {(c[a], c[b]) for c in PAIRS}
            assert seen == {(x, y) for x in f[a] for y in f[b]}, (a, b)
    # the choices come from conf/: the presets this project ships are all there
    assert {"mlp", "vit", "t5"} <= set(f["model"]) and {"none", "cheap", "default", "full"} <= set(f["probes"])
    assert set(f["protocol"]) == {"vanilla", "weight_noise", "sparsity_finetune"}


@pytest.mark.parametrize("combo", FAST, ids=_id)
def test_combination_trains_and_probes_post_hoc(fast_set, combo):
    assert fast_set[_id(combo)] is None, fast_set[_id(combo)]


def test_each_once_covers_every_choice():
    f = factors()
    for name, values in f.items():
        assert {c[name] for c in each_once(f)} == set(values), name


@pytest.mark.slow
def test_pairwise_set_of_all_six_groups(tmp_path):
    results = _run_all(PAIRS, tmp_path)
    failed = {k: v for k, v in results.items() if v is not None}
    assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())


@pytest.mark.slow
def test_full_product_of_the_main_axes(tmp_path):
    combos = full_product()
    results = _run_all(combos, tmp_path)
    failed = {k: v for k, v in results.items() if v is not None}
    assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())


def test_zero_hessian_writes_rows_of_zero_instead_of_ending_the_run():
    """A zero-initialised head (torchvision's ViT at step 0) makes the Hessian on the MLP parameters
    exactly zero: ARPACK used to stop the run ('starting vector is zero'); the rows now say 0."""
    from sparsity_exp.models import find_sites
    from sparsity_exp.probes import build_probes

    model, batch = tiny_mlp(depth=2), tiny_batch()
    with torch.no_grad():
        model.head.weight.zero_()
    names = [n for n, _ in model.named_parameters() if ".key." in n or ".value." in n]
    assert not np.any(exact_hessian(model, batch, names))  # the independent check: H is exactly zero
    (probe,) = build_probes({"hessian": {"samples": 4, "features": False}}, find_sites(model))
    with pytest.warns(UserWarning, match="H v = 0"):
        rows = {(m, layer): v for _, m, layer, v in probe.measure(probe_context(model, [batch]))}
    assert rows[("lambda_max", "avg")] == 0.0 and rows[("top_abs_eigenvalue", "avg")] == 0.0
    assert rows[("trace", "avg")] == 0.0
