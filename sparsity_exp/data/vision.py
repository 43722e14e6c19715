"""Image data at paper scale, through torchvision from local folders (never downloaded unless
``data.download=true``):

  * ``cifar10`` / ``cifar100``: the python-pickle batches (``cifar-10-batches-py`` /
    ``cifar-100-python``) under ``data.root``, with the paper's CIFAR transforms (docs/paper.md §4.1):
    train Resize(256) -> RandomCrop(224) -> RandomHorizontalFlip, test Resize(224), no normalisation;
  * ``imagenet``: an ImageFolder root (``<root>/train/<class>/*``, ``<root>/val/<class>/*``) with the
    torchvision reference recipe the paper used (§4.3): RandomResizedCrop(224) + flip + RandAugment
    (magnitude 9), val Resize(256) -> CenterCrop(224), ImageNet mean/std.

Recipe pieces from config, for every set here: ``data.randaugment`` (null = off),
``data.mixup_alpha`` / ``data.cutmix_alpha`` (one of the two per batch, applied by the task to
training batches on the device), ``data.repeated_augmentation`` (copies of each image per epoch,
each augmented on its own). Label smoothing is ``trainer.label_smoothing``.
Transforms are torchvision.transforms.v2.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError, DatasetNotFound
from . import DataBundle, DataInfo

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _tail(cfg, train: bool) -> list:
    """uint8 image -> float in [0, 1], normalised when configured."""
    from torchvision.transforms import v2

    out = [v2.ToDtype(torch.float32, scale=True)]
    if cfg.normalize:
        out.append(v2.Normalize(list(cfg.mean), list(cfg.std)))
    if train and cfg.get("random_erasing", 0):
        out.append(v2.RandomErasing(p=cfg.random_erasing))
    return out


def _randaugment(cfg) -> list:
    from torchvision.transforms import v2

    ra = cfg.get("randaugment")
    if not ra:
        return []
    return [v2.RandAugment(num_ops=ra.num_ops, magnitude=ra.magnitude, interpolation=v2.InterpolationMode.BILINEAR)]


def batch_mix(cfg, num_classes: int):
    """MixUp and/or CutMix on a training batch (x, integer labels) -> (x, soft labels); with both
    set, one of the two is drawn per batch (the torchvision reference recipe). None when off."""
    from torchvision.transforms import v2

    mixes = []
    if cfg.get("mixup_alpha", 0) > 0:
        mixes.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.get("cutmix_alpha", 0) > 0:
        mixes.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def _bundle(cfg, train, test, num_classes: int) -> DataBundle:
    repeats = int(cfg.get("repeated_augmentation", 1) or 1)
    if repeats < 1:
        raise ConfigError(f"data.repeated_augmentation={repeats}; use 1 (off) or more copies per image")
    return DataBundle(train=train, test=test, info=DataInfo((3, cfg.image_size, cfg.image_size), num_classes),
                      train_batch_transform=batch_mix(cfg, num_classes), train_repeats=repeats)


def _cifar(cfg, cls, folder: str, num_classes: int) -> DataBundle:
    from torchvision.transforms import v2

    root = Path(cfg.root).expanduser()
    if not (root / folder).is_dir() and not cfg.download:
        raise DatasetNotFound(f"{cls.__name__} not found: expected the python batches in {root / folder}. Copy the "
                              f"extracted '{folder}' folder there, point data.root at its parent, or add "
                              f"data.download=true on a machine with internet access.")
    if not cfg.verify:  # skip torchvision's md5 check of each batch file (it still needs every file)
        cls = type(cls.__name__, (cls,), {"train_list": [(f, None) for f, _ in cls.train_list],
                                          "test_list": [(f, None) for f, _ in cls.test_list],
                                          "meta": {**cls.meta, "md5": None}})
    train_tf = v2.Compose([v2.ToImage(), v2.Resize(cfg.resize, antialias=True), v2.RandomCrop(cfg.image_size),
                           v2.RandomHorizontalFlip(), *_randaugment(cfg), *_tail(cfg, True)])
    test_tf = v2.Compose([v2.ToImage(), v2.Resize(cfg.image_size, antialias=True), *_tail(cfg, False)])
    try:
        train = cls(str(root), train=True, download=cfg.download, transform=train_tf)
        test = cls(str(root), train=False, download=cfg.download, transform=test_tf)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DatasetNotFound(f"{cls.__name__} in {root / folder}: {exc}. Check that every batch file is there; "
                              f"data.verify=false skips the md5 check for re-packed copies.") from exc
    return _bundle(cfg, train, test, num_classes)


def cifar10(cfg) -> DataBundle:
    from torchvision.datasets import CIFAR10

    return _cifar(cfg, CIFAR10, "cifar-10-batches-py", 10)


def cifar100(cfg) -> DataBundle:
    from torchvision.datasets import CIFAR100

    return _cifar(cfg, CIFAR100, "cifar-100-python", 100)


def imagenet(cfg) -> DataBundle:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    root = Path(cfg.root).expanduser()
    folders = {split: root / getattr(cfg, f"{split}_dir") for split in ("train", "val")}
    for split, folder in folders.items():
        if not folder.is_dir():
            raise DatasetNotFound(f"ImageNet {split} folder {folder} not found: expected <root>/{folder.name}/<class>/"
                                  f"<images>; set data.root (and data.{split}_dir) to your ImageFolder copy")
    bilinear = v2.InterpolationMode.BILINEAR
    train_tf = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(cfg.image_size, interpolation=bilinear, antialias=True),
                           v2.RandomHorizontalFlip(), *_randaugment(cfg), *_tail(cfg, True)])
    test_tf = v2.Compose([v2.ToImage(), v2.Resize(cfg.resize, interpolation=bilinear, antialias=True),
                          v2.CenterCrop(cfg.image_size), *_tail(cfg, False)])
    train = ImageFolder(str(folders["train"]), transform=train_tf)
    test = ImageFolder(str(folders["val"]), transform=test_tf)
    if train.classes != test.classes:
        raise DatasetNotFound(f"ImageNet train and val folders hold different classes ({len(train.classes)} vs "
                              f"{len(test.classes)}); every class needs a folder in both")
    return _bundle(cfg, train, test, len(train.classes))
