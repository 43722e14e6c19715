"""Restricted norm (docs/paper.md §3.3): a lower bound on the affine weight gamma of the norm feeding each
MLP site, so the MLP input norm ||x~||^2 = sum_j gamma_j^2 n_j^2 stays >= d.

  clamp   (training from scratch): the norm loses its bias; gamma <- max(gamma, min_gamma) after
          every backward (min_gamma = 1).
  uplift  (sparsity finetuning, the paper's 'hard uplift'): the bias is kept but frozen;
          |gamma| <- max(|gamma|, min_gamma * min(t / T, 1)) after every backward, sign kept
          (sign(0) -> +), T = protocol.uplift_steps.

A norm without an affine weight (the LN-MLP default, norm_affine=false) has nothing to bound: it is
replaced by an affine LayerNorm with gamma = 1 and no bias, which computes the same function at the
start, and the bound then applies to that gamma. The bound is applied again after the optimizer step
so every forward (training, evaluation) and every checkpoint sees it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..train import Callback


def _affine_norm_for(site) -> nn.Module:
    """The site's norm, given an affine weight (init 1, no bias) if it had none."""
    norm = site.norm
    if norm is None:
        raise ConfigError(f"modules.restricted_norm: site {site.name} has no norm to restrict; set "
                          f"modules.restricted_norm.enabled=false")
    if isinstance(getattr(norm, "weight", None), torch.Tensor):
        return norm
    if not isinstance(norm, nn.LayerNorm):
        raise ConfigError(f"modules.restricted_norm: the norm of site {site.name} ({type(norm).__name__}) has no "
                          f"affine weight and is not a LayerNorm; set modules.restricted_norm.enabled=false")
    ref = next((t for t in list(norm.parameters()) + list(site.key.parameters())), None)
    new = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=True, bias=False,
                       device=ref.device if ref is not None else None, dtype=ref.dtype if ref is not None else None)
    site.replace("norm", new)
    return new


def _drop_bias(norm: nn.Module) -> None:
    bias = getattr(norm, "bias", None)
    if not isinstance(bias, nn.Parameter):
        return
    if isinstance(norm, nn.LayerNorm):
        norm.register_parameter("bias", None)  # F.layer_norm takes bias=None
    else:  # a norm whose forward may need the attribute: a zero, frozen bias is the same function
        with torch.no_grad():
            bias.zero_()
        bias.requires_grad_(False)


class RestrictedNorm(Callback):
    def __init__(self, sites, mode: str = "clamp", min_gamma: float = 1.0, uplift_steps: int = 0):
        if mode not in ("clamp", "uplift"):
            raise ConfigError(f"modules.restricted_norm.mode={mode!r}; choose auto, clamp or uplift")
        if int(uplift_steps) < 0:
            raise ConfigError(f"protocol.uplift_steps={uplift_steps} must be >= 0")
        self.sites, self.mode, self.min_gamma, self.uplift_steps = sites, mode, float(min_gamma), int(uplift_steps)
        self.norms = []
        for s in sites:
            norm = _affine_norm_for(s)
            if mode == "clamp":
                _drop_bias(norm)
            elif isinstance(getattr(norm, "bias", None), nn.Parameter):
                norm.bias.requires_grad_(False)
            self.norms.append(norm)
        self.project(0)

    def floor(self, step: int) -> float:
        if self.mode == "clamp" or self.uplift_steps == 0:
            return self.min_gamma
        return self.min_gamma * min(step / self.uplift_steps, 1.0)

    @torch.no_grad()
    def project(self, step: int) -> None:
        low = self.floor(step)
        for norm in self.norms:
            w = norm.weight
            if self.mode == "clamp":
                w.clamp_(min=low)
            else:
                sign = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
                w.copy_(sign * w.abs().clamp(min=low))

    def after_backward(self, trainer) -> None:
        self.project(trainer.step)

    def after_step(self, trainer) -> None:
        self.project(trainer.step)

    def log_rows(self, trainer) -> list:
        from ..probes.base import layer_rows

        values = torch.stack([n.weight.detach().abs().mean() for n in self.norms]).cpu().tolist()
        return [("modules", *row) for row in layer_rows("train", "norm_gamma_abs", values)]
