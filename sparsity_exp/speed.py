"""GPU speed options of a run (``conf/trainer``: compile, tf32, threads; ``conf/optim``: fused).

None of them changes what is computed beyond float rounding:
  * TF32 matmuls/convolutions on CUDA (``trainer.tf32``): ~10-bit mantissa products, fp32 sums;
  * ``torch.compile`` of the training forward (``trainer.compile``): hooks added to submodules of a
    compiled model are skipped, so compile-safe probes (``Probe.compile_safe``: the sparsity probe)
    register theirs before compilation (``before_compile``) and dynamo traces them into the graph;
    steps observed by any other probe run the same model eagerly (``Trainer.eager_model``).
    Evaluation and standalone measurements run eagerly;
  * ``trainer.compile_mode=reduce-overhead`` (CUDA graphs, for small models whose steps are bound by
    kernel launches): the compile-safe probes write preallocated statistics in place, and the
    compiled forward makes no host synchronisation, so both of its graphs (log step / other steps)
    can be captured;
  * one torch thread per job under the local joblib launcher (``trainer.threads=auto``), so that
    parallel jobs do not fight over the cores; ``trainer.jobs_per_gpu`` jobs share each visible GPU
    (``place_local_job``), so a grid of tiny runs fills a GPU instead of queueing.
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
        try:
            n = int(threads)
        except (TypeError, ValueError):  # set before the start-up check runs: said here in its words
            raise ConfigError(f"trainer.threads={threads!r}: must be auto or an integer >= 1 (torch threads)") from None
        if n < 1:
            raise ConfigError(f"trainer.threads={threads}; use a positive number or auto")
        os.environ["OMP_NUM_THREADS"] = str(n)  # for processes this job starts (DataLoader workers)
        torch.set_num_threads(n)
    return torch.get_num_threads()


def place_local_job(trainer_device: str, launcher_target: str, job_num: int) -> int | None:
    """Under the local (joblib) launcher, jobs share the visible GPUs round-robin: job ``n`` runs on
    ``cuda:(n mod GPUs)`` (``torch.cuda.set_device``, so ``trainer.device=auto|cuda`` lands there
    and the saved config does not change). Returns the GPU index, or None when nothing is placed
    (another launcher, no GPU, or an explicit ``cuda:N``/``cpu``)."""
    if "joblib" not in (launcher_target or "").lower() or str(trainer_device) not in ("auto", "cuda"):
        return None
    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        return None
    index = int(job_num) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return index


def set_backend_flags(trainer_cfg, device: torch.device) -> None:
    if device.type == "cuda":
        tf32 = bool(trainer_cfg.get("tf32", True))
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def training_forwards(model: torch.nn.Module, device: torch.device, trainer_cfg, probes=()):
    """(forward_model, eager_model) for the Trainer: DDP around ``model`` under torchrun, and
    torch.compile of that when ``trainer.compile`` is set (``trainer.compile_mode``,
    ``trainer.compile_backend``). Compile-safe ``probes`` register their hooks first, so that the
    compiled graph contains them."""
    eager = distributed.wrap_model(model, device)
    fast = eager
    if trainer_cfg.get("compile", False):
        mode = trainer_cfg.get("compile_mode") or None
        backend = trainer_cfg.get("compile_backend") or "inductor"
        if mode is not None and backend != "inductor":
            raise ConfigError(f"trainer.compile_mode={mode} needs trainer.compile_backend=inductor "
                              f"(got {backend}); set one of them back")
        for p in probes:
            if getattr(p, "compile_safe", False):
                p.before_compile(device, micro_batches=int(trainer_cfg.get("grad_accum", 1)))
        fast = torch.compile(eager, mode=mode, backend=backend)
    return fast, eager
