"""Augmented flatness conventions (issue 19 item 3; docs/paper.md §1.3): the authors' scale (the
backward's batch-mean gradient as it is) and active set (V's input > 0, after dropout) as defaults,
the per-sample scale and the pre-dropout active set as options, each against a hand autograd
computation of the formulas on a one-block model with a fixed dropout mask."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsity_exp.activations import ReLU
from sparsity_exp.errors import ConfigError
from sparsity_exp.probes import ProbeContext, build_probes, observing
from sparsity_exp.sites import MLPSite

B, D, DFF, P = 8, 5, 12, 0.3


class _FixedDropout(torch.nn.Module):
    """Dropout with a mask fixed in advance (inverted scaling as nn.Dropout), so the hand
    computation below sees the same V input as the probe."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, a):
        return a * self.mask / (1 - P)


class _Block(torch.nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.norm = torch.nn.LayerNorm(D)
        self.key = torch.nn.Linear(D, DFF)
        self.act = ReLU()
        self.drop = _FixedDropout(mask)
        self.value = torch.nn.Linear(DFF, D)
        self.head = torch.nn.Linear(D, 3)

    def forward(self, x):
        return self.head(x + self.value(self.drop(self.act(self.key(self.norm(x))))))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    mask = (torch.rand(B, DFF) > P).float()
    net = _Block(mask).double()
    site = MLPSite(net, 0, "block", {"norm": "norm", "key": "key", "act": "act", "value": "value"})
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(B, D, generator=g, dtype=torch.float64), torch.randint(0, 3, (B,), generator=g)
    return net, site, x, y


def _probe_rows(net, site, x, y, **settings):
    (probe,) = build_probes({"augmented_flatness": {"every": 1, **settings}}, [site])
    with observing([probe], "train"):
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return {(m, layer): v for _, m, layer, v in probe.rows("train")}


def _hand(net, x, y):
    """x~, h, a, v and dL/dh, dL/da, dL/dz of the batch-mean loss, by retained autograd."""
    xt = net.norm(x)
    h = net.key(xt)
    a = torch.relu(h)
    v = net.drop(a)
    z = net.value(v)
    for t in (h, a, z):
        t.retain_grad()
    F.cross_entropy(net.head(x + z), y).backward()
    net.zero_grad(set_to_none=True)
    return {k: t.detach() for k, t in dict(xt=xt, h=h, a=a, v=v, eta=h.grad, g=a.grad, gz=z.grad).items()}


def _formulas(t, k, active):
    """docs/paper.md §1.3 with the gradients multiplied by k; one token per sample."""
    x2 = t["xt"].pow(2).sum(1)
    eta, g, gz = t["eta"] * k, t["g"] * k, t["gz"] * k
    v2 = t["v"].pow(2).sum(1)
    return {"as_key": float((eta.pow(2).sum(1) * x2).mean()),
            "coef_l0": float((g.pow(2) * x2[:, None])[active].mean()),
            "as_value": float((gz.pow(2).sum(1) * v2).mean()),
            "coef_l2": float(gz.pow(2).sum(1).mean()),
            "a2": float(v2.mean()),
            "l2_term": float((v2 * gz.pow(2).sum(1)).mean())}


@pytest.mark.parametrize("active_set", ["value_input", "pre_dropout"])
@pytest.mark.parametrize("scale", ["authors", "per_sample"])
def test_conventions_match_the_hand_computation(setup, scale, active_set):
    net, site, x, y = setup
    got = _probe_rows(net, site, x, y, scale=scale, active_set=active_set)
    t = _hand(net, x, y)
    active = t["v"] > 0 if active_set == "value_input" else t["h"] > 0
    want = _formulas(t, B if scale == "per_sample" else 1.0, active)
    for metric, value in want.items():
        assert got[(metric, 0)] == pytest.approx(value, rel=1e-10), metric
    # for ReLU, AS_K / coef_l0 is the number of active entries per sample: ||v||_0 or ||a||_0
    l0 = float(active.sum(1).double().mean())
    assert got[("as_key", 0)] / got[("coef_l0", 0)] == pytest.approx(l0, rel=1e-10)


def test_defaults_are_the_authors_and_per_sample_is_b_squared_times_them(setup):
    net, site, x, y = setup
    default = _probe_rows(net, site, x, y)
    assert default == _probe_rows(net, site, x, y, scale="authors", active_set="value_input")
    per_sample = _probe_rows(net, site, x, y, scale="per_sample")
    # each sample's own gradient is B x the batch-mean loss's one (no coupling between samples here)
    for metric in ("as_key", "coef_l0", "as_value", "coef_l2", "l2_term"):
        assert per_sample[(metric, 0)] == pytest.approx(B**2 * default[(metric, 0)], rel=1e-10), metric
    assert per_sample[("a2", 0)] == pytest.approx(default[("a2", 0)], rel=1e-12)
    # ... checked against per-sample autograd directly for AS_K: one backward per sample
    t = _hand(net, x, y)
    as_key, mask = [], net.drop.mask
    for i in range(B):
        net.drop.mask = mask[i:i + 1]  # sample i's own dropout row
        ti = _hand(net, x[i:i + 1], y[i:i + 1])
        as_key.append(float(ti["eta"].pow(2).sum() * ti["xt"].pow(2).sum()))
    net.drop.mask = mask
    assert per_sample[("as_key", 0)] == pytest.approx(np.mean(as_key), rel=1e-10)
    assert t["eta"].abs().max() > 0


def test_active_sets_differ_under_dropout_by_the_dropped_entries_only(setup):
    net, site, x, y = setup
    t = _hand(net, x, y)
    value_input = _probe_rows(net, site, x, y, active_set="value_input")
    pre_dropout = _probe_rows(net, site, x, y, active_set="pre_dropout")
    n_v, n_a = int((t["v"] > 0).sum()), int((t["h"] > 0).sum())
    assert n_v < n_a  # the mask dropped some active entries
    # dropped entries have g = 0: the numerator is shared, only the count differs
    assert value_input[("coef_l0", 0)] == pytest.approx(pre_dropout[("coef_l0", 0)] * n_a / n_v, rel=1e-10)
    for metric in ("as_key", "as_value", "coef_l2", "a2", "l2_term"):
        assert value_input[(metric, 0)] == pre_dropout[(metric, 0)]


def test_legacy_per_sample_flag_and_bad_settings(setup):
    net, site, x, y = setup
    assert _probe_rows(net, site, x, y, per_sample=True) == _probe_rows(net, site, x, y, scale="per_sample")
    assert _probe_rows(net, site, x, y, per_sample=False) == _probe_rows(net, site, x, y, scale="authors")
    for bad, match in (({"scale": "batch"}, "scale='batch'; choose one of"),
                       ({"active_set": "h"}, "active_set='h'; choose one of"),
                       ({"scale": "authors", "per_sample": True}, "contradicts per_sample")):
        with pytest.raises(ConfigError, match=match):
            build_probes({"augmented_flatness": bad}, [site])


def test_settings_are_recorded_beside_the_rows(setup, tmp_path):
    net, site, x, y = setup
    ctx = ProbeContext(sites=[site], recorder=SimpleNamespace(run_dir=tmp_path, array_prefix="posthoc_"))
    (probe,) = build_probes({"augmented_flatness": {"every": 1, "scale": "per_sample"}}, [site], ctx)
    with observing([probe], "train"):
        F.cross_entropy(net(x), y).backward()
    probe.rows("train")
    saved = json.loads((tmp_path / "arrays" / "posthoc_augmented_flatness_settings.json").read_text())
    assert saved == {"scale": "per_sample", "active_set": "value_input", "loss_scale": 1.0}


def test_loss_scale_reproduces_a_grad_scaler_backward(setup):
    """Issue 27: the authors' fp16 AMP runs backpropagate a fresh GradScaler's 2^16 x the loss and
    their hooks fire inside that backward. loss_scale=2^16 on the plain backward gives what the
    probe at loss_scale=1 sees inside a 2^16-scaled backward; AS and the coefficients are 2^32 ~
    4.3e9 x the unscaled ones, a2 and the ratios unchanged. Gradient density: the log10|g| window
    moves by log10(2^16) = 4.82 decades (below/above-range fractions against a hand count)."""
    net, site, x, y = setup
    scale = float(torch.amp.GradScaler("cpu", enabled=True).get_scale()) if hasattr(torch.amp, "GradScaler") else 2.0**16
    assert scale == 2.0**16  # what a fresh GradScaler holds (init_scale)

    def rows(probe_name, loss_factor, **settings):
        (probe,) = build_probes({probe_name: {"every": 1, **settings}}, [site])
        with observing([probe], "train"):
            (F.cross_entropy(net(x), y) * loss_factor).backward()
        net.zero_grad(set_to_none=True)
        return {(m, layer): v for _, m, layer, v in probe.rows("train")}

    plain = rows("augmented_flatness", 1.0)
    option = rows("augmented_flatness", 1.0, loss_scale=scale)
    inside = rows("augmented_flatness", scale)  # the hooks inside a scaled backward
    assert set(option) == set(inside) == set(plain)
    for key, value in inside.items():
        assert option[key] == pytest.approx(value, rel=1e-12), key
        factor = 1.0 if key[0] == "a2" else 2.0**32
        assert option[key] == pytest.approx(factor * plain[key], rel=1e-12), key
    assert 2.0**32 == pytest.approx(4.295e9, rel=1e-3)
    with pytest.raises(ConfigError, match="loss_scale"):
        build_probes({"augmented_flatness": {"loss_scale": 0}}, [site])
    # gradient density: the window on |g| x 2^16
    g = _hand(net, x, y)["g"].abs()
    window = dict(log10_range=[-6.0, -1.0], bins=50)
    got = rows("gradient_density", 1.0, loss_scale=scale, **window)
    assert got[("below_range", 0)] == pytest.approx(float((g * scale < 1e-6).double().mean()), abs=1e-12)
    assert got[("above_range", 0)] == pytest.approx(float((g * scale > 1e-1).double().mean()), abs=1e-12)
    assert got[("above_range", 0)] != rows("gradient_density", 1.0, **window)[("above_range", 0)]
    assert got[("density_ratio", 0)] == pytest.approx(rows("gradient_density", 1.0, **window)[("density_ratio", 0)],
                                                      rel=1e-12)
