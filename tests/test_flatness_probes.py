"""Hessian and sharpness probes against the exact Hessian of a tiny model, and their contract:
deterministic, sign-correct, and leaving the model as they found it."""
import math

import numpy as np
import pytest
import torch

from sparsity_exp.models import find_sites
from sparsity_exp.probes import build_probes

from .tiny import exact_hessian, probe_context, tiny_batch, tiny_mlp


def _tiny(seed=0, value=True):
    return tiny_mlp(seed, depth=1, value=value)


_batch = tiny_batch
_ctx = probe_context


def _train(model, batch, steps=300):
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)


def _rows(rows):
    return {(metric, layer): value for _, metric, layer, value in rows}


def test_hessian_trace_and_top_eigenvalue_match_exact_hessian():
    model, batch = _tiny(), _batch()
    model.eval()
    H = exact_hessian(model, batch)
    eig = np.linalg.eigvalsh(H)
    samples = 600
    (probe,) = build_probes({"hessian": {"samples": samples, "iterations": 3000, "tol": 1e-12, "params": "trainable"}}, find_sites(model))
    got = _rows(probe.measure(_ctx(model, [batch])))
    # Hutchinson with Rademacher vectors: unbiased, variance 2 sum_{i != j} H_ij^2 per sample
    std = math.sqrt(2 * ((H**2).sum() - (np.diag(H) ** 2).sum()) / samples)
    assert abs(got[("trace", "avg")] - np.trace(H)) < 5 * std + 1e-9
    top = eig[np.argmax(np.abs(eig))]
    assert got[("top_abs_eigenvalue", "avg")] == pytest.approx(top, rel=1e-4)


def test_measurements_are_deterministic_and_leave_the_model_as_found():
    model, batch = _tiny(), _batch()
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = {"hessian": {"samples": 3, "iterations": 5}, "sharpness": {"samples": 2, "steps": 2}}
    rng = torch.get_rng_state()
    first = [p.measure(_ctx(model, [batch], seed=3, step=7)) for p in build_probes(cfg, find_sites(model))]
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(m.training for m in model.modules())
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]) and torch.equal(p.grad, torch.full_like(p, 0.5))
    again = [p.measure(_ctx(model, [batch], seed=3, step=7)) for p in build_probes(cfg, find_sites(model))]
    np.testing.assert_equal(again, first)  # nan rows (a one-batch trace_se_batches) equal too
    other = [p.measure(_ctx(model, [batch], seed=3, step=8)) for p in build_probes(cfg, find_sites(model))]
    assert other != first  # the local generator follows the step


def test_sharpness_sign_and_zero_radius():
    model, batch = _tiny(seed=2), _batch(24)
    _train(model, batch)
    sites = find_sites(model)
    (probe,) = build_probes({"sharpness": {"rho": 0.05, "samples": 20, "steps": 10}}, sites)
    got = _rows(probe.measure(_ctx(model, [batch])))
    for kind in ("param", "feature_input", "feature_act"):
        assert got[(f"worst_{kind}", "avg")] >= got[(f"avg_{kind}", "avg")] >= 0, kind
        assert got[(f"worst_{kind}", "avg")] > 0, kind
    (zero,) = build_probes({"sharpness": {"rho": 0.0, "samples": 3, "steps": 3}}, sites)
    assert all(v == 0.0 for v in _rows(zero.measure(_ctx(model, [batch]))).values())


def test_feature_perturbation_hits_the_declared_ball():
    """The feature hook adds exactly delta to each block's key input and records the clean
    per-token norms that set the radius of the ball."""
    from contextlib import ExitStack

    from sparsity_exp.probes.feature_offsets import FeatureOffsets

    model, batch = _tiny(seed=4), _batch(5)
    sites = find_sites(model)
    hooks = FeatureOffsets(sites, "input")  # the sharpness probe's (and the Hessian probe's) hooks
    key = (0, "input")
    with ExitStack() as stack:
        hooks.attach(stack)
        hooks.record = True
        with torch.no_grad():
            model(batch[0])
        hooks.record = False
        n = hooks.norms[key]
        delta = 0.1 * n * torch.ones(hooks.shapes[key], dtype=torch.float64) / math.sqrt(hooks.shapes[key][-1])
        hooks.deltas = {key: delta}
        seen = {}
        h = sites[0].key.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
        stack.callback(h.remove)
        with torch.no_grad():
            model(batch[0])
    clean = sites[0].norm(model.inp(batch[0]))
    assert torch.allclose(seen["x"] - clean.detach(), delta)
    assert torch.allclose(delta.norm(dim=-1, keepdim=True), 0.1 * n)
