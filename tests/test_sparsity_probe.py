"""The sparsity probe against hand counts and an independent numpy forward."""
import numpy as np
import pytest
import torch

from sparsity_exp.activations import ReLU
from sparsity_exp.models import find_sites
from sparsity_exp.models.mlp import LNMLP
from sparsity_exp.probes import build_probes, observing


def _rows_to_dict(rows):
    return {(metric, layer): value for split, metric, layer, value in rows}


def test_hand_counted_mask():
    # One block whose key ignores its input: h = bias = [1.5, -1, 0, 2e-7, 3] for every sample.
    model = LNMLP(in_features=3, num_classes=2, make_act=ReLU, width=5, depth=1)
    with torch.no_grad():
        model.blocks[0].key.weight.zero_()
        model.blocks[0].key.bias.copy_(torch.tensor([1.5, -1.0, 0.0, 2e-7, 3.0]))
    probe = build_probes({"sparsity": {"every": 1}}, find_sites(model))[0]
    with observing([probe], "train"):
        model(torch.randn(7, 3))
    got = _rows_to_dict(probe.rows("train"))
    # zeros: -1 -> 0, 0 -> 0, 2e-7 (|a| <= 1e-6 counts as zero) => 3 of 5
    assert got[("activation_sparsity", 0)] == pytest.approx(3 / 5)
    # zero-derivative region h <= 0: -1 and 0 => 2 of 5 (2e-7 is active with derivative 1)
    assert got[("derivative_sparsity", 0)] == pytest.approx(2 / 5)
    assert got[("derivative2", 0)] == pytest.approx(3 / 5)
    assert got[("activation_sparsity", "avg")] == pytest.approx(3 / 5)


@pytest.mark.parametrize("value", [False, True])
def test_matches_numpy_forward(value):
    torch.manual_seed(3)
    model = LNMLP(in_features=6, num_classes=4, make_act=ReLU, width=8, depth=3, d_ff=12, value=value)
    x = torch.randn(50, 6)
    probe = build_probes({"sparsity": {"every": 1}}, find_sites(model))[0]
    with observing([probe], "test"):
        model(x)
    got = _rows_to_dict(probe.rows("test"))

    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    z = x.double().numpy() @ p["inp.weight"].T + p["inp.bias"]
    zeros, flats = [], []
    for i in range(3):
        n = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5)
        h = n @ p[f"blocks.{i}.key.weight"].T + p[f"blocks.{i}.key.bias"]
        a = np.maximum(h, 0)
        zeros.append(np.mean(np.abs(a) <= 1e-6))
        flats.append(np.mean(h <= 0))
        assert got[("activation_sparsity", i)] == pytest.approx(zeros[-1], abs=1e-9)
        assert got[("derivative_sparsity", i)] == pytest.approx(flats[-1], abs=1e-9)
        assert got[("derivative2", i)] == pytest.approx(1 - flats[-1], abs=1e-9)
        u = a @ p[f"blocks.{i}.value.weight"].T + p[f"blocks.{i}.value.bias"] if value else a
        z = z + u
    assert got[("activation_sparsity", "avg")] == pytest.approx(np.mean(zeros))


def test_accumulates_over_batches_and_resets():
    model = LNMLP(in_features=3, num_classes=2, make_act=ReLU, width=4, depth=1)
    with torch.no_grad():
        model.blocks[0].key.weight.zero_()
        model.blocks[0].key.bias.copy_(torch.tensor([1.0, -1.0, -1.0, -1.0]))
    probe = build_probes({"sparsity": {"every": 1}}, find_sites(model))[0]
    with observing([probe], "test"):
        model(torch.randn(3, 3))
        with torch.no_grad():
            model.blocks[0].key.bias.fill_(1.0)  # second batch: nothing is zero
        model(torch.randn(1, 3))
    # (3 samples x 3 zeros + 1 sample x 0 zeros) / (4 samples x 4 units)
    assert _rows_to_dict(probe.rows("test"))[("activation_sparsity", 0)] == pytest.approx(9 / 16)
    assert probe.rows("test") == []


def test_hooks_are_removed_even_when_the_forward_fails():
    model = LNMLP(in_features=3, num_classes=2, make_act=ReLU, width=4, depth=2)
    probe = build_probes({"sparsity": {"every": 1}}, find_sites(model))[0]
    with pytest.raises(RuntimeError):
        with observing([probe], "train"):
            model(torch.randn(2, 5))  # wrong input width
    assert all(len(b.act._forward_hooks) == 0 for b in model.blocks)
    model(torch.randn(2, 3))
    assert probe.rows("train") == []  # nothing was recorded outside the context


def test_test_split_can_be_switched_off():
    model = LNMLP(in_features=3, num_classes=2, make_act=ReLU, width=4, depth=1)
    probe = build_probes({"sparsity": {"every": 1, "test": False}}, find_sites(model))[0]
    with observing([probe], "test"):
        model(torch.randn(2, 3))
    assert probe.rows("test") == []


def test_padding_tokens_are_left_out_when_marked():
    from torch import nn

    from sparsity_exp.probes import ProbeContext
    from sparsity_exp.sites import MLPSite

    class Seq(nn.Module):  # a one-site sequence model: act over [batch, tokens, features]
        def __init__(self):
            super().__init__()
            self.act = ReLU()

        def forward(self, h):
            return self.act(h)

    model = Seq()
    site = MLPSite(model=model, index=0, name="enc", paths={"act": "act"}, stack="encoder")
    ctx = ProbeContext()  # the task's masks travel on the context the probe is handed
    probe = build_probes({"sparsity": {"every": 1}}, [site], ctx)[0]
    h = torch.tensor([[[1.0, -1.0], [2.0, 3.0]], [[-1.0, -1.0], [-5.0, 4.0]]])  # [2 samples, 2 tokens, 2]
    mask = torch.tensor([[True, True], [True, False]])  # last token of sample 2 is padding
    with observing([probe], "train"), ctx.masked(encoder=mask):
        model(h)
    # counted entries: [1,-1], [2,3], [-1,-1] -> zeros 3 of 6
    assert _rows_to_dict(probe.rows("train"))[("activation_sparsity", 0)] == pytest.approx(3 / 6)
    with observing([probe], "train"):
        model(h)  # no mask set: all 8 entries, zeros 4
    assert _rows_to_dict(probe.rows("train"))[("activation_sparsity", 0)] == pytest.approx(4 / 8)


@pytest.mark.parametrize("name", ["relu", "jsrelu", "squared_relu", "gelu", "shifted", "mixed"])
def test_fused_counts_equal_the_plain_sums_to_the_last_bit(name):
    """The eager hooks' fused sums (_add_counts) against one plain sum per statistic (_counts), on
    every activation, with exact zeros, flat-region values and a NaN among the entries."""
    from sparsity_exp.activations import build_activation
    from sparsity_exp.probes.sparsity import _add_counts, _counts

    torch.manual_seed(0)
    act = build_activation({"name": name})
    h = torch.randn(6, 5, 40)
    h[0, 0, :5] = torch.tensor([0.0, -0.0, 1e-7, -1e-7, float("nan")])
    a = act(h)
    row = torch.zeros(5, dtype=torch.float64)
    _add_counts(row, act, h, a)
    _add_counts(row, act, h[:2], a[:2])  # accumulates
    plain = _counts(act, h, a, None) + _counts(act, h[:2], a[:2], None)
    torch.testing.assert_close(row, plain, rtol=0, atol=0, equal_nan=True)  # NaN where sigma(NaN)^2 enters
