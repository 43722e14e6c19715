"""``sparsity-exp probe RUN_DIR [overrides...]``: probe a run's saved checkpoints after training.

For each chosen checkpoint the run's model is rebuilt with those weights and each chosen probe
measures it with no parameter update (lr 0): probes with a standalone measurement (hessian,
sharpness, spectrum, augmented_flatness, ...) run it; the others (sparsity, gradients, gradient
density, neurons, diagonality) observe ``batches`` training batches (train-mode forward and
backward, gradients taken with autograd.grad) and one pass over the test set. Rows go to
``<run>/posthoc_metrics.csv`` (the columns of metrics.csv, which is never touched), arrays to
``<run>/arrays/posthoc_<name>_step<step>.npz``.

Overrides in Hydra's grammar, as ``run`` takes them (``config.apply_overrides``): ``probes=<preset>``
(default: the run's own probe set), ``probes.<name>.<field>=v``, ``+probes.<name>={field: v, ...}``
(a probe the run did not have), any config field (``trainer.device=cpu``); checked by the start-up
check (validate.py) before anything is built. Options of this command: ``checkpoints=all|last|<step>,<step>``,
``batches=N``.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from .probes import build_probes
from .probes.base import ProbeSet
from .assemble import load_run, load_saved_weights, select_checkpoints
from .errors import UserError
from .record import POSTHOC_FILE, Recorder


def probe_run(run_dir: Path, args=(), file=None) -> Path:
    run_dir, file = Path(run_dir), file or sys.stdout  # the stdout of the call, not of the import
    settings = {"checkpoints": "all", "batches": "1"}
    overrides = []
    for a in args:
        key = a.partition("=")[0]
        if key in settings:
            settings[key] = a.partition("=")[2]
        else:
            overrides.append(a)
    try:
        batches = int(settings["batches"])
    except ValueError:
        batches = 0
    if batches < 1:
        raise UserError(f"batches={settings['batches']}: must be an integer >= 1 (the training batches each "
                        f"checkpoint is observed on), e.g. batches=4")
    run = load_run(run_dir, overrides)  # the run as training assembled it; weights per checkpoint below
    chosen = select_checkpoints(run_dir, settings["checkpoints"])
    with _untouched_unless_measured(run_dir / POSTHOC_FILE) as measured, \
            Recorder(run_dir, filename=POSTHOC_FILE, array_prefix="posthoc_") as recorder:
        # the same driver as training; no optimizer (lr 0), every checkpoint is a step of its own
        ctx = run.probe_context(recorder, posthoc=True)
        probes = build_probes(run.cfg.probes, run.sites, ctx)
        skipped = [p for p in probes if not getattr(p, "posthoc", True)]
        for p in skipped:
            print(f"probe {p.name}: needs the training trajectory, skipped post hoc", file=file)
        probe_set = ProbeSet([p for p in probes if p not in skipped], ctx)
        for step, path in chosen:
            load_saved_weights(run, path)
            for site in run.sites:  # scheduled activations (mixing) as they were at that step
                site.act.set_step(step)
            ctx.step = step
            probe_set.measure_saved(batches)
            recorder.flush()
            measured.append(step)
            print(f"step {step}: {len(probe_set)} probe(s) measured", file=file)
    if probe_set.failures:  # the warnings above say why; the rows are 'probe_failed'
        print("failed (rows 'probe_failed'): " + ", ".join(f"{probe} ({split}) x{n}" for (probe, split), n
                                                          in probe_set.failures.items()), file=file)
    out = run_dir / POSTHOC_FILE
    print(f"rows in {out}", file=file)
    return out


@contextmanager
def _untouched_unless_measured(path: Path):
    """Yields a list the caller appends each measured step to. A command refused before its first
    measurement (a probe setting its constructor rejects, an unreadable or foreign checkpoint) leaves
    ``path`` as it found it (absent, or its old bytes), so the run folder stays as it was; rows of
    checkpoints measured before a later failure are kept (no result is lost)."""
    before = path.read_bytes() if path.exists() else None
    measured: list = []
    try:
        yield measured
    except BaseException:
        if not measured:
            if before is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(before)
        raise
