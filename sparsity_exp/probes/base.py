"""What a probe is, what it is handed, and the one driver that runs probes.

A probe reads MLP sites, never model-specific code. It may take part in three moments:

  * ``observe(split)``: a context manager around a forward (and, for split 'train', the backward)
    of a training batch at the probe's ``every`` cadence (any cadence, 1 = every optimizer step),
    or of every test batch at evaluation. ``rows(split)`` returns what was accumulated since the
    last call and resets it. Accumulate on the device; only ``rows`` synchronises with the host.
  * ``measure(ctx)``: a standalone measurement (its own forwards/backwards) every
    ``measure_every`` steps and, when ``at_end``, after the last step; for the expensive probes.
    It must leave parameters and gradients as it found them.

Everything a probe may read about the run arrives in one ``ProbeContext`` (``probe.ctx``, the
same object ``measure`` receives): step, epoch, learning rate and weight decay, the gradient
accumulation factor, whether it runs post hoc, the token masks of the forward being observed,
and the recorder (``ctx.save_arrays``). The ``ProbeSet`` owns the context and keeps it current; a
probe never reaches back into whoever drives it.

The ``ProbeSet`` is the one driver, for the trainer and the post-hoc command alike: cadence, the
observe -> sum over ranks -> rows -> write cycle, and standalone measurements. Rows of training
batches are *written* at log steps (and at checkpoints and the last step): a probe observing
between log steps accumulates on the device, and the rows written at the next log step cover every
batch it observed since the previous write. So ``every: 1`` costs no host sync per step.

A row is ``(split, metric, layer, value)``; the probe's name is added when it is written.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ..errors import STORAGE_ERRNOS
from ..sites import MLPSite
from .forward import observing, run_task  # noqa: F401 (public here too)
from .masking import token_mask_for
from .standalone import preserved, take_batches, test_passes, train_passes

Row = tuple  # (split, metric, layer, value)


@dataclass(eq=False)
class ProbeContext:
    """What a probe is handed. The driver (``ProbeSet``) keeps ``step`` and ``token_masks`` current;
    the rest is fixed for the run. Built bare (``ProbeContext()``) it serves unit use: step 0, no
    recorder (arrays are not saved), no optimizer (learning rate and weight decay 0)."""

    model: Any = None
    sites: list = field(default_factory=list)
    task: Any = None  # task(model, batch, train) -> (loss, stats)
    train_batches: Any = None  # iterable of batches already on ``device`` or movable with .to
    test_batches: Any = None
    device: torch.device = torch.device("cpu")
    step: int = 0
    seed: int = 0
    recorder: Any = None  # arrays go through save_arrays; None = not saved
    optimizer: Any = None  # None post hoc (no update: lr 0)
    steps_per_epoch: int = 1
    grad_accum: int = 1  # micro-batches per optimizer step (per-sample gradient scaling)
    posthoc: bool = False  # measuring a saved checkpoint, not a training run
    token_masks: dict = field(default_factory=dict)  # stack -> bool [batch, tokens], set around a forward

    @property
    def epoch(self) -> float:
        return self.step / max(1, self.steps_per_epoch)

    def lr_wd(self, param: torch.Tensor | None = None) -> tuple[float, float]:
        """(learning rate, weight decay) of the optimizer's param group holding ``param`` (the first
        group when None or not found); (0, 0) without an optimizer."""
        if self.optimizer is None:
            return 0.0, 0.0
        groups = self.optimizer.param_groups
        group = next((g for g in groups if param is not None and any(p is param for p in g["params"])), groups[0])
        return float(group["lr"]), float(group.get("weight_decay", 0.0))

    @property
    def lr(self) -> float:
        return self.lr_wd()[0]

    @property
    def weight_decay(self) -> float:
        return self.lr_wd()[1]

    def save_arrays(self, name: str, **arrays) -> None:
        """Arrays of the current step to the run folder (nothing without a recorder)."""
        if self.recorder is not None:
            self.recorder.save_arrays(name, self.step, **arrays)

    def token_mask(self, site, x: torch.Tensor) -> torch.Tensor | None:
        """The mask of real tokens for activation-like ``x`` at ``site`` (None: every entry counts)."""
        return token_mask_for(self.token_masks, site, x) if self.token_masks else None

    @contextmanager
    def masked(self, masks: dict | None = None, **more):
        """Within the block, ``masks[stack]`` marks the real tokens of the sites of that stack."""
        previous = self.token_masks
        self.token_masks = {**previous, **{k: v for k, v in {**(masks or {}), **more}.items() if v is not None}}
        try:
            yield
        finally:
            self.token_masks = previous


class Probe:
    """A probe declares on its class what the project reads without running it:

    ``name``     its key in ``PROBES`` and under ``probes:`` in the config;
    ``metrics``  every metric name its rows can carry with its default settings; a few appear only
                 where the run has what they measure (V's metrics on a value-free block,
                 ``rest_fraction`` with a shifted activation). ``rows()`` and ``measure()`` write no
                 other name: the tests' contract is derived from this declaration;
    ``posthoc``  whether ``sparsity-exp probe`` can measure saved checkpoints with it (False for a
                 probe that needs the training trajectory, like ``rmt``'s running covariances).
    """

    name = "probe"
    metrics: tuple[str, ...] = ()
    posthoc: bool = True
    # True: observe('train') works on a torch.compile'd model (its hooks are traced into the graph,
    # see SparsityProbe.before_compile), so the trainer need not run the observed step eagerly
    compile_safe = False

    def __init__(self, sites: list[MLPSite], every: int = 0, measure_every: int = 0, at_end: bool = False,
                 context: ProbeContext | None = None, **unknown):
        if unknown:  # a misspelt setting must not be ignored silently
            raise TypeError(f"unknown setting(s) {sorted(unknown)}")
        self.sites = sites
        self.every = int(every or 0)  # train-batch cadence in steps; 0 = never on train batches
        self.measure_every = int(measure_every or 0)  # standalone cadence; 0 = never during training
        self.at_end = bool(at_end)
        self.ctx = context if context is not None else ProbeContext(sites=list(sites))

    def save_arrays(self, name: str, **arrays) -> None:
        """Arrays of the current step to the run folder (``ctx.save_arrays``)."""
        self.ctx.save_arrays(name, **arrays)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def measure_due(self, step: int, last: bool) -> bool:
        return (self.measure_every > 0 and step % self.measure_every == 0) or (last and self.at_end)

    def observe(self, split: str):
        return nullcontext()

    def rows(self, split: str) -> list[Row]:
        return []

    def accumulators(self, split: str) -> list[torch.Tensor]:
        """The device tensors ``rows(split)`` turns into values. Under data parallel training they
        are summed over ranks (in place) before ``rows``, so they must be sums (of values and of
        counts). The default finds them in ``self._stats[split]`` (a tensor, or a dict/list of
        tensors); a probe that keeps other accumulators (a max, a running mean) overrides this."""
        found = getattr(self, "_stats", None)
        if isinstance(found, dict):  # per split (the sparsity probe); a bare tensor serves the one split observed
            found = found.get(split)
        items = found.values() if isinstance(found, dict) else found if isinstance(found, (list, tuple)) else [found]
        return [t for t in items if isinstance(t, torch.Tensor)]

    def measure(self, ctx: ProbeContext) -> list[Row]:
        return []


def has_measure(probe) -> bool:
    """Whether the probe has a standalone measurement of its own."""
    return type(probe).measure is not Probe.measure


def layer_rows(split: str, metric: str, values, average: bool = True) -> Iterator[Row]:
    """One row per layer, plus the mean over layers as layer 'avg'."""
    values = list(values)
    for i, v in enumerate(values):
        yield (split, metric, i, float(v))
    if average and values:
        yield (split, metric, "avg", float(sum(values) / len(values)))


class ProbeSet:
    """The probes of a run and the context they share; the one driver of their cycle.

    ``observing(step)`` gives the probes due on this training step; ``observe(probes, split)``
    wraps a forward; ``write_train()`` / ``write_test()`` reduce, take rows and write them; and
    ``measure(last)`` runs the standalone measurements that are due. ``write(name, rows)`` is the
    one place rows go to the recorder (trainer loss rows included), and ``last`` keeps the newest
    value of every (split, probe, metric, layer) for the progress bar and the summary."""

    def __init__(self, probes=(), context: ProbeContext | None = None):
        self.probes = list(probes)
        if context is None:
            context = self.probes[0].ctx if self.probes else ProbeContext()
        self.context = context
        for p in self.probes:  # one context for all (probes built apart, e.g. in tests, are joined)
            p.ctx = context
        if not context.sites and self.probes:
            context.sites = list(self.probes[0].sites)
        self.last: dict = {}  # (split, probe, metric, layer) -> the last value written
        self.last_at: dict = {}  # the same keys -> the step it was written at
        self._train = [p for p in self.probes if p.every > 0]  # observe training batches
        self._measure = [p for p in self.probes if has_measure(p)]
        self._pending: list = []  # observed on training batches, rows not written yet
        self.failures: dict = {}  # (probe, split) -> how many times its rows or measurement failed

    def __iter__(self):
        return iter(self.probes)

    def __len__(self) -> int:
        return len(self.probes)

    def __getitem__(self, i):
        return self.probes[i]

    # ------------------------------------------------------------ cadence
    def due(self, step: int) -> list:
        """The probes that observe the training batch of ``step`` (their own ``every``)."""
        return [p for p in self._train if step % p.every == 0] if self._train else []

    def observe(self, probes, split: str):
        """Enter ``observe(split)`` of ``probes``; training observations are remembered until written."""
        if split == "train":
            self._pending += [p for p in probes if p not in self._pending]
        return observing(probes, split)

    # ------------------------------------------------------------ rows
    def write(self, name: str, rows) -> None:
        ctx = self.context
        if ctx.recorder is not None:
            ctx.recorder.add(ctx.step, ctx.epoch, name, rows)
        for split, metric, layer, value in rows:
            self.last[(split, name, metric, layer)] = value
            self.last_at[(split, name, metric, layer)] = ctx.step

    def _rows(self, probe, split: str) -> list:
        from ..distributed import probe_rows  # sums the device accumulators over ranks first

        return self._guarded(probe, split, lambda: probe_rows(probe, split))

    def _guarded(self, probe, split: str, compute) -> list:
        """``compute()``'s rows; an exception inside a probe's rows or measurement does not end a run
        that may have trained for days: it is reported (a warning with the traceback, on stderr and in
        run.log), the probe writes one row ``(split, 'probe_failed', 'avg', nan)`` that says so at this
        step, and the count goes into ``failures`` (the run's summary). Training's own errors are not
        caught here, nor a write the file system refused (the run's error, said by run.py)."""
        try:
            return compute()
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:  # a full disk is the run's problem (run.py says so), not the probe's
                raise
            return self._failed(probe, split, exc)
        except Exception as exc:  # noqa: BLE001 (any failure of one probe; never the run's)
            return self._failed(probe, split, exc)

    def _failed(self, probe, split: str, exc: Exception) -> list:
        """Said on stderr (run.log copies it: the run prints everything it says), counted, one row."""
        import sys
        import traceback

        key = (probe.name, split)
        self.failures[key] = self.failures.get(key, 0) + 1
        print(f"warning: probe {probe.name!r} failed at step {self.context.step} ({split}): "
              f"{type(exc).__name__}: {exc}; the run goes on, and metrics.csv has a 'probe_failed' row "
              f"for it at this step\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return [(split, "probe_failed", "avg", float("nan"))]

    def write_train(self) -> None:
        """Rows of every probe that observed training batches since the last write (probe order)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for p in self.probes:
            if p in pending:
                self.write(p.name, self._rows(p, "train"))

    def write_test(self) -> None:
        self.write_observed(self.probes, "test")

    def write_observed(self, probes, split: str) -> None:
        """Rows of ``probes`` for ``split`` (in the set's order), after passes outside the training
        loop (post hoc)."""
        for p in self.probes:
            if p in probes:
                self.write(p.name, self._rows(p, split))

    # ------------------------------------------------------------ passes and measurements
    def task(self, task, model, batch, train: bool):
        """One forward of ``task`` with the batch's token masks on the context."""
        return run_task(task, model, batch, train, self.context)

    def measure(self, last: bool = False, probes=None) -> list:
        """Standalone measurements due at the context's step (all of ``probes`` when given)."""
        due = probes if probes is not None else [p for p in self._measure if p.measure_due(self.context.step, last)]
        for p in due:
            self.write(p.name, self._guarded(p, "train", lambda p=p: p.measure(self.context)))
        return due

    def measure_saved(self, batches: int = 1) -> None:
        """Post hoc, at a saved checkpoint (the context's model and step): the observing probes see
        ``batches`` lr-0 training passes and one pass over the test set, then every standalone
        measurement runs; the run is left as it was found (parameters, modes, RNG, loader)."""
        ctx, observers = self.context, self.observers()
        if observers:
            with preserved(ctx.model, ctx.train_batches):
                train_passes(ctx.model, ctx.task, observers, take_batches(ctx.train_batches, batches, ctx.device), ctx)
                self.write_observed(observers, "train")
                test_passes(ctx.model, ctx.task, observers, ctx.test_batches, ctx.device, ctx)
                self.write_observed(observers, "test")
        self.measure(probes=self.measurers())

    def observers(self) -> list:
        """Probes without a standalone measurement: post hoc they observe lr-0 passes."""
        return [p for p in self.probes if not has_measure(p)]

    def measurers(self) -> list:
        return list(self._measure)
