"""LIBSVM binary-classification data and the constrained logistic regression built on them.

Reader
    :func:`read_libsvm` parses the LIBSVM/svmlight text format (``label idx:val idx:val ...``,
    1-based indices), plain or compressed (gzip or bzip2, recognised from the content).

Data sets
    :data:`DATASETS` holds what optkit knows about each set (rows, features, label coding);
    each is registered as the :mod:`optkit.data` data set ``libsvm/<name>``, read from
    ``$OPTKIT_DATA/libsvm/<name>`` (or ``<name>.gz``, ``<name>.bz2``). Nothing is downloaded;
    ``optkit data list`` shows which are present. :func:`load_libsvm` checks a file against
    its entry and returns the labels as +-1.

Problems ``constrained-logreg/<name>`` (parameters ``seed=2023``, ``n_linear=10``)
    The constrained logistic regression of Hong, Na, Mahoney and Kolar (ICML 2023)::

        min_x  f(x) = (1/N) sum_i log(1 + exp(-y_i a_i^T x))
        s.t.   A x - b = 0,   ||x||^2 - 1 = 0

    ``a_i`` the rows of the data matrix (N x d, kept sparse), ``y_i = +-1``; ``A`` (n_linear x d)
    and ``b`` standard Gaussian from ``numpy.random.default_rng(seed)`` (``A`` drawn first);
    ``x0 = ones(d)``, ``y0 = ones(n_linear + 1)`` (the paper's lambda_0 = 1). See
    :class:`ConstrainedLogisticProblem`.

Suite ``constrained-logreg``: ionosphere_scale, sonar_scale, splice_scale, mushrooms, a9a.
"""

from __future__ import annotations

import bz2
import gzip
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from optkit.constrained_problem import EqualityConstrainedProblem
from optkit.data import Dataset, data_dir, find_dataset, register_dataset
from optkit.registry import register_problem, register_suite
from optkit.validation import check_int

__all__ = [
    "DATASETS",
    "ConstrainedLogisticProblem",
    "LibsvmSpec",
    "constrained_logreg",
    "constraint_data",
    "load_libsvm",
    "read_libsvm",
]

LIBSVM_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary.html"

# ----------------------------------------------------------------------------- reader


def _read_text(path: Path) -> str:
    """The decoded content of ``path``, decompressed when it starts with a gzip or bzip2 magic number."""
    with open(path, "rb") as fh:
        head = fh.read(3)
    if head[:2] == b"\x1f\x8b":
        opener = gzip.open
    elif head == b"BZh":
        opener = bz2.open
    else:
        opener = open
    with opener(path, "rb") as fh:
        data = fh.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a LIBSVM text file (byte {exc.start} is not UTF-8 text)") from None


def _is_finite_number(text: str) -> bool:
    try:
        return bool(np.isfinite(float(text)))
    except ValueError:
        return False


def _first_error(source: str, rows: list[list[str]], linenos: np.ndarray, n_features: int | None) -> ValueError:
    """The error of the first malformed token, naming ``source`` and its 1-based line number.

    Called only after the vectorised parse found something wrong, so speed does not matter.
    """
    for toks, lineno in zip(rows, linenos):
        where = f"{source}, line {lineno}"
        if not _is_finite_number(toks[0]):
            return ValueError(f"{where}: bad label {toks[0]!r} (expected a number)")
        seen: set[int] = set()
        for tok in toks[1:]:
            idx_text, sep, val_text = tok.partition(":")
            if not sep:
                return ValueError(f"{where}: token {tok!r} has no ':' (expected index:value)")
            try:
                idx = float(idx_text)
            except ValueError:
                idx = None
            if idx is None or not idx.is_integer():
                return ValueError(f"{where}: index {idx_text!r} in {tok!r} is not an integer")
            idx = int(idx)
            if idx < 1:
                return ValueError(f"{where}: index {idx} in {tok!r} is < 1 (LIBSVM indices are 1-based)")
            if not _is_finite_number(val_text):
                return ValueError(f"{where}: value {val_text!r} in {tok!r} is not a finite number")
            if n_features is not None and idx > n_features:
                return ValueError(f"{where}: index {idx} in {tok!r} exceeds n_features={n_features}")
            if idx in seen:
                return ValueError(f"{where}: index {idx} appears twice")
            seen.add(idx)
    return ValueError(f"{source}: malformed LIBSVM data")  # not reached: the caller saw an error


def read_libsvm(path: str | Path, n_features: int | None = None) -> tuple[sp.csr_array, np.ndarray]:
    """Read a LIBSVM/svmlight file.

    Parameters
    ----------
    path : str or Path
        A text file of lines ``label idx:value idx:value ...`` with 1-based feature indices
        (sorted or not), plain or gzip/bzip2-compressed (recognised from the content, not the
        name). ``#`` starts a comment; blank lines are skipped; ``qid:...`` tokens are skipped.
    n_features : int, optional
        Number of columns; default: the highest index that occurs. An index above it is an error.

    Returns
    -------
    X : scipy.sparse.csr_array of float64, shape (n_rows, n_features)
        Sorted indices; values as written (explicit zeros kept).
    y : ndarray of float64, shape (n_rows,)
        The raw labels.

    Raises
    ------
    ValueError
        For malformed input, naming the file, the 1-based line number and the problem: a label
        that is not a number, a token without ``:``, an index that is not an integer ``>= 1``
        (or exceeds ``n_features``, or repeats in a row), a value that is not a finite number.
    """
    path = Path(path)
    if n_features is not None:
        n_features = check_int("n_features", n_features, 1)
    text = _read_text(path)
    lines = text.splitlines()
    if "#" in text:
        lines = [line.partition("#")[0] for line in lines]
    split = [line.split() for line in lines]
    linenos = np.flatnonzero([bool(toks) for toks in split]) + 1
    rows = [split[k - 1] for k in linenos]
    if "qid:" in text:
        rows = [toks[:1] + [tok for tok in toks[1:] if not tok.startswith("qid:")] for toks in rows]
    source = str(path)

    try:
        y = np.array([toks[0] for toks in rows], dtype=np.float64)
    except ValueError:
        raise _first_error(source, rows, linenos, n_features) from None
    counts = np.fromiter((len(toks) - 1 for toks in rows), dtype=np.int64, count=len(rows))
    tokens = list(chain.from_iterable(toks[1:] for toks in rows))
    joined = " ".join(tokens)
    parts = joined.replace(":", " ").split()
    if joined.count(":") != len(tokens) or len(parts) != 2 * len(tokens) or not np.all(np.isfinite(y)):
        raise _first_error(source, rows, linenos, n_features)
    try:
        pairs = np.array(parts, dtype=np.float64).reshape(-1, 2)
    except ValueError:
        raise _first_error(source, rows, linenos, n_features) from None
    idx, vals = pairs[:, 0], pairs[:, 1]
    if not (np.all(np.isfinite(pairs)) and np.all(idx >= 1) and np.all(idx == np.floor(idx))):
        raise _first_error(source, rows, linenos, n_features)
    cols = idx.astype(np.int64) - 1
    width = int(cols.max()) + 1 if cols.size else 0
    if n_features is not None:
        if width > n_features:
            raise _first_error(source, rows, linenos, n_features)
        width = n_features
    row_of = np.repeat(np.arange(len(rows)), counts)
    order = np.lexsort((cols, row_of))
    if np.any((np.diff(row_of[order]) == 0) & (np.diff(cols[order]) == 0)):
        raise _first_error(source, rows, linenos, n_features)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    X = sp.csr_array((vals[order], cols[order], indptr), shape=(len(rows), width))
    return X, y


# ----------------------------------------------------------------------------- data sets


@dataclass(frozen=True)
class LibsvmSpec:
    """What optkit expects of a LIBSVM binary-classification file.

    Attributes
    ----------
    name : str
        The LIBSVM name (``"a9a"``); the data set is ``libsvm/<name>``.
    rows, features : int
        Expected shape; files whose highest index is smaller are padded with zero columns.
    positive, negative : float
        The raw labels mapped to ``+1`` and ``-1``.
    description : str
        Origin, one line.
    aliases : tuple of str
        Other file names the set is distributed under (looked for after ``<name>``).
    """

    name: str
    rows: int
    features: int
    positive: float
    negative: float
    description: str
    aliases: tuple[str, ...] = ()

    @property
    def dataset(self) -> str:
        """The :mod:`optkit.data` name, ``libsvm/<name>``."""
        return f"libsvm/{self.name}"


_SPECS = (
    LibsvmSpec("ionosphere_scale", 351, 34, 1, -1, "UCI Ionosphere, scaled to [-1, 1]"),
    LibsvmSpec("sonar_scale", 208, 60, 1, -1, "UCI Sonar (mines vs rocks), scaled to [-1, 1]"),
    LibsvmSpec("splice_scale", 1000, 60, 1, -1, "Delve splice junctions (training file), scaled to [-1, 1]"),
    LibsvmSpec("mushrooms", 8124, 112, 1, 2, "UCI Mushroom, binary features; labels 1 -> +1, 2 -> -1"),
    LibsvmSpec("a9a", 32561, 123, 1, -1, "UCI Adult as in Platt (1998), training file"),
    LibsvmSpec("a9a.t", 16281, 123, 1, -1, "UCI Adult (Platt), test file (feature 123 never occurs)"),
    LibsvmSpec("phishing", 11055, 68, 1, 0, "UCI Phishing Websites, binary features; labels 1 -> +1, 0 -> -1"),
    LibsvmSpec("w8a", 49749, 300, 1, -1, "Platt's web-page data w8a, training file"),
    LibsvmSpec(
        "covtype", 581012, 54, 1, 2, "UCI Covertype, binary version; labels 1 -> +1, 2 -> -1",
        aliases=("covtype.libsvm.binary",),
    ),
)

#: The known LIBSVM data sets by name.
DATASETS: dict[str, LibsvmSpec] = {spec.name: spec for spec in _SPECS}

_REGISTERED = {
    _s.name: register_dataset(
        Dataset(
            name=_s.dataset,
            files=tuple(f"libsvm/{stem}{ext}" for stem in (_s.name, *_s.aliases) for ext in ("", ".gz", ".bz2")),
            description=f"LIBSVM {_s.name}: {_s.rows} x {_s.features}, {_s.description}",
        )
    )
    for _s in _SPECS
}


def _lookup(name: str) -> LibsvmSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown LIBSVM data set {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_libsvm(name: str) -> tuple[sp.csr_array, np.ndarray]:
    """A known LIBSVM data set from ``$OPTKIT_DATA/libsvm/``, checked, with labels +-1.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (``"a9a"``, ``"mushrooms"`` ...).

    Returns
    -------
    X : scipy.sparse.csr_array of float64, shape (rows, features)
        Padded with zero columns to the expected feature count.
    y : ndarray of float64, shape (rows,)
        ``+1`` for the spec's positive label, ``-1`` for its negative one.

    Raises
    ------
    ValueError
        Unknown name (the error lists the known ones); a file with the wrong number of rows,
        an index above the expected feature count, or a label outside the spec's two.
    FileNotFoundError
        The file is absent (nothing is downloaded); the message names the files looked for,
        the directory and ``OPTKIT_DATA``.
    """
    spec = _lookup(name)
    try:
        path = find_dataset(spec.dataset)
    except FileNotFoundError:
        names = ", ".join(Path(f).name for f in _REGISTERED[name].files)
        raise FileNotFoundError(
            f"LIBSVM file {name!r} not found in {data_dir() / 'libsvm'} (looked for {names}); set OPTKIT_DATA "
            f"to the directory holding libsvm/{name}. Nothing is downloaded; the files are at {LIBSVM_URL}"
        ) from None
    try:
        X, raw = read_libsvm(path, n_features=spec.features)
    except ValueError as exc:
        raise ValueError(f"LIBSVM data set {name!r} ({spec.rows} x {spec.features} expected): {exc}") from None
    if X.shape[0] != spec.rows:
        raise ValueError(
            f"{path} has {X.shape[0]} rows, but LIBSVM {name!r} has {spec.rows} (a truncated or different file?)"
        )
    unexpected = np.setdiff1d(raw, [spec.positive, spec.negative])
    if unexpected.size:
        raise ValueError(
            f"{path} has labels {unexpected.tolist()}, but LIBSVM {name!r} is labelled "
            f"{spec.positive:g} / {spec.negative:g}"
        )
    return X, np.where(raw == spec.positive, 1.0, -1.0)


# ----------------------------------------------------------------------------- the problem


def constraint_data(d: int, n_linear: int = 10, seed: int = 2023) -> tuple[np.ndarray, np.ndarray]:
    """The seeded linear constraints ``A x = b`` of the constrained logistic regression.

    Parameters
    ----------
    d : int
        Number of unknowns.
    n_linear : int
        Number of linear equalities.
    seed : int
        Seed of ``numpy.random.default_rng``; ``A`` is drawn first, then ``b``.

    Returns
    -------
    A : ndarray of shape (n_linear, d)
        Standard Gaussian.
    b : ndarray of shape (n_linear,)
        Standard Gaussian.
    """
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n_linear, d))
    return A, rng.standard_normal(n_linear)


class ConstrainedLogisticProblem(EqualityConstrainedProblem):
    """Mean logistic loss subject to ``A x = b`` and ``||x||^2 = 1``.

    ``f(x) = (1/N) sum_i log(1 + exp(-y_i a_i^T x))`` (through ``logaddexp``),
    ``c(x) = [A x - b; ||x||^2 - 1]``, so ``m = n_linear + 1``.

    Parameters
    ----------
    X : sparse or dense array of shape (N, d)
        Data rows ``a_i``; kept as a ``scipy.sparse.csr_array``.
    labels : array of shape (N,)
        ``+-1``.
    A : ndarray of shape (n_linear, d)
    b : ndarray of shape (n_linear,)
        The linear constraints; ``n_linear < d`` is required.
    name : str
    metadata : mapping, optional
        Completed with ``n``, ``m``, ``n_samples``, ``n_linear`` and ``distance`` (from the
        origin to ``{A x = b}``).

    Derivatives: ``jac(x) = [A; 2 x^T]`` (dense, (m, d)); ``lag_hess(x, y, s)`` =
    ``s (1/N) X^T diag(sigma(z) sigma(-z)) X + 2 y_m I`` (dense, (d, d)), ``z_i = y_i a_i^T x``;
    ``lag_hvp`` the same product without forming it. Starts: ``x0 = ones(d)``, ``y0 = ones(m)``.

    Raises
    ------
    ValueError
        When the feasible set is empty: the distance from the origin to ``{A x = b}`` is not
        below 1 (then no point has ``||x|| = 1``), or ``n_linear >= d``.
    """

    def __init__(
        self, X: Any, labels: Any, A: np.ndarray, b: np.ndarray, *, name: str, metadata: Mapping | None = None
    ) -> None:
        self.X = sp.csr_array(X, dtype=np.float64)
        self.labels = np.asarray(labels, dtype=np.float64)
        self.A, self.b = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64)
        n_samples, d = self.X.shape
        if self.labels.shape != (n_samples,) or not np.all(np.abs(self.labels) == 1):
            raise ValueError(f"labels must be {n_samples} values +-1 (one per row of X)")
        if self.A.ndim != 2 or self.A.shape[1] != d or self.b.shape != (self.A.shape[0],):
            raise ValueError(f"A must be (n_linear, {d}) and b (n_linear,), got {self.A.shape} and {self.b.shape}")
        if self.A.shape[0] >= d:
            raise ValueError(f"{name}: needs n_linear < d, got n_linear = {self.A.shape[0]} and d = {d}")
        meta = dict(metadata or {})
        distance = float(np.linalg.norm(np.linalg.lstsq(self.A, self.b, rcond=None)[0]))
        if not distance < 1:
            seed = f" (seed={meta['seed']})" if "seed" in meta else ""
            raise ValueError(
                f"{name}{seed}: the constraints are infeasible: the affine set {{A x = b}} is at distance "
                f"{distance:.4g} >= 1 from the origin, so no point of it has ||x|| = 1; use another seed"
            )
        # rows y_i a_i: the margins are Z @ x, and Z^T W Z = X^T W X since y_i^2 = 1
        self._Z = sp.csr_array(sp.diags_array(self.labels) @ self.X)
        m = self.A.shape[0] + 1
        meta.update(n=d, m=m, n_samples=n_samples, n_linear=m - 1, distance=distance)
        super().__init__(
            self._f, self._g, self._c, self._jac, np.ones(d), y0=np.ones(m),
            lag_hess=self._lag_hess, lag_hvp=self._lag_hvp, name=name, metadata=meta,
        )

    def _f(self, x: np.ndarray) -> float:
        return float(np.mean(np.logaddexp(0.0, -(self._Z @ x))))

    def _g(self, x: np.ndarray) -> np.ndarray:
        return -(self._Z.T @ expit(-(self._Z @ x))) / self.X.shape[0]

    def _c(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self.A @ x - self.b, [x @ x - 1.0]])

    def _jac(self, x: np.ndarray) -> np.ndarray:
        return np.vstack([self.A, 2.0 * x])

    def _weights(self, x: np.ndarray) -> np.ndarray:
        """``sigma(z) sigma(-z) / N`` at the margins ``z``: the loss Hessian is ``Z^T diag(w) Z``."""
        z = self._Z @ x
        return expit(z) * expit(-z) / self.X.shape[0]

    def _lag_hess(self, x: np.ndarray, y: np.ndarray, obj_factor: float = 1.0) -> np.ndarray:
        H = 2.0 * y[-1] * np.eye(self.n)
        if obj_factor != 0:
            weighted = sp.diags_array(obj_factor * self._weights(x)) @ self._Z
            H += (self._Z.T @ weighted).toarray()
        return H

    def _lag_hvp(self, x: np.ndarray, y: np.ndarray, v: np.ndarray, obj_factor: float = 1.0) -> np.ndarray:
        out = 2.0 * y[-1] * v
        if obj_factor != 0:
            out = out + obj_factor * (self._Z.T @ (self._weights(x) * (self._Z @ v)))
        return out


def constrained_logreg(dataset: str, seed: int = 2023, n_linear: int = 10) -> ConstrainedLogisticProblem:
    """The constrained logistic regression on a LIBSVM data set (see :class:`ConstrainedLogisticProblem`).

    Parameters
    ----------
    dataset : str
        A key of :data:`DATASETS`, read with :func:`load_libsvm`.
    seed : int
        Seed of the linear constraints (:func:`constraint_data`).
    n_linear : int
        Number of linear equalities (``m = n_linear + 1``).

    Raises
    ------
    FileNotFoundError
        The data file is absent (see :func:`load_libsvm`).
    ValueError
        Unknown data set, bad parameters, or an infeasible draw (try another seed).
    """
    seed = check_int("seed", seed, 0)
    n_linear = check_int("n_linear", n_linear, 0)
    name = f"constrained-logreg/{dataset}"
    X, labels = load_libsvm(dataset)
    A, b = constraint_data(X.shape[1], n_linear, seed)
    metadata = {"source": f"LIBSVM {dataset}", "dataset": dataset, "seed": seed}
    return ConstrainedLogisticProblem(X, labels, A, b, name=name, metadata=metadata)


def _factory(dataset: str):
    spec = DATASETS[dataset]

    def factory(seed: int = 2023, n_linear: int = 10) -> ConstrainedLogisticProblem:
        return constrained_logreg(dataset, seed=seed, n_linear=n_linear)

    factory.__name__ = factory.__qualname__ = f"constrained_logreg_{dataset.replace('.', '_')}"
    factory.__doc__ = (
        f"Logistic loss on LIBSVM {dataset} ({spec.rows} x {spec.features}) s.t. n_linear seeded "
        "Gaussian equalities A x = b and ||x||^2 = 1 (see problems.libsvm.constrained_logreg)."
    )
    return factory


for _name in DATASETS:
    register_problem(f"constrained-logreg/{_name}")(_factory(_name))

register_suite(
    "constrained-logreg",
    [f"constrained-logreg/{name}" for name in ("ionosphere_scale", "sonar_scale", "splice_scale", "mushrooms", "a9a")],
)
