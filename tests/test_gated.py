"""Gated MLP blocks as sites (issue 28; docs/paper.md §1.7, §1.8): every gated model is described
(gate, up, act, down), a block the seam cannot describe is refused, and the probes and modules mean
the right thing on it, each against an independent computation: hand-counted masks, the exact
Hessian of a tiny gated block, hand autograd for augmented flatness, a hand CETT / top-k / top-p."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from sparsity_exp.activations import ReLU, SiLU
from sparsity_exp.errors import ConfigError
from sparsity_exp.models import find_sites
from sparsity_exp.models.mlp import LNMLP
from sparsity_exp.probes import PROBES, build_probes, observing
from sparsity_exp.probes.magnitude import cett, cett_threshold, topk_mass, topp_kept
from sparsity_exp.sites import check_sites

from .tiny import exact_hessian, probe_context, tiny_batch

GATED = ["mlp_gated", "llama", "llama_relu", "t5_gated_gelu", "t5_gated_relu"]
# what each gated preset's sites must name (key = gate, up, value = down)
PARTS = {"mlp_gated": ("key", "up", "value"), "llama": ("gate_proj", "up_proj", "down_proj"),
         "llama_relu": ("gate_proj", "up_proj", "down_proj"), "t5_gated_gelu": ("wi_0", "wi_1", "wo"),
         "t5_gated_relu": ("wi_0", "wi_1", "wo")}
TWO_STEPS = ["trainer.steps=2", "trainer.log_every=1", "trainer.eval_every=2", "trainer.checkpoint_every=2",
             "trainer.progress=false", "trainer.batch_size=8", "trainer.eval_batch_size=64"]
FAST = ["probes.hessian.samples=4", "probes.hessian.iterations=3", "probes.sharpness.samples=2",
        "probes.sharpness.steps=2"]


def gated_mlp(act=ReLU, seed=0, depth=1):
    torch.manual_seed(seed)
    return LNMLP(in_features=3, num_classes=2, make_act=act, width=4, depth=depth, d_ff=5, value=True,
                 norm_affine=True, gated=True).double()


def _build(compose, model):
    from sparsity_exp.data import build_data
    from sparsity_exp.models import build_model

    cfg = compose(f"model={model}")
    data = build_data(cfg.data)
    return cfg, data, build_model(cfg.model, data.info, cfg.activation)


@pytest.mark.parametrize("model", GATED)
def test_every_gated_preset_is_described_and_checked(compose, model):
    from sparsity_exp.assemble import make_task, sample_forward
    from sparsity_exp.batches import make_batches

    cfg, data, net = _build(compose, model)
    sites = find_sites(net)
    assert sites and all(s.gated for s in sites)
    key, up, down = PARTS[model]
    for s in sites:
        assert s.paths["key"].endswith(key) and s.paths["up"].endswith(up) and s.paths["value"].endswith(down)
        assert s.linears() == ["key", "up", "value"] and s.inputs() == ["key", "up"]
        assert s.key.out_features == s.up.out_features == s.value.in_features
    task = make_task(cfg, data)
    batches = make_batches(data.test, 16, shuffle=False, drop_last=False, seed=0, device=torch.device("cpu"))
    check_sites(net, sites, forward=lambda: sample_forward(net, task, batches))  # passes: the form holds
    # the same block described as plain (no up projection) computes something else: refused, with the reason
    for s in sites:
        s.paths["up"] = None
    with pytest.raises(ConfigError, match=r"does not compute V\(act\(K x\)\)"):
        check_sites(net, sites, forward=lambda: sample_forward(net, task, batches))


def test_undescribable_models_are_refused():
    with pytest.raises(ConfigError, match="no MLP-site function"):
        find_sites(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    net = gated_mlp()
    sites = find_sites(net)
    sites[0].paths["up"] = "blocks.0.norm"  # a part that is no linear map

    with pytest.raises(ConfigError, match="not a linear map"):
        check_sites(net, sites, forward=lambda: net(torch.zeros(1, 3, dtype=torch.float64)))
    # a gated block whose up projection reads another input than the gate
    net = gated_mlp()
    block = net.blocks[0]
    block.forward = lambda z: z + block.value(block.act(block.key(block.norm(z))) * block.up(z))
    with pytest.raises(ConfigError, match="does not read the key's input"):
        check_sites(net, find_sites(net), forward=lambda: net(torch.randn(4, 3, dtype=torch.float64)))


def test_gated_option_needs_a_value_layer():
    with pytest.raises(ConfigError, match="model.gated=true needs model.value=true"):
        LNMLP(3, 2, ReLU, width=4, depth=1, d_ff=5, value=False, gated=True)


def test_masks_of_gate_and_product_are_counted_by_hand():
    net, x = gated_mlp(seed=3, depth=2), tiny_batch(n=40)[0]
    sites = find_sites(net)
    probes = build_probes({"sparsity": {"every": 1}, "magnitude": {"every": 1}}, sites)
    with torch.no_grad(), observing(probes, "test"):
        net.eval()
        net(x)
    rows = {(p.name, m, layer): v for p in probes for _, m, layer, v in p.rows("test")}
    z = net.inp(x)
    for i, block in enumerate(net.blocks):  # the block by hand, from its weights
        xt = F.layer_norm(z, (4,), block.norm.weight, block.norm.bias, 1e-5)
        h = xt @ block.key.weight.T + block.key.bias
        u = xt @ block.up.weight.T + block.up.bias
        a = torch.clamp(h, min=0)
        p = a * u
        assert rows[("sparsity", "activation_sparsity", i)] == pytest.approx(float((a == 0).double().mean()))
        assert rows[("sparsity", "derivative_sparsity", i)] == pytest.approx(float((h <= 0).double().mean()))
        assert rows[("magnitude", "product_sparsity", i)] == pytest.approx(float((p.abs() <= 1e-6).double().mean()))
        z = z + p @ block.value.weight.T + block.value.bias


def test_cett_topk_topp_against_a_hand_computation():
    # one token, V = identity: m = |v| = [3, 0, 1, 2], ||y|| = sqrt(14)
    v, w = torch.tensor([[3.0, 0.0, 1.0, 2.0]], dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    # drop {0}: 0; drop {0, 1}: 1/sqrt(14) = 0.267 <= 0.3; drop {0, 1, 2}: sqrt(5/14) = 0.598 > 0.3
    tau, dropped = cett_threshold(v, w, 0.3)
    assert tau == 1.0 and dropped.tolist() == [[False, True, True, False]]
    assert cett(v, w, dropped) == pytest.approx(1 / math.sqrt(14))
    assert cett_threshold(v, w, 0.0)[0] == 0.0  # only the exact zero goes
    assert topp_kept(v.abs(), 0.9).tolist() == [3.0]  # 3 + 2 = 5 < 5.4 <= 6
    assert topk_mass(v.abs(), 1).tolist() == [0.5]
    # a down projection with orthogonal columns of norms c_j: CETT grows with tau, so the bisection's tau
    # is the brute-force largest one; magnitudes weigh |v_j| by c_j
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 6, generator=g, dtype=torch.float64))
    c = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    w, v = q * c, torch.randn(9, 6, generator=g, dtype=torch.float64)
    m = v.abs() * c
    for bound in (0.05, 0.2, 0.5):
        best = max([0.0] + [float(t) for t in m.flatten()
                            if ((v * (m <= t)) @ w.T).norm(dim=1).div((v @ w.T).norm(dim=1)).mean() <= bound])
        assert cett_threshold(v, w, bound)[0] == pytest.approx(best, rel=1e-12)  # |v| x ||column||, rounded


@pytest.mark.parametrize("act", [ReLU, SiLU])
def test_augmented_flatness_of_a_gated_block_against_hand_autograd(act):
    net, (x, y) = gated_mlp(act, seed=2), tiny_batch(n=10, seed=4)
    (site,) = find_sites(net)
    (probe,) = build_probes({"augmented_flatness": {"every": 1}}, [site])
    net.train()
    with observing([probe], "train"):
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    got = {m: v for _, m, layer, v in probe.rows("train") if layer == 0}
    block = net.blocks[0]
    z0 = net.inp(x)
    xt = block.norm(z0)
    h, u = block.key(xt), block.up(xt)
    a = block.act(h)
    v = a * u
    z = block.value(v)
    for t in (h, a, u, z):
        t.retain_grad()
    F.cross_entropy(net.head(z0 + z), y).backward()
    net.zero_grad(set_to_none=True)
    x2, eta, g, xi, gz = xt.detach().pow(2).sum(1), h.grad, a.grad, u.grad, z.grad
    v = v.detach()
    active = v != 0
    want = {"as_key": ((eta.pow(2).sum(1) + xi.pow(2).sum(1)) * x2).mean(),
            "as_up": (xi.pow(2).sum(1) * x2).mean(),
            "coef_l0": ((g.pow(2) + xi.pow(2)) * x2[:, None])[active].mean(),
            "as_value": (gz.pow(2).sum(1) * v.pow(2).sum(1)).mean(),
            "a2": v.pow(2).sum(1).mean()}
    for metric, value in want.items():
        assert got[metric] == pytest.approx(float(value), rel=1e-9), metric
    if act is ReLU:  # the identity of docs/paper.md §1.7: AS_K / coef_L0 = E ||v||_0
        assert got["as_key"] / got["coef_l0"] == pytest.approx(float(active.double().sum(1).mean()), rel=1e-9)
        assert int(active.sum()) != int((v > 0).sum())  # the signed product: "> 0" would be the wrong set


def test_hessian_parameter_set_and_block_traces_include_the_up_projection():
    net, batch = gated_mlp(seed=1, depth=2), tiny_batch()
    net.eval()
    names = [n for n, _ in net.named_parameters() if any(f".{p}." in n for p in ("key", "up", "value"))]
    assert any(".up." in n for n in names)
    H = exact_hessian(net, batch, names)
    (probe,) = build_probes({"hessian": {"samples": len(H), "trace_estimator": "hutchpp", "block_samples": 400,
                                         "features": False, "iterations": 3}}, find_sites(net))
    rows = {(m, layer): v for _, m, layer, v in probe.measure(probe_context(net, [batch]))}
    assert rows[("trace", "avg")] == pytest.approx(np.trace(H), rel=1e-9)
    sizes = [p.numel() for n, p in net.named_parameters() if n in names]
    offsets = np.cumsum([0] + sizes)
    for i in (0, 1):
        cols = [j for k, n in enumerate(names) if n.startswith(f"blocks.{i}.")
                for j in range(offsets[k], offsets[k + 1])]
        exact = np.trace(H[np.ix_(cols, cols)])
        # one measurement batch, whose exact Hessian this is: the error against it is the vectors' part
        # (block_trace_se, the error against the training set, is nan at batches: 1)
        assert abs(rows[("block_trace", i)] - exact) < 4 * rows[("block_trace_se_vectors", i)] + 1e-12


def test_modules_reach_the_up_projection():
    from sparsity_exp.modules.finetune import _lora_target_names
    from sparsity_exp.modules.weight_noise import target_linears
    from sparsity_exp.modules.zeroth_bias import ZerothBiases

    net = gated_mlp()
    (site,) = find_sites(net)
    block = net.blocks[0]
    assert target_linears(site, "key") == [block.key, block.up]
    assert target_linears(site, "key_value") == [block.key, block.up, block.value]
    assert set(map(id, target_linears(site, "all"))) == {id(block.key), id(block.up), id(block.value)}
    assert _lora_target_names(net, [site], "mlp") == ["blocks.0.key", "blocks.0.up", "blocks.0.value"]
    # zeroth bias at the input: one bias b of x~, read by the gate and the up projection alike
    x = tiny_batch(n=6)[0]
    zb = ZerothBiases(net, [site], placement="input", clip=None)
    with torch.no_grad():
        zb.biases[0].bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.5]))
        xt = block.norm(net.inp(x)) + zb.biases[0].bias
        lin = lambda m, t: F.linear(t, m.weight, m.bias)  # noqa: E731 (the hooked modules would add b again)
        want = net.head(net.inp(x) + lin(block.value, block.act(lin(block.key, xt)) * lin(block.up, xt)))
        np.testing.assert_allclose(net(x).numpy(), want.numpy(), rtol=1e-12)
    for handle in zb.handles:
        handle.remove()


def test_spectrum_parts_of_a_gated_block():
    net = gated_mlp(depth=1)
    (site,) = find_sites(net)
    for part, w in (("key", net.blocks[0].key.weight), ("up", net.blocks[0].up.weight),
                    ("inputs", torch.cat([net.blocks[0].key.weight, net.blocks[0].up.weight]))):
        (probe,) = build_probes({"spectrum": {"part": part, "save": False}}, [site])
        assert torch.equal(probe.matrix(site), w)
    plain = find_sites(LNMLP(3, 2, ReLU, width=4, depth=1, d_ff=5, value=True))
    with pytest.raises(ConfigError, match="part=up needs gated blocks"):
        build_probes({"spectrum": {"part": "up"}}, plain)


def _full_online_and_posthoc(compose, model, tmp_path, cli=None):
    from sparsity_exp.posthoc import probe_run
    from sparsity_exp.run import execute

    run = tmp_path / model
    execute(compose(f"model={model}", "probes=full", *TWO_STEPS, *FAST), run)
    m = pd.read_csv(run / "metrics.csv")
    for name, cls in PROBES.items():  # every probe wrote its declared metrics, the gated ones included
        got = set(m[m.probe == name].metric)
        want = set(cls.metrics) - ({"rest_fraction"} if name == "sparsity" else set())
        assert got == want, (model, name, want ^ got)
    assert np.isfinite(m[m.probe.isin(["augmented_flatness", "magnitude"])].value).all()
    probe_run(run, ["probes=full", "checkpoints=last", *FAST])
    post = pd.read_csv(run / "posthoc_metrics.csv")
    assert set(post.probe) == {n for n, c in PROBES.items() if c.posthoc}
    assert "as_up" in set(post[post.probe == "augmented_flatness"].metric)


def test_full_preset_online_and_posthoc_on_the_gated_mlp(compose, tmp_path):
    _full_online_and_posthoc(compose, "mlp_gated", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("model", [m for m in GATED if m != "mlp_gated"])
def test_full_preset_online_and_posthoc_on_every_gated_model(compose, tmp_path, model):
    _full_online_and_posthoc(compose, model, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["none", "cheap", "default", "checkpoints"])
@pytest.mark.parametrize("model", GATED)
def test_every_preset_on_every_gated_model(compose, tmp_path, model, preset):
    from sparsity_exp.posthoc import probe_run
    from sparsity_exp.run import execute

    run = tmp_path / "run"
    execute(compose(f"model={model}", f"probes={preset}", *TWO_STEPS), run)
    assert (run / "metrics.csv").exists()
    probe_run(run, [f"probes={preset}", "checkpoints=last"])


def test_the_start_up_check_moves_no_random_state(compose, tmp_path):
    from sparsity_exp.assemble import assemble

    cfg = compose("model=mlp_gated", "trainer.steps=2", "trainer.progress=false")
    torch.manual_seed(0)
    assemble(cfg)
    after = torch.random.get_rng_state()
    import sparsity_exp.assemble as a

    real = a.check_sites
    a.check_sites = lambda *args, **kw: None
    try:
        torch.manual_seed(0)
        assemble(cfg)
    finally:
        a.check_sites = real
    assert torch.equal(torch.random.get_rng_state(), after)
