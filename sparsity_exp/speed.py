"""GPU speed options of a run (``conf/trainer``: compile, tf32, threads; ``conf/optim``: fused).

None of them changes what is computed beyond float rounding:
  * TF32 matmuls/convolutions on CUDA (``trainer.tf32``): ~10-bit mantissa products, fp32 sums;
  * ``torch.compile`` of the training forward (``trainer.compile``): forward hooks on submodules of
    a compiled model are not reliably called, so the steps that probes observe run the same model
    eagerly (``Trainer.eager_model``); evaluation and standalone measurements run eagerly too;
  * one torch thread per job under the local joblib launcher (``trainer.threads=auto``), so that
    parallel jobs do not fight over the cores.
"""
from __future__ import annotations

import os

import torch

from . import distributed
from .errors import ConfigError


def set_threads(threads, launcher_target: str = "") -> int:
    """``trainer.threads``: an integer, or ``auto`` = 1 under the joblib launcher (parallel jobs
    on one machine), torch's default otherwise. Returns the number torch uses."""
    if threads in (None, "auto"):
        threads = 1 if "joblib" in (launcher_target or "").lower() else None
    if threads is not None:
        n = int(threads)
        if n < 1:
            raise ConfigError(f"trainer.threads={threads}; use a positive number or auto")
        os.environ["OMP_NUM_THREADS"] = str(n)  # for processes this job starts (DataLoader workers)
        torch.set_num_threads(n)
    return torch.get_num_threads()


def set_backend_flags(trainer_cfg, device: torch.device) -> None:
    if device.type == "cuda":
        tf32 = bool(trainer_cfg.get("tf32", True))
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def training_forwards(model: torch.nn.Module, device: torch.device, trainer_cfg):
    """(forward_model, eager_model) for the Trainer: DDP around ``model`` under torchrun, and
    torch.compile of that when ``trainer.compile`` is set (``trainer.compile_mode``,
    ``trainer.compile_backend``)."""
    eager = distributed.wrap_model(model, device)
    fast = eager
    if trainer_cfg.get("compile", False):
        fast = torch.compile(eager, mode=trainer_cfg.get("compile_mode") or None,
                             backend=trainer_cfg.get("compile_backend") or "inductor")
    return fast, eager
