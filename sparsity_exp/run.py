"""One run: compose -> assemble (assemble.py) -> train -> write the run folder.

``execute`` owns the run folder's life (lock, plan: fresh, continue or nothing to do, summary,
failure records); ``_train`` trains what ``assemble(cfg)`` built, with its probes and optimizer."""
from __future__ import annotations

import errno
import json
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import distributed
from .assemble import assemble, make_task, resolve_device, seed_everything  # noqa: F401 (public names)
from .lifecycle import leftovers, liveness, segments
from .errors import STORAGE_ERRNOS, ConfigError, StorageError, UserError
from .lifecycle import folders
from .atomic import write_atomic, write_json
from .lifecycle.checkpoint import CheckpointError
from .lifecycle.preempt import Preempted
from .optim import build_optimizer, build_schedule, param_groups
from .probes import ProbeSet, build_probes
from .record import METRICS_FILE, Recorder, RecorderError
from .speed import training_forwards
from .train import NonFiniteLoss, Trainer
from .validate import validate_config


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and probe as ``cfg`` says; write everything into ``run_dir``; return the summary.

    A folder that already holds an unfinished run of this config continues from its newest
    checkpoint (``lifecycle/``); one that holds a completed run is left as it is."""
    if not distributed.is_main():  # data parallel: the other ranks train alongside, rank 0 writes
        plan = folders.plan(cfg, Path(run_dir))  # reads only: every rank continues from the same state
        if plan.completed is None:
            _train(cfg, Path(run_dir), plan.state)
        return {}
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = folders.RunLock(run_dir).acquire()  # one process per run folder
    except OSError as exc:
        raise ConfigError(f"cannot write the run folder {run_dir} ({exc.strerror or exc}); set results_dir= to a "
                          f"writable folder") from None
    with lock:
        return _execute(cfg, run_dir)


def _execute(cfg: DictConfig, run_dir: Path) -> dict:
    started = time.perf_counter()
    fresh = not folders.has_output(run_dir)
    try:
        validate_config(cfg)  # before anything is built or written
        plan = folders.plan(cfg, run_dir)
    except BaseException as exc:
        if fresh:  # a folder of its own records why the job did not start; another run's folder is left alone
            _mark_failed(run_dir, exc)
        raise
    leftovers.remove_stale_temporaries(run_dir)  # we hold the lock: nobody else is writing them
    if plan.completed is not None:
        ensure_quicklook(run_dir)  # killed after its last checkpoint, before the figure
        print(f"{run_dir} already holds the completed run of this config; nothing to do.")
        print_summary(plan.completed, file=sys.stdout)
        return plan.completed
    try:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        raise StorageError(f"cannot write {run_dir / 'config.yaml'}: {exc.strerror or exc}; free space on that file "
                           f"system or set results_dir= to another one") from None
    if plan.restart:
        (run_dir / METRICS_FILE).unlink(missing_ok=True)  # no checkpoint: its rows will be written again
    resumed = {"resumed_from_step": int(plan.state["step"])} if plan.state is not None else {}
    if resumed:
        print(f"continuing {run_dir} from {plan.checkpoint.name}", file=sys.stderr)
        if (run_dir / "error.txt").exists():  # the last attempt's error, kept under a name of its own
            (run_dir / "error.txt").replace(run_dir / f"error.before_step{plan.state['step']:08d}.txt")
    previous = (run_dir / "summary.json").read_bytes() if resumed else None
    ledger = segments.snapshot(run_dir)
    segments.start_segment(run_dir, plan.checkpoint if resumed else None, resumed.get("resumed_from_step"))
    write_json(run_dir / "summary.json", {"status": "running", **resumed, **liveness.identity()})
    try:
        trainer = _train(cfg, run_dir, plan.state)
    except (CheckpointError, RecorderError):
        write_atomic(run_dir / "summary.json", previous)  # nothing was trained: the folder stays as it was
        segments.restore(run_dir, ledger)
        raise
    except UserError as exc:
        if previous is not None and not isinstance(exc, NonFiniteLoss):
            # bad input while continuing a run (device, dataset): the run's own record stays as it was
            write_atomic(run_dir / "summary.json", previous)
            segments.restore(run_dir, ledger)
            raise
        _mark_failed(run_dir, exc)
        raise
    except (Preempted, KeyboardInterrupt) as exc:
        step = getattr(exc, "step", None)
        saved = getattr(exc, "checkpoint", None)
        write_json(run_dir / "summary.json", {"status": "interrupted", "signal": getattr(exc, "signame", "SIGINT"),
                                              "step": step, "checkpoint": str(saved) if saved else None, **resumed})
        raise
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            _mark_failed(run_dir, exc)
            raise
        raise _storage_error(run_dir, exc) from None
    except BaseException as exc:
        _mark_failed(run_dir, exc)
        raise
    try:
        return _finish(cfg, trainer, run_dir, started, resumed)
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        raise _storage_error(run_dir, exc) from None


def _storage_error(run_dir: Path, exc: OSError) -> StorageError:
    where = exc.filename or run_dir
    _mark_failed(run_dir, exc, fallback=True)
    return StorageError(
        f"cannot write {where}: {exc.strerror or exc} (errno {errno.errorcode.get(exc.errno, exc.errno)}); free "
        f"space on that file system (or move the run elsewhere), then continue from the last checkpoint with: "
        f"sparsity-exp resume {shlex.quote(str(run_dir))}")


def _finish(cfg, trainer, run_dir: Path, started: float, resumed: dict) -> dict:
    summary = {**_summary(cfg, trainer, run_dir, segments.total_wall_time(run_dir, time.perf_counter() - started)),
               **resumed}
    metrics = _read_metrics(run_dir / METRICS_FILE)
    _quicklook(metrics, run_dir / "quicklook.png")  # before 'completed': a kill here is resumed
    write_json(run_dir / "summary.json", summary)
    print_summary(summary, file=sys.stdout)
    return summary


def ensure_quicklook(run_dir: Path) -> bool:
    """Draw ``quicklook.png`` of a completed run that lacks it; return whether it was drawn."""
    figure, metrics = run_dir / "quicklook.png", run_dir / METRICS_FILE
    if figure.exists() or not metrics.is_file():
        return False
    _quicklook(_read_metrics(metrics), figure)
    return True


# pandas and matplotlib are imported when a run ends, not with the command: a run refused at start-up
# (bad input) answers ~2 s of CPU sooner
def _read_metrics(path: Path):
    import pandas as pd

    return pd.read_csv(path)


def _quicklook(metrics, figure: Path) -> None:
    from .plots.quicklook import sparsity_per_layer

    sparsity_per_layer(metrics, figure)


def _mark_failed(run_dir: Path, exc: BaseException, fallback: bool = False) -> None:
    """Status ``failed`` and the traceback into the folder. ``fallback`` (the file system refused a
    write): when the atomic write of the summary fails too (a temporary file needs room), the summary is
    overwritten in place, which reuses its own blocks, so it never stays ``running``."""
    summary = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    try:
        write_json(run_dir / "summary.json", summary)
    except OSError:
        if not fallback:
            raise
        try:
            with open(run_dir / "summary.json", "r+b") as f:
                data = json.dumps(summary).encode()
                f.write(data)
                f.truncate(len(data))
        except OSError:
            pass  # nothing more can be written there; the error message says what happened
    try:
        (run_dir / "error.txt").write_text(traceback.format_exc())
    except OSError:
        if not fallback:
            raise


def _train(cfg: DictConfig, run_dir: Path, resume_state: dict | None = None) -> Trainer:
    run = assemble(cfg)
    main = distributed.is_main()
    if main:
        write_json(run_dir / "sites.json", [{"index": s.index, "name": s.name, "stack": s.stack,
                                             "paths": s.paths} for s in run.sites])
        if run.init is not None:  # finetuning: where the starting weights came from
            write_json(run_dir / "init.json", run.init)
    t = cfg.trainer
    optimizer = build_optimizer(cfg.optim, param_groups(run.model, cfg.optim), run.device)
    schedule = build_schedule(cfg.optim.schedule, optimizer, run.total_steps)
    settings = precision_and_accumulation(t)
    with Recorder(run_dir, tensorboard=t.get("tensorboard", False)) if main else distributed.NullRecorder() as recorder:
        # one context, built whole; the probes after the interventions (they see the final
        # activations) and before compiling (compile-safe probes register the hooks the compiler traces)
        context = run.probe_context(recorder, optimizer, settings["grad_accum"])
        probes = ProbeSet(build_probes(cfg.probes, run.sites, context), context)
        forward_model, eager_model = training_forwards(run.model, run.device, t, probes.probes)
        trainer = Trainer(
            model=run.model, task=run.task, optimizer=optimizer, schedule=schedule, callbacks=run.callbacks,
            train_batches=run.train_batches, test_batches=run.test_batches, probes=probes, recorder=recorder,
            total_steps=run.total_steps, steps_per_epoch=run.steps_per_epoch, log_every=t.log_every,
            eval_every=t.eval_every, device=run.device, grad_clip=t.grad_clip, progress=t.progress and main,
            run_dir=run_dir if main else None, checkpoint_every=t.checkpoint_every,
            keep_checkpoints=t.keep_checkpoints, seed=cfg.seed, forward_model=forward_model,
            eager_model=eager_model, **settings,
        )
        if resume_state is not None:
            trainer.load_state_dict(resume_state)
        trainer.fit()
    return trainer


def precision_and_accumulation(t) -> dict:
    """The trainer's precision and gradient accumulation (checked at start-up by validate.py)."""
    return {"precision": t.get("precision", "fp32"), "grad_accum": int(t.get("grad_accum", 1))}


def _summary(cfg, trainer: Trainer, run_dir: Path, wall: float) -> dict:
    final = {"train": {}, "test": {}}
    failures = getattr(trainer.probes, "failures", {})
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
        "threads": torch.get_num_threads(),
        "world_size": distributed.world_size(),
        "seed": cfg.seed,
        **final,
        # a probe whose rows or measurement raised (the run went on; metrics.csv has 'probe_failed' rows)
        **({"probe_failures": {f"{probe}/{split}": n for (probe, split), n in failures.items()}} if failures else {}),
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
