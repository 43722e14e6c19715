"""Spectrum, RMT and neuron probes against direct numpy evaluations and hand-made cases."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsity_exp.activations import ReLU
from sparsity_exp.models import find_sites
from sparsity_exp.models.mlp import LNMLP
from sparsity_exp.probes import build_probes, observing
from sparsity_exp.probes.base import ProbeContext
from sparsity_exp.probes.spectrum import ratio80
from sparsity_exp.record import Recorder


def _rows(rows):
    return {(metric, layer): value for _, metric, layer, value in rows}


def _brute_ratio80(lam, above=0.1, bins=100, mass=0.8):
    logs = np.log10(lam[lam > above])
    counts, edges = np.histogram(logs, bins=bins, range=(np.log10(above), logs.max()))
    best = min(j - i for i in range(bins) for j in range(i + 1, bins + 1) if counts[i:j].sum() >= mass * len(logs))
    return 10 ** (best * (edges[1] - edges[0]))


@pytest.mark.parametrize("value", [True, False])
def test_spectrum_matches_numpy(tmp_path, value):
    torch.manual_seed(0)
    model = LNMLP(in_features=4, num_classes=2, make_act=ReLU, width=6, depth=2, d_ff=14, value=value)
    with torch.no_grad():
        model.blocks[0].key.weight.mul_(8)
    sites = find_sites(model)
    (probe,) = build_probes({"spectrum": {"at_end": True}}, sites)
    with Recorder(tmp_path) as rec:
        ctx = ProbeContext(model=model, sites=sites, task=None, train_batches=None, test_batches=None,
                           device=torch.device("cpu"), step=40, seed=0, recorder=rec)
        got = _rows(probe.measure(ctx))
    arrays = np.load(tmp_path / "arrays" / "spectrum_step00000040.npz")
    for i, blk in enumerate(model.blocks):
        k = blk.key.weight.detach().double().numpy()
        lam = np.sort(np.clip(np.linalg.eigvalsh(k @ k.T), 0, None))[::-1]
        assert len(arrays[f"layer_{i}"]) == k.shape[0]
        np.testing.assert_allclose(arrays[f"layer_{i}"], lam, atol=1e-10)
        nz = lam[lam > 0.1 * lam.mean()]
        assert got[("ratio_minmax", i)] == pytest.approx(nz.max() / nz.min(), rel=1e-8)
        assert got[("near_zero_rate", i)] == pytest.approx(np.mean(lam <= 0.1))
        assert got[("ratio80", i)] == pytest.approx(_brute_ratio80(lam), rel=1e-9)


def test_ratio80_hand_made():
    # 10 eigenvalues above 0.1: 8 at 10 (one bin), one at 0.5, one at 1000 -> one bin holds 80%
    lam = np.array([10.0] * 8 + [0.5, 1000.0, 0.0, 0.0])
    width = (3 - (-1)) / 100  # histogram over [log10 0.1, log10 1000]
    assert ratio80(lam, 0.1, 100, 0.8) == pytest.approx(10**width)
    # 90% needed: the run must stretch from 10 to 1000 (or from 0.5 to 10)
    got = ratio80(lam, 0.1, 100, 0.9)
    assert got == pytest.approx(_brute_ratio80(lam, mass=0.9))


def test_rmt_matches_direct_numpy():
    torch.manual_seed(0)
    model = LNMLP(in_features=5, num_classes=3, make_act=ReLU, width=6, depth=1)
    sites = find_sites(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.01)
    ctx = ProbeContext(sites=sites, optimizer=opt)  # lr and weight decay come from the context
    (probe,) = build_probes({"rmt": {"every": 1, "thr": 1e-3, "v": 1e-2}}, sites, ctx)
    cin = cgrad = None
    r = 1 - 0.1 * 0.01
    g = torch.Generator().manual_seed(5)
    last_step = None
    for step in (0, 5, 7):
        ctx.step = step
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
        # reference tensors by hand
        blk = model.blocks[0]
        xt = blk.norm(model.inp(x))
        a = torch.relu(blk.key(xt))
        a.retain_grad()
        F.cross_entropy(model.head(model.inp(x) + a), y).backward()
        X, G = xt.detach().double().numpy(), a.grad.double().numpy()
        model.zero_grad()
        decay = 1.0 if last_step is None else r ** (step - last_step)
        cin = X.T @ X / 8 if cin is None else decay * cin + X.T @ X / 8
        cgrad = G.T @ G / 8 if cgrad is None else decay * cgrad + G.T @ G / 8
        last_step = step
        with observing([probe], "train"):
            F.cross_entropy(model(x), y).backward()
        model.zero_grad()
        got = _rows(probe.rows("train"))

    def aniso_alpha(c):
        p = c.shape[0]
        a = np.trace(c) / (c**2).sum()
        return np.linalg.norm(a * c - np.eye(p)) * math.sqrt(p) / p, np.trace(a * c) / p

    an_in, al_in = aniso_alpha(cin)
    an_g, al_g = aniso_alpha(cgrad)
    # float32 batch covariances summed in float64: agreement to ~1e-7
    assert got[("rel_anisotropy_input", 0)] == pytest.approx(an_in, rel=1e-6)
    assert got[("alpha_input", 0)] == pytest.approx(al_in, rel=1e-6)
    assert got[("rel_anisotropy_grad", 0)] == pytest.approx(an_g, rel=1e-6)
    assert got[("alpha_grad", 0)] == pytest.approx(al_g, rel=1e-6)
    t_eff = math.ceil(math.log(1e-3 * (1 - r)) / math.log(r) - 1)
    assert got[("t_eff", "avg")] == t_eff
    p, v = 6, 1e-2
    c = p / (min(8, t_eff) * 8)  # 8 steps accumulated (0..7), batch 8
    common = math.sqrt(c + (2 * math.sqrt(2) + 3) * c * al_in / v + c * an_in / v + c / (v * p))
    assert got[("bound_re", 0)] == pytest.approx(math.sqrt(2) / (c * math.sqrt(v)) * al_in * common, rel=1e-6)
    assert got[("bound_im", 0)] == pytest.approx(math.sqrt(2) / (c * v * math.sqrt(v)) * al_in**2 * common, rel=1e-6)

    assert got[("inv_c", "avg")] == pytest.approx(8 * min(8, t_eff) / p)


@pytest.mark.parametrize("grad_accum,max_pending_rows", [(1, 4096), (2, 4096), (2, 20), (1, 1)])
def test_rmt_every_step_matches_hand_recursion(grad_accum, max_pending_rows):
    """every: 1 under a changing lr: C <- (1 - lr_t wd) C + C_t with each step's own lr, against a
    float64 recursion on tensors taken by independent hooks; the bound with mp.py's uncapped T.
    With gradient accumulation the step's micro-batches are averaged into its C_t; folds of the kept
    rows at any boundary (max_pending_rows: every observation, mid-run, once at the end) and a
    checkpoint taken mid-interval give the same C."""
    torch.manual_seed(1)
    model = LNMLP(in_features=5, num_classes=3, make_act=ReLU, width=6, depth=2)
    sites = find_sites(model)
    wd = 0.5
    opt = torch.optim.SGD(model.parameters(), lr=0.2, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))  # lr changes every step
    host = ProbeContext(sites=sites, optimizer=opt, grad_accum=grad_accum)  # step, lr and wd from here
    (probe,) = build_probes({"rmt": {"every": 1, "thr": 1e-3, "v": 1e-2, "max_pending_rows": max_pending_rows}},
                            sites, host)
    taken = {}
    hooks = [s.key.register_forward_pre_hook(
        lambda m, a, i=s.index: taken.setdefault(("x", i), []).append(a[0].detach())) for s in sites]

    def grad_hook(i):
        def fn(module, args, out):
            out.register_hook(lambda gr: taken.setdefault(("g", i), []).append(gr.detach()))
        return fn

    hooks += [s.act.register_forward_hook(grad_hook(s.index)) for s in sites]
    hand = {}
    g = torch.Generator().manual_seed(3)
    n_steps, batch = 6, 8
    for step in range(n_steps):
        host.step = step
        lr = opt.param_groups[0]["lr"]
        x, y = torch.randn(batch, 5, generator=g), torch.randint(0, 3, (batch,), generator=g)
        with observing([probe], "train"):
            for xm, ym in zip(x.chunk(grad_accum), y.chunk(grad_accum)):
                (F.cross_entropy(model(xm), ym) / grad_accum).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        for key, parts in taken.items():  # the step's C_t: mean over its micro-batches of each one's mean
            cov = sum(u.double().numpy().T @ u.double().numpy() / len(u) for u in parts) / grad_accum
            hand[key] = cov if key not in hand else (1 - lr * wd) * hand[key] + cov
        taken.clear()
        if step == 3:  # a checkpoint mid-interval folds what is kept; a resumed probe goes on from it
            state = probe.state_dict()
            (probe,) = build_probes({"rmt": {"every": 1, "thr": 1e-3, "v": 1e-2,
                                             "max_pending_rows": max_pending_rows}}, sites, host)
            probe.load_state_dict(state)
    for h in hooks:
        h.remove()
    assert len({round(gr, 6) for gr in [0.2 / (1 + t) for t in range(n_steps)]}) == n_steps
    c_in, c_grad = probe.covariances()
    for s in sites:  # float32 rows, float64 sums: agreement to float32 rounding
        np.testing.assert_allclose(c_in[s.index].numpy(), hand[("x", s.index)], rtol=2e-6, atol=1e-9)
        np.testing.assert_allclose(c_grad[s.index].numpy(), hand[("g", s.index)], rtol=2e-6, atol=1e-12)
    got = _rows(probe.rows("train"))
    a = np.trace(hand[("x", 1)]) / (hand[("x", 1)] ** 2).sum()
    an = np.linalg.norm(a * hand[("x", 1)] - np.eye(6)) * math.sqrt(6) / 6
    al = np.trace(a * hand[("x", 1)]) / 6
    c, v = 6 / (n_steps * batch), 1e-2
    common = math.sqrt(c + (2 * math.sqrt(2) + 3) * c * al / v + c * an / v + c / (v * 6))
    assert got[("bound_re", 1)] == pytest.approx(math.sqrt(2) / (c * math.sqrt(v)) * al * common, rel=1e-6)


def test_neurons_hand_made(tmp_path):
    model = LNMLP(in_features=3, num_classes=2, make_act=ReLU, width=4, depth=1)
    with torch.no_grad():
        blk = model.blocks[0]
        blk.key.weight.zero_()
        blk.key.weight[2, 0] = 1.0  # unit 2 fires when the normed first feature is > -bias
        blk.key.bias.copy_(torch.tensor([1.0, -1.0, 0.0, 2.0]))
    sites = find_sites(model)
    with Recorder(tmp_path) as rec:
        (probe,) = build_probes({"neurons": {}}, sites, ProbeContext(sites=sites, step=12, recorder=rec))
        x = torch.randn(10, 3)
        with torch.no_grad(), observing([probe], "test"):
            model(x[:6])
            model(x[6:])
        got = _rows(probe.rows("test"))
    normed = blk.norm(model.inp(x)).detach()
    unit2 = float((normed[:, 0] > 0).float().mean())
    freq = np.load(tmp_path / "arrays" / "neurons_step00000012.npz")["layer_0"]
    np.testing.assert_allclose(freq, [1.0, 0.0, unit2, 1.0])
    assert got[("dead_units", 0)] == 1 + (unit2 == 0)
    assert got[("always_on_units", 0)] == 2 + (unit2 == 1)
    assert got[("mean_firing", 0)] == pytest.approx((2 + unit2) / 4)
    with observing([probe], "train"):  # train batches are not counted unless asked
        model(x)
    assert probe.rows("train") == []
