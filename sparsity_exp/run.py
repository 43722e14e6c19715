"""One run: compose -> build data, model, sites, probes -> train -> write the run folder.
The one place that wires things together."""
from __future__ import annotations

import math
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from .batches import make_batches, to_device
from .data import build_data
from .errors import ConfigError
from .models import find_sites
from .modules import apply_interventions, build_protocol_model
from .optim import build_optimizer, build_schedule
from .plots.quicklook import sparsity_per_layer
from .probes import build_probes
from .record import METRICS_FILE, Recorder, write_json
from .train import ClassificationTask, Trainer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"trainer.device={name!r}; choose auto, cpu or cuda[:N]")
    return torch.device(name)


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and probe as ``cfg`` says; write everything into ``run_dir``; return the summary."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_json(run_dir / "summary.json", {"status": "running"})
    try:
        trainer = _train(cfg, run_dir)
    except BaseException as exc:
        write_json(run_dir / "summary.json", {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        (run_dir / "error.txt").write_text(traceback.format_exc())
        raise
    summary = _summary(cfg, trainer, run_dir, time.perf_counter() - started)
    write_json(run_dir / "summary.json", summary)
    metrics = pd.read_csv(run_dir / METRICS_FILE)
    sparsity_per_layer(metrics, run_dir / "quicklook.png")
    print_summary(summary, file=sys.stdout)
    return summary


def _train(cfg: DictConfig, run_dir: Path) -> Trainer:
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    data = build_data(cfg.data)
    model = build_protocol_model(cfg, data.info, run_dir).to(device)
    sites = find_sites(model)
    write_json(run_dir / "sites.json", [{"index": s.index, "name": s.name, "stack": s.stack, "paths": s.paths}
                                        for s in sites])
    t = cfg.trainer
    train_batches = make_batches(data.train, t.batch_size, shuffle=True, drop_last=True, seed=cfg.seed,
                                 device=device, num_workers=t.num_workers)
    test_batches = make_batches(data.test, t.eval_batch_size, shuffle=False, drop_last=False, seed=cfg.seed,
                                device=device, num_workers=t.num_workers)
    steps_per_epoch = len(train_batches)
    total = math.ceil(t.epochs * steps_per_epoch) if t.epochs else int(t.steps)
    if total <= 0:
        raise ConfigError(f"the run has {total} steps; set trainer.steps (or trainer.epochs) to a positive number")
    task = ClassificationTask(t.label_smoothing)
    callbacks = apply_interventions(cfg, model, sites, sample_forward=lambda: _sample_forward(model, task, test_batches))
    probes = build_probes(cfg.probes, sites)  # after the interventions: probes see the final activations
    optimizer = build_optimizer(cfg.optim, [p for p in model.parameters() if p.requires_grad])
    schedule = build_schedule(cfg.optim.schedule, optimizer, total)
    with Recorder(run_dir) as recorder:
        trainer = Trainer(
            model=model, task=task, optimizer=optimizer, schedule=schedule, callbacks=callbacks,
            train_batches=train_batches, test_batches=test_batches, probes=probes, recorder=recorder,
            total_steps=total, steps_per_epoch=steps_per_epoch, log_every=t.log_every, eval_every=t.eval_every,
            device=device, grad_clip=t.grad_clip, progress=t.progress, run_dir=run_dir,
            checkpoint_every=t.checkpoint_every, keep_checkpoints=t.keep_checkpoints, seed=cfg.seed,
        )
        trainer.fit()
    return trainer


@torch.no_grad()
def _sample_forward(model, task, batches) -> None:
    """One evaluation-mode forward on the first test batch (modules that size themselves from real inputs)."""
    model.eval()
    task(model, to_device(next(iter(batches)), next(model.parameters()).device), train=False)


def _summary(cfg, trainer: Trainer, run_dir: Path, wall: float) -> dict:
    final = {"train": {}, "test": {}}
    for (split, probe, metric, layer), value in trainer.last.items():
        if probe in ("train", "eval") and metric != "lr":
            final[split][metric] = value
        elif probe == "sparsity":
            final[split].setdefault(metric, {})[str(layer)] = value
    return {
        "status": "completed",
        "run_dir": str(run_dir),
        "steps": trainer.step,
        "epochs": round(trainer.epoch, 4),
        "wall_time_s": round(wall, 3),
        "device": str(trainer.device),
        "seed": cfg.seed,
        **final,
    }


def print_summary(summary: dict, file=sys.stdout) -> None:
    print(f"\nrun folder: {summary['run_dir']}", file=file)
    print(f"{summary['steps']} steps ({summary['epochs']:.1f} epochs) in {summary['wall_time_s']:.1f} s "
          f"on {summary['device']}", file=file)
    for split in ("train", "test"):
        part = summary.get(split, {})
        act = part.get("activation_sparsity", {})
        layers = " ".join(f"{act[k]:.3f}" for k in sorted(act, key=lambda k: (k == "avg", k)) if k != "avg")
        line = f"  {split:5s} loss {part.get('loss', float('nan')):.4f}  acc {part.get('accuracy', float('nan')):.4f}"
        if act:
            line += f"  activation sparsity per layer [{layers}]  avg {act.get('avg', float('nan')):.3f}"
        print(line, file=file)
