"""MNIST-format IDX files read straight from disk, raw or ``.gz``: nothing is unpacked, so a
read-only data root (a system package, a shared mount) works as it is.

Where the four files may lie under ``data.root``, first match wins:
  * ``<root>/<Folder>/raw/`` (torchvision's layout: ``MNIST/raw``, ``FashionMNIST/raw``);
  * ``<root>/<debian name>/`` (Debian's ``dataset-fashion-mnist`` package installs
    ``/usr/share/datasets/fashion-mnist/*.gz``: ``data.root=/usr/share/datasets``);
  * ``<root>/`` itself (``data.root=/usr/share/datasets/fashion-mnist``).
Each file is checked (magic number, shape, length, label range) so a truncated or damaged copy is
a clear error naming the file, never a shape error deep in torch."""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetNotFound

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_NAMES = {"FashionMNIST": "fashion-mnist", "MNIST": "mnist"}
DEBIAN_SYSTEM_ROOT = Path("/usr/share/datasets")


class DamagedDataset(DatasetNotFound):
    pass


def candidate_folders(root: Path, folder: str) -> list[Path]:
    folders = [root / folder / "raw"]
    if folder in DEBIAN_NAMES:
        folders.append(root / DEBIAN_NAMES[folder])
    folders.append(root)
    return folders


def _present(folder: Path, name: str) -> Path | None:
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def find_files(root: Path, folder: str) -> dict[str, Path] | None:
    """name -> path (raw or .gz) of the four files, from the first folder holding all of them."""
    for candidate in candidate_folders(root, folder):
        found = {name: _present(candidate, name) for name in FILES}
        if all(found.values()):
            return found
    return None


def missing_message(root: Path, folder: str, pretty: str) -> str:
    raw = root / folder / "raw"
    hint = ""
    system = DEBIAN_SYSTEM_ROOT / DEBIAN_NAMES.get(folder, "?")
    if system.is_dir() and find_files(DEBIAN_SYSTEM_ROOT, folder):
        hint = f" A system copy is installed in {system}: add data.root={DEBIAN_SYSTEM_ROOT}."
    elif folder == "FashionMNIST":
        hint = " On Debian/Ubuntu, `apt install dataset-fashion-mnist` installs it; then data.root=/usr/share/datasets."
    return (f"{pretty} not found: expected the IDX files {', '.join(FILES)} (raw or .gz) in {raw} (or in "
            f"{root}{'/' + DEBIAN_NAMES[folder] if folder in DEBIAN_NAMES else ''}, or in {root} itself). Copy them "
            f"there, point data.root at the folder that holds '{folder}/raw', or add data.download=true on a "
            f"machine with internet access.{hint}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DamagedDataset(f"{path} is damaged ({type(exc).__name__}: {exc or 'truncated'}); copy it again "
                             f"from the original source (or delete it and use data.download=true)") from None
    except OSError as exc:
        raise DamagedDataset(f"cannot read {path} ({exc.strerror or exc}); check the file's permissions, or copy "
                             f"the dataset to a folder you can read and set data.root") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file with ``ndim`` dimensions, checked against its own header."""
    data = _read_bytes(path)
    damaged = f"{path} is not a valid IDX file"
    fix = "copy it again from the original source (or delete it and use data.download=true)"
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DamagedDataset(f"{damaged} (expected a uint8 array of {ndim} dimensions in the header); {fix}")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DamagedDataset(f"{damaged}: its header is cut short ({len(data)} bytes); {fix}")
    shape = struct.unpack(f">{ndim}I", data[4:head])
    expected = head + int(np.prod(shape))
    if len(data) != expected:
        raise DamagedDataset(f"{path} is truncated or padded: its header says {'x'.join(map(str, shape))} values "
                             f"({expected} bytes), the file holds {len(data)} bytes; {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(shape)


def load_split(files: dict[str, Path], train: bool, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 N x 28 x 28, labels int64 N) of one split, as torchvision's MNIST holds them."""
    prefix = "train" if train else "t10k"
    images_path, labels_path = files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"]
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if images.shape[1:] != (28, 28):
        raise DamagedDataset(f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, not 28x28: not an "
                             f"MNIST-format file")
    if len(images) != len(labels):
        raise DamagedDataset(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels; "
                             f"the two files come from different copies: copy both again")
    if len(labels) and int(labels.max()) >= num_classes:
        raise DamagedDataset(f"{labels_path} holds label {int(labels.max())}, above the {num_classes} classes; "
                             f"copy it again from the original source")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def local_dataset_class(cls, files: dict[str, Path]):
    """``cls`` (torchvision's MNIST or FashionMNIST) reading ``files`` instead of ``<root>/<cls>/raw``:
    the same items and transforms, no download, nothing written."""

    class Local(cls):
        def _check_legacy_exist(self):
            return False

        def _check_exists(self):
            return True

        def _load_data(self):
            return load_split(files, self.train)

    Local.__name__ = Local.__qualname__ = cls.__name__
    return Local
