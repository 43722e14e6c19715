"""Gradient-side probes (gradients, gradient_density, augmented_flatness, diagonality) against a
manual autograd computation with retained intermediate gradients."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsity_exp.activations import ReLU
from sparsity_exp.models import find_sites
from sparsity_exp.models.mlp import LNMLP
from sparsity_exp.probes import build_probes, observing


def _model(value, seed=0, width=6, d_ff=10, depth=2):
    torch.manual_seed(seed)
    return LNMLP(in_features=5, num_classes=3, make_act=ReLU, width=width, depth=depth, d_ff=d_ff, value=value)


def _data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def manual(model, x, y, reduction="mean"):
    """Block tensors and their gradients, written out by hand (no hooks): per block
    (x~, h, a, dL/dh, dL/da, dL/dz) as float64 numpy."""
    z = model.inp(x.flatten(1))
    kept = []
    for blk in model.blocks:
        xt = blk.norm(z)
        h = blk.key(xt)
        h.retain_grad()
        a = torch.relu(h)
        a.retain_grad()
        u = blk.value(a) if blk.value is not None else a
        u.retain_grad()
        z = z + u
        kept.append((xt, h, a, u))
    loss = F.cross_entropy(model.head(z), y, reduction=reduction)
    loss.backward()
    model.zero_grad(set_to_none=True)
    n = lambda t: t.detach().double().numpy()
    return [(n(xt), n(h), n(a), n(h.grad), n(a.grad), n(u.grad)) for xt, h, a, u in kept]


def _rows(rows):
    return {(metric, layer): value for _, metric, layer, value in rows}


def _observe(model, cfg, x, y):
    probes = build_probes(cfg, find_sites(model))
    with observing(probes, "train"):
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return probes


@pytest.mark.parametrize("value", [False, True])
def test_gradients_match_manual_autograd(value):
    model = _model(value)
    x, y = _data()
    ref = manual(model, x, y)
    (probe,) = _observe(model, {"gradients": {"every": 1}}, x, y)
    got = _rows(probe.rows("train"))
    for i, (xt, h, a, eta, g, gz) in enumerate(ref):
        for p, name in ((1e-9, "1e-9"), (1e-6, "1e-6"), (1e-3, "1e-3")):
            assert got[(f"eta_small_{name}", i)] == pytest.approx(np.mean(np.abs(eta) < p))
        assert got[("eta_l1", i)] == pytest.approx(np.abs(eta).sum(1).mean(), rel=1e-9)
        assert got[("eta_l2", i)] == pytest.approx((eta**2).sum(1).mean(), rel=1e-9)
        k = model.blocks[i].key.weight.detach().double().numpy()
        assert got[("key_fro2", i)] == pytest.approx((k**2).sum(), rel=1e-9)
        assert got[("g_norm2", i)] == pytest.approx((g**2).sum(1).mean(), rel=1e-9)
        assert got[("gz_norm", i)] == pytest.approx(np.linalg.norm(gz, axis=1).mean(), rel=1e-9)
        assert got[("eta_neg_count", i)] == pytest.approx((eta < 0).sum(1).mean())
        assert got[("eta_pos_count", i)] == pytest.approx((eta > 0).sum(1).mean())
        assert got[("eta_neg_sum", i)] == pytest.approx(np.where(eta < 0, eta, 0).sum(1).mean(), rel=1e-9)
        assert got[("eta_pos_sum", i)] == pytest.approx(np.where(eta > 0, eta, 0).sum(1).mean(), rel=1e-9)
        # for ReLU eta is g where h > 0 and exactly zero elsewhere
        assert np.all(eta[h <= 0] == 0)
    assert got[("g_norm2", "avg")] == pytest.approx(np.mean([(r[4] ** 2).sum(1).mean() for r in ref]))


@pytest.mark.parametrize("value", [False, True])
def test_grad_norm_wrt_values_matches_autograd(value):
    model = _model(value)
    x, y = _data()
    (probe,) = _observe(model, {"gradients": {"every": 1}}, x, y)
    got = _rows(probe.rows("train"))
    F.cross_entropy(model(x), y).backward()
    if not value:  # no V: nothing to report
        assert not any(m in ("value_grad_fro", "grad_norm_wrt_values") for m, _ in got)
        return
    fro = [float(blk.value.weight.grad.double().norm()) for blk in model.blocks]
    for i, f in enumerate(fro):
        assert got[("value_grad_fro", i)] == pytest.approx(f, rel=1e-6)
    assert got[("grad_norm_wrt_values", "avg")] == pytest.approx(math.sqrt(sum(f * f for f in fro)), rel=1e-6)


def test_grad_norm_wrt_values_after_dropout():
    """V's gradient is built from its input after dropout: same masks, autograd's V.weight.grad."""
    from sparsity_exp.sites import MLPSite

    torch.manual_seed(0)
    net = _DropoutBlockNet().train()
    site = MLPSite(net, 0, "block", {"norm": "norm", "key": "key", "act": "act", "value": "value"})
    x, y = _data(16)
    (probe,) = build_probes({"gradients": {"every": 1}}, [site])
    torch.manual_seed(7)
    with observing([probe], "train"):
        F.cross_entropy(net(x), y).backward()
    expect = float(net.value.weight.grad.double().norm())
    assert _rows(probe.rows("train"))[("value_grad_fro", 0)] == pytest.approx(expect, rel=1e-6)


def test_gradient_density_ratio_and_histograms():
    model = _model(True)
    x, y = _data(16)
    ref = manual(model, x, y)
    (probe,) = _observe(model, {"gradient_density": {"every": 1, "bins": 50, "log10_range": [-12, 2]}}, x, y)
    hist = probe._hist.cpu().numpy()
    got = _rows(probe.rows("train"))
    for i, (xt, h, a, eta, g, gz) in enumerate(ref):
        active = h > 0
        assert got[("density_ratio", i)] == pytest.approx((g[active] ** 2).mean() / (g**2).mean(), rel=1e-9)
        lg = np.log10(np.abs(g[g != 0]))
        expect, _ = np.histogram(lg, bins=50, range=(-12, 2))
        assert np.array_equal(hist[i, 0], expect)
        expect_active, _ = np.histogram(np.log10(np.abs(g[active & (g != 0)])), bins=50, range=(-12, 2))
        assert np.array_equal(hist[i, 1], expect_active)
        assert got[("below_range", i)] == pytest.approx(np.mean(np.abs(g) < 1e-12)) and got[("above_range", i)] == 0


def test_gradient_density_counts_the_mass_outside_the_range():
    """A narrow range leaves entries on both sides: the fractions below/above are hand-counted, and
    with the histogram's counts they make up every entry."""
    model = _model(True)
    x, y = _data(16)
    ref = manual(model, x, y)
    lo, hi = -3.0, -2.6
    (probe,) = _observe(model, {"gradient_density": {"every": 1, "bins": 20, "log10_range": [lo, hi]}}, x, y)
    hist = probe._hist.cpu().numpy()
    got = _rows(probe.rows("train"))
    for i, (*_, g, gz) in enumerate(ref):
        below, above = np.mean(np.abs(g) < 10**lo), np.mean(np.abs(g) > 10**hi)
        assert 0 < below < 1 and 0 < above < 1
        assert got[("below_range", i)] == pytest.approx(below)
        assert got[("above_range", i)] == pytest.approx(above)
        assert hist[i, 0].sum() / g.size + below + above == pytest.approx(1.0)
    with pytest.raises(Exception, match="low < high"):
        build_probes({"gradient_density": {"log10_range": [0, -40]}}, find_sites(model))




def test_augmented_flatness_identity_and_per_sample_scale():
    model = _model(True, d_ff=12)
    x, y = _data(6)
    (probe,) = _observe(model, {"augmented_flatness": {"every": 1, "per_sample": True}}, x, y)
    got = _rows(probe.rows("train"))
    ref = manual(model, x, y)
    # per-sample gradients by one backward per sample: d l_b / d h_b
    per_sample = [manual(model, x[b:b + 1], y[b:b + 1]) for b in range(len(x))]
    for i, (xt, h, a, *_rest) in enumerate(ref):
        eta_b = np.concatenate([ps[i][3] for ps in per_sample])
        g_b = np.concatenate([ps[i][4] for ps in per_sample])
        gz_b = np.concatenate([ps[i][5] for ps in per_sample])
        x2 = (xt**2).sum(1)
        assert got[("as_key", i)] == pytest.approx(((eta_b**2).sum(1) * x2).mean(), rel=1e-6)
        assert got[("as_value", i)] == pytest.approx(((gz_b**2).sum(1) * (a**2).sum(1)).mean(), rel=1e-6)
        active = h > 0
        coef = ((g_b**2) * x2[:, None])[active].mean()
        assert got[("coef_l0", i)] == pytest.approx(coef, rel=1e-6)
        assert got[("coef_l2", i)] == pytest.approx((gz_b**2).sum(1).mean(), rel=1e-6)
        assert got[("a2", i)] == pytest.approx((a**2).sum(1).mean(), rel=1e-9)
        assert got[("l2_term", i)] == pytest.approx(((a**2).sum(1) * (gz_b**2).sum(1)).mean(), rel=1e-6)
        # docs/paper.md §1.3: for ReLU, ||a||_0 (nonzeros per sample) = AS_K / coefficient_L0
        l0 = (a > 0).sum(1).mean()
        assert got[("as_key", i)] / got[("coef_l0", i)] == pytest.approx(l0, rel=1e-9)


def test_augmented_flatness_batch_mean_scale_and_value_free_block():
    model = _model(False)
    x, y = _data(6)
    (mean_probe,) = _observe(model, {"augmented_flatness": {"every": 1, "per_sample": False}}, x, y)
    (ps_probe,) = _observe(model, {"augmented_flatness": {"every": 1, "per_sample": True}}, x, y)
    mean_rows, ps_rows = _rows(mean_probe.rows("train")), _rows(ps_probe.rows("train"))
    # batch-mean gradients are per-sample gradients / B, so squared quantities shrink by B^2
    assert ps_rows[("as_key", 0)] == pytest.approx(mean_rows[("as_key", 0)] * 36, rel=1e-9)
    # no value matrix: value-specific metrics are left out, the others are there
    assert not any(m in ("as_value", "coef_l2", "l2_term") for m, _ in ps_rows)
    assert ("a2", 1) in ps_rows and ("coef_l0", "avg") in ps_rows


class _DropoutBlockNet(torch.nn.Module):
    """One pre-LN MLP block with dropout between the activation and V (as in ViT and T5 blocks)."""

    def __init__(self, d=5, d_ff=12, p=0.3):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.key = torch.nn.Linear(d, d_ff)
        self.act = ReLU()
        self.drop = torch.nn.Dropout(p)
        self.value = torch.nn.Linear(d_ff, d)
        self.head = torch.nn.Linear(d, 3)

    def forward(self, x):
        return self.head(x + self.value(self.drop(self.act(self.key(self.norm(x))))))


def test_as_value_uses_the_input_of_v_after_dropout():
    """AS_V, a2, l2_term against per-sample dl_i/dV computed directly (one autograd call per sample,
    same dropout masks): one row per sample, so AS_V = mean_i ||dl_i/dV||_F^2."""
    from sparsity_exp.sites import MLPSite

    torch.manual_seed(0)
    net = _DropoutBlockNet().train()
    site = MLPSite(net, 0, "block", {"norm": "norm", "key": "key", "act": "act", "value": "value"})
    x, y = _data(16)
    (probe,) = build_probes({"augmented_flatness": {"every": 1, "per_sample": True}}, [site])
    torch.manual_seed(7)  # the same dropout masks in both forwards
    with observing([probe], "train"):
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    got = _rows(probe.rows("train"))

    torch.manual_seed(7)
    taken = {}
    net.value.register_forward_pre_hook(lambda m, a: taken.__setitem__("v", a[0].detach()))
    net.act.register_forward_hook(lambda m, a, out: taken.__setitem__("a", out.detach()))
    losses = F.cross_entropy(net(x), y, reduction="none")
    per_sample = [torch.autograd.grad(l, net.value.weight, retain_graph=True)[0].double() for l in losses]
    as_v = np.mean([float(gr.pow(2).sum()) for gr in per_sample])
    v, a = taken["v"].double(), taken["a"].double()
    assert (v == 0).sum() > (a == 0).sum()  # dropout did zero some of V's inputs
    assert got[("as_value", 0)] == pytest.approx(as_v, rel=1e-6)  # float32 autograd
    assert got[("a2", 0)] == pytest.approx(float(v.pow(2).sum(-1).mean()), rel=1e-9)
    # dl_i/dz_i = dl_i/dV / v_i row-wise (rank one); l2_term = mean_i ||v_i||^2 ||dl_i/dz_i||^2 = AS_V here
    assert got[("l2_term", 0)] == pytest.approx(as_v, rel=1e-6)
    # the activation before dropout would give another number
    pre = np.mean([float(gr.pow(2).sum()) / float(v[i].pow(2).sum()) * float(a[i].pow(2).sum())
                   for i, gr in enumerate(per_sample)])
    assert abs(pre - as_v) > 0.05 * as_v


@pytest.mark.parametrize("aggregation", ["per_token", "token_sum"])
def test_diagonality_matches_numpy(aggregation):
    model = _model(True, d_ff=7)
    x, y = _data(9)
    ref = manual(model, x, y)
    (probe,) = _observe(model, {"diagonality": {"every": 1, "aggregation": aggregation}}, x, y)
    got = _rows(probe.rows("train"))

    def ratio(m):
        d = np.trace(m)
        return math.log10(d / (m.sum() - d))

    for i, (xt, h, a, eta, g, gz) in enumerate(ref):
        k = model.blocks[i].key.weight.detach().double().numpy()
        for p in (1, 2):
            kk = np.abs(k @ k.T) ** p
            per_token = [np.outer(np.abs(gt) ** p, np.abs(gt) ** p) for gt in g]
            if aggregation == "token_sum":
                m, h_ = ratio(np.mean(per_token, axis=0)), ratio(np.mean(per_token, axis=0) * kk)
            else:  # the authors': the mean over tokens of each token's log ratio
                m, h_ = np.mean([ratio(t) for t in per_token]), np.mean([ratio(t * kk) for t in per_token])
            assert got[(f"kkT_p{p}", i)] == pytest.approx(ratio(kk), rel=1e-9)
            assert got[(f"M_p{p}", i)] == pytest.approx(m, rel=1e-9)
            assert got[(f"hadamard_p{p}", i)] == pytest.approx(h_, rel=1e-9)


def test_diagonality_aggregations_differ_on_a_hand_built_case():
    """Two tokens: a small diagonal-dominated gradient and a large flat one. Per token, log10 ratios
    2.70 and 0 average to 1.35; summed over tokens, the large one dominates (about 0.002)."""
    from types import SimpleNamespace

    model = _model(True, d_ff=2)
    site = find_sites(model)[0]
    g = torch.tensor([[1.0, 1e-3], [10.0, 10.0]], dtype=torch.float64)
    got = {}
    for aggregation in ("per_token", "token_sum"):
        (probe,) = build_probes({"diagonality": {"every": 1, "powers": [1], "aggregation": aggregation}}, [site])
        probe.on_record(site, SimpleNamespace(g=g))
        got[aggregation] = _rows(probe.rows("train"))[("M_p1", 0)]
    token1 = math.log10((1 + 1e-6) / ((1 + 1e-3) ** 2 - (1 + 1e-6)))  # diag 1 + 1e-6, off 2e-3
    assert got["per_token"] == pytest.approx((token1 + 0.0) / 2, rel=1e-9)
    assert got["token_sum"] == pytest.approx(math.log10((201 + 1e-6) / (200 + 2e-3)), rel=1e-9)
    assert got["per_token"] > 1.3 and got["token_sum"] < 0.01


def test_gradient_probes_stay_silent_on_test_batches():
    model = _model(True)
    probes = build_probes({"gradients": {"every": 1}, "augmented_flatness": {"every": 1},
                           "diagonality": {"every": 1}}, find_sites(model))
    with torch.no_grad(), observing(probes, "test"):
        model(_data()[0])
    assert all(p.rows("test") == [] and p.rows("train") == [] for p in probes)


def test_gradient_density_binned_ratio_against_a_hand_count():
    """ratio_mode binned (the authors' in-range computation, docs/paper.md §1.2) on a constructed
    gradient: bins of width 1 on [-10, 5], each in-range entry at its bin centre, entries outside the
    range and exact zeros left out; exact mode over every entry."""
    from types import SimpleNamespace

    model = _model(True, d_ff=4)
    site = find_sites(model)[0]
    g = torch.tensor([[10**-2.3, 10**0.2, 1e-12, 0.0], [1e7, 10**0.7, 10**-2.9, 10**-8.4]], dtype=torch.float64)
    h = torch.tensor([[1.0, -1.0, 1.0, 1.0], [1.0, 1.0, -1.0, 1.0]], dtype=torch.float64)  # active: h > 0
    got = {}
    for mode in ("exact", "binned"):
        (probe,) = build_probes({"gradient_density": {"every": 1, "bins": 15, "log10_range": [-10, 5],
                                                      "ratio_mode": mode}}, [site])
        probe.on_record(site, SimpleNamespace(g=g, h=h, samples=2))
        got[mode] = _rows(probe.rows("train"))
    # in range: 10^-2.3 (centre -2.5), 10^0.2 (0.5), 10^0.7 (0.5), 10^-2.9 (-2.5), 10^-8.4 (-8.5)
    all_c = [-2.5, 0.5, 0.5, -2.5, -8.5]
    active_c = [-2.5, 0.5, -8.5]  # 10^-2.3, 10^0.7, 10^-8.4 (1e-12, 0 and 1e7 are active but out of range)
    binned = np.mean([10 ** (2 * c) for c in active_c]) / np.mean([10 ** (2 * c) for c in all_c])
    assert got["binned"][("density_ratio", 0)] == pytest.approx(binned, rel=1e-12)
    gn, act = g.numpy(), h.numpy() > 0
    exact = (gn[act] ** 2).mean() / (gn**2).mean()
    assert got["exact"][("density_ratio", 0)] == pytest.approx(exact, rel=1e-12)
    assert abs(binned - exact) > 0.1 * exact  # the two modes are different numbers here
    for mode in ("exact", "binned"):  # the out-of-range fractions are the same rows either way
        assert got[mode][("below_range", 0)] == pytest.approx(2 / 8) and got[mode][("above_range", 0)] == pytest.approx(1 / 8)
    with pytest.raises(Exception, match="ratio_mode='bins'; choose one of"):
        build_probes({"gradient_density": {"ratio_mode": "bins"}}, [site])
