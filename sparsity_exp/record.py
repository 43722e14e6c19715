"""The run folder's files: a tidy long metrics table appended as the run goes, atomic JSON and
arrays. A crash loses at most the rows since the last flush; no file is left half-written."""
from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import numpy as np

COLUMNS = ("step", "epoch", "split", "probe", "metric", "layer", "value")
METRICS_FILE = "metrics.csv"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: readers see the old or the new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


class Recorder:
    """Rows into ``metrics.csv`` (one row per step, split, probe, metric, layer, value)."""

    def __init__(self, run_dir: Path, filename: str = METRICS_FILE, array_prefix: str = ""):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / filename
        self.array_prefix = array_prefix  # post-hoc arrays are kept apart from the run's own
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(COLUMNS)
            self._file.flush()
        self._pending: list[tuple] = []
        self.rows_written = 0

    def add(self, step: int, epoch: float, probe: str, rows) -> None:
        for split, metric, layer, value in rows:
            self._pending.append((step, round(epoch, 6), split, probe, metric, layer, value))

    def flush(self) -> None:
        if self._pending:
            self._writer.writerows(self._pending)
            self.rows_written += len(self._pending)
            self._pending.clear()
        self._file.flush()
        os.fsync(self._file.fileno())

    def save_arrays(self, name: str, step: int, **arrays) -> Path:
        """Large arrays (eigenvalues, histograms) go to ``arrays/<name>_step<step>.npz``."""
        folder = self.run_dir / "arrays"
        folder.mkdir(exist_ok=True)
        path = folder / f"{self.array_prefix}{name}_step{step:08d}.npz"
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz")
        os.close(fd)
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        self.flush()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
