"""Rebuild a finished (or interrupted) run from its folder: the config it ran with, its data, its
model with the weights of a chosen checkpoint. Post-hoc probes use it, and so can anything that
continues from a run (finetuning from a run folder)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .batches import make_batches
from .checkpoint import list_checkpoints, load_checkpoint
from .data import build_data
from .errors import ConfigError, UserError
from .models import build_model, find_sites


@dataclass
class RebuiltRun:
    run_dir: Path
    cfg: DictConfig
    device: torch.device
    model: torch.nn.Module
    sites: list
    train_batches: object
    test_batches: object
    steps_per_epoch: int
    task: object = None  # the run's loss (classification or sequence to sequence)


def load_run_config(run_dir: Path, overrides=()) -> DictConfig:
    """The run's ``config.yaml`` with dotted ``key=value`` overrides applied (``probes=<preset>``
    replaces the probe set by ``conf/probes/<preset>.yaml``)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); pass the folder a `sparsity-exp run` wrote")
    cfg = OmegaConf.load(path)
    OmegaConf.set_struct(cfg, False)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. probes=full, trainer.device=cpu)")
        if key == "probes":
            from .config import conf_dir

            preset = conf_dir() / "probes" / f"{value}.yaml"
            if not preset.is_file():
                choices = sorted(p.stem for p in (conf_dir() / "probes").glob("*.yaml"))
                raise ConfigError(f"probes={value}: no such preset; choose one of {choices}")
            cfg.probes = OmegaConf.load(preset)
        else:
            OmegaConf.update(cfg, key.lstrip("+"), OmegaConf.from_dotlist([f"v={value}"]).v, force_add=True)
    OmegaConf.resolve(cfg)
    return cfg


def rebuild(run_dir: Path, overrides=()) -> RebuiltRun:
    """Data, model (initial weights), sites and batches of the run, as ``run._train`` builds them."""
    from .modules import apply_interventions, build_protocol_model
    from .run import _sample_forward, make_task, resolve_device, seed_everything

    cfg = load_run_config(run_dir, overrides)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    data = build_data(cfg.data)
    # the same architecture as the run's checkpoints: protocol (finetune source, LoRA) and interventions
    # (zeroth biases, restricted norm, activation swaps) included; their training callbacks are not needed
    model = build_protocol_model(cfg, data.info).to(device)
    sites = find_sites(model)
    t = cfg.trainer
    train_batches = make_batches(data.train, t.batch_size, shuffle=True, drop_last=True, seed=cfg.seed,
                                 device=device, num_workers=t.num_workers)
    test_batches = make_batches(data.test, t.eval_batch_size, shuffle=False, drop_last=False, seed=cfg.seed,
                                device=device, num_workers=t.num_workers)
    task = make_task(cfg, data)
    apply_interventions(cfg, model, sites, sample_forward=lambda: _sample_forward(model, task, test_batches))
    return RebuiltRun(run_dir=Path(run_dir), cfg=cfg, device=device, model=model, sites=sites,
                      train_batches=train_batches, test_batches=test_batches,
                      steps_per_epoch=max(1, len(train_batches)), task=task)


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


def load_weights(model: torch.nn.Module, path: Path, device) -> int:
    """Load a checkpoint's model weights; returns its step."""
    state = load_checkpoint(path, map_location=device)
    model.load_state_dict(state["model"])
    return int(state["step"])
