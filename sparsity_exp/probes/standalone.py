"""Helpers for standalone measurements (``Probe.measure``) and post-hoc passes.

A standalone measurement must leave the run as it found it: parameters, gradients, train/eval
mode of every module, the global RNG streams and the batch order of the training loader. It is
also deterministic given the run's seed and the step: its own random draws come from a local
``torch.Generator`` seeded from both (``local_generator``)."""
from __future__ import annotations

import copy

from contextlib import contextmanager
from itertools import islice

import torch

from ..batches import to_device
from .forward import observing, run_task


def local_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for this (seed, step): draws are identical on every device."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))


def _loader_generator(batches):
    return getattr(batches, "generator", None)


@contextmanager
def preserved(model: torch.nn.Module, *batch_sources):
    """Restore module modes, parameters (values and .grad), RNG streams and loader generators."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.detach().clone(), None if p.grad is None else p.grad.detach().clone())
              for p in model.parameters()]
    gens = [(g, g.get_state()) for g in map(_loader_generator, batch_sources) if g is not None]
    devices = [d for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for p, value, grad in params:
                p.copy_(value)
                if grad is None:
                    p.grad = None
                else:
                    p.grad = grad
        for m, mode in modes:
            m.training = mode
        for g, state in gens:
            g.set_state(state)


def take_batches(batches, n: int, device) -> list:
    """The first ``n`` batches of a fresh pass (call inside ``preserved`` so the loader's shuffle
    state is restored afterwards)."""
    out = [to_device(b, device) for b in islice(iter(batches), int(n))]
    if not out:
        raise ValueError("the loader gave no batch to measure on")
    return out


def trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def mean_loss(model, task, batches) -> torch.Tensor:
    """Mean of the training objective over ``batches`` (a differentiable scalar)."""
    total = 0.0
    for b in batches:
        loss, _ = task(model, b, train=True)
        total = total + loss
    return total / len(batches)


def train_passes(model, task, probes, batches, context=None) -> None:
    """Forward and backward of each batch in train mode under ``observe('train')`` with no
    parameter update (docs/paper.md §1.3's lr-0 protocol). Gradients come from ``torch.autograd.grad``,
    so nothing accumulates into ``.grad``. ``context``: the probes' ProbeContext, which carries the
    batches' token masks (sequence tasks) around each forward."""
    params = trainable(model)
    model.train()
    for b in batches:
        with observing(probes, "train"):
            loss, _ = run_task(task, model, b, True, context)
            torch.autograd.grad(loss, params, allow_unused=True)


@torch.no_grad()
def test_passes(model, task, probes, batches, device, context=None) -> None:
    """Forward of every test batch in eval mode under ``observe('test')``."""
    model.eval()
    with observing(probes, "test"):
        for b in batches:
            run_task(task, model, to_device(b, device), False, context)


class _OncePerBatch:
    """A batch transform (MixUp/CutMix) drawn once per batch and then replayed: a measurement
    compares losses of one objective, so every forward of a batch must see the same mix."""

    def __init__(self, transform):
        self.transform, self.drawn = transform, {}

    def __call__(self, x, y):
        key = (x.data_ptr(), tuple(x.shape), y.data_ptr())
        if key not in self.drawn:
            self.drawn[key] = self.transform(x, y)
        return self.drawn[key]


def fixed_objective(task):
    """``task`` with its training batch transform fixed per batch (the task itself when it has none)."""
    if getattr(task, "batch_transform", None) is None:
        return task
    fixed = copy.copy(task)
    fixed.batch_transform = _OncePerBatch(task.batch_transform)
    return fixed
