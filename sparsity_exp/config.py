"""Where the Hydra configs live and the resolvers they use."""
from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from .errors import ConfigError
from .naming import shorten_items


def conf_dir() -> Path:
    """``conf/`` at the repository top level (beside the package; an editable install keeps it
    there). ``SPARSITY_EXP_CONF`` points elsewhere."""
    path = Path(os.environ.get("SPARSITY_EXP_CONF", Path(__file__).resolve().parent.parent / "conf"))
    if not (path / "config.yaml").is_file():
        raise ConfigError(
            f"no config.yaml in {path}: install sparsity-exp from its repository with `pip install -e .`, "
            f"or set SPARSITY_EXP_CONF to the folder holding the configs"
        )
    return path


def run_name(overrides: str, label=None) -> str:
    """Collision-free run folder name: time, a short summary of the overrides, a short hash.

    The hash covers the overrides, the clock to the nanosecond and the process id, so two runs of
    one command (even in parallel) never share a folder. Under torchrun every rank uses rank 0's
    clock and process id (distributed.init_from_env), so all ranks name one folder."""
    token = os.environ.get("SPARSITY_EXP_RUN_TOKEN")
    now, pid = (int(token.split("-")[0]), token.split("-")[1]) if token else (time.time_ns(), os.getpid())
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now / 1e9))
    # whole key=value items only: a cut value would name another run (steps=2 for steps=2000)
    summary = shorten_items(re.sub(r"[^A-Za-z0-9=,.+_-]+", "-", str(overrides or "defaults")), 60).strip("-,")
    digest = hashlib.sha1(f"{overrides}|{now}|{pid}".encode()).hexdigest()[:6]
    # name= goes into a path: no separators, not past the file-name limit (validation refuses such names)
    label = re.sub(r"[^A-Za-z0-9=,.+_-]+", "-", str(label))[:60] if label not in (None, "", "None") else None
    parts = [stamp] + ([label] if label else []) + [summary, digest]
    return "_".join(parts)


def local_jobs(jobs_per_gpu) -> int:
    """How many jobs the local launcher runs at once: ``jobs_per_gpu`` per visible GPU (small runs
    share a GPU; each job is placed on one by ``speed.place_local_job``), or one per CPU core
    without a GPU (each job runs one torch thread)."""
    import torch  # device_count asks NVML where it can and does not create a CUDA context

    try:
        per_gpu = int(jobs_per_gpu)
    except (TypeError, ValueError):
        raise ConfigError(f"trainer.jobs_per_gpu={jobs_per_gpu!r}; use a positive integer") from None
    if per_gpu < 1:
        raise ConfigError(f"trainer.jobs_per_gpu={jobs_per_gpu}; use a positive integer")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return per_gpu * gpus if gpus else max(1, os.cpu_count() or 1)


def register_resolvers() -> None:
    # use_cache: Hydra resolves hydra.run.dir more than once; the name must not change in between.
    if not OmegaConf.has_resolver("sx_run_name"):
        OmegaConf.register_new_resolver("sx_run_name", run_name, use_cache=True)
    if not OmegaConf.has_resolver("sx_local_jobs"):
        OmegaConf.register_new_resolver("sx_local_jobs", local_jobs, use_cache=True)


def writable_results_dir(args: list[str], conf: Path) -> None:
    """Fail before Hydra makes a folder when the run folders cannot be written: the last
    ``results_dir=`` (or ``hydra.run.dir=``/``hydra.sweep.dir=``) on the command line, else the
    default in config.yaml. The nearest existing folder on the path must be writable."""
    given = {a.split("=", 1)[0].lstrip("+~"): a.split("=", 1)[1] for a in args if "=" in a and not a.startswith("-")}
    target = (given.get("hydra.sweep.dir") if "-m" in args or "--multirun" in args else given.get("hydra.run.dir")) \
        or given.get("results_dir") or str(OmegaConf.load(conf / "config.yaml").get("results_dir", "results"))
    if "${" in target or "," in target:  # interpolated or swept: Hydra resolves it, the run checks it
        return
    path = Path(target).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"cannot write run folders under {target}: {existing} is a file, not a folder; "
                          f"set results_dir= to a writable folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write run folders under {target}: {existing} is not writable; "
                          f"set results_dir= to a writable folder")


def apply_overrides(cfg, overrides, conf: Path | None = None):
    """Hydra's override grammar (the one ``run`` and ``study`` take) applied to an already composed
    config, e.g. a run's saved ``config.yaml`` for ``sparsity-exp probe``: Hydra's parser reads each
    override (nested values ``{every: 1}``, quoting, ``${...}``), and it is applied with Hydra's rules:
    ``key=value`` changes a key the config has, ``+key=value`` adds one, ``++key=value`` adds or
    changes, ``~key`` deletes. A config group may be chosen again only for ``probes`` (``probes=full``
    swaps the probe set for conf/probes/full.yaml, applied before the key overrides as Hydra applies
    its defaults first); a saved run's model or data cannot be swapped. Sweeps (``a=1,2``) are refused.
    Returns ``cfg`` (changed in place); raises ``ConfigError`` naming the override at fault."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    conf = Path(conf or conf_dir())
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        detail = str(exc).strip().splitlines()[0]
        raise ConfigError(f"the overrides {' '.join(overrides)} cannot be read: {detail} (Hydra's override grammar: "
                          f"key=value, +new.key=value, ++key=value, ~key, nested values as {{a: 1, b: 2}})") from None
    groups = [o for o in parsed if "." not in o.key_or_group and (conf / o.key_or_group).is_dir()]
    OmegaConf.set_struct(cfg, True)  # as Hydra composes: key=value needs the key, + adds
    try:
        for o in groups + [o for o in parsed if o not in groups]:
            if o.is_sweep_override():
                raise ConfigError(f"{o.input_line}: one value per key here (a sweep is for `sparsity-exp run -m`)")
            if o in groups:
                _choose_group(cfg, o, conf)
                continue
            _apply(cfg, o)
    finally:
        OmegaConf.set_struct(cfg, False)
    return cfg


_ABSENT = object()


def _apply(cfg, o) -> None:
    """One key override on ``cfg`` (struct mode), by Hydra's rules for ``=``, ``+``, ``++`` and ``~``."""
    from omegaconf.errors import OmegaConfBaseException

    key, value = o.key_or_group, o.value()
    present = OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT
    try:
        if o.is_delete():
            if not present:
                raise ConfigError(f"{o.input_line}: the config has no key {key} to delete")
            parent, _, leaf = key.rpartition(".")
            with open_dict(cfg):
                del (OmegaConf.select(cfg, parent) if parent else cfg)[leaf]
        elif o.is_add():  # as Hydra: a key holding null may be added to
            if OmegaConf.select(cfg, key, default=None) is not None and not isinstance(value, (dict, list)):
                raise ConfigError(f"{o.input_line}: {key} is already in the config; drop the + to change "
                                  f"it (or ++ to add or change)")
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        elif o.is_force_add():
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        elif not present:
            raise ConfigError(f"{o.input_line}: the config has no key {key}; add it with +{o.input_line} "
                              f"(a probe's setting: +probes.<name>.<setting>=...)")
        else:
            OmegaConf.update(cfg, key, value, merge=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{o.input_line}: {str(exc).splitlines()[0]}") from None


def _choose_group(cfg, o, conf: Path) -> None:
    """``probes=<preset>``: the probe set of conf/probes/<preset>.yaml replaces the run's."""
    group, choice = o.key_or_group, o.value()
    if group != "probes":
        raise ConfigError(f"{o.input_line}: a saved run's {group} cannot be swapped (its checkpoints belong to it); "
                          f"only probes=<preset> chooses a group here, other keys take group.key=value")
    preset = conf / group / f"{choice}.yaml"
    if o.is_delete() or not isinstance(choice, str) or not preset.is_file():
        choices = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        raise ConfigError(f"{o.input_line}: no such preset; choose one of {choices}")
    node = OmegaConf.to_container(OmegaConf.load(preset), resolve=False) or {}  # ${trainer...} resolve in the run's
    with open_dict(cfg):
        cfg[group] = {k: v for k, v in node.items() if k != "defaults"}
