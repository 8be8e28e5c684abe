"""Where optkit finds data sets: ``$OPTKIT_DATA``, else a per-user cache directory.

Problem packages register the data sets they read with :func:`register_dataset`, so
``optkit data list`` can show which are present. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Dataset", "data_dir", "find_dataset", "list_datasets", "register_dataset"]


@dataclass(frozen=True)
class Dataset:
    """A data set optkit knows by name.

    Attributes
    ----------
    name : str
        e.g. ``"libsvm/a9a"``.
    files : tuple of str
        Candidate paths relative to the data directory; the first that exists is used
        (e.g. ``("libsvm/a9a", "libsvm/a9a.gz")``).
    description : str
        One line: what it is and its shape.
    """

    name: str
    files: tuple[str, ...]
    description: str = ""


_DATASETS: dict[str, Dataset] = {}


def data_dir() -> Path:
    """``$OPTKIT_DATA`` if set, else ``$XDG_CACHE_HOME/optkit`` (default ``~/.cache/optkit``)."""
    env = os.environ.get("OPTKIT_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "optkit"


def register_dataset(dataset: Dataset) -> Dataset:
    """Make ``dataset`` known to :func:`list_datasets` and :func:`find_dataset`."""
    current = _DATASETS.get(dataset.name)
    if current is not None and current != dataset:
        raise ValueError(f"dataset {dataset.name!r} is already registered differently")
    _DATASETS[dataset.name] = dataset
    return dataset


def find_dataset(name: str) -> Path:
    """The path of data set ``name`` in :func:`data_dir`; ``FileNotFoundError`` saying where it looked."""
    if name not in _DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(_DATASETS)) or '(none)'}")
    root = data_dir()
    for rel in _DATASETS[name].files:
        if (root / rel).exists():
            return root / rel
    looked = ", ".join(str(root / rel) for rel in _DATASETS[name].files)
    raise FileNotFoundError(
        f"dataset {name!r} not found; looked for {looked}. Set OPTKIT_DATA to the directory that holds it."
    )


def list_datasets() -> list[tuple[Dataset, Path | None]]:
    """Every registered data set with its path, or ``None`` when it is absent."""
    from .registry import load_plugins

    load_plugins()
    out = []
    for name in sorted(_DATASETS):
        try:
            out.append((_DATASETS[name], find_dataset(name)))
        except FileNotFoundError:
            out.append((_DATASETS[name], None))
    return out
