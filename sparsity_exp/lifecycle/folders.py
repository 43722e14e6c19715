"""Run folders: which one a run writes to, whether it continues the run already there, and the
lock that keeps one process per folder. (What a checkpoint holds and how a trainer is restored
from it: ``checkpoint.py``.)

Which folder a run writes to (``trainer.resume``):
  * null (default): Hydra's run folder; if it already holds checkpoints (``hydra.run.dir=<folder>``)
    the run continues from the newest one.
  * ``auto``: the newest run folder under ``results_dir`` whose config equals this one (ignoring
    ``IGNORED`` keys) and that no process is writing; a completed one means there is nothing to
    do; none found means a fresh run in a new folder. Rerunning a sweep with it resumes each job.
  * a path: that run folder (or a checkpoint file in it, which must be its newest).
  * false: never continue; a folder that already holds a run is refused.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from ..dotted import RUN_SETTINGS, flatten, is_run_setting
from ..errors import ConfigError
from ..record import METRICS_FILE
from .checkpoint import REQUIRED, CheckpointError, list_checkpoints, load_checkpoint

# Keys that may differ between a run and its continuation: where things are and how they are shown,
# not what is computed.
IGNORED = RUN_SETTINGS  # dotted.py: where a run writes and how it is shown or placed
LOCK_FILE = ".lock"
# Keys added after runs were already written, with the value that computes what the run did before
# the key existed (ANY: the key only feeds other keys, which are compared themselves). A run folder
# written before the key existed is no different for it, so it can still be continued (resume, a
# rerun study) after an upgrade. A new key that changes what is computed must not be listed here.
ANY = object()
ADDED_KEYS = {
    "noise.grad_through_scale": False,     # the authors' noise, drawn without gradient
    "model.noise_targets": ANY,            # feeds noise.targets
    "model.zeroth_bias_placement": ANY,    # feeds modules.zeroth_bias.placement
    "model.grad_log10_range": ANY,         # feeds the gradient_density probe's range
    "activation.grad_clip": ANY,           # feeds trainer.grad_clip
}


# ---------------------------------------------------------------- which folder, which checkpoint

def config_differences(old, new) -> list[str]:
    """``key: old -> new`` for every key (outside ``IGNORED``) on which two configs differ."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if not is_run_setting(k))
    return [f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}" for k in keys
            if a.get(k) != b.get(k) and not _added_since(k, a, b)]


def _added_since(key: str, old: dict, new: dict) -> bool:
    """``key`` is absent from the older config and the newer one holds it at its before-the-key value."""
    if key in old or key not in ADDED_KEYS:
        return False
    before = ADDED_KEYS[key]
    return before is ANY or new[key] == before


def _read_config(run_dir: Path):
    try:
        return OmegaConf.load(run_dir / "config.yaml")
    except Exception:  # an unreadable config.yaml: not a folder we can continue
        return None


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def has_output(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return any((run_dir / n).exists() for n in ("summary.json", METRICS_FILE, "checkpoints"))


@dataclass
class Plan:
    """How ``execute`` starts in a run folder."""

    state: dict | None = None  # continue from this checkpoint state
    checkpoint: Path | None = None
    completed: dict | None = None  # the folder holds a completed run: its summary, nothing to do
    restart: bool = False  # the folder holds rows but no checkpoint: start again from step 0


def plan(cfg, run_dir: Path) -> Plan:
    """Decide how to start in ``run_dir`` without writing anything. Raises ``UserError`` when the
    folder cannot be continued with this config."""
    run_dir = Path(run_dir)
    if not has_output(run_dir):
        return Plan()
    status = read_status(run_dir).get("status", "unknown")
    if _resume_mode(cfg) is False:
        raise ConfigError(f"{run_dir} already holds a run (status {status}) and trainer.resume=false; pick a new "
                          f"folder (leave hydra.run.dir out), or drop trainer.resume=false to continue it")
    old = _read_config(run_dir)
    if old is None and (run_dir / "config.yaml").exists():  # the run's config cannot be compared: refuse
        raise ConfigError(f"{run_dir / 'config.yaml'} cannot be read, so this config cannot be checked against "
                          f"the run's; restore the file (its .hydra/config.yaml holds the composed config), or "
                          f"start a new run in a new folder")
    if old is not None:
        diff = config_differences(old, cfg)
        if diff:
            raise ConfigError(
                f"cannot continue {run_dir}: its config differs in {'; '.join(diff[:5])}"
                f"{' ...' if len(diff) > 5 else ''}. Continue it with its own config: sparsity-exp resume "
                f"{shlex.quote(str(run_dir))}; or leave hydra.run.dir/trainer.resume out for a new run"
            )
    if status == "completed":
        return Plan(completed=read_status(run_dir))
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return Plan(restart=True)
    step, path = checkpoints[-1]
    earlier = f" (the one before is {checkpoints[-2][1].name})" if len(checkpoints) > 1 else ""
    try:
        state = load_checkpoint(path)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: the file is damaged or not a checkpoint). "
            f"Move it out of the folder to continue from the previous checkpoint{earlier}, or start a new run"
        ) from None
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)} (written by an older version, or "
                              f"not a training checkpoint); it cannot be resumed from: start a new run")
    return Plan(state=state, checkpoint=path)


def _resume_mode(cfg):
    trainer = cfg.get("trainer") or {}
    mode = trainer.get("resume", None)
    if isinstance(mode, str) and mode.lower() in ("false", "no", "off"):
        return False
    if isinstance(mode, str) and mode.lower() in ("", "null", "none"):
        return None
    return "auto" if mode is True else mode


def resolve_run_dir(cfg, default: Path) -> Path:
    """The folder this run writes to: ``default`` (Hydra's) unless ``trainer.resume`` names another."""
    mode = _resume_mode(cfg)
    if mode is None or mode is False:
        return Path(default)
    if mode == "auto":
        return find_matching_run(cfg, Path(cfg.get("results_dir", "results")), exclude=Path(default)) or Path(default)
    path = Path(str(mode)).expanduser()
    if path.suffix == ".pt":
        newest = list_checkpoints(path.parent.parent)
        if not path.is_file() or not newest or newest[-1][1].resolve() != path.resolve():
            raise ConfigError(f"trainer.resume={mode}: a run continues from its newest checkpoint"
                              f"{f' ({newest[-1][1]})' if newest else ''}; give the run folder instead")
        path = path.parent.parent
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"trainer.resume={mode} is not a run folder (no config.yaml there); give a folder "
                          f"under {cfg.get('results_dir', 'results')}/, or trainer.resume=auto")
    return path


def run_configs(results_dir: Path) -> list[tuple[Path, dict]]:
    """Every run folder under ``results_dir`` (single runs and sweep jobs) with its config, flattened:
    read once for a caller that matches many configs against them (a study locating its runs; reading
    each folder's config.yaml again for every job made that quadratic)."""
    if not results_dir.is_dir():
        return []
    out = []
    for config in list(results_dir.glob("*/config.yaml")) + list(results_dir.glob("multirun/*/*/config.yaml")):
        old = _read_config(config.parent)
        if old is not None:
            out.append((config.parent, flatten(old)))
    return out


def find_matching_run(cfg, results_dir: Path, exclude: Path | None = None,
                      runs: list[tuple[Path, dict]] | None = None) -> Path | None:
    """The newest run folder under ``results_dir`` (single runs and sweep jobs) with this config
    (``runs``: the folders and configs of ``run_configs``, when the caller has read them already)."""
    new = flatten(cfg)
    found = []
    for folder, old in run_configs(results_dir) if runs is None else runs:
        if exclude is not None and folder.resolve() == exclude.resolve():
            continue
        if config_differences(old, new) or RunLock.held(folder):
            continue
        config = folder / "config.yaml"
        stamp = max(p.stat().st_mtime for p in (config, folder / "summary.json") if p.exists())
        found.append((stamp, str(folder), folder))
    return max(found)[2] if found else None


def discard_if_empty(folder: Path) -> None:
    """Remove a folder that holds only what Hydra writes at job start (``.hydra/``, an empty log):
    the job went on in another folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir()}
    logs_empty = all(p.stat().st_size == 0 for p in folder.glob("*.log"))
    if names <= {".hydra", "run.log"} and logs_empty:
        shutil.rmtree(folder, ignore_errors=True)


class RunLock:
    """An exclusive lock on a run folder while a process writes to it (released by the kernel when
    the process dies, even on SIGKILL), so two processes never continue one run."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            return self
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise ConfigError(f"{self.path.parent} is being written by another process; wait for it to finish, or "
                              f"start a new run in a new folder") from None
        return self

    def __enter__(self):
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None

    @staticmethod
    def held(run_dir: Path) -> bool:
        path = Path(run_dir) / LOCK_FILE
        if not path.exists():
            return False
        try:
            import fcntl
        except ImportError:
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)
