"""The measurement batch set: the training batches the standalone data probes (hessian, sharpness)
measure on, the same at every step, online (``measure_every``, ``at_end``) and post hoc
(``sparsity-exp probe RUN``), so one checkpoint gives the same rows both ways and a curve over steps
follows the model, not the batch (docs/paper.md §1.3: curvature of one training objective).

The selection: a permutation of the training set's indices drawn once from the run's seed (a
generator of its own, ``MEASUREMENT_STREAM``, not the training loader's), cut into batches of the
training batch size; ``n`` batches are its first ``n`` (a larger ``batches`` extends a smaller one).
It is written to ``<run>/measurement_batches.json`` (``{"seed", "examples", "batch_size",
"batches": [[index, ...], ...]}``) the first time it is used and read back from there afterwards,
so a post-hoc pass measures the very samples the run did. Training is untouched: the indices come
from a local generator and the batches are gathered from the dataset directly, with the global RNG
streams (torch, numpy, random) seeded for the gathering and the measurement (random augmentation
and MixUp/CutMix of the measurement batches are drawn the same way every time) and restored after.

A loader that is not one of the project's (a plain list of batches, in unit use) has no dataset to
draw from: its first ``n`` batches are the measurement set.
"""
from __future__ import annotations

import json
import random
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..batches import DeviceTensorBatches, EpochSampledLoader, to_device
from .standalone import preserved, take_batches

MEASUREMENT_FILE = "measurement_batches.json"
MEASUREMENT_STREAM = 0x5EED_BA7C  # mixed into the run seed: a stream no training draw uses


def _seed(seed: int) -> int:
    return (int(seed) * 1_000_003 + MEASUREMENT_STREAM) % (2**63 - 1)


def select_indices(seed: int, examples: int, batch_size: int, batches: int) -> list[list[int]]:
    """The first ``batches`` batches of ``batch_size`` indices of the seeded permutation of
    ``range(examples)`` (an error when the training set holds fewer samples than asked for)."""
    from ..errors import ConfigError

    if batches * batch_size > examples:
        raise ConfigError(f"the measurement set wants {batches} batches of {batch_size} samples, but the training "
                          f"set has {examples}; lower the probe's `batches` setting")
    order = torch.randperm(examples, generator=torch.Generator().manual_seed(_seed(seed)))
    return order[: batches * batch_size].view(batches, batch_size).tolist()


class _Source:
    """How to gather samples by index from a run's training loader: (examples, batch size, gather)."""

    def __init__(self, loader):
        from .. import distributed

        self.loader = loader
        if isinstance(loader, DeviceTensorBatches):
            self.examples, self.batch_size = loader.n, loader.batch_size  # the global batch
            self.gather = lambda idx: tuple(t[torch.as_tensor(idx, device=t.device)] for t in loader.tensors)
            return
        inner = loader.loader if isinstance(loader, EpochSampledLoader) else loader
        ds = getattr(inner, "dataset", None)
        if ds is None or not hasattr(inner, "collate_fn"):
            raise TypeError("not a dataset loader")
        scale = distributed.world_size() if isinstance(loader, EpochSampledLoader) else 1  # per-rank batch there
        self.examples, self.batch_size = len(ds), int(inner.batch_size) * scale
        self.gather = lambda idx: inner.collate_fn([ds[i] for i in idx])


def _run_dir(ctx) -> Path | None:
    from .. import distributed

    run_dir = getattr(ctx.recorder, "run_dir", None)
    return Path(run_dir) if run_dir is not None and distributed.is_main() else None


def measurement_indices(ctx, n: int, examples: int, batch_size: int) -> list[list[int]]:
    """The index lists of the first ``n`` measurement batches: from the run folder's record where it
    holds them, else drawn (``select_indices``) and recorded there."""
    run_dir = _run_dir(ctx)
    path = None if run_dir is None else run_dir / MEASUREMENT_FILE
    recorded = None
    if path is not None and path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            warnings.warn(f"{path} is unreadable: the measurement batches are drawn again from the seed")
    if recorded and (recorded.get("examples"), recorded.get("batch_size")) == (examples, batch_size):
        if len(recorded.get("batches", [])) >= n:
            return [list(b) for b in recorded["batches"][:n]]
    elif recorded:
        warnings.warn(f"{path} lists batches of a training set of {recorded.get('examples')} samples in batches of "
                      f"{recorded.get('batch_size')}, this run has {examples} and {batch_size}: measuring on a new "
                      f"selection (the file is left as it is)")
        path = None
    chosen = select_indices(ctx.seed, examples, batch_size, n)
    if recorded and path is not None and chosen[: len(recorded["batches"])] != recorded["batches"]:
        warnings.warn(f"{path} holds another selection than the seed gives (written by another version?): "
                      f"its batches are kept first")
        chosen = [list(b) for b in recorded["batches"]] + chosen[len(recorded["batches"]):]
    if path is not None:
        from ..atomic import write_json

        write_json(path, {"seed": int(ctx.seed), "examples": examples, "batch_size": batch_size, "batches": chosen})
    return chosen


def measurement_batches(ctx, n: int) -> list:
    """The first ``n`` batches of the measurement set on ``ctx.device`` (call inside
    ``measurement`` so the RNG streams the gathering draws from are the fixed ones)."""
    try:
        source = _Source(ctx.train_batches)
    except TypeError:
        return take_batches(ctx.train_batches, n, ctx.device)
    idx = measurement_indices(ctx, int(n), source.examples, source.batch_size)
    return [to_device(source.gather(b), ctx.device) for b in idx]


@contextmanager
def measurement(ctx, n: int):
    """Within the block: the run as it was is preserved (``preserved``: parameters, modes, RNG,
    loader), the global RNG streams are seeded from the run's seed alone, and the value is the
    measurement set's first ``n`` batches."""
    py, npy = random.getstate(), np.random.get_state()
    try:
        with preserved(ctx.model, ctx.train_batches):
            seed = _seed(ctx.seed)
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield measurement_batches(ctx, n)
    finally:
        random.setstate(py)
        np.random.set_state(npy)
