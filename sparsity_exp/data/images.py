"""Image datasets: the embedded default (scikit-learn's 8x8 digits) and torchvision's
MNIST / Fashion-MNIST read from a local root (no download unless ``data.download=true``)."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import DatasetNotFound
from . import DataBundle, DataInfo


def digits(cfg) -> DataBundle:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), pixel values scaled to [0, 1].

    The split is drawn with ``data.split_seed``, not the run seed, so every run of a study sees the
    same test set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=cfg.test_fraction, random_state=cfg.split_seed, stratify=y
    )
    return DataBundle(
        train=TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        test=TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)),
        info=DataInfo(input_shape=(1, 8, 8), num_classes=10),
    )


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _ensure_idx(raw: Path) -> None:
    """torchvision reads the uncompressed IDX files; unpack ``.gz`` copies placed there by hand."""
    for name in _IDX_FILES:
        gz = raw / f"{name}.gz"
        if not (raw / name).exists() and gz.exists():
            with gzip.open(gz, "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _mnist_like(cfg, cls, folder: str, pretty: str) -> DataBundle:
    from torchvision import transforms as T

    root = Path(cfg.root).expanduser()
    raw = root / folder / "raw"
    if raw.is_dir():
        _ensure_idx(raw)
    missing = [n for n in _IDX_FILES if not (raw / n).exists()]
    if missing and not cfg.download:
        raise DatasetNotFound(
            f"{pretty} not found: expected the IDX files {', '.join(missing)} (or their .gz) in {raw}. "
            f"Copy them there, point data.root at the folder that holds '{folder}/raw', "
            f"or add data.download=true on a machine with internet access."
        )
    pad = (cfg.image_size - 28) // 2
    test_tf = T.Compose([T.Pad(pad), T.ToTensor()]) if pad > 0 else T.ToTensor()
    if cfg.augment:
        # PAPER.md §4.5: RandomCrop(32, padding 16) and RandomRotation(30) in training.
        train_tf = T.Compose([
            T.RandomCrop(cfg.image_size, padding=cfg.crop_padding),
            T.RandomRotation(cfg.rotation),
            T.ToTensor(),
        ])
    else:
        train_tf = test_tf
    train = cls(str(root), train=True, download=cfg.download, transform=train_tf)
    test = cls(str(root), train=False, download=cfg.download, transform=test_tf)
    return DataBundle(train=train, test=test,
                      info=DataInfo(input_shape=(1, cfg.image_size, cfg.image_size), num_classes=10))


def mnist(cfg) -> DataBundle:
    from torchvision.datasets import MNIST

    return _mnist_like(cfg, MNIST, "MNIST", "MNIST")


def fashion_mnist(cfg) -> DataBundle:
    from torchvision.datasets import FashionMNIST

    return _mnist_like(cfg, FashionMNIST, "FashionMNIST", "Fashion-MNIST")
