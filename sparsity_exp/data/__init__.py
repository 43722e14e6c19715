"""Datasets by name. ``build_data(cfg, seed)`` returns train/test datasets and what the model needs
to know about them (input shape, number of classes)."""
from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from ..errors import ConfigError


@dataclass
class DataInfo:
    input_shape: tuple  # shape of one example, e.g. (1, 8, 8)
    num_classes: int


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    info: DataInfo


def build_data(cfg) -> DataBundle:
    from . import images

    builders = {"digits": images.digits, "mnist": images.mnist, "fashion_mnist": images.fashion_mnist}
    if cfg.name not in builders:
        raise ConfigError(f"data.name={cfg.name!r} is unknown; choose one of {sorted(builders)}")
    return builders[cfg.name](cfg)
