"""Checkpoint files of a run: ``<run>/checkpoints/step_<step, 8 digits>.pt``.

Each is a plain dict of tensors and numbers (loadable with ``torch.load(weights_only=True)``),
holding at least ``step`` and ``model`` (the state dict); the trainer adds ``optimizer`` and
``schedule``. Written atomically: a temporary file, then a rename."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from .record import as_created

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step_(\d{8})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def save_checkpoint(run_dir: Path, step: int, state: dict, path: Path | None = None) -> Path:
    """Write ``state`` (plus ``step``) to ``path`` (default: the step's checkpoint file) atomically."""
    path = Path(path) if path is not None else checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".step_", suffix=".tmp")
    as_created(fd)  # the mode of every other file in the run folder, not mkstemp's 0600
    os.close(fd)
    try:
        torch.save({"step": step, **state}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint of the run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := _NAME.search(p.name))]
    return sorted(found)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def prune_checkpoints(run_dir: Path, keep: int | None) -> None:
    """Keep the newest ``keep`` checkpoints; ``None`` or 0 keeps all."""
    if keep:
        for _, path in list_checkpoints(run_dir)[:-keep]:
            path.unlink(missing_ok=True)
