"""What Hydra writes into a run folder before the run itself decides whether it may start.

Hydra rewrites ``<run>/.hydra/{config,overrides,hydra}.yaml`` and appends to ``run.log`` as soon as a
job starts, before ``execute`` has looked at the folder. When the command is then refused (another
config, trainer.resume=false, bad input), those are the very files the error message points the user
to: ``FolderSnapshot`` keeps their bytes so the refusal can put them back, and a folder that Hydra
made for a job that never started is removed (``discard_unstarted``)."""
from __future__ import annotations

import shutil
from pathlib import Path

# what Hydra (and the run lock) put into a folder before the run writes anything of its own
HYDRA_ONLY = {".hydra", "run.log", ".lock"}


class FolderSnapshot:
    """The bytes of ``.hydra/*`` and the length of ``run.log`` of an existing run folder."""

    def __init__(self, run_dir: Path | None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.files: dict[Path, bytes] = {}
        self.log_size: int | None = None
        self.existed = self.run_dir is not None and self.run_dir.is_dir()
        self.names: set[str] = set()
        if not self.existed:
            return
        self.names = {p.name for p in self.run_dir.iterdir()}
        hydra = self.run_dir / ".hydra"
        if hydra.is_dir():
            self.files = {p: p.read_bytes() for p in hydra.iterdir() if p.is_file()}
        log = self.run_dir / "run.log"
        if log.is_file():
            self.log_size = log.stat().st_size

    def covers(self, folder: Path) -> bool:
        return self.existed and Path(folder).resolve() == self.run_dir.resolve()

    def restore(self) -> None:
        """Put ``.hydra/`` and ``run.log`` back as they were when the snapshot was taken."""
        if not self.existed:
            return
        hydra = self.run_dir / ".hydra"
        if hydra.is_dir():
            for p in hydra.iterdir():
                if p.is_file() and p not in self.files:
                    p.unlink()
        for path, data in self.files.items():
            if not path.is_file() or path.read_bytes() != data:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        log = self.run_dir / "run.log"
        if self.log_size is None:
            if log.is_file() and log.stat().st_size == 0:
                log.unlink()
        elif log.is_file() and log.stat().st_size > self.log_size:
            with open(log, "r+b") as f:
                f.truncate(self.log_size)


def run_dir_argument(args: list[str]) -> Path | None:
    """The folder ``hydra.run.dir=`` names on the command line (the last one wins), if any."""
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    if not given or "${" in given[-1]:
        return None
    return Path(given[-1]).expanduser()


def discard_new(folder: Path, before: FolderSnapshot | None) -> None:
    """Undo a job that never started in ``folder``: remove the folder when this command made it,
    else remove what it added and put Hydra's files back."""
    folder = Path(folder)
    if before is None or not before.covers(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    for p in folder.iterdir():
        if p.name not in before.names:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    before.restore()


def discard_unstarted(folder: Path) -> bool:
    """Remove ``folder`` when it holds only what Hydra and the lock wrote at job start (a job refused
    before it started leaves nothing behind). Returns whether it was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    if not names <= HYDRA_ONLY:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True
