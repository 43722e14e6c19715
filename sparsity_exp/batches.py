"""Batches for training and evaluation.

In-memory tensor datasets (the embedded digits) are moved to the device once and sliced there:
no DataLoader overhead and no host-to-device copy per step. Any other dataset goes through a
DataLoader with a seeded generator, workers and pinned memory from config.

``batch_size`` is the global batch. Under data parallel training (distributed.py) rank r of N
takes its share of it: for training, the r-th slice of every global batch that one process would
draw (in-memory data) or a DistributedSampler shard (on-disk data); for evaluation, every N-th
example of the test set, so the ranks' sums add up to the whole test set exactly once."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, TensorDataset

from .errors import ConfigError


class DecodedTensors(TensorDataset):
    """A map-style dataset decoded once into tensors (what its fixed transforms give, value for value),
    batched on the device like any TensorDataset. It replaced a DataLoader over the same examples, so
    its batches draw the shuffle generator as that DataLoader did (one int64 draw per epoch before
    the permutation): the same examples in the same order as before, without per-example Python."""

    loader_order = True


class DeviceTensorBatches:
    def __init__(self, ds: TensorDataset, batch_size: int, shuffle: bool, drop_last: bool,
                 generator: torch.Generator, device: torch.device, rank: int = 0, world_size: int = 1):
        self.loader_order = getattr(ds, "loader_order", False)
        self.tensors = [t.to(device) for t in ds.tensors]
        self.n = len(self.tensors[0])
        self.batch_size, self.shuffle, self.drop_last, self.generator = batch_size, shuffle, drop_last, generator
        # this rank's part of each global batch (the whole batch in a single process)
        self.share = batch_size // world_size
        self.offset = rank * self.share

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        # every rank draws the same permutation (same seed), as a single process would
        if self.loader_order:  # DataLoader's worker base seed, drawn first (see DecodedTensors)
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        order = order.to(self.tensors[0].device)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.share != self.batch_size:
                idx = idx[self.offset:self.offset + self.share]
            yield tuple(t[idx] for t in self.tensors)
        if self.loader_order and self.shuffle and self.drop_last:
            # asked past the last batch, DataLoader's RandomSampler ran out and drew one more permutation
            # (the trainer's BatchStream never asks: it starts the next epoch after len() batches)
            torch.randperm(self.n, generator=self.generator)


class EpochSampledLoader:
    """A DataLoader over a DistributedSampler that moves to the next epoch's shuffle on every pass."""

    def __init__(self, loader: DataLoader):
        self.loader, self.epoch = loader, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.loader.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)


class RepeatedAugmentationSampler(Sampler):
    """Repeated augmentation (Hoffer et al. 2020; the RA sampler of the paper's ImageNet recipe):
    every epoch draws ceil(n / repeats) distinct images and lists each ``repeats`` times in a row,
    so one batch holds differently augmented copies of an image; the epoch keeps n entries."""

    def __init__(self, n: int, repeats: int, generator: torch.Generator):
        self.n, self.repeats, self.generator = n, repeats, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        picked = torch.randperm(self.n, generator=self.generator)[: -(-self.n // self.repeats)]
        return iter(picked.repeat_interleave(self.repeats)[: self.n].tolist())


def make_batches(ds: Dataset, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                 device: torch.device, num_workers: int = 0, repeats: int = 1, rank: int = 0, world_size: int = 1):
    generator = torch.Generator().manual_seed(seed)
    if drop_last and len(ds) < batch_size:  # training: not one full batch per epoch
        raise ConfigError(f"trainer.batch_size={batch_size} is larger than the training set ({len(ds)} examples), "
                          f"so not one full batch can be drawn; set trainer.batch_size to at most {len(ds)}")
    if world_size > 1 and getattr(ds, "loader_order", False):
        ds = TensorDataset(*ds.tensors)  # under DDP a decoded set is sharded as its DataLoader was (below)
        as_loader = True
    else:
        as_loader = False
    if world_size > 1 and not drop_last and not as_loader:
        # evaluation: every world_size-th example, no padding, no example counted twice
        local = max(1, -(-batch_size // world_size))
        if isinstance(ds, TensorDataset):
            shard = TensorDataset(*(t[rank::world_size] for t in ds.tensors))
            return DeviceTensorBatches(shard, local, shuffle, drop_last, generator, device)
        return DataLoader(ds, batch_size=local, sampler=list(range(rank, len(ds), world_size)),
                          num_workers=num_workers, pin_memory=device.type == "cuda",
                          persistent_workers=num_workers > 0)
    if isinstance(ds, TensorDataset) and repeats == 1 and not as_loader:
        return DeviceTensorBatches(ds, batch_size, shuffle, drop_last, generator, device, rank, world_size)
    if world_size > 1:
        if repeats > 1:
            raise ConfigError("repeated augmentation (data.repeated_augmentation > 1) is not supported under torchrun yet; "
                              "set data.repeated_augmentation=1 for data parallel runs")
        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                     drop_last=True)
        return EpochSampledLoader(DataLoader(ds, batch_size=batch_size // world_size, sampler=sampler,
                                             drop_last=True, num_workers=num_workers,
                                             pin_memory=device.type == "cuda", persistent_workers=num_workers > 0))
    sampler = RepeatedAugmentationSampler(len(ds), repeats, generator) if shuffle and repeats > 1 else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      drop_last=drop_last, generator=generator if sampler is None else None,
                      num_workers=num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=num_workers > 0)


def forever(batches) -> Iterator[tuple]:
    """Cycle over epochs; every pass reshuffles through the loader's own generator."""
    while True:
        yield from batches


def to_device(batch, device: torch.device):
    return tuple(t.to(device, non_blocking=True) for t in batch)
