"""Data parallel training across processes (``torchrun``), kept out of the loop's own code.

Under ``torchrun --nproc-per-node N -m sparsity_exp run ...`` every rank runs the same command:

  * ``init_from_env()`` joins the process group from torchrun's variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT) before Hydra names the run folder, and hands every rank rank 0's
    run token, so all ranks resolve one run folder name;
  * ``trainer.batch_size`` stays the *global* batch: each rank takes batch_size / N of it
    (batches.py), so N ranks see exactly the batches one process would;
  * the model is wrapped in DistributedDataParallel for the forward/backward (gradients averaged);
  * before a row is made, loss/accuracy sums and every probe's device accumulators are summed
    over ranks (``sum_over_ranks``, ``probe_rows``), so the logged values are those of the global
    batch, equal to a single-process run's;
  * rank 0 alone writes the run folder; the other ranks record into a ``NullRecorder``.

Without torchrun's variables (a plain run) every helper here is a no-op.
"""
from __future__ import annotations

import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

RUN_TOKEN_ENV = "SPARSITY_EXP_RUN_TOKEN"


def enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(timeout_s: float = 1800) -> bool:
    """Join the process group torchrun describes; True when this process is one of several ranks.

    The backend pair serves CPU tensors with gloo and CUDA tensors with NCCL (where built), so
    ``trainer.device=cpu`` works under torchrun too. Rank 0's run token (its clock and process id)
    goes to every rank and into the environment, where the run-folder resolver reads it."""
    if not launched_by_torchrun():
        return False
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    token = [f"{time.time_ns()}-{os.getpid()}" if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(token, src=0)
    os.environ[RUN_TOKEN_ENV] = token[0]
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(name: str) -> torch.device | None:
    """Under DDP each rank drives the GPU of its LOCAL_RANK; None = not distributed or on CPU."""
    if not enabled() or name == "cpu" or not torch.cuda.is_available():
        return None
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module that runs training forwards/backwards: DDP around ``model`` under torchrun,
    ``model`` itself otherwise. Keep the bare ``model`` for state dicts, probes and evaluation."""
    if not enabled():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def sum_over_ranks(values, device: torch.device) -> list[float]:
    """Sum numbers/0-d tensors over ranks in one collective; returns host floats (one host sync)."""
    packed = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
    if enabled():
        dist.all_reduce(packed)
    return packed.tolist()


def probe_rows(probe, split: str) -> list:
    """``probe.rows(split)`` after its device accumulators were summed over ranks (in place)."""
    if enabled():
        for t in probe.accumulators(split):
            dist.all_reduce(t)
    return probe.rows(split)


def check_batch_size(batch_size: int, what: str = "trainer.batch_size") -> int:
    """The per-rank share of a global batch; it must split evenly."""
    n = world_size()
    if batch_size % n:
        from .errors import ConfigError

        raise ConfigError(f"{what}={batch_size} does not split over {n} ranks; use a multiple of {n}")
    return batch_size // n


class NullRecorder:
    """What ranks other than 0 record into: nothing (rank 0 writes the run folder)."""

    path = None
    rows_written = 0

    def add(self, *args, **kwargs) -> None: ...

    def flush(self, durable: bool = False) -> None: ...

    def save_arrays(self, *args, **kwargs) -> None:
        return None

    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def agree_on_run_dir(run_dir):
    """Rank 0's run folder for every rank (they already agree in a plain torchrun run; this also
    covers a folder name that used the clock, e.g. a sweep's). A rank whose own folder differs
    removes it when Hydra left it empty."""
    if not enabled():
        return run_dir
    chosen = [str(run_dir) if is_main() else None]
    dist.broadcast_object_list(chosen, src=0)
    from pathlib import Path

    chosen = Path(chosen[0])
    if Path(run_dir) != chosen:
        try:
            Path(run_dir).rmdir()
        except OSError:
            pass
    return chosen
