"""Write small MNIST-format datasets (IDX files, optionally gzipped) for loader tests."""
import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)
    return path


def write_mnist_like(root: Path, folder: str, n_train: int = 12, n_test: int = 6, gz: bool = False, seed: int = 0):
    """Returns the arrays written: train_x, train_y, test_x, test_y."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train),
              rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for name, arr in zip(names, arrays):
        write_idx(raw / name, arr, gz=gz)
    return arrays
