"""Flatness of the trained model through the Hessian of the training loss w.r.t. all trainable
parameters (what the authors did not measure; estimators after PyHessian):

  trace           Hutchinson: mean over ``samples`` Rademacher vectors v of v^T H v
  top_eigenvalue  power iteration (``iterations``, stopping at relative change ``tol``) on H v; the
                  eigenvalue of largest magnitude (the top one near a minimum)

H is the Hessian of the mean training objective over ``batches`` fixed training batches, with the
model in eval mode (no dropout noise, so H is one well-defined matrix). Hessian-vector products
by double backward; nothing is written into .grad. Model-wide scalars: layer 'avg'.
A standalone measurement (``measure_every``, ``at_end``, post hoc), deterministic given the seed
and step.
"""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .base import Probe
from .standalone import fixed_objective, local_generator, mean_loss, preserved, take_batches, trainable


def _dot(xs, ys) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(xs, ys))


class HVP:
    """Hessian-vector products of the mean loss over fixed batches."""

    def __init__(self, model, task, batches):
        self.params = trainable(model)
        self.model, self.task, self.batches = model, task, batches

    def __call__(self, vs) -> list:
        out = [torch.zeros_like(p) for p in self.params]
        for b in self.batches:
            # fused attention kernels have no double backward; the math kernel does (ViT, T5)
            with sdpa_kernel(SDPBackend.MATH):
                loss, _ = self.task(self.model, b, train=True)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            gv = sum((g * v).sum() for g, v in zip(grads, vs) if g is not None)
            hv = torch.autograd.grad(gv, self.params, allow_unused=True)
            for o, h in zip(out, hv):
                if h is not None:
                    o += h.detach() / len(self.batches)
        return out


def hutchinson_trace(hvp: HVP, samples: int, gen: torch.Generator) -> float:
    total = 0.0
    for _ in range(int(samples)):
        vs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype) for p in hvp.params]
        total += float(_dot(vs, hvp(vs)))
    return total / max(1, int(samples))


def power_iteration(hvp: HVP, iterations: int, tol: float, gen: torch.Generator) -> float:
    vs = [torch.randn(p.shape, generator=gen).to(p.device, p.dtype) for p in hvp.params]
    eig = None
    for _ in range(int(iterations)):
        norm = torch.sqrt(_dot(vs, vs))
        vs = [v / norm for v in vs]
        hv = hvp(vs)
        new = float(_dot(vs, hv))  # Rayleigh quotient of the unit vector
        vs = hv
        if eig is not None and abs(new - eig) <= tol * (abs(eig) + 1e-12):
            return new
        eig = new
    return float("nan") if eig is None else eig


class HessianProbe(Probe):
    name = "hessian"

    def __init__(self, sites, batches: int = 1, samples: int = 20, iterations: int = 50, tol: float = 1e-3,
                 **kw):
        super().__init__(sites, **kw)
        self.batches, self.samples, self.iterations, self.tol = int(batches), int(samples), int(iterations), float(tol)

    def measure(self, ctx):
        gen = local_generator(ctx.seed, ctx.step)
        with preserved(ctx.model, ctx.train_batches):
            batches = take_batches(ctx.train_batches, self.batches, ctx.device)
            ctx.model.eval()
            hvp = HVP(ctx.model, fixed_objective(ctx.task), batches)
            trace = hutchinson_trace(hvp, self.samples, gen)
            top = power_iteration(hvp, self.iterations, self.tol, gen)
        return [("train", "trace", "avg", trace), ("train", "top_eigenvalue", "avg", top)]
