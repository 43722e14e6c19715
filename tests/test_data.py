import numpy as np
import pytest
import torch

from sparsity_exp.data import build_data
from sparsity_exp.errors import DatasetNotFound
from tests.idx import write_mnist_like


def test_digits_split_is_fixed_stratified_and_independent_of_the_run_seed(compose):
    a = build_data(compose("seed=1").data)
    b = build_data(compose("seed=2").data)
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == 360
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    x, y = a.train.tensors
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    counts = torch.bincount(a.test.tensors[1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    other = build_data(compose("data.split_seed=5").data)
    assert not torch.equal(other.test.tensors[0], a.test.tensors[0])


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_like_loaders_read_real_idx_files(compose, tmp_path, name, folder, gz):
    tx, ty, vx, vy = write_mnist_like(tmp_path, folder, gz=gz)
    data = build_data(compose(f"data={name}", f"data.root={tmp_path}", "data.augment=false").data)
    assert len(data.train) == len(tx) and len(data.test) == len(vx)
    assert data.info.input_shape == (1, 32, 32) and data.info.num_classes == 10
    img, label = data.test[3]
    assert img.shape == (1, 32, 32) and label == int(vy[3])
    # padded by 2 on every side, scaled to [0, 1]
    np.testing.assert_allclose(img[0, 2:30, 2:30].numpy(), vx[3] / 255.0, atol=1e-6)
    assert img[0, :2].abs().sum() == 0
    aug = build_data(compose(f"data={name}", f"data.root={tmp_path}").data)
    assert aug.train[0][0].shape == (1, 32, 32)


def test_missing_root_names_the_expected_files_and_what_to_do(compose, tmp_path):
    with pytest.raises(DatasetNotFound) as info:
        build_data(compose("data=mnist", f"data.root={tmp_path / 'nowhere'}").data)
    msg = str(info.value)
    assert "nowhere/MNIST/raw" in msg and "train-images-idx3-ubyte" in msg and "data.download=true" in msg
