"""The run folder's files: a tidy long metrics table appended as the run goes, and arrays written
atomically (``atomic.py``, which also writes the folder's JSON files). A crash loses at most the rows
since the last flush; no file is left half-written."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .errors import UserError
from .atomic import atomic_path

COLUMNS = ("step", "epoch", "split", "probe", "metric", "layer", "value")
METRICS_FILE = "metrics.csv"
POSTHOC_FILE = "posthoc_metrics.csv"  # rows of `sparsity-exp probe` (posthoc.py)


TENSORBOARD_DIR = "tensorboard"


class RecorderError(UserError):
    pass


def _count_rows(path: Path) -> int:
    """Data rows of a CSV written here (no value holds a newline): lines minus the header."""
    with open(path, "rb") as f:
        return max(0, sum(1 for _ in f) - 1)


def tensorboard_writer(log_dir: Path):
    """A TensorBoard SummaryWriter, or a clear error when the optional package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch's writer needs the tensorboard package
        from .errors import ConfigError

        raise ConfigError("trainer.tensorboard=true needs the tensorboard package: "
                          "`pip install tensorboard` (or `pip install -e '.[tensorboard]'`), "
                          "or set trainer.tensorboard=false") from exc
    return SummaryWriter(log_dir=str(log_dir))


class Recorder:
    """Rows into ``metrics.csv`` (one row per step, split, probe, metric, layer, value); with
    ``tensorboard=True`` the same rows also go to ``<run>/tensorboard/`` as scalars tagged
    ``<probe>/<split>/<metric>/<layer>``, written at each flush."""

    def __init__(self, run_dir: Path, filename: str = METRICS_FILE, array_prefix: str = "",
                 tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self._tb = tensorboard_writer(self.run_dir / TENSORBOARD_DIR) if tensorboard else None
        self.path = self.run_dir / filename
        self.array_prefix = array_prefix  # post-hoc arrays are kept apart from the run's own
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(COLUMNS)
            self._file.flush()
        self._pending: list[tuple] = []
        self.rows_written = 0 if new else _count_rows(self.path)  # rows in the file, all runs of it

    def add(self, step: int, epoch: float, probe: str, rows) -> None:
        for split, metric, layer, value in rows:
            self._pending.append((step, round(epoch, 6), split, probe, metric, layer, value))

    def flush(self, durable: bool = False) -> None:
        """Hand the pending rows to the operating system (a crash of the process loses none of
        them). ``durable``: also fsync to the disk (a power cut loses none); checkpoints and close
        ask for it. An fsync at every log step cost ~5% of a small model's training time."""
        if self._pending:
            self._writer.writerows(self._pending)
            self._mirror(self._pending)
            self.rows_written += len(self._pending)
            self._pending.clear()
        self._file.flush()
        if durable:
            os.fsync(self._file.fileno())

    def _mirror(self, rows) -> None:
        if self._tb is None:
            return
        for step, _epoch, split, probe, metric, layer, value in rows:
            self._tb.add_scalar(f"{probe}/{split}/{metric}/{layer}", value, global_step=step)
        self._tb.flush()

    def position(self) -> dict:
        """Where the table ends after a flush; a checkpoint records it, a resume truncates to it."""
        self.flush()
        return {"bytes": os.fstat(self._file.fileno()).st_size, "rows": self.rows_written}

    def truncate(self, position: dict) -> None:
        """Cut the table back to ``position``: rows written after that checkpoint will be written again."""
        self.flush()
        size = os.fstat(self._file.fileno()).st_size
        if size < position["bytes"]:
            raise RecorderError(f"{self.path} is shorter ({size} bytes) than when the checkpoint was written "
                                f"({position['bytes']} bytes): rows were lost; start a new run")
        os.truncate(self.path, position["bytes"])
        rows = _count_rows(self.path)
        if rows != position["rows"]:
            raise RecorderError(f"{self.path} holds {rows} rows where the checkpoint expects {position['rows']}: "
                                f"the file was edited; start a new run")
        self.rows_written = rows

    def save_arrays(self, name: str, step: int, **arrays) -> Path:
        """Large arrays (eigenvalues, histograms) go to ``arrays/<name>_step<step>.npz``."""
        folder = self.run_dir / "arrays"
        folder.mkdir(exist_ok=True)
        path = folder / f"{self.array_prefix}{name}_step{step:08d}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})
        return path

    def close(self) -> None:
        self.flush(durable=True)
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
