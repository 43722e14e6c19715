"""MNIST-format files read in place (raw or .gz): read-only roots, Debian's layout, damaged copies."""
import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sparsity_exp.data import build_data
from sparsity_exp.errors import DatasetNotFound
from tests.idx import write_mnist_like

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _tree(folder):
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mode) for p in folder.rglob("*")}


def test_gz_files_are_read_in_place_and_nothing_is_written(compose, tmp_path):
    _, _, vx, vy = write_mnist_like(tmp_path, "FashionMNIST", gz=True)
    before = _tree(tmp_path)
    os.chmod(tmp_path / "FashionMNIST" / "raw", 0o555)  # read-only (root ignores it: the tree check still holds)
    try:
        data = build_data(compose("data=fashion_mnist", f"data.root={tmp_path}", "data.augment=false").data)
        img, label = data.test[2]
    finally:
        os.chmod(tmp_path / "FashionMNIST" / "raw", 0o755)
    assert label == int(vy[2]) and np.allclose(img[0, 2:30, 2:30].numpy(), vx[2] / 255.0, atol=1e-6)
    assert _tree(tmp_path) == before  # no unpacked copy beside the originals


@pytest.mark.parametrize("layout", ["debian_parent", "flat"])
def test_debian_package_layout(compose, tmp_path, layout):
    write_mnist_like(tmp_path / "src", "FashionMNIST", gz=True)
    target = tmp_path / "datasets" / "fashion-mnist"  # /usr/share/datasets/fashion-mnist/*.gz
    shutil.copytree(tmp_path / "src" / "FashionMNIST" / "raw", target)
    root = target.parent if layout == "debian_parent" else target
    data = build_data(compose("data=fashion_mnist", f"data.root={root}").data)
    assert len(data.train) == 12 and len(data.test) == 6


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_installed_debian_package(compose):
    data = build_data(compose("data=fashion_mnist", "data.root=/usr/share/datasets").data)
    assert len(data.train) == 60000 and len(data.test) == 10000


def _damage(raw: Path, how: str) -> Path:
    if how == "truncated_raw":
        path = raw / NAMES[0]
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "truncated_gz":
        path = raw / f"{NAMES[2]}.gz"
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif how == "not_gzip":
        path = raw / f"{NAMES[1]}.gz"
        path.write_bytes(b"this is not gzip data at all")
    elif how == "bad_magic":
        path = raw / NAMES[3]
        path.write_bytes(b"\x00\x00\x0d\x01" + path.read_bytes()[4:])
    elif how == "label_count":
        path = raw / NAMES[1]
        data = path.read_bytes()
        path.write_bytes(data[:4] + (11).to_bytes(4, "big") + data[8:19])
    return path


@pytest.mark.parametrize("how,says", [("truncated_raw", "truncated"), ("truncated_gz", "damaged"),
                                      ("not_gzip", "damaged"), ("bad_magic", "not a valid IDX file"),
                                      ("label_count", "different copies")])
def test_damaged_files_are_named(compose, tmp_path, how, says):
    gz = how in ("truncated_gz", "not_gzip")
    write_mnist_like(tmp_path, "MNIST", gz=gz)
    path = _damage(tmp_path / "MNIST" / "raw", how)
    with pytest.raises(DatasetNotFound) as info:
        build_data(compose("data=mnist", f"data.root={tmp_path}").data)
    assert says in str(info.value) and str(path.name) in str(info.value)
