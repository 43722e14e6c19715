"""Zeroth biases, restricted norm and weight noise on tiny models: the LN-MLP and a hand-made
sequence model with encoder/decoder sites (tests/seqmodel.py). Constraints are checked after real
optimizer steps, driven through the same callback order as the Trainer."""
import pandas as pd
import pytest
import torch
from torch import nn

from sparsity_exp.activations import JSReLU, ReLU
from sparsity_exp.lifecycle.checkpoint import list_checkpoints, load_checkpoint
from sparsity_exp.errors import ConfigError
from sparsity_exp.models import find_sites
from sparsity_exp.models.mlp import LNMLP
from sparsity_exp.modules import ActivationSchedule, RestrictedNorm, ZerothBiases, apply_interventions
from sparsity_exp.modules.weight_noise import WeightNoise, target_linears
from sparsity_exp.sites import effective_weight
from sparsity_exp.run import execute

from .seqmodel import Seq, seq_sites


class _Clock:
    step = 0


def _train(model, callbacks, loss_fn, steps, lr, check=None):
    """The Trainer's callback order: on_step_start, forward/backward, after_backward, step, after_step."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    clock = _Clock()
    for _ in range(steps):
        for cb in callbacks:
            cb.on_step_start(clock)
        loss_fn().backward()
        for cb in callbacks:
            cb.after_backward(clock)
        opt.step()
        opt.zero_grad()
        clock.step += 1
        for cb in callbacks:
            cb.after_step(clock)
        if check:
            check(clock.step)


def _seq_batch(t_src=7, t_tgt=4, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, t_src, 5, generator=g), torch.randn(n, t_tgt, 5, generator=g)


def _only_zeroth_biases_train(model):
    # the rest frozen: large steps on B alone stay finite and push it against the bound
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("zeroth_biases"))


def _lnmlp(**kw):
    torch.manual_seed(0)
    return LNMLP(in_features=4, num_classes=3, make_act=ReLU, width=8, depth=2, **kw)


# ---- zeroth biases -------------------------------------------------------------------------------

def test_zeroth_bias_shapes_plain_and_sequence():
    model = _lnmlp()
    ZerothBiases(model, find_sites(model))
    assert [tuple(b.bias.shape) for b in model.zeroth_biases] == [(8,), (8,)]
    assert "zeroth_biases.1.bias" in model.state_dict()

    seq = Seq()
    src, tgt = _seq_batch(t_src=7, t_tgt=4)
    zb = ZerothBiases(seq, seq_sites(seq), sample_forward=lambda: seq(src, tgt))
    # inferred per stack from one forward, sliced to the current length afterwards
    assert [tuple(b.bias.shape) for b in seq.zeroth_biases] == [(7, 6), (7, 6), (4, 6)]
    assert all((b.bias == 0).all() for b in zb.biases)
    seq(*_seq_batch(t_src=5, t_tgt=2))
    with pytest.raises(RuntimeError, match="max_tokens=9"):
        seq(*_seq_batch(t_src=9, t_tgt=2))

    fixed = Seq()
    ZerothBiases(fixed, seq_sites(fixed), max_tokens=12)  # no forward needed
    assert [tuple(b.bias.shape) for b in fixed.zeroth_biases] == [(12, 6)] * 3


@pytest.mark.parametrize("placement", ["input", "output"])
def test_zeroth_bias_is_added_where_placed(placement):
    seq = Seq()
    sites = seq_sites(seq)
    src, tgt = _seq_batch()
    zb = ZerothBiases(seq, sites, placement=placement, clip=None, sample_forward=lambda: seq(src, tgt))
    with torch.no_grad():
        for b in zb.biases:
            b.bias.normal_()
    seen = {}
    part = "key" if placement == "input" else "value"
    hooks = [getattr(s, part).register_forward_hook(lambda m, a, o, i=s.index: seen.__setitem__(i, (a[0], o)))
             for s in sites]
    norm_out = {}
    hooks += [s.norm.register_forward_hook(lambda m, a, o, i=s.index: norm_out.__setitem__(i, o)) for s in sites]
    seq(*_seq_batch(t_src=5, t_tgt=3))
    for h in hooks:
        h.remove()
    for s, b in zip(sites, zb.biases):
        key_in, out = seen[s.index]
        t = key_in.shape[1]
        if placement == "input":
            assert torch.allclose(key_in, norm_out[s.index] + b.bias[:t])
        else:
            lin = s.value
            assert torch.allclose(out, nn.functional.linear(key_in, lin.weight, lin.bias) + b.bias[:t])


def test_zeroth_bias_clip_holds_after_optimizer_steps():
    seq = Seq()
    sites = seq_sites(seq)
    with torch.no_grad():
        for s in sites:  # gammas of both signs, some tiny
            s.norm.weight.copy_(torch.linspace(-2, 2, 6))
    src, tgt = _seq_batch()
    zb = ZerothBiases(seq, sites, clip=0.1, sample_forward=lambda: seq(src, tgt))
    _only_zeroth_biases_train(seq)

    def check(step):
        for s, b in zip(sites, zb.biases):
            bound = 0.1 * s.norm.weight.detach().abs()
            assert (b.bias.abs() <= bound + 1e-7).all(), f"step {step}"

    _train(seq, [zb], lambda: seq(src, tgt).pow(2).mean(), steps=5, lr=20.0, check=check)
    b = zb.biases[0].bias.detach()
    at_bound = torch.isclose(b.abs(), 0.1 * sites[0].norm.weight.detach().abs().expand_as(b))
    assert at_bound.float().mean() > 0.5  # the constraint is active, the test is not vacuous

    free = Seq()
    fz = ZerothBiases(free, seq_sites(free), clip=None, sample_forward=lambda: free(src, tgt))
    _only_zeroth_biases_train(free)
    _train(free, [fz], lambda: free(src, tgt).pow(2).mean(), steps=5, lr=20.0)
    assert fz.biases[0].bias.abs().max() > 0.2 * 2


def test_zeroth_bias_clip_without_affine_is_c():
    model = _lnmlp()  # norm_affine=false: |gamma| = 1
    sites = find_sites(model)
    zb = ZerothBiases(model, sites, clip=0.1)
    x = torch.randn(16, 4)
    _train(model, [zb], lambda: model(x).pow(2).mean(), steps=4, lr=1.0)
    assert max(b.bias.abs().max().item() for b in zb.biases) == pytest.approx(0.1)
    rows = zb.log_rows(None)
    assert [r[:4] for r in rows] == [("modules", "train", "zeroth_bias_abs", 0), ("modules", "train", "zeroth_bias_abs", 1),
                                     ("modules", "train", "zeroth_bias_abs", "avg")]
    assert rows[0][4] == pytest.approx(zb.biases[0].bias.abs().mean().item())


def test_zeroth_bias_output_needs_a_value():
    model = _lnmlp()
    with pytest.raises(ConfigError, match="placement=input"):
        ZerothBiases(model, find_sites(model), placement="output")


# ---- restricted norm -----------------------------------------------------------------------------

def test_restricted_norm_clamp_on_a_non_affine_norm():
    model = _lnmlp()
    x = torch.randn(16, 4)
    before = model(x).detach()
    sites = find_sites(model)
    rn = RestrictedNorm(sites, mode="clamp")
    y = torch.randint(0, 3, (16,))
    # the non-affine LayerNorm became an affine one with gamma = 1 and no bias: the same function
    assert all(isinstance(s.norm, nn.LayerNorm) and s.norm.bias is None and (s.norm.weight == 1).all() for s in sites)
    assert torch.allclose(model(x), before)
    assert "blocks.0.norm.weight" in model.state_dict() and "blocks.0.norm.bias" not in model.state_dict()

    def check(step):
        assert all((s.norm.weight >= 1).all() for s in sites), f"step {step}"

    _train(model, [rn], lambda: nn.functional.cross_entropy(model(x), y), steps=4, lr=0.5, check=check)
    w = torch.cat([s.norm.weight.detach() for s in sites])
    assert (w == 1).any() and (w > 1).any()  # pushed down to the bound somewhere, moved up elsewhere


def test_restricted_norm_clamp_drops_an_existing_bias():
    seq = Seq()
    rn = RestrictedNorm(seq_sites(seq), mode="clamp")
    assert not any(k.endswith("norm.bias") for k in seq.state_dict())
    assert rn.log_rows(None)[-1] == ("modules", "train", "norm_gamma_abs", "avg", pytest.approx(1.0))


def test_restricted_norm_uplift_schedule_sign_and_frozen_bias():
    seq = Seq()
    sites = seq_sites(seq)
    start = torch.tensor([-0.2, 0.0, 0.3, -1.5, 2.0, 0.05])
    with torch.no_grad():
        for s in sites:
            s.norm.weight.copy_(start)
            s.norm.bias.normal_()
    bias0 = sites[0].norm.bias.detach().clone()
    rn = RestrictedNorm(sites, mode="uplift", uplift_steps=10)
    assert not sites[0].norm.bias.requires_grad
    src, tgt = _seq_batch()

    def check(step):
        floor = min(step / 10, 1.0)
        expected = torch.where(start >= 0, 1.0, -1.0) * torch.clamp(start.abs(), min=floor)
        assert torch.allclose(sites[0].norm.weight.detach(), expected), f"step {step}"

    # lr 0: the weights move only through the uplift, so its values are exact
    _train(seq, [rn], lambda: seq(src, tgt).pow(2).mean(), steps=12, lr=0.0, check=check)
    _train(seq, [rn], lambda: seq(src, tgt).pow(2).mean(), steps=3, lr=0.1)
    assert torch.equal(sites[0].norm.bias.detach(), bias0)


def test_uplift_only_when_finetuning(compose):
    cfg = compose("modules=sparsified", "modules.restricted_norm.mode=uplift")
    model = _lnmlp()
    with pytest.raises(ConfigError, match="protocol=sparsity_finetune"):
        apply_interventions(cfg, model, find_sites(model))


# ---- weight noise --------------------------------------------------------------------------------

def test_weight_noise_only_in_training_mode_with_the_stated_variance():
    torch.manual_seed(1)
    lin = nn.Linear(20, 30)
    rho = 0.1
    noise = WeightNoise(rho).install([lin])
    x = torch.randn(4000, 20) * torch.linspace(0.1, 5, 4000).unsqueeze(1)  # token norms vary 50x
    clean = nn.functional.linear(x, lin.weight, lin.bias)
    lin.eval()
    assert torch.equal(lin(x), clean)
    lin.train()
    r = (lin(x) - clean).detach()
    sigma = rho * lin.weight.detach().pow(2).mean().sqrt()  # rho ||W||_F / sqrt(numel W)
    z = r / (sigma * x.norm(dim=1, keepdim=True))
    n = z.numel()  # 120,000 draws: the sample variance has standard error sqrt(2/n) ~ 0.004
    assert abs(z.mean().item()) < 5 / n ** 0.5
    assert abs(z.var().item() - 1) < 5 * (2 / n) ** 0.5
    # fresh per token and per output unit: neighbouring tokens and units are uncorrelated
    assert abs((z[1:] * z[:-1]).mean().item()) < 5 / n ** 0.5
    assert abs((z[:, 1:] * z[:, :-1]).mean().item()) < 5 / n ** 0.5
    # the noise carries no gradient
    xg = x[:5].clone().requires_grad_(True)
    lin(xg).sum().backward()
    assert torch.allclose(xg.grad, lin.weight.detach().sum(0).expand(5, -1))
    noise.remove()
    assert torch.equal(lin(x), clean)


def test_weight_noise_targets():
    model = _lnmlp(value=True)
    site = find_sites(model)[0]
    assert target_linears(site, "key") == [site.key]
    assert target_linears(site, "key_value") == [site.key, site.value]
    assert target_linears(site, "all") == [site.key, site.value]
    dec = seq_sites(Seq())[2]  # gated: wi_0, wi_1, wo
    assert [id(m) for m in target_linears(dec, "all")] == [id(dec.key), id(dec.model.decoder[0].mlp.wi_1), id(dec.value)]
    with pytest.raises(ConfigError, match="noise.targets"):
        target_linears(dec, "everything")


@pytest.mark.parametrize("model_name, targets, placement", [("vit", "key_value", "output"),
                                                          ("vit_b16", "key_value", "output"),
                                                          ("t5", "key", "output"), ("t5_base", "key", "output"),
                                                          ("mlp", "key", "input")])
def test_model_presets_default_to_what_the_authors_ran(compose, model_name, targets, placement):
    for noise in ("on", "off"):
        cfg = compose(f"model={model_name}", f"noise={noise}", "modules=sparsified")
        assert cfg.noise.targets == targets and cfg.modules.zeroth_bias.placement == placement
    assert compose(f"model={model_name}", "noise.targets=all").noise.targets == "all"  # still overridable


def test_vit_noise_targets_are_the_authors_mlp_filter(compose):
    """The authors' ViT filter `.mlp.`: every linear inside the MLP block, i.e. K and V."""
    from sparsity_exp.data import build_data
    from sparsity_exp.models import build_model

    cfg = compose("model=vit", "noise=on")
    model = build_model(cfg.model, build_data(cfg.data).info, cfg.activation)
    sites = find_sites(model)
    chosen = {id(m) for s in sites for m in target_linears(s, cfg.noise.targets)}
    in_mlp = {id(m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".mlp." in f".{n}."}
    assert chosen == in_mlp and len(chosen) == 2 * len(sites)


def test_weight_noise_sigma_uses_the_lora_effective_weight():
    peft = pytest.importorskip("peft")
    LoraConfig, inject_adapter_in_model = peft.LoraConfig, peft.inject_adapter_in_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["0"]), model)
    layer = model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    merged = layer.base_layer.weight + 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert torch.allclose(effective_weight(layer), merged)


def test_apply_interventions_from_config(compose):
    cfg = compose("modules=sparsified", "noise=on", "noise.targets=key_value", "model.value=true")
    model = LNMLP(in_features=4, num_classes=3, make_act=ReLU, width=8, depth=2, d_ff=12, value=True)
    sites = find_sites(model)
    callbacks = apply_interventions(cfg, model, sites)
    assert {type(c) for c in callbacks} == {RestrictedNorm, ZerothBiases, ActivationSchedule}
    assert all(isinstance(s.act, JSReLU) for s in sites)
    x = torch.randn(5, 4)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_protocol_weight_noise_switches_noise_on(compose):
    cfg = compose("protocol=weight_noise")
    model = _lnmlp()
    apply_interventions(cfg, model, find_sites(model))
    x = torch.randn(5, 4)
    assert not torch.equal(model(x), model(x))


# ---- end to end through the Trainer ------------------------------------------------------------

def test_sparsified_run_keeps_its_bounds_and_logs_module_rows(compose, tiny, tmp_path):
    execute(compose(*tiny, "modules=sparsified"), tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    mod = m[m.probe == "modules"]
    assert set(mod.metric) == {"zeroth_bias_abs", "norm_gamma_abs"}
    assert sorted(mod.step.unique()) == [0, 10, 20]
    assert set(mod.layer.astype(str)) == {"0", "1", "avg"}
    state = load_checkpoint(list_checkpoints(tmp_path)[-1][1])["model"]
    for i in range(2):
        gamma, bias = state[f"blocks.{i}.norm.weight"], state[f"zeroth_biases.{i}.bias"]
        assert (gamma >= 1).all() and f"blocks.{i}.norm.bias" not in state
        assert (bias.abs() <= 0.1 * gamma + 1e-7).all() and bias.abs().max() > 0
    final = mod[(mod.step == 20) & (mod.metric == "zeroth_bias_abs") & (mod.layer.astype(str) == "avg")].value.item()
    assert final > 0


def test_activation_swap_rules(compose):
    from sparsity_exp.activations import GELU, Mixed
    from sparsity_exp.modules import _swap_activation

    model = _lnmlp()
    with pytest.raises(ConfigError, match="activation=gelu would be lost"):
        apply_interventions(compose("activation=gelu", "modules=sparsified"), model, find_sites(model))
    # finetuning: ReLU mixes into JSReLU over protocol.mixing_steps; another source activation only switches
    ft = compose("protocol=sparsity_finetune", "modules=sparsified", "protocol.mixing_steps=7")
    sites = find_sites(model)
    _swap_activation(ft, sites, finetune=True)
    assert all(isinstance(s.act, Mixed) and s.act.steps == 7 for s in sites)
    gelu = LNMLP(in_features=4, num_classes=3, make_act=GELU, width=8, depth=2)
    with pytest.raises(ConfigError, match="mixing_steps=0"):
        _swap_activation(ft, find_sites(gelu), finetune=True)
    _swap_activation(compose("protocol=sparsity_finetune", "modules=sparsified", "protocol.mixing_steps=0"),
                     find_sites(gelu), finetune=True)
    assert all(isinstance(s.act, JSReLU) for s in find_sites(gelu))
