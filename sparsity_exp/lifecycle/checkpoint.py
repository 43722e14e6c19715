"""Checkpoints: the files ``<run>/checkpoints/step_<step, 8 digits>.pt`` and the trainer state
they hold.

Each is a plain dict of tensors and numbers (loadable with ``torch.load(weights_only=True)``),
holding at least ``step`` and ``model`` (the state dict). A training checkpoint (``capture``) holds
everything the next step depends on: model, optimizer, schedule, callbacks' and probes'
``state_dict()``, every random state (Python, NumPy, torch CPU and CUDA), the training stream's
position (``state.BatchStream``), the step, and the length of ``metrics.csv`` when it was written.
Resuming (``restore``) truncates ``metrics.csv`` to that length, so no row is lost or written
twice, and on CPU the resumed run ends with the same table as one that never stopped. Written
atomically (``sparsity_exp/atomic.py``)."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import torch

from ..errors import UserError
from ..atomic import atomic_path
from .state import BatchStream, rng_state, set_rng_state

REQUIRED = ("step", "model", "optimizer", "schedule", "rng", "data", "recorder")

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step_(\d{8})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def save_checkpoint(run_dir: Path, step: int, state: dict, path: Path | None = None) -> Path:
    """Write ``state`` (plus ``step``) to ``path`` (default: the step's checkpoint file) atomically."""
    path = Path(path) if path is not None else checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, prefix=".step_") as tmp:
        torch.save({"step": step, **state}, tmp)
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


# ---------------------------------------------------------------- what a training checkpoint holds

class CheckpointError(UserError):
    pass


# ---------------------------------------------------------------- what a checkpoint holds

def _stateful(objects) -> dict:
    """``state_dict()`` of the objects that have one, keyed by position and class name."""
    return {f"{i}.{type(o).__name__}": o for i, o in enumerate(objects) if callable(getattr(o, "state_dict", None))}


def capture(trainer) -> dict:
    """The trainer's whole state at a step boundary, as tensors and plain types."""
    state = {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "schedule": trainer.schedule.state_dict(),
        "callbacks": {k: o.state_dict() for k, o in _stateful(trainer.callbacks).items()},
        "probes": {k: o.state_dict() for k, o in _stateful(trainer.probes).items()},
        "rng": rng_state(),
        "data": trainer.batches.state_dict() if trainer.batches is not None else None,
        "total_steps": trainer.total_steps,
    }
    if hasattr(trainer.recorder, "position"):
        state["recorder"] = trainer.recorder.position()
    return state


def restore(trainer, state: dict, source="the checkpoint") -> None:
    """Load ``state`` (from ``capture``) into a freshly built trainer; then cut ``metrics.csv`` back to
    the checkpoint's rows. Everything is checked before the metrics file is touched."""
    try:
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line or "Missing" in line), first[0])
        raise CheckpointError(
            f"{source} does not fit the model and optimizer built from this config ({detail}). Resume with "
            f"the run's own config (its config.yaml), or start a new run in a new folder."
        ) from None
    trainer.schedule.load_state_dict(state["schedule"])
    for group in ("callbacks", "probes"):
        saved = state.get(group, {})
        for key, obj in _stateful(getattr(trainer, group)).items():
            if key not in saved:
                raise CheckpointError(f"{source} has no state for {group[:-1]} {key}; resume with the config the "
                                      f"run was started with, or start a new run")
            obj.load_state_dict(saved[key])
    if state.get("total_steps", trainer.total_steps) != trainer.total_steps:
        raise CheckpointError(f"{source} belongs to a run of {state['total_steps']} steps, this config has "
                              f"{trainer.total_steps}; resume with the same trainer.steps/epochs")
    trainer.step = int(state["step"])
    trainer.batches = BatchStream(trainer.train_batches)
    if state["data"] is not None:
        trainer.batches.load_state_dict(state["data"])
    set_rng_state(state["rng"])  # after the data replay, which may draw from the global generators
    trainer.resumed = True
    if hasattr(trainer.recorder, "truncate") and "recorder" in state:
        trainer.recorder.truncate(state["recorder"])
        trainer.last.update(last_values(trainer.recorder.path))


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def last_values(metrics: Path) -> dict:
    """(split, probe, metric, layer) -> last value in ``metrics.csv``, as the trainer keeps them."""
    last = {}
    with open(metrics, newline="") as f:
        for row in csv.DictReader(f):
            layer = int(row["layer"]) if row["layer"].lstrip("-").isdigit() else row["layer"]
            last[(row["split"], row["probe"], row["metric"], layer)] = _number(row["value"])
    return last
