"""Image datasets: the embedded default (scikit-learn's 8x8 digits) and torchvision's
MNIST / Fashion-MNIST read from a local root (no download unless ``data.download=true``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import ConfigError, DatasetNotFound
from . import DataBundle, DataInfo, idx


def digits(cfg) -> DataBundle:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), pixel values scaled to [0, 1].

    The split is drawn with ``data.split_seed``, not the run seed, so every run of a study sees the
    same test set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    n_test = int(np.ceil(len(y) * cfg.test_fraction))
    n_classes = len(np.unique(y))
    if min(n_test, len(y) - n_test) < n_classes:  # a stratified split needs every class on both sides
        raise ConfigError(f"data.test_fraction={cfg.test_fraction} leaves {len(y) - n_test} training and {n_test} "
                          f"test images of the digits' {len(y)}: each side needs at least one per class "
                          f"({n_classes}); pick a fraction between {n_classes / len(y):.3f} and "
                          f"{1 - n_classes / len(y):.3f} (default 0.2)")
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=cfg.test_fraction, random_state=cfg.split_seed, stratify=y
    )
    return DataBundle(
        train=TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        test=TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)),
        info=DataInfo(input_shape=(1, 8, 8), num_classes=10),
    )


def _mnist_like(cfg, cls, folder: str, pretty: str) -> DataBundle:
    from torchvision import transforms as T

    root = Path(cfg.root).expanduser()
    info = DataInfo(input_shape=(1, cfg.image_size, cfg.image_size), num_classes=10)
    key = (folder, str(root.resolve()), cfg.image_size)
    if not cfg.augment and key in _DECODED:  # decoded by an earlier run of this process
        return DataBundle(*_DECODED[key], info=info)
    files = idx.find_files(root, folder)  # raw or .gz, read in place (a read-only root works)
    if files is not None:
        cls = idx.local_dataset_class(cls, files)
    elif not cfg.download:
        raise DatasetNotFound(idx.missing_message(root, folder, pretty))
    pad = (cfg.image_size - 28) // 2
    test_tf = T.Compose([T.Pad(pad), T.ToTensor()]) if pad > 0 else T.ToTensor()
    if cfg.augment:
        # docs/paper.md §4.5: RandomCrop(32, padding 16) and RandomRotation(30) in training.
        train_tf = T.Compose([
            T.RandomCrop(cfg.image_size, padding=cfg.crop_padding),
            T.RandomRotation(cfg.rotation),
            T.ToTensor(),
        ])
    else:
        train_tf = test_tf
    train = cls(str(root), train=True, download=cfg.download, transform=train_tf)
    test = cls(str(root), train=False, download=cfg.download, transform=test_tf)
    if not cfg.augment:  # fixed transforms: decoded once, batched on the device (speed only, same values)
        train, test = _DECODED[key] = tuple(_decoded(ds, pad) for ds in (train, test))
    return DataBundle(train=train, test=test, info=info)


_DECODED: dict = {}  # (folder, root, image size) -> (train, test) DecodedTensors: runs in one process decode once


def _decoded(ds, pad: int):
    """``ds`` (torchvision's MNIST-like set with Pad(pad) -> ToTensor) as tensors holding exactly what
    its transform gives per image (zero padding on uint8, then /255 in float32): no PIL image per
    example per epoch, which was most of a small run's time."""
    from ..batches import DecodedTensors

    x = ds.data.unsqueeze(1)  # uint8 [N, 1, 28, 28]
    if pad > 0:
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    return DecodedTensors(x.to(torch.float32).div(255), ds.targets.to(torch.int64))


def mnist(cfg) -> DataBundle:
    from torchvision.datasets import MNIST

    return _mnist_like(cfg, MNIST, "MNIST", "MNIST")


def fashion_mnist(cfg) -> DataBundle:
    from torchvision.datasets import FashionMNIST

    return _mnist_like(cfg, FashionMNIST, "FashionMNIST", "Fashion-MNIST")
