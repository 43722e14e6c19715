"""Activation modules for MLP sites.

Every activation is an ``nn.Module`` (hooks need modules) that also declares
  * ``zero_output(a)``: where the output counts as zero (|a| <= tol, the paper's habitat 1e-6);
  * ``flat_region(h)``: where sigma'(h) = 0, so derivative sparsity is exact for it;
  * ``derivative(h)``: sigma'(h) in closed form, for mean sigma'(h)^2.
Probes use these declarations and never guess from the function's values.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ZERO_TOL = 1e-6  # PAPER.md §1.1: activation habitat y in [-1e-6, 1e-6]


class SiteActivation(nn.Module):
    """Base class: an activation that knows its zero-output and zero-derivative regions."""

    zero_tol: float = ZERO_TOL

    def zero_output(self, a: torch.Tensor) -> torch.Tensor:
        return a.abs() <= self.zero_tol

    def flat_region(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def derivative(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_step(self, step: int) -> None:
        """Schedules (e.g. activation mixing) read the optimizer step; static ones ignore it."""


class ReLU(SiteActivation):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h)

    def flat_region(self, h: torch.Tensor) -> torch.Tensor:
        return h <= 0

    def derivative(self, h: torch.Tensor) -> torch.Tensor:
        return (h > 0).to(h.dtype)


ACTIVATIONS: dict[str, Callable[..., SiteActivation]] = {"relu": ReLU}


def build_activation(cfg) -> SiteActivation:
    """Build the activation named by ``cfg.name`` with the remaining fields as arguments."""
    from .errors import ConfigError

    kwargs = {k: v for k, v in dict(cfg).items() if k != "name"}
    name = cfg["name"]
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation.name={name!r} is unknown; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name](**kwargs)
