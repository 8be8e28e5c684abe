"""The MNIST test split under ``$OPTKIT_DATA/mnist/``: the idx reader, images and labels.

Two :mod:`optkit.data` data sets: ``mnist/t10k-images`` (``t10k-images-idx3-ubyte[.gz]``,
10000 x 28 x 28 uint8) and ``mnist/t10k-labels`` (``t10k-labels-idx1-ubyte[.gz]``, 10000
uint8 digits). Only the test split is used (the one available in optkit's shared data);
nothing is downloaded. Each file is parsed once per path and cached, read-only.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from optkit.data import Dataset, data_dir, find_dataset, register_dataset

__all__ = ["MNIST_IMAGES", "MNIST_LABELS", "find_mnist_files", "load_mnist_images", "load_mnist_labels", "read_idx"]

MNIST_IMAGES = register_dataset(
    Dataset(
        "mnist/t10k-images",
        ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-images-idx3-ubyte"),
        "MNIST test images, 10000 x 28 x 28 uint8 (idx3, optionally gzipped)",
    )
)

MNIST_LABELS = register_dataset(
    Dataset(
        "mnist/t10k-labels",
        ("mnist/t10k-labels-idx1-ubyte.gz", "mnist/t10k-labels-idx1-ubyte"),
        "MNIST test labels, 10000 digits 0-9 as uint8 (idx1, optionally gzipped)",
    )
)


def find_mnist_files(*roots: str | Path) -> tuple[Path, Path] | None:
    """The paths of the test images and labels under ``$OPTKIT_DATA`` (:func:`optkit.data.data_dir`)
    or, failing that, under the first of ``roots`` that holds both; ``None`` when none does."""
    for root in (data_dir(), *map(Path, roots)):
        images = next((root / f for f in MNIST_IMAGES.files if (root / f).exists()), None)
        labels = next((root / f for f in MNIST_LABELS.files if (root / f).exists()), None)
        if images is not None and labels is not None:
            return images, labels
    return None


_KIND = {1: "label", 3: "image"}


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an idx file of unsigned bytes with ``ndim`` dimensions (LeCun's MNIST format).

    Parameters
    ----------
    path : str or Path
        Plain, or gzipped when the name ends in ``.gz``.
    ndim : int
        1 for labels (magic ``0x801``), 3 for images (``0x803``).

    Returns
    -------
    ndarray of uint8, shape given by the header
        Read-only.

    Raises
    ------
    ValueError
        A wrong magic number, or a size that disagrees with the header.
    """
    path = Path(path)
    kind = _KIND.get(ndim, "data")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    header = 4 + 4 * ndim
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x800 + ndim:
        raise ValueError(f"{path} is not an idx{ndim} uint8 {kind} file (magic {magic:#x}, expected {0x800 + ndim:#x})")
    if len(data) < header:
        raise ValueError(f"{path} is too short to be an idx{ndim} {kind} file")
    dims = [int.from_bytes(data[k : k + 4], "big") for k in range(4, header, 4)]
    if len(data) != header + int(np.prod(dims)):
        shape = " x ".join(map(str, dims))
        raise ValueError(f"{path} holds {len(data) - header} {kind} bytes, expected {shape}")
    out = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=8)
def _cached(path: str, ndim: int) -> np.ndarray:
    return read_idx(Path(path), ndim)


def _load(dataset: Dataset, ndim: int, path: str | Path | None) -> np.ndarray:
    if path is None:
        try:
            path = find_dataset(dataset.name)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"the MNIST test split ({Path(dataset.files[0]).name}) belongs under $OPTKIT_DATA/mnist/; {exc}"
            ) from None
    return _cached(str(Path(path).resolve()), ndim)


def load_mnist_images(path: str | Path | None = None) -> np.ndarray:
    """The MNIST test images as a read-only uint8 array (10000, 28, 28).

    ``path`` defaults to the data set ``mnist/t10k-images`` in :func:`optkit.data.data_dir`
    (``$OPTKIT_DATA``); a missing file is a ``FileNotFoundError`` that names ``OPTKIT_DATA``.
    Parsed once per path and cached.
    """
    return _load(MNIST_IMAGES, 3, path)


def load_mnist_labels(path: str | Path | None = None) -> np.ndarray:
    """The MNIST test labels as a read-only uint8 array (10000,) of digits 0-9.

    ``path`` defaults to the data set ``mnist/t10k-labels``; otherwise as
    :func:`load_mnist_images`.
    """
    return _load(MNIST_LABELS, 1, path)
