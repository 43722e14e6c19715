"""Atomic writes, written once: a temporary file beside the target, fsync, then a rename, so a
reader (or a run killed mid-write) sees the old file or the new one, never half of one."""
from __future__ import annotations

import functools
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """Read once: os.umask can only be read by setting it, which is not safe while threads create files."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def as_created(fd_or_path) -> None:
    """Give a ``mkstemp`` file (created 0600) the mode ``open()`` gives a new file (0666 minus the
    umask), so every file of a run folder has one mode."""
    mode = 0o666 & ~_umask()
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, mode)
    else:
        os.chmod(fd_or_path, mode)


@contextmanager
def atomic_path(path: Path, prefix: str | None = None):
    """Yield a temporary path beside ``path`` for a writer that wants a file name (``torch.save``,
    ``np.savez``, pandas); on success it is synced and renamed to ``path``, on failure removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=".tmp")
    as_created(fd)  # the mode of every other file in the run folder, not mkstemp's 0600
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
