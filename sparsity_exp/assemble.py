"""The one front door: ``assemble(cfg)`` builds everything a run is made of, and ``load_run(dir)``
builds it again from a run folder (its ``config.yaml``) with the weights of a checkpoint.

Training (``run.py``), resuming, post-hoc probes (``posthoc.py``) and finetuning from an earlier run
(``protocol=sparsity_finetune``) all go through these two; nothing else builds data, models or
batches. ``modules/`` only rewrites the sites of the model built here.

    seed -> device -> data -> model (fresh, or the finetuning source with its weights) -> sites
         -> interventions (and their training callbacks) -> batches -> task
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import distributed
from .batches import make_batches, to_device
from .data import build_data
from .errors import ConfigError, UserError
from .lifecycle.checkpoint import CHECKPOINT_DIR, list_checkpoints, load_checkpoint
from .lifecycle.state import rng_state, set_rng_state
from .models import build_model, find_sites
from .sites import check_sites
from .modules import apply_interventions
from .probes.base import ProbeContext
from .speed import set_backend_flags
from .train import ClassificationTask, Seq2SeqTask
from .validate import DEVICE_PATTERN, validate_config



@dataclass
class Assembly:
    """What a run is made of."""

    cfg: DictConfig
    device: torch.device
    data: object
    model: torch.nn.Module
    sites: list
    callbacks: list  # the interventions' trainer callbacks
    task: object  # task(model, batch, train) -> (loss, stats)
    train_batches: object
    test_batches: object
    steps_per_epoch: int
    total_steps: int
    init: dict | None = None  # where a finetuned model's weights came from (init.json)
    run_dir: Path | None = None

    def probe_context(self, recorder=None, optimizer=None, grad_accum: int = 1, posthoc: bool = False) -> ProbeContext:
        """The one ``ProbeContext`` of this run, built whole (training: with its optimizer and
        accumulation; post hoc: none, lr 0); the probe driver keeps its step current."""
        return ProbeContext(model=self.model, sites=self.sites, task=self.task, train_batches=self.train_batches,
                            test_batches=self.test_batches, device=self.device, seed=self.cfg.seed,
                            recorder=recorder, optimizer=optimizer, steps_per_epoch=self.steps_per_epoch,
                            grad_accum=grad_accum, posthoc=posthoc)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    local = distributed.local_device(name)  # under torchrun: the GPU of this rank
    if local is not None:
        return local
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if re.fullmatch(DEVICE_PATTERN, name) is None:
        raise ConfigError(f"trainer.device={name!r}; choose auto, cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    return torch.device(name)


def make_task(cfg, data):
    """The loss and accuracy the data calls for: classification, or sequence to sequence (T5)."""
    if data.info.task == "seq2seq":
        return Seq2SeqTask(mask_padding=cfg.data.get("mask_padding", True))
    return ClassificationTask(cfg.trainer.label_smoothing, batch_transform=data.train_batch_transform)


@torch.no_grad()
def sample_forward(model, task, batches) -> None:
    """One evaluation-mode forward on the first test batch (modules that size themselves from real inputs)."""
    model.eval()
    task(model, to_device(next(iter(batches)), next(model.parameters()).device), train=False)


def total_steps(cfg, steps_per_epoch: int) -> int:
    t = cfg.trainer
    total = math.ceil(t.epochs * steps_per_epoch) if t.epochs else int(t.steps)
    if total <= 0:
        raise ConfigError(f"the run has {total} steps; set trainer.steps (or trainer.epochs) to a positive number")
    return total


def assemble(cfg: DictConfig) -> Assembly:
    """Everything the run of ``cfg`` needs, built in one order (every random draw from ``cfg.seed``)."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    # TF32 or not, here for training and post hoc alike: the same checkpoint measured online and by
    # `sparsity-exp probe` must use the same matmul precision on CUDA
    set_backend_flags(cfg.trainer, device)
    # The data builders draw from their own seeded generators, but a library they import lazily may draw
    # from a global one at import (scikit-learn imports rich, which takes Python's getrandbits): without
    # this the first run in a process (an in-process sweep's first job, a test) would draw other numbers
    # than an identical later one
    before = rng_state()
    data = build_data(cfg.data)
    set_rng_state(before)
    model, init = initial_model(cfg, data.info)
    model = model.to(device)
    sites = find_sites(model)
    t = cfg.trainer
    ranks = {"rank": distributed.rank(), "world_size": distributed.world_size()}
    distributed.check_batch_size(t.batch_size)
    # trainer.data_seed_offset (absent = 0): the batch order from seed + offset, the init still from seed (a
    # study's placebo arm: the same SGD noise process, another draw of it)
    order_seed = cfg.seed + int(OmegaConf.select(cfg, "trainer.data_seed_offset", default=0) or 0)
    train_batches = make_batches(data.train, t.batch_size, shuffle=True, drop_last=True, seed=order_seed,
                                 device=device, num_workers=t.num_workers, repeats=data.train_repeats, **ranks)
    test_batches = make_batches(data.test, t.eval_batch_size, shuffle=False, drop_last=False, seed=cfg.seed,
                                device=device, num_workers=t.num_workers, **ranks)
    steps_per_epoch = len(train_batches)
    total = total_steps(cfg, steps_per_epoch)
    task = make_task(cfg, data)
    # a block the sites do not describe is refused here, before any probe could measure it wrongly
    check_sites(model, sites, forward=lambda: sample_forward(model, task, test_batches))
    callbacks = apply_interventions(cfg, model, sites, sample_forward=lambda: sample_forward(model, task, test_batches))
    return Assembly(cfg=cfg, device=device, data=data, model=model, sites=sites, callbacks=callbacks, task=task,
                    train_batches=train_batches, test_batches=test_batches, steps_per_epoch=max(1, steps_per_epoch),
                    total_steps=total, init=init)


# ---------------------------------------------------------------- the model a run starts from

def initial_model(cfg, info) -> tuple[torch.nn.Module, dict | None]:
    """A fresh model, or for protocol=sparsity_finetune the source run's model with its weights and a
    record of where they came from (run.py writes it to ``init.json``)."""
    if (cfg.get("protocol") or {}).get("name", "vanilla") != "sparsity_finetune":
        return build_model(cfg.model, info, cfg.activation), None
    return source_model(cfg, info)


def resolve_init(init) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or None) named by ``protocol.init``."""
    if init in (None, ""):
        raise ConfigError("protocol=sparsity_finetune needs protocol.init=<run folder or checkpoint file> "
                          "(e.g. a folder under results/ written by an earlier `sparsity-exp run`)")
    path = Path(str(init)).expanduser()
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise ConfigError(f"protocol.init={init}: the folder has no {CHECKPOINT_DIR}/step_*.pt; give a run folder "
                              f"written by `sparsity-exp run` (checkpoints are saved at the end of every run) "
                              f"or a checkpoint file")
        return found[-1][1], path
    if path.is_file():
        run = path.parent.parent
        return path, run if path.parent.name == CHECKPOINT_DIR and (run / "config.yaml").is_file() else None
    raise ConfigError(f"protocol.init={init}: no such run folder or checkpoint file")


def _modified(src_cfg) -> list[str]:
    """What in a source run's config changed the model's parameters (such runs cannot be rebuilt here)."""
    out = []
    mods = src_cfg.get("modules") or {}
    if (mods.get("zeroth_bias") or {}).get("enabled"):
        out.append("modules.zeroth_bias")
    if (mods.get("restricted_norm") or {}).get("enabled"):
        out.append("modules.restricted_norm")
    if (src_cfg.get("protocol") or {}).get("name") == "sparsity_finetune":
        out.append("protocol=sparsity_finetune")
    return out


def source_model(cfg, info) -> tuple[torch.nn.Module, dict]:
    """The finetuning source's model (rebuilt from its run's ``config.yaml`` when there is one, its
    model and activation settings winning over this run's) with the checkpoint's weights."""
    ckpt, run = resolve_init(cfg.protocol.init)
    src_cfg = OmegaConf.load(run / "config.yaml") if run is not None else cfg
    changed = _modified(src_cfg) if run is not None else []
    if changed:
        raise ConfigError(f"protocol.init={cfg.protocol.init}: that run used {', '.join(changed)}, whose extra "
                          f"parameters cannot be rebuilt here; finetune from a run trained with modules=none")
    if run is not None:
        _warn_unused_settings(cfg, src_cfg, run)
    model = build_model(src_cfg.model, info, src_cfg.activation)
    try:
        step = load_weights(model, ckpt)
    except CheckpointUnreadable as exc:
        raise ConfigError(f"protocol.init={cfg.protocol.init} is neither a run folder nor a readable checkpoint: {exc}; "
                          f"give a run folder written by `sparsity-exp run` or its checkpoints/step_*.pt") from None
    except CheckpointMismatch as exc:
        raise ConfigError(f"checkpoint {ckpt} does not fit the model rebuilt from "
                          f"{run / 'config.yaml' if run else 'this run’s model settings'} "
                          f"(different data or model?): {exc}") from None
    record = {"init": str(cfg.protocol.init), "checkpoint": str(ckpt), "checkpoint_step": step,
              "source_run": str(run) if run else None,
              "model": OmegaConf.to_container(src_cfg.model, resolve=True),
              "activation": OmegaConf.to_container(src_cfg.activation, resolve=True)}
    return model, record


def _warn_unused_settings(cfg, src_cfg, run: Path) -> None:
    """A finetune from a run folder rebuilds the model from that run's ``model`` and ``activation``
    settings; this run's own values of them have no effect (its ``modules`` are what changes the
    model): said, key by key, instead of ignored in silence."""
    import warnings

    from .dotted import flatten

    differ = []
    for group in ("model", "activation"):
        mine = flatten({group: OmegaConf.to_container(cfg.get(group) or {}, resolve=True)})
        theirs = flatten({group: OmegaConf.to_container(src_cfg.get(group) or {}, resolve=True)})
        differ += [f"{k}={mine.get(k)!r} (source run: {theirs.get(k)!r})" for k in sorted(set(mine) | set(theirs))
                   if mine.get(k) != theirs.get(k)]
    if differ:
        warnings.warn(f"protocol.init={cfg.protocol.init} is a run folder: the model is rebuilt from its "
                      f"config.yaml, so these settings of this run have no effect: {'; '.join(differ)}. "
                      f"To change the activation during finetuning use modules= (e.g. modules=sparsified)",
                      UserWarning, stacklevel=2)


class CheckpointMismatch(ValueError):
    pass


class CheckpointUnreadable(UserError):
    """A file that cannot be read as a checkpoint (truncated, damaged, not one at all): the file is named."""


def load_weights(model: torch.nn.Module, path: Path, device="cpu") -> int:
    """Load a checkpoint's model weights into ``model``; returns its step. A file that is not a readable
    checkpoint raises ``CheckpointUnreadable`` (a UserError naming it); weights of another model
    ``CheckpointMismatch``."""
    try:
        state = load_checkpoint(path, map_location=device)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds on a damaged file
        raise CheckpointUnreadable(
            f"{path} cannot be read as a checkpoint ({type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:120]}); "
            f"the file is truncated, damaged or not a checkpoint: move it out of the way or name another one") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointUnreadable(f"{path} is not a training checkpoint (no model weights and step in it); name a "
                                   f"checkpoints/step_*.pt file written by `sparsity-exp run`")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointMismatch(str(exc).splitlines()[0]) from None
    return int(state["step"])


# ---------------------------------------------------------------- a saved run, again

def load_run_config(run_dir: Path, overrides=()) -> DictConfig:
    """The run's ``config.yaml`` with ``overrides`` in Hydra's grammar applied (``config.apply_overrides``:
    ``probes=<preset>`` swaps the probe set for ``conf/probes/<preset>.yaml``, ``probes.<name>.<field>=v``
    changes a setting, ``+probes.<name>={...}`` adds a probe), resolved and checked (validate.py)
    before anything is built."""
    from .config import apply_overrides

    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); pass the folder a `sparsity-exp run` wrote")
    cfg = apply_overrides(OmegaConf.load(path), overrides)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"the config cannot be resolved: {str(exc).strip().splitlines()[0]}; fix the ${{...}} "
                          f"interpolation in the overrides") from None
    validate_config(cfg)
    return cfg


def load_run(run_dir: Path, overrides=(), checkpoint: Path | None = None) -> Assembly:
    """The run of ``run_dir`` assembled again from its config (with ``overrides``): the same data,
    batches, architecture (protocol and interventions included) and task; with the weights of
    ``checkpoint`` when given (else the initial weights)."""
    cfg = load_run_config(run_dir, overrides)
    run = assemble(cfg)
    run.run_dir = Path(run_dir)
    if checkpoint is not None:
        load_saved_weights(run, checkpoint)
    return run


def load_saved_weights(run: Assembly, checkpoint: Path) -> int:
    """``load_weights`` into a rebuilt run, a damaged or mismatched file said as a UserError naming it."""
    try:
        return load_weights(run.model, checkpoint, run.device)
    except CheckpointMismatch as exc:
        raise UserError(f"checkpoint {checkpoint} does not fit the model rebuilt from "
                        f"{(run.run_dir or Path('.')) / 'config.yaml'} ({exc}); it belongs to another run: "
                        f"move it out of the folder or choose others with checkpoints=...") from None


def select_checkpoints(run_dir: Path, which: str = "all") -> list[tuple[int, Path]]:
    """``all``, ``last``, or a comma list of steps."""
    found = list_checkpoints(run_dir)
    if not found:
        raise UserError(f"{run_dir} has no checkpoints/step_*.pt; train with trainer.checkpoint_every=N "
                        f"(the final step is always saved) and try again")
    if which == "all":
        return found
    if which == "last":
        return found[-1:]
    try:
        wanted = {int(s) for s in str(which).split(",") if s.strip()}
    except ValueError:
        raise UserError(f"checkpoints={which!r}: use all, last or a comma list of steps") from None
    by_step = dict(found)
    missing = sorted(wanted - set(by_step))
    if missing:
        raise UserError(f"no checkpoint for step(s) {missing} in {run_dir}; available: {sorted(by_step)}")
    return [(s, by_step[s]) for s in sorted(wanted)]
