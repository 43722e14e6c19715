"""Wall time of a run that was stopped and continued: ``<run>/segments.json`` lists each process that
trained the run (its start time, and for a continuation the step and the write time of the checkpoint
it continued from). ``total_wall_time`` sums, for every earlier segment, the time from its start to
the checkpoint the next one continued from (work after that checkpoint was done again, so it is not
counted twice), plus the current segment's own time."""
from __future__ import annotations

import json
import time
from pathlib import Path

FILE = "segments.json"


def _read(run_dir: Path) -> list[dict]:
    try:
        data = json.loads((Path(run_dir) / FILE).read_text())
        return data if isinstance(data, list) else []
    except (OSError, ValueError):
        return []


def start_segment(run_dir: Path, checkpoint: Path | None, step: int | None, started_at: float | None = None) -> None:
    """Record that a process starts training the run now (fresh when ``checkpoint`` is None)."""
    from ..atomic import write_json

    entry = {"started_at": round(time.time() if started_at is None else started_at, 3)}
    if checkpoint is not None:
        entry.update(resumed_from_step=int(step), checkpoint_written_at=round(Path(checkpoint).stat().st_mtime, 3))
    previous = _read(run_dir) if checkpoint is not None else []  # a fresh start (or restart) begins a new list
    write_json(Path(run_dir) / FILE, [*previous, entry])


def total_wall_time(run_dir: Path, current_s: float) -> float:
    """Seconds spent on the run over all its segments (the current one lasting ``current_s``)."""
    seg = _read(run_dir)
    earlier = sum(max(0.0, nxt.get("checkpoint_written_at", 0.0) - cur.get("started_at", 0.0))
                  for cur, nxt in zip(seg, seg[1:]))
    return earlier + current_s


def snapshot(run_dir: Path) -> bytes | None:
    path = Path(run_dir) / FILE
    return path.read_bytes() if path.is_file() else None


def restore(run_dir: Path, data: bytes | None) -> None:
    """Put the ledger back as ``snapshot`` found it (a continuation refused after it was recorded)."""
    from ..atomic import write_atomic

    path = Path(run_dir) / FILE
    if data is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, data)
