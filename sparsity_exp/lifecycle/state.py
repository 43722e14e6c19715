"""Random state and data position as plain tensors, so a checkpoint restores the exact stream.

Everything here survives ``torch.load(weights_only=True)``: generator states are uint8 tensors,
Python's and NumPy's Mersenne-Twister keys are int64 tensors, the rest are ints, floats and None.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """Every global random state a run draws from: Python, NumPy, torch CPU and each CUDA device."""
    version, key, gauss = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "key": torch.tensor(key, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "key": torch.from_numpy(np_key.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["key"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # a run resumed on fewer devices restores those it has
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def _shuffle_generator(batches):
    """The generator that orders the loader's epochs: the loader's own, or (when a sampler such as
    the repeated-augmentation sampler draws the order) the sampler's."""
    own = getattr(batches, "generator", None)
    if own is not None:
        return own
    sampler = getattr(batches, "sampler", None)
    return getattr(sampler, "generator", None) if isinstance(getattr(sampler, "generator", None), torch.Generator) \
        else None


class BatchStream:
    """Endless training batches (epoch after epoch) that remember where they are.

    The loader's own ``generator`` (shuffling; DataLoader worker seeds) is recorded at the start of
    each epoch together with the number of batches taken since. Restoring replays that epoch's
    shuffle and skips the batches already trained on (at most one epoch of loading), then sets the
    generator to where it stood at the checkpoint, so later epochs shuffle as they would have.
    Loaders without a ``generator`` are only skipped forward.
    """

    def __init__(self, batches):
        self.batches = batches
        self.generator = _shuffle_generator(batches)
        self._it = None
        self.taken = 0  # batches taken from the current epoch
        self._epoch_start = None  # generator state before this epoch's iterator was made
        try:
            self._len = len(batches)
        except TypeError:  # an iterable dataset: the epoch ends when the loader says so
            self._len = None

    def _new_epoch(self) -> None:
        self._epoch_start = self.generator.get_state() if self.generator is not None else None
        self._it = iter(self.batches)
        self.taken = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._new_epoch()
        try:
            batch = next(self._it)
        except StopIteration:
            self._new_epoch()
            batch = next(self._it)
        self.taken += 1
        if self._len is not None and self.taken >= self._len:
            self._it = None  # the next batch starts a new epoch; a checkpoint here needs no replay
        return batch

    def state_dict(self) -> dict:
        return {
            "taken": self.taken if self._it is not None else 0,
            "epoch_start": self._epoch_start if self._it is not None else None,
            "generator": self.generator.get_state() if self.generator is not None else None,
            # a loader that counts its epochs (DistributedSampler.set_epoch): the count for the next pass
            "loader_epoch": getattr(self.batches, "epoch", None),
        }

    def load_state_dict(self, state: dict) -> None:
        self._it = None
        epoch = state.get("loader_epoch")
        if epoch is not None and hasattr(self.batches, "epoch"):
            # replaying the current epoch passes through iter() once more, which counts it again
            self.batches.epoch = epoch - 1 if state["taken"] else epoch
        if state["taken"]:
            if self.generator is not None and state["epoch_start"] is not None:
                self.generator.set_state(state["epoch_start"])
            self._new_epoch()
            for _ in range(state["taken"]):
                next(self._it)
            self.taken = state["taken"]
        if self.generator is not None and state["generator"] is not None:
            self.generator.set_state(state["generator"])
