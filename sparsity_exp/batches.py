"""Batches for training and evaluation.

In-memory tensor datasets (the embedded digits) are moved to the device once and sliced there:
no DataLoader overhead and no host-to-device copy per step. Any other dataset goes through a
DataLoader with a seeded generator, workers and pinned memory from config."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset


class DeviceTensorBatches:
    def __init__(self, ds: TensorDataset, batch_size: int, shuffle: bool, drop_last: bool,
                 generator: torch.Generator, device: torch.device):
        self.tensors = [t.to(device) for t in ds.tensors]
        self.n = len(self.tensors[0])
        self.batch_size, self.shuffle, self.drop_last, self.generator = batch_size, shuffle, drop_last, generator

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        order = order.to(self.tensors[0].device)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield tuple(t[idx] for t in self.tensors)


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
                 device: torch.device, num_workers: int = 0, repeats: int = 1):
    generator = torch.Generator().manual_seed(seed)
    if isinstance(ds, TensorDataset) and repeats == 1:
        return DeviceTensorBatches(ds, batch_size, shuffle, drop_last, generator, device)
    if len(ds) < batch_size and drop_last:
        drop_last = False
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
