"""Is a run marked ``running`` still alive?

A run writes its host and process id into ``summary.json`` when it starts (``identity``) and holds
an exclusive lock on ``<run>/.lock`` while it writes (``resume.RunLock``; the kernel releases it
when the process dies, SIGKILL included). ``collect`` asks ``running_state``:
  * ``running``: the lock is held (or, on another host, the run wrote within ``stale_after_s``);
  * ``dead``: on this host, the lock is free or the process is gone: it was killed, and
    ``trainer.resume=auto`` (or the same command) continues it;
  * ``stale``: on another host, nothing written for ``stale_after_s`` (default 30 min): probably dead.
The last write is the newest modification time of ``metrics.csv``, ``summary.json`` and checkpoints."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

STALE_AFTER_S = 1800.0


def identity() -> dict:
    """What ``summary.json`` records of the writing process while it runs."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started_at": round(time.time(), 3)}


def _status(folder: Path) -> str | None:
    try:
        return json.loads((Path(folder) / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def last_write(folder: Path) -> float:
    folder = Path(folder)
    paths = [folder / "metrics.csv", folder / "summary.json", *folder.glob("checkpoints/*.pt")]
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def running_state(folder: Path, summary: dict, stale_after_s: float = STALE_AFTER_S, now: float | None = None) -> str:
    """``running``, ``dead`` or ``stale`` for a folder whose summary says ``running``."""
    from .folders import RunLock

    folder = Path(folder)
    if (folder / ".lock").exists() and RunLock.held(folder):
        return "running"
    now_status = _status(folder)
    if now_status not in ("running", None):  # it ended between the caller's read and the lock check
        return now_status
    host = summary.get("host")
    if host is None:  # written before runs recorded their host: only a free lock says anything
        return "dead" if (folder / ".lock").exists() else "running"
    if host == socket.gethostname():  # the lock is free: the writer is gone
        return "dead"
    now = time.time() if now is None else now
    return "stale" if now - last_write(folder) > stale_after_s else "running"
