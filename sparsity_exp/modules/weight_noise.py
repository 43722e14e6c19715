"""Token-wise Gaussian weight noise (docs/paper.md §3.4, the authors' 'MagicSynapse'), training mode only:

    out = W x + b + eps * sigma_W * ||x||_2,   eps ~ N(0, I) per token and output unit,
    sigma_W = rho ||W||_F / sqrt(numel W),

the same in distribution as drawing i.i.d. N(0, sigma_W^2) weight noise for every token. The noise is
drawn without gradient (a perturbation, not a path for the gradient), from the global torch RNG, so
it follows the run's seed. For a LoRA-adapted linear, W is the effective weight (base + LoRA delta).
``grad_through_scale=True`` (``noise.grad_through_scale``) keeps eps drawn without gradient but lets
the gradient flow through the scale sigma_W ||x||: the loss then sees d(noise)/dW and d(noise)/dx,
a variant a study may compare with the authors' definition (the default, False).

Installed as forward hooks, so the linears, their state-dict keys and the sites stay as they are.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..sites import effective_weight  # noqa: F401 (lives beside the sites; re-exported for callers here)
from ..sites import is_lora as _is_lora

TARGETS = ("key", "key_value", "all")


def _linears(module: nn.Module):
    """Linear layers under ``module``; a LoRA-adapted linear counts once (not its inner parts)."""
    if isinstance(module, nn.Linear) or _is_lora(module):
        yield module
        return
    for child in module.children():
        yield from _linears(child)


def target_linears(site, targets: str) -> list[nn.Module]:
    """``key``: the linears reading the block input x~ (K; in a gated block the gate and the up
    projection, as the authors' T5 name filter ``wi`` matches both ``wi_0`` and ``wi_1``); ``key_value``:
    those and V where the site has one; ``all``: every linear under the deepest module holding the
    block's linears (ViT ``mlp``, T5 ``DenseReluDense``, LLaMA ``mlp``)."""
    if targets not in TARGETS:
        raise ConfigError(f"noise.targets={targets!r}; choose one of {list(TARGETS)}")
    if targets == "key":
        return [site.part(p) for p in site.inputs()]
    if targets == "key_value":
        return [site.part(p) for p in site.linears()]
    paths = [site.paths[p].split(".") for p in site.linears()]
    common = []
    for parts in zip(*paths):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    if len(paths) == 1:
        common = paths[0][:-1]
    parent = site.model.get_submodule(".".join(common)) if common else site.model
    return list(_linears(parent))


class WeightNoise:
    def __init__(self, rho: float = 0.1, grad_through_scale: bool = False):
        if rho < 0:
            raise ConfigError(f"noise.rho={rho} must be >= 0")
        self.rho = float(rho)
        self.grad_through_scale = bool(grad_through_scale)
        self.handles = []

    def __call__(self, module: nn.Module, args, out: torch.Tensor):
        if not module.training or self.rho == 0.0:
            return None
        with torch.set_grad_enabled(self.grad_through_scale and torch.is_grad_enabled()):
            w = effective_weight(module)
            sigma = self.rho * w.norm() / math.sqrt(w.numel())
            noise = torch.randn_like(out) * (sigma * args[0].norm(dim=-1, keepdim=True))
        return out + noise

    def install(self, linears) -> "WeightNoise":
        for lin in linears:
            self.handles.append(lin.register_forward_hook(self))
        return self

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
