"""Optimizers and learning-rate schedules from config (``conf/optim``)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

from .errors import ConfigError


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear", "inverse_sqrt")  # lr_factor's branches


def build_optimizer(cfg, params, device: torch.device | None = None) -> torch.optim.Optimizer:
    name = cfg.name
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                   **_fused(cfg, device))
    raise ConfigError(f"optim.name={name!r} is unknown; choose one of {list(OPTIMIZERS)}")


def _fused(cfg, device) -> dict:
    """``optim.fused``: auto = the fused (one kernel for all parameters) Adam/AdamW on CUDA and
    torch's default (foreach) elsewhere; true/false force it."""
    fused = cfg.get("fused", "auto")
    if fused == "auto":
        return {"fused": True} if device is not None and device.type == "cuda" else {}
    if not isinstance(fused, bool):
        raise ConfigError(f"optim.fused={fused!r}; choose auto, true or false")
    return {"fused": fused}
def _is_norm(module: torch.nn.Module) -> bool:
    """LayerNorm, RMSNorm, GroupNorm, BatchNorm and library norms such as transformers' T5LayerNorm."""
    return isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm,
                               torch.nn.modules.batchnorm._NormBase)) or type(module).__name__.endswith("Norm")


def param_groups(model: torch.nn.Module, cfg) -> list[dict]:
    """Parameter groups for ``build_optimizer``. With ``optim.decay_norm_and_bias=false`` biases
    (names ending in 'bias') and the parameters of norm layers get no weight decay (the paper's T5
    recipe leaves out names containing 'bias'); true (the default, the paper's ViT recipe) decays all."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.get("decay_norm_and_bias", True):
        return [{"params": [p for _, p in params]}]
    in_norm = {f"{m_name}.{p_name}" if m_name else p_name
               for m_name, m in model.named_modules() if _is_norm(m) for p_name, _ in m.named_parameters(recurse=False)}
    no_decay = [p for n, p in params if n in in_norm or n.rsplit(".", 1)[-1].endswith("bias")]
    ids = {id(p) for p in no_decay}
    return [{"params": [p for _, p in params if id(p) not in ids]}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(cfg, step: int, total_steps: int) -> float:
    """Multiplier of the base lr at ``step``: linear warmup from ``warmup_start`` over
    ``warmup_steps``, then constant, cosine (to ``min_factor``), linear decay (to ``min_factor``) or
    inverse square root (1/sqrt(step / warmup_steps), T5's schedule)."""
    warm = int(cfg.warmup_steps)
    if step < warm:
        return cfg.warmup_start + (1.0 - cfg.warmup_start) * step / warm
    name = cfg.name
    if name == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    if name == "inverse_sqrt":  # T5 / HF get_inverse_sqrt_schedule: 1/sqrt(step / warmup) after warmup
        return math.sqrt(max(1, warm) / max(step, 1, warm))
    if name == "cosine":
        return cfg.min_factor + (1 - cfg.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if name == "linear":
        return 1.0 - (1 - cfg.min_factor) * progress
    raise ConfigError(f"optim.schedule.name={name!r} is unknown; choose one of {sorted(SCHEDULES)}")


def build_schedule(cfg, optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    # plain values, read once: an OmegaConf lookup per field per step cost ~0.3 ms of a small model's step
    plain = SimpleNamespace(**(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)))
    lr_factor(plain, 0, total_steps)  # fail on a bad name now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(plain, s, total_steps))
