"""What Hydra writes into a run folder before the run itself decides whether it may start.

Hydra rewrites ``<run>/.hydra/{config,overrides,hydra}.yaml`` and appends to ``run.log`` as soon as a
job starts, before ``execute`` has looked at the folder. When the command is then refused (another
config, trainer.resume=false, bad input), those are the very files the error message points the user
to: ``FolderSnapshot`` keeps their bytes (and those of the run's own top-level files, which a refused
continuation may have rewritten: config.yaml, run.log) so the refusal can put them back, and a folder that Hydra
made for a job that never started is removed (``discard_unstarted``)."""
from __future__ import annotations

import shutil
from pathlib import Path

# what Hydra (and the run lock) put into a folder before the run writes anything of its own
HYDRA_ONLY = {".hydra", "run.log", ".lock"}


# a file larger than this is kept as its length only (a refusal can only have appended to it)
WHOLE_FILE_BYTES = 64 * 2**20


class FolderSnapshot:
    """What an existing run folder holds before a command that may be refused touches it: the bytes of
    ``.hydra/*`` and of every top-level file (``config.yaml``, ``summary.json``, ``run.log``, ...; of a
    file over ``WHOLE_FILE_BYTES`` its length), and the names at its top level. ``restore`` makes the
    folder byte-identical to what it was (the lock file aside)."""

    def __init__(self, run_dir: Path | None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.files: dict[Path, bytes] = {}
        self.sizes: dict[Path, int] = {}  # large top-level files: their length
        self.log_size: int | None = None
        self.existed = self.run_dir is not None and self.run_dir.is_dir()
        self.names: set[str] = set()
        if not self.existed:
            return
        self.names = {p.name for p in self.run_dir.iterdir()}
        hydra = self.run_dir / ".hydra"
        if hydra.is_dir():
            self.files = {p: p.read_bytes() for p in hydra.iterdir() if p.is_file()}
        for p in self.run_dir.iterdir():
            if p.is_file() and not p.is_symlink() and p.name != ".lock":
                size = p.stat().st_size
                if size <= WHOLE_FILE_BYTES:
                    self.files[p] = p.read_bytes()
                else:
                    self.sizes[p] = size
        log = self.run_dir / "run.log"
        if log.is_file():
            self.log_size = log.stat().st_size

    def covers(self, folder: Path) -> bool:
        return self.existed and Path(folder).resolve() == self.run_dir.resolve()

    def restore(self) -> None:
        """Put the folder back as it was when the snapshot was taken: files rewritten or appended to get
        their bytes back, files and folders added at the top level (or in ``.hydra/``) are removed."""
        if not self.existed:
            return
        hydra = self.run_dir / ".hydra"
        if hydra.is_dir():
            for p in hydra.iterdir():
                if p.is_file() and p not in self.files:
                    p.unlink()
        for p in list(self.run_dir.iterdir()):
            if p.name not in self.names and p.name != ".lock":
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        for path, data in self.files.items():
            if not path.is_file() or path.read_bytes() != data:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        for path, size in self.sizes.items():
            if path.is_file() and path.stat().st_size > size:
                with open(path, "r+b") as f:
                    f.truncate(size)
        log = self.run_dir / "run.log"
        if self.log_size is None and "run.log" not in self.names:
            if log.is_file() and log.stat().st_size == 0:
                log.unlink()


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
