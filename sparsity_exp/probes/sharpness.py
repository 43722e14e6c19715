"""Sharpness of the trained model w.r.t. parameters and hidden features: the paper's 'adversarial
robustness w.r.t. hidden features and parameters', measured directly.

Each value is a loss increase L(perturbed) - L(clean) of the training objective on the first
``batches`` batches of the run's measurement set (probes/measurement.py: a seeded selection of
the training set, the same at every step and online or post hoc), model in eval mode:

  avg_param / worst_param   adaptive (elementwise-relative) weight perturbations of every trainable
      parameter, as in adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023):
      average case delta = rho |theta| (.) xi, xi ~ N(0, I), mean over ``samples`` draws;
      worst case max over |delta_i| <= rho |theta_i| (an l_inf ball in |theta|-scaled coordinates),
      ``steps`` projected sign-gradient ascent steps of ``step_size`` x rho from delta = 0.
  avg_feature_input / worst_feature_input   the same for a perturbation of every MLP block's input
      (the key layer's input x~), all blocks at once, token by token within an l2 ball of radius
      rho_feature ||x~_t|| (the clean token's norm): average case delta_t = rho_feature ||x~_t||
      xi_t / sqrt(d); worst case by projected normalised-gradient ascent.
  avg_feature_act / worst_feature_act       the same at the activation output a.
The feature perturbations go through probes/feature_offsets.py (the hooks the Hessian probe
differentiates through).

Worst-case values are the largest increase met along the ascent (delta = 0 included), so they are
>= 0 and lower bounds of the true maximum. rho = 0 gives exactly 0. A standalone measurement
(``measure_every``, ``at_end``, post hoc), deterministic given the seed and step.
"""
from __future__ import annotations

import math
from contextlib import ExitStack

import torch

from .base import Probe
from .feature_offsets import FeatureOffsets
from .measurement import measurement
from .standalone import fixed_objective, local_generator, mean_loss, trainable


def _normal_like(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.device, t.dtype)


class SharpnessProbe(Probe):
    name = "sharpness"
    metrics = ("avg_param", "worst_param", "avg_feature_input", "worst_feature_input", "avg_feature_act",
               "worst_feature_act")

    def __init__(self, sites, rho: float = 0.05, rho_feature: float | None = None, batches: int = 1,
                 samples: int = 10, steps: int = 5, step_size: float = 0.5, params: bool = True,
                 features: bool = True, **kw):
        super().__init__(sites, **kw)
        self.rho = float(rho)
        self.rho_feature = self.rho if rho_feature is None else float(rho_feature)
        self.batches, self.samples, self.steps = int(batches), int(samples), int(steps)
        self.step_size = float(step_size)
        self.params, self.features = bool(params), bool(features)

    # --- parameters -------------------------------------------------------------------------------
    @torch.no_grad()
    def _avg_param(self, model, task, batches, clean, gen) -> float:
        params = trainable(model)
        origin = [p.detach().clone() for p in params]
        total = 0.0
        for _ in range(self.samples):
            for p, o in zip(params, origin):
                p.copy_(o + self.rho * o.abs() * _normal_like(o, gen))
            total += float(mean_loss(model, task, batches)) - clean
        for p, o in zip(params, origin):
            p.copy_(o)
        return total / max(1, self.samples)

    def _worst_param(self, model, task, batches, clean) -> float:
        params = trainable(model)
        origin = [p.detach().clone() for p in params]
        scale = [o.abs() for o in origin]
        u = [torch.zeros_like(o) for o in origin]  # delta / |theta|, kept in [-rho, rho]
        best = 0.0
        for _ in range(self.steps):
            loss = mean_loss(model, task, batches)
            best = max(best, float(loss.detach()) - clean)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, o, s, ui, g in zip(params, origin, scale, u, grads):
                    if g is not None:
                        ui.add_(self.step_size * self.rho * torch.sign(g * s)).clamp_(-self.rho, self.rho)
                    p.copy_(o + ui * s)
        with torch.no_grad():
            best = max(best, float(mean_loss(model, task, batches)) - clean)
            for p, o in zip(params, origin):
                p.copy_(o)
        return best

    # --- hidden features --------------------------------------------------------------------------
    def _features(self, model, task, batches, where: str, gen) -> tuple[float, float]:
        hooks = FeatureOffsets(self.sites, where)
        rho = self.rho_feature
        avg_total, worst_total = 0.0, 0.0
        with ExitStack() as stack:
            hooks.attach(stack)
            for b in batches:
                hooks.deltas, hooks.record = {}, True
                with torch.no_grad():
                    clean = float(task(model, b, train=True)[0])
                hooks.record = False
                norms, shapes = dict(hooks.norms), dict(hooks.shapes)
                # average case
                acc = 0.0
                for _ in range(self.samples):
                    with torch.no_grad():
                        hooks.deltas = {k: rho * n * torch.randn(shapes[k], generator=gen).to(n.device, n.dtype)
                                        / math.sqrt(shapes[k][-1]) for k, n in norms.items()}
                        acc += float(task(model, b, train=True)[0]) - clean
                avg_total += acc / max(1, self.samples)
                # worst case: projected normalised-gradient ascent, token by token
                deltas = {k: torch.zeros(shapes[k], device=n.device, dtype=n.dtype, requires_grad=True)
                          for k, n in norms.items()}
                best = 0.0
                for step in range(self.steps + 1):
                    hooks.deltas = deltas
                    loss = task(model, b, train=True)[0]
                    best = max(best, float(loss.detach()) - clean)
                    if step == self.steps:
                        break
                    keys = list(deltas)
                    grads = torch.autograd.grad(loss, [deltas[i] for i in keys], allow_unused=True)
                    with torch.no_grad():
                        for i, g in zip(keys, grads):
                            if g is None:
                                continue
                            radius = rho * norms[i]
                            d = deltas[i] + self.step_size * radius * g / g.norm(dim=-1, keepdim=True).clamp(min=1e-30)
                            d = d * torch.clamp(radius / d.norm(dim=-1, keepdim=True).clamp(min=1e-30), max=1.0)
                            deltas[i] = d.requires_grad_(True)
                worst_total += best
                hooks.deltas = {}
        n = len(batches)
        return avg_total / n, worst_total / n

    def measure(self, ctx):
        gen = local_generator(ctx.seed, ctx.step)
        out = []
        with measurement(ctx, self.batches) as batches:
            model, task = ctx.model, fixed_objective(ctx.task)
            model.eval()
            if self.params:
                with torch.no_grad():
                    clean = float(mean_loss(model, task, batches))
                out += [("train", "avg_param", "avg", self._avg_param(model, task, batches, clean, gen)),
                        ("train", "worst_param", "avg", self._worst_param(model, task, batches, clean))]
            if self.features:
                for where in ("input", "act"):
                    avg, worst = self._features(model, task, batches, where, gen)
                    out += [("train", f"avg_feature_{where}", "avg", avg),
                            ("train", f"worst_feature_{where}", "avg", worst)]
        return out
