"""Paper-scale image data on tiny files written in the real formats: CIFAR python batches and an
ImageFolder tree; the recipe pieces (RandAugment, MixUp/CutMix, repeated augmentation)."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from sparsity_exp.batches import RepeatedAugmentationSampler, make_batches
from sparsity_exp.data import build_data
from sparsity_exp.errors import DatasetNotFound


def write_cifar(root, hundred=False, per_batch=4, seed=0):
    """The python-pickle layout of cifar-10-batches-py / cifar-100-python; returns the test arrays."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    for name in names + ["test"] if hundred else names + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 100 if hundred else 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, label_key: labels, "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}, f)
        last = (data, labels)
    meta = {"fine_label_names": [f"c{i}" for i in range(100)]} if hundred else {"label_names": [f"c{i}" for i in range(10)]}
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump(meta, f)
    return last


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_from_the_python_batches(compose, tmp_path, hundred):
    test_x, test_y = write_cifar(tmp_path, hundred)
    name = "cifar100" if hundred else "cifar10"
    data = build_data(compose(f"data={name}", f"data.root={tmp_path}", "data.verify=false").data)
    assert len(data.train) == (4 if hundred else 20) and len(data.test) == 4
    assert data.info.input_shape == (3, 224, 224) and data.info.num_classes == (100 if hundred else 10)
    img, label = data.test[2]
    assert img.shape == (3, 224, 224) and img.dtype == torch.float32 and label == test_y[2]
    # test transform = Resize(224) of the stored pixels, no normalisation
    original = torch.from_numpy(test_x[2].reshape(3, 32, 32))
    from torchvision.transforms.v2 import functional as F

    expected = F.resize(original, [224, 224], antialias=True).float() / 255
    torch.testing.assert_close(img, expected, atol=1 / 255 + 1e-6, rtol=0)
    train_img, _ = data.train[0]
    assert train_img.shape == (3, 224, 224) and 0 <= train_img.min() and train_img.max() <= 1


def test_cifar_md5_check_and_missing_folder(compose, tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(DatasetNotFound, match="data.verify=false"):  # the fake batches fail torchvision's md5
        build_data(compose("data=cifar10", f"data.root={tmp_path}").data)
    with pytest.raises(DatasetNotFound, match="cifar-10-batches-py"):
        build_data(compose("data=cifar10", f"data.root={tmp_path / 'nothing'}").data)


def write_image_folder(root, classes=("ant", "bee", "cat"), per_class=3, size=(40, 30)):
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_imagenet_image_folder_with_the_recipe(compose, tmp_path):
    write_image_folder(tmp_path)
    cfg = compose("data=imagenet", f"data.root={tmp_path}", "data.image_size=16", "data.resize=20")
    data = build_data(cfg.data)
    assert data.info.num_classes == 3 and len(data.train) == 9 and data.train_repeats == 3
    assert [type(t).__name__ for t in data.train.transform.transforms] == [
        "ToImage", "RandomResizedCrop", "RandomHorizontalFlip", "RandAugment", "ToDtype", "Normalize"]
    assert data.train.transform.transforms[3].magnitude == 9
    img, label = data.test[4]
    assert img.shape == (3, 16, 16) and label == 1
    # val: Resize(20) on the short side -> CenterCrop(16) -> ImageNet mean/std
    raw = torch.from_numpy(np.array(Image.open(tmp_path / "val" / "bee" / "1.png"))).permute(2, 0, 1)
    from torchvision.transforms.v2 import functional as F

    ref = F.center_crop(F.resize(raw, 20, antialias=True), [16, 16]).float() / 255
    ref = (ref - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(img, ref, atol=0.02, rtol=0)
    # MixUp or CutMix on a training batch: soft labels that sum to one, two classes mixed
    x = torch.rand(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(0)
    mixed_x, soft = data.train_batch_transform(x, y)
    assert soft.shape == (6, 3) and torch.allclose(soft.sum(1), torch.ones(6))
    assert (soft.max(1).values < 1).any() and mixed_x.shape == x.shape


def test_imagenet_missing_val_folder(compose, tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFound, match="val"):
        build_data(compose("data=imagenet", f"data.root={tmp_path}").data)


def test_repeated_augmentation_sampler():
    sampler = RepeatedAugmentationSampler(10, 3, torch.Generator().manual_seed(0))
    order = list(sampler)
    assert len(order) == 10
    assert order[0] == order[1] == order[2] and order[3] == order[4] == order[5]  # copies side by side
    assert len(set(order)) == 4  # ceil(10 / 3) distinct images
    assert list(sampler) != order  # a new draw every epoch
    ds = torch.utils.data.TensorDataset(torch.arange(12.0))
    loader = make_batches(ds, 6, shuffle=True, drop_last=True, seed=0, device=torch.device("cpu"), repeats=2)
    (first,) = next(iter(loader))
    assert first[0] == first[1] and first[2] == first[3]


def test_mixup_trains_through_the_classification_task(compose, tmp_path):
    """Soft labels reach the loss (label smoothing too); accuracy counts against the true labels."""
    from sparsity_exp.data.vision import batch_mix
    from sparsity_exp.train import ClassificationTask

    cfg = compose("data=cifar10", "data.mixup_alpha=0.2")
    mix = batch_mix(cfg.data, 10)
    assert type(mix).__name__ == "MixUp"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    x, y = torch.rand(8, 3, 2, 2), torch.randint(0, 10, (8,))
    task = ClassificationTask(label_smoothing=0.11, batch_transform=mix)
    torch.manual_seed(3)
    loss, stats = task(model, (x, y), train=True)
    torch.manual_seed(3)
    mx, soft = mix(x, y)
    expected = torch.nn.functional.cross_entropy(model(mx), soft, label_smoothing=0.11)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert int(stats["correct"]) == int((model(mx).argmax(-1) == y).sum())
    loss_eval, _ = task(model, (x, y), train=False)  # no mixing at evaluation
    assert float(loss_eval.detach()) == pytest.approx(float(torch.nn.functional.cross_entropy(model(x), y).detach()), rel=1e-6)
