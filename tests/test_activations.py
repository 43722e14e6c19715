"""Activations: closed-form derivatives against autograd, declared regions against hand counts,
the JSReLU custom gradient through gradcheck, the mixing schedule, and rest_fraction in the probe."""
import math

import pytest
import torch

from sparsity_exp.activations import ACTIVATIONS, GELU, JSReLU, Mixed, Shifted, build_activation, jsrelu
from sparsity_exp.errors import ConfigError
from sparsity_exp.models import find_sites
from sparsity_exp.models.mlp import LNMLP
from sparsity_exp.probes import build_probes, observing


def _points():
    # random points plus values on and near the region boundaries (but not on the kinks themselves)
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn(2000, generator=g, dtype=torch.float64) * 4,
                      torch.tensor([-3.2, -3.0, -0.2, -0.11, 0.1, 0.2, 3.0, 3.2], dtype=torch.float64)])


def test_jsrelu_gradcheck_and_values():
    h = torch.tensor([-2.0, -0.5, 0.3, 1.0, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(jsrelu, (h,))
    # (h^2/2 + h) 1[h > 0], by hand
    assert jsrelu(h).tolist() == pytest.approx([0, 0, 0.345, 1.5, 5.625])
    # the derivative jumps from 0 to 1 at 0
    d = JSReLU().derivative(torch.tensor([-1e-9, 1e-9], dtype=torch.float64))
    assert d.tolist() == pytest.approx([0.0, 1.0])


@pytest.mark.parametrize("name,kwargs", [
    ("relu", {}), ("jsrelu", {}), ("squared_relu", {}), ("gelu", {}), ("silu", {}),
    ("shifted", {}), ("shifted", {"shift_x": -1.6, "shift_y": -1.6, "inner": "jsrelu"}),
    ("mixed", {"steps": 10}),
])
def test_declared_derivative_matches_autograd_and_flat_region(name, kwargs):
    act = build_activation({"name": name, **kwargs})
    act.set_step(4)  # mixed: k = 0.4
    h = _points().requires_grad_(True)
    (grad,) = torch.autograd.grad(act(h).sum(), h)
    h = h.detach()
    assert torch.allclose(act.derivative(h), grad, atol=1e-12)
    flat = act.flat_region(h)
    assert (act.derivative(h)[flat].abs() <= 1e-6).all()
    if name not in ("gelu", "silu"):  # outside the flat region the derivative is nonzero
        assert (act.derivative(h)[~flat] != 0).all()


def test_shifted_flat_region_value_and_odd_symmetry():
    act = Shifted(shift_x=1.6, shift_y=-1.6, half_width=1.5)
    h = torch.tensor([0.1, 0.2, 1.6, 3.0, 3.1, 3.2, -0.0])
    a = act(h)
    # flat on [0.1, 3.1] with value s_y
    assert act.flat_region(h).tolist() == [True, True, True, True, True, False, False]
    assert a[:5].tolist() == pytest.approx([-1.6] * 5)
    # outside: s_y +- (|u| - c)^2
    assert a[5].item() == pytest.approx(-1.6 + 0.1 ** 2)
    assert a[6].item() == pytest.approx(-1.6 - 0.1 ** 2)
    assert act.rest_value == -1.6 and act.at_rest(a).tolist() == [True] * 5 + [False, False]
    with pytest.raises(ConfigError, match="inner"):
        Shifted(inner="tanh")


def test_gelu_numerically_flat_region():
    act = GELU()
    h0 = -0.751791524693564  # root of Phi(h) + h phi(h)
    h = torch.tensor([-10.0, -6.0, -5.0, h0, h0 + 1e-3, 0.0, 1.0], dtype=torch.float64)
    assert act.flat_region(h).tolist() == [True, True, False, True, False, False, False]
    assert act.derivative(torch.tensor([0.0])).item() == pytest.approx(0.5)


def test_silu_numerically_flat_region():
    from sparsity_exp.activations import SiLU

    act = SiLU()
    h0 = -1.2784645427610738  # root of s(h) (1 + h (1 - s(h))), s the logistic function
    h = torch.tensor([-30.0, -17.0, -15.0, h0, h0 + 1e-3, 0.0, 1.0], dtype=torch.float64)
    assert act.flat_region(h).tolist() == [True, True, False, True, False, False, False]
    assert act.derivative(torch.tensor([0.0])).item() == pytest.approx(0.5)
    assert not act.zero_output(act(torch.tensor([-5.0, -1.0, 2.0]))).any()  # no exact zeros where it is not flat


def test_mixed_schedule_values():
    act = Mixed(steps=100)
    h = torch.tensor([-1.0, 0.5, 2.0])
    for step, k in [(0, 0.0), (25, 0.25), (100, 1.0), (250, 1.0), (-5, 0.0)]:
        act.set_step(step)
        assert act.jsrelu_portion == pytest.approx(k)
        assert torch.allclose(act(h), (1 - k) * torch.relu(h) + k * jsrelu(h))
    instant = Mixed(steps=0)
    assert instant.jsrelu_portion == 1.0
    with pytest.raises(ConfigError):
        Mixed(steps=-1)


def test_every_activation_has_a_config(compose):
    from sparsity_exp.config import conf_dir

    files = {p.stem for p in (conf_dir() / "activation").glob("*.yaml")}
    assert files == set(ACTIVATIONS)
    for name in files:
        cfg = compose(f"activation={name}")
        assert type(build_activation(cfg.activation)) is ACTIVATIONS[name]
        assert (conf_dir() / "activation" / f"{name}.yaml").read_text().startswith("#")


def test_unknown_activation_field_is_a_config_error():
    with pytest.raises(ConfigError, match="conf/activation/jsrelu.yaml"):
        build_activation({"name": "jsrelu", "slope": 2})


def test_probe_rest_fraction_hand_counted():
    # One block whose key ignores its input: h = bias for every sample.
    model = LNMLP(in_features=3, num_classes=2, width=6, depth=1,
                  make_act=lambda: Shifted(shift_x=1.6, shift_y=1.6, half_width=1.5))
    with torch.no_grad():
        model.blocks[0].key.weight.zero_()
        # u = h - 1.6: flat for |u| <= 1.5; f = 1.6 - (|u| - 1.5)^2 = 0 at u = -1.5 - sqrt(1.6)
        model.blocks[0].key.bias.copy_(torch.tensor([1.6, 0.2, 3.0, 3.5, -1.0, 0.1 - math.sqrt(1.6)]))
    probe = build_probes({"sparsity": {"every": 1}}, find_sites(model))[0]
    with observing([probe], "train"):
        model(torch.randn(5, 3))
    got = {(m, layer): v for _, m, layer, v in probe.rows("train")}
    assert got[("rest_fraction", 0)] == pytest.approx(3 / 6)        # 1.6, 0.2, 3.0 give s_y
    assert got[("derivative_sparsity", 0)] == pytest.approx(3 / 6)
    assert got[("activation_sparsity", 0)] == pytest.approx(1 / 6)  # the last one is an exact zero


def test_probe_has_no_rest_fraction_for_relu():
    model = LNMLP(in_features=3, num_classes=2, width=6, depth=1, make_act=lambda: build_activation({"name": "relu"}))
    probe = build_probes({"sparsity": {"every": 1}}, find_sites(model))[0]
    with observing([probe], "train"):
        model(torch.randn(5, 3))
    assert "rest_fraction" not in {m for _, m, _, _ in probe.rows("train")}
