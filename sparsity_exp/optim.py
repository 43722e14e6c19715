"""Optimizers and learning-rate schedules from config (``conf/optim``)."""
from __future__ import annotations

import math

import torch

from .errors import ConfigError


def build_optimizer(cfg, params, device: torch.device | None = None) -> torch.optim.Optimizer:
    name = cfg.name
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                   **_fused(cfg, device))
    raise ConfigError(f"optim.name={name!r} is unknown; choose one of ['adam', 'adamw', 'sgd']")


def _fused(cfg, device) -> dict:
    """``optim.fused``: auto = the fused (one kernel for all parameters) Adam/AdamW on CUDA and
    torch's default (foreach) elsewhere; true/false force it."""
    fused = cfg.get("fused", "auto")
    if fused == "auto":
        return {"fused": True} if device is not None and device.type == "cuda" else {}
    if not isinstance(fused, bool):
        raise ConfigError(f"optim.fused={fused!r}; choose auto, true or false")
    return {"fused": fused}


def lr_factor(cfg, step: int, total_steps: int) -> float:
    """Multiplier of the base lr at ``step``: linear warmup from ``warmup_start`` over
    ``warmup_steps``, then constant, cosine (to ``min_factor``) or linear decay (to ``min_factor``)."""
    warm = int(cfg.warmup_steps)
    if step < warm:
        return cfg.warmup_start + (1.0 - cfg.warmup_start) * step / warm
    name = cfg.name
    if name == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    if name == "cosine":
        return cfg.min_factor + (1 - cfg.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if name == "linear":
        return 1.0 - (1 - cfg.min_factor) * progress
    raise ConfigError(f"optim.schedule.name={name!r} is unknown; choose one of ['constant', 'cosine', 'linear']")


def build_schedule(cfg, optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(cfg, 0, total_steps)  # fail on a bad name now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, total_steps))
