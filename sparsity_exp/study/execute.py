"""Every arm x seed of a suite through ``sparsity-exp run -m`` (the machinery of a grid: launchers,
``trainer.resume=auto``, failure isolation), and finding each one's run folder afterwards.

Which runs are still needed is decided the way ``trainer.resume=auto`` decides it: the arm's config is
composed (Hydra's compose API, the same config files and overrides) and the newest run folder under
the study's ``runs/`` whose config equals it (``lifecycle.folders.find_matching_run``) is its run. Arms whose
seeds are all completed launch nothing, so rerunning a finished study runs nothing; two arms (or two
claims) with the same config share their runs.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from ..config import conf_dir, register_resolvers
from ..errors import ConfigError
from ..lifecycle.folders import find_matching_run, read_status, run_configs
from .suite import Arm, Dataset, Suite

MARK = "LAUNCHED"  # study/launch.py's line after each arm (here, not there: launch imports the cli, which imports us)

# overrides the study sets on every run; a user override of these keys is refused
STUDY_KEYS = ("results_dir", "seed", "trainer.resume", "hydra.sweep.dir")
_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                  "t10k-labels-idx1-ubyte")


@dataclass
class Job:
    arm: Arm
    seed: int
    overrides: list[str]  # everything but results_dir / resume / sweep dir
    folder: Path | None = None
    status: str = "missing"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def check_user_overrides(overrides: list[str]) -> None:
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not key=value; the study takes Hydra overrides such as "
                              f"trainer.device=cuda or hydra/launcher=local")
        if _key(o) in STUDY_KEYS:
            raise ConfigError(f"{_key(o)}= is set by the study for every run (seeds come from the suite, "
                              f"runs go to <out>/runs); use --seeds and --out instead")


# ------------------------------------------------------------------------------ data: auto

def _data_root(user: list[str]) -> Path:
    given = [o.split("=", 1)[1] for o in user if _key(o) == "data.root"]
    return Path(given[-1] if given else os.environ.get("SPARSITY_EXP_DATA", "data")).expanduser()


def _has_idx(folder: Path) -> bool:
    return all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in _FASHION_FILES)


def find_fashion_mnist(root: Path, stage: Path, link: bool = True) -> Path | None:
    """A data.root under which data=fashion_mnist finds its files, or None. torchvision's layout
    (<root>/FashionMNIST/raw) is used as it is; a folder holding the IDX files themselves (Debian's
    dataset-fashion-mnist: /usr/share/datasets/fashion-mnist/*.gz, read-only) is linked into
    ``stage``/FashionMNIST/raw, where the loader may unpack them (``link=False``, a dry run: only say where)."""
    if _has_idx(root / "FashionMNIST" / "raw"):
        return root
    if _has_idx(root) and not link:
        return stage
    if _has_idx(root):
        raw = stage / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for name in _FASHION_FILES:
            for src in (root / name, root / f"{name}.gz"):
                dst = raw / src.name
                if src.is_file() and not dst.exists():
                    dst.symlink_to(src.resolve())
        return stage
    return None


def choose_dataset(suite: Suite, user: list[str], out: Path, link: bool = True) -> tuple[Dataset | None, list[str], list[str]]:
    """The first available entry of ``suite.datasets``, the overrides it adds to ``data: auto`` arms, and
    the user overrides for every arm. ``data.root=`` is the study's to read: it goes to the ``data: auto``
    arms only (the embedded digits have no root)."""
    root = _data_root(user)
    rest = [o for o in user if _key(o) != "data.root"]
    for ds in suite.datasets:
        if ds.needs is None:
            given = [o for o in user if _key(o) == "data.root"]
            return ds, list(ds.overrides) + (given[-1:] if ds.root else []), rest
        if ds.needs == "fashion_mnist":
            found = find_fashion_mnist(root, out / "data", link)
            if found is not None:
                return ds, [*ds.overrides, f"data.root={found.resolve()}"], rest
            continue
        raise ConfigError(f"{suite.path.name}: dataset {ds.name!r} needs {ds.needs!r}; the study can look for "
                          f"fashion_mnist only")
    return None, [], rest


# ------------------------------------------------------------------------------ planning and running

def plan_jobs(suite: Suite, user: list[str], out: Path, arms: set[str] | None = None, seeds: list[int] | None = None,
              link: bool = True) -> tuple[list[Job], Dataset | None]:
    """The jobs of the suite's arms (or only ``arms``) over its seeds (or ``seeds``: a stage of --seeds auto)."""
    dataset, data_overrides, user = choose_dataset(suite, user, out, link)
    jobs = []
    for arm in suite.used_arms():
        if arms is not None and arm.name not in arms:
            continue
        data = data_overrides if arm.data == "auto" else []
        if arm.data == "auto" and dataset is not None:
            arm.dataset = dataset.name  # arm.data stays `auto`: a later stage plans the same jobs again
        for seed in suite.seeds if seeds is None else seeds:
            jobs.append(Job(arm, seed + arm.seed_offset, [*data, *arm.overrides, *user]))
    return jobs, dataset


def compose(overrides: list[str]):
    """The run config ``sparsity-exp run <overrides>`` would get (without the hydra node)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    plain = [o for o in overrides if not _key(o).startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose("config", overrides=plain)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"the overrides {' '.join(plain)} do not compose: {str(exc).splitlines()[0]}") from None


def locate(jobs: list[Job], runs: Path) -> None:
    """Fill each job's folder and status from the run folders under ``runs`` (matched by config). The
    folders' configs are read once, and each arm's config is composed once (the seed set per job)."""
    index = run_configs(runs)
    composed: dict[tuple, object] = {}
    for job in jobs:
        key = tuple(job.overrides)
        if key not in composed:
            composed[key] = compose([*job.overrides, f"results_dir={runs}", "trainer.resume=auto"])
        cfg = copy.deepcopy(composed[key])
        cfg.seed = job.seed
        job.folder = find_matching_run(cfg, runs, runs=index)
        job.status = read_status(job.folder).get("status", "partial") if job.folder else "missing"


# `study --reproducible`: the runs' processes get machine.REPRODUCIBLE_ENV (set by main before any launch)
REPRODUCIBLE = False


def seeds_present(runs: Path) -> set[int]:
    """Every seed a run folder under ``runs`` was run with (its config.yaml), whatever the arm."""
    out = set()
    for _, cfg in run_configs(runs):
        try:
            out.add(int(cfg["seed"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _child_env() -> dict:
    """The runs import the same sparsity_exp as the study (this tree first on the path); in reproducible
    mode with the environment that pins their kernels (study/machine.py), read when they import torch."""
    from .machine import mode_env

    env = mode_env(REPRODUCIBLE)
    tree = str(Path(__file__).resolve().parents[2])
    path = env.get("PYTHONPATH", "")
    return {**env, "PYTHONPATH": tree + (os.pathsep + path if path else "")}


def pending_groups(jobs: list[Job], everything: bool = False) -> dict[tuple, list[Job]]:
    """The jobs still to run (or all of them), grouped by config: one ``run -m`` each."""
    pending: dict[tuple, list[Job]] = {}
    for job in jobs:
        if everything or job.status != "completed":
            pending.setdefault(tuple(job.overrides), []).append(job)
    return pending


def run_command(group: list[Job], runs: Path) -> list[str]:
    """The ``sparsity-exp run -m`` command line of one arm's seeds (argv after ``python -m sparsity_exp``)."""
    seeds = ",".join(str(s) for s in dict.fromkeys(j.seed for j in group))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return ["run", "-m", *group[0].overrides, f"seed={seeds}", f"results_dir={runs}", "trainer.resume=auto",
            "trainer.progress=false", f"hydra.sweep.dir={runs}/multirun/{stamp}_{group[0].arm.name}"]


def run_pending(jobs: list[Job], runs: Path, log=print, logfile: Path | None = None) -> int:
    """Launch one ``run -m`` per arm over the seeds it still lacks, all in one process
    (study/launch.py: start-up, imports and decoded data paid once; its output appended to
    ``logfile``); returns the number of runs launched."""
    launches, launched = [], 0
    for overrides, group in pending_groups(jobs).items():
        seeds = ",".join(str(s) for s in dict.fromkeys(j.seed for j in group))
        args = run_command(group, runs)[1:]  # after "run"
        log(f"[study] arm {group[0].arm.name}: seeds {seeds} ({len(group)} run(s))\n  run " + " ".join(args))
        launches.append({"name": group[0].arm.name, "args": args})
        launched += len(seeds.split(","))
    if not launches:
        return 0
    if logfile is not None:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") if logfile is not None else nullcontext() as f:
        proc = subprocess.Popen([sys.executable, "-m", "sparsity_exp.study.launch"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_child_env())
        proc.stdin.write(json.dumps(launches))
        proc.stdin.close()
        for line in proc.stdout:
            if f is not None:
                f.write(line)
                f.flush()
            if line.startswith(MARK):
                _, name, _, code, _, seconds, _ = line.split()
                log(f"[study]   arm {name}: exit {code} after {seconds} s"
                    + (f" (output in {logfile})" if logfile is not None else ""))
    if proc.wait():
        log(f"[study]   exit {proc.returncode}" + (f" (output in {logfile})" if logfile is not None else ""))
    return launched
