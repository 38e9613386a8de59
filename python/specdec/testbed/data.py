"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (docs/TESTBED.md §4).

The files are located with ``dpkg -L dataset-fashion-mnist`` (or the directory in the environment variable
``SPECDEC_FASHION_MNIST_DIR``), read from the gzip IDX format and padded 28 -> 32 with the background value 0.
Images come back as float32 ``(N, 1, 32, 32)`` in [-1, 1]; labels as int64 ``(N,)``.
"""

import gzip
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch

PACKAGE = "dataset-fashion-mnist"
ENV_DIR = "SPECDEC_FASHION_MNIST_DIR"
INSTALL_HINT = f"sudo apt-get update && sudo apt-get install -y {PACKAGE}"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
IMAGE_SIZE = 32  # 28 padded by 2 on every side
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DatasetMissingError(FileNotFoundError):
    """Fashion-MNIST files are not installed; the message names the package and the install command."""


def _missing(detail: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"Fashion-MNIST not found ({detail}). Install the Debian package '{PACKAGE}': `{INSTALL_HINT}`, "
        f"or point {ENV_DIR} at a directory holding the four *-ubyte.gz files."
    )


@lru_cache(maxsize=1)
def locate_files() -> Dict[str, Path]:
    """Map each IDX file name to its path, from ``$SPECDEC_FASHION_MNIST_DIR`` or ``dpkg -L``."""
    names = [n for pair in _FILES.values() for n in pair]
    override = os.environ.get(ENV_DIR)
    if override:
        found = {n: Path(override) / n for n in names if (Path(override) / n).is_file()}
        where = f"{ENV_DIR}={override}"
    else:
        try:
            listing = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            raise _missing(f"`dpkg -L {PACKAGE}` failed") from None
        found = {Path(line).name: Path(line) for line in listing.splitlines() if Path(line).name in names}
        where = f"package {PACKAGE}"
    absent = [n for n in names if n not in found]
    if absent:
        raise _missing(f"{', '.join(absent)} missing from {where}")
    return found


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = magic & 0xFF
    header = np.frombuffer(data, dtype=">i4", count=1 + ndim)
    if int(header[0]) != magic:
        raise ValueError(f"{path.name}: IDX magic {int(header[0])}, expected {magic}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + ndim)).reshape(tuple(int(d) for d in header[1:]))


@lru_cache(maxsize=2)
def _load_uint8(split: str) -> Tuple[np.ndarray, np.ndarray]:
    files = locate_files()
    img_name, lbl_name = _FILES[split]
    images = _read_idx(files[img_name], 2051)
    labels = _read_idx(files[lbl_name], 2049)
    return np.pad(images, ((0, 0), (2, 2), (2, 2))), labels  # background value 0


def load_fashion_mnist(split: str = "train") -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: float32 ``(N, 1, 32, 32)`` in [-1, 1] and int64 ``(N,)``.

    ``split`` is ``"train"`` (60k) or ``"test"`` (10k, held out for metrics). Raises
    :class:`DatasetMissingError` naming the package and install command when the files are absent.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _load_uint8(split)
    x = torch.from_numpy(images.astype(np.float32)).div_(127.5).sub_(1.0)[:, None]
    return x, torch.from_numpy(labels.astype(np.int64))


def dataset_available() -> bool:
    """True when the Fashion-MNIST files can be located (for skipping end-to-end tests)."""
    try:
        locate_files()
        return True
    except DatasetMissingError:
        return False
