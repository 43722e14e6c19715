import pytest
import torch
from torch import nn

from sparsity_exp.activations import ReLU
from sparsity_exp.data import DataInfo
from sparsity_exp.models import build_model, find_sites
from sparsity_exp.models.mlp import LNMLP


@pytest.mark.parametrize("value", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_block_variants_from_config(compose, value, affine):
    cfg = compose(f"model.value={value}", f"model.norm_affine={affine}", "model.width=16", "model.d_ff=40",
                  "model.depth=3")
    model = build_model(cfg.model, DataInfo((1, 8, 8), 10), cfg.activation)
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    sites = find_sites(model)
    assert [s.index for s in sites] == [0, 1, 2]
    for s in sites:
        assert isinstance(s.norm, nn.LayerNorm) and isinstance(s.act, ReLU)
        assert s.key.out_features == (40 if value else 16)
        assert (s.value is not None) == value
        assert (s.norm.weight is not None) == affine


def test_value_free_block_computes_z_plus_act_of_key():
    torch.manual_seed(0)
    model = LNMLP(in_features=6, num_classes=3, make_act=ReLU, width=5, depth=1, value=False)
    x = torch.randn(4, 6)
    z = model.inp(x)
    n = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = model.head(z + torch.relu(n @ model.blocks[0].key.weight.T + model.blocks[0].key.bias))
    torch.testing.assert_close(model(x), expected)


def test_site_replace_is_seen_by_the_model():
    model = LNMLP(in_features=4, num_classes=2, make_act=ReLU, width=4, depth=2)
    site = find_sites(model)[1]
    old = site.replace("act", nn.Identity())
    assert isinstance(old, ReLU) and isinstance(model.blocks[1].act, nn.Identity)
    assert isinstance(site.act, nn.Identity)
