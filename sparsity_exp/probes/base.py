"""What a probe is.

A probe reads MLP sites, never model-specific code. It may take part in three moments:

  * ``observe(split)``: a context manager around a forward (and, for split 'train', the backward)
    of a training batch at the probe's cadence, or of every test batch at evaluation;
    ``rows(split)`` then returns what was accumulated and resets it. Accumulate on the device;
    only ``rows`` synchronises with the host.
  * ``measure(ctx)``: a standalone measurement (its own forwards/backwards) every
    ``measure_every`` steps and, when ``at_end``, after the last step; for the expensive probes.
    ``ctx`` is a ``ProbeContext``; it must leave parameters and gradients as it found them.

A row is ``(split, metric, layer, value)``; the probe's name is added by the ProbeSet.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..sites import MLPSite

Row = tuple  # (split, metric, layer, value)


@dataclass
class ProbeContext:
    """What a standalone measurement may use."""

    model: torch.nn.Module
    sites: list
    task: Any  # task(model, batch, train) -> (loss, stats)
    train_batches: Any  # iterable of batches already on ``device`` or movable with .to
    test_batches: Any
    device: torch.device
    step: int
    seed: int
    recorder: Any  # for recorder.save_arrays(name, step, **arrays)
    optimizer: Any = None


class Probe:
    name = "probe"
    # True: observe('train') works on a torch.compile'd model (its hooks are traced into the graph,
    # see SparsityProbe.before_compile), so the trainer need not run the observed step eagerly
    compile_safe = False

    def __init__(self, sites: list[MLPSite], every: int = 0, measure_every: int = 0, at_end: bool = False,
                 **unknown):
        if unknown:  # a misspelt setting must not be ignored silently
            raise TypeError(f"unknown setting(s) {sorted(unknown)}")
        self.sites = sites
        self.every = int(every or 0)  # train-batch cadence in steps; 0 = never on train batches
        self.measure_every = int(measure_every or 0)  # standalone cadence; 0 = never during training
        self.at_end = bool(at_end)
        self.host = None  # set by bind(): the trainer (or the post-hoc driver)

    def bind(self, host) -> None:
        """Called once by whoever drives the probe (the Trainer, or the post-hoc driver) with an
        object holding ``step``, ``recorder`` and ``optimizer`` (None post hoc): probes that save
        arrays from ``rows`` or read the learning rate use it."""
        self.host = host

    def save_arrays(self, name: str, **arrays) -> None:
        """Arrays of the current step to the run folder (nothing when unbound, e.g. in unit tests)."""
        if self.host is not None and getattr(self.host, "recorder", None) is not None:
            self.host.recorder.save_arrays(name, self.host.step, **arrays)

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

    def measure(self, ctx) -> list[Row]:
        return []


def layer_rows(split: str, metric: str, values, average: bool = True) -> Iterator[Row]:
    """One row per layer, plus the mean over layers as layer 'avg'."""
    values = list(values)
    for i, v in enumerate(values):
        yield (split, metric, i, float(v))
    if average and values:
        yield (split, metric, "avg", float(sum(values) / len(values)))


@contextmanager
def observing(probes, split: str):
    """Enter ``observe(split)`` of every probe in ``probes`` together."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        for p in probes:
            stack.enter_context(p.observe(split))
        yield
