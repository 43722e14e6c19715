"""Datasets by name. ``build_data(cfg, seed)`` returns train/test datasets and what the model needs
to know about them (input shape, number of classes)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch.utils.data import Dataset

from ..errors import ConfigError


@dataclass
class DataInfo:
    input_shape: tuple  # shape of one example, e.g. (1, 8, 8); (inputs_length,) for token data
    num_classes: int  # classes, or the vocabulary size for token data
    task: str = "classification"  # "classification" (input, label) or "seq2seq" (input_ids, attention_mask, labels)
    vocab_size: int | None = None  # token data: the tokenizer's vocabulary (with sentinels)
    pad_id: int = 0
    eos_id: int = 1


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    info: DataInfo
    # applied by the task to training batches on the device (e.g. MixUp/CutMix): (x, y) -> (x, y')
    train_batch_transform: Callable | None = None
    train_repeats: int = 1  # repeated augmentation: each training image this many times per epoch


# name -> "module:function" in this package (imported when used: torchvision/transformers only then)
DATASETS = {"digits": "images:digits", "mnist": "images:mnist", "fashion_mnist": "images:fashion_mnist",
            "text": "text:text", "c4": "text:c4",
            "cifar10": "vision:cifar10", "cifar100": "vision:cifar100", "imagenet": "vision:imagenet"}


def build_data(cfg) -> DataBundle:
    from importlib import import_module

    if cfg.name not in DATASETS:
        raise ConfigError(f"data.name={cfg.name!r} is unknown; choose one of {sorted(DATASETS)}")
    module, _, function = DATASETS[cfg.name].partition(":")
    return getattr(import_module(f"{__name__}.{module}"), function)(cfg)
