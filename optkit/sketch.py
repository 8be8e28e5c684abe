"""Random sketches as linear operators, and sketch-and-project for consistent systems.

A sketch ``S`` of shape ``(s, N)`` compresses the rows of a system ``A x = b`` to
``S A x = S b``. Three kinds, each a :class:`~optkit.linop.LinearOperator`:

* :func:`gaussian_sketch`: i.i.d. ``N(0, 1/s)`` entries (dense);
* :func:`count_sketch`: one ``±1`` per column in a random row (sparse sign sketch);
* :func:`row_sampling`: rows of the identity, i.e. a subset of equations (Kaczmarz).

:func:`sketch_and_project` solves a consistent system by repeatedly projecting the iterate
onto the solution set of a freshly sketched system (Gower & Richtárik, 2015)::

    x <- x - (S A)^T (S A A^T S^T)^+ S (A x - b)

With one sampled row this is randomized Kaczmarz; with a Gaussian vector, the Gaussian
sketch of the paper by Hong, Na, Mahoney & Kolar (2023). The residual ``r = A x - b`` is
updated from the precomputed Gram matrix ``A A^T`` (one column block per step, not one
product with ``A``), and recomputed from scratch before convergence is declared. One-row and one-vector
Gaussian sketches run as compiled numba loops; block sketches are numpy steps.
numpy only (dense arrays and scipy sparse matrices).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .linop import Dense, LinearOperator, Sparse
from .result import Status
from .validation import check_choice, check_int, check_nonnegative

__all__ = ["SketchProjector", "SketchResult", "count_sketch", "gaussian_sketch", "row_sampling", "sketch_and_project"]

SKETCHES = ("row", "gaussian", "count")


def gaussian_sketch(s: int, n: int, rng: np.random.Generator) -> LinearOperator:
    """An ``(s, n)`` Gaussian sketch with i.i.d. ``N(0, 1/s)`` entries (dense, float64)."""
    check_int("s", s, 1)
    check_int("n", n, 1)
    return Dense(rng.standard_normal((s, n)) / np.sqrt(s))


def count_sketch(s: int, n: int, rng: np.random.Generator) -> LinearOperator:
    """An ``(s, n)`` CountSketch: column ``j`` has a single random sign in a random row."""
    check_int("s", s, 1)
    check_int("n", n, 1)
    rows = rng.integers(0, s, size=n)
    signs = rng.choice(np.array([-1.0, 1.0]), size=n)
    return Sparse(sp.csr_array((signs, (rows, np.arange(n))), shape=(s, n)))


def row_sampling(rows: np.ndarray, n: int) -> LinearOperator:
    """The ``(len(rows), n)`` operator that picks entries ``rows`` of a vector (rows of ``I_n``)."""
    rows = np.asarray(rows, dtype=np.int64)
    check_int("n", n, 1)
    if rows.ndim != 1 or rows.size == 0 or rows.min() < 0 or rows.max() >= n:
        raise ValueError(f"rows must be a non-empty 1-D array of indices in [0, {n}), got {rows!r}")
    data = np.ones(rows.size)
    return Sparse(sp.csr_array((data, (np.arange(rows.size), rows)), shape=(rows.size, n)), tags={"orthonormal"})


@dataclass(frozen=True)
class SketchResult:
    """What :func:`sketch_and_project` returns.

    Attributes
    ----------
    x : ndarray (n,)
    status : Status
        ``CONVERGED`` (``||A x - b|| <= max(rtol ||b||, atol)``, checked on the true
        residual), ``MAX_ITER``, ``NONFINITE`` or ``TIME_LIMIT`` (a caller's deadline).
    nit : int
        Sketch-and-project steps taken.
    residual_norm : float
        ``||A x - b||``, recomputed.
    """

    x: np.ndarray
    status: Status
    nit: int
    residual_norm: float


def _kernels():
    # numba is imported on first use, not when optkit (or a solver registry) is imported
    from . import _sketch_kernels

    return _sketch_kernels


class _System:
    """``A``, ``b`` and the Gram matrix ``A A^T``, dense or CSR."""

    def __init__(self, A, b: np.ndarray) -> None:
        self.sparse = sp.issparse(A)
        if self.sparse:
            self.A = sp.csr_array(A, dtype=np.float64)
            self.A.sort_indices()
            self.gram = sp.csr_array(self.A @ self.A.T)
            self.gram.sort_indices()
            self.diag = self.gram.diagonal()
        else:
            self.A = np.ascontiguousarray(A, dtype=np.float64)
            self.gram = self.A @ self.A.T
            self.diag = np.diag(self.gram).copy()
        self.b = b

    def residual(self, x: np.ndarray) -> np.ndarray:
        return self.A @ x - self.b

    def rows_step(self, x, r, order) -> None:
        if self.sparse:
            a, g = self.A, self.gram
            _kernels().kaczmarz_csr(a.indptr, a.indices, a.data, g.indptr, g.indices, g.data, self.diag, x, r, order)
        else:
            _kernels().kaczmarz_dense(self.A, self.gram, x, r, order)

    def gaussian_vector_steps(self, x, r, vectors) -> None:
        if self.sparse:
            _kernels().gaussian_csr(self.A.indptr, self.A.indices, self.A.data, x, r, vectors)
        else:
            _kernels().gaussian_dense(self.A, self.gram, x, r, vectors)

    def block_rows_step(self, x, r, rows) -> None:
        gram_cols = self.gram[:, rows]
        if self.sparse:
            gram_cols = gram_cols.toarray()
        w = np.linalg.lstsq(gram_cols[rows], r[rows], rcond=None)[0]
        x -= self.A[rows].T @ w
        r -= gram_cols @ w

    def sketch_step(self, x, r, S: LinearOperator) -> None:
        St = S.H @ np.eye(S.shape[0])  # (N, s), dense even for a CountSketch
        SA = np.asarray(self.A.T @ St).T
        w = np.linalg.lstsq(SA @ SA.T, St.T @ r, rcond=None)[0]
        dx = SA.T @ w
        x -= dx
        r -= self.A @ dx


def sketch_and_project(
    A,
    b: np.ndarray,
    *,
    x0: np.ndarray | None = None,
    sketch: str = "row",
    block_size: int = 1,
    sampling: str = "uniform",
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int = 100_000,
    rng: np.random.Generator | int | None = None,
) -> SketchResult:
    """Solve a consistent system ``A x = b`` by randomized sketch-and-project.

    Parameters
    ----------
    A : ndarray (N, n) or scipy sparse matrix
    b : ndarray (N,)
    x0 : ndarray (n,), optional
        Start (zeros by default).
    sketch : {"row", "gaussian", "count"}
        Sampled equations (randomized Kaczmarz when ``block_size == 1``), a Gaussian sketch or
        a CountSketch, ``block_size`` rows each (see the module docstring).
    block_size : int
        Rows of each sketch ``S``.
    sampling : {"uniform", "row_norm"}
        How ``sketch="row"`` picks equations: uniformly (the reference code) or with
        probability proportional to ``||A_i||^2`` (Strohmer & Vershynin).
    rtol, atol : float
        Stop when ``||A x - b|| <= max(rtol ||b||, atol)``.
    max_iter : int
        Sketch-and-project steps.
    rng : numpy Generator or seed, optional

    Returns
    -------
    SketchResult
    """
    check_choice("sketch", sketch, SKETCHES)
    check_choice("sampling", sampling, ("uniform", "row_norm"))
    check_int("block_size", block_size, 1)
    check_int("max_iter", max_iter, 0)
    check_nonnegative("rtol", rtol)
    check_nonnegative("atol", atol)
    b = np.asarray(b, dtype=np.float64)
    if getattr(A, "ndim", None) != 2 or b.shape != (A.shape[0],):
        raise ValueError(
            f"A must be a 2-D matrix and b a vector of A.shape[0] entries; "
            f"got A {getattr(A, 'shape', None)}, b {b.shape}"
        )
    x = np.zeros(A.shape[1]) if x0 is None else np.array(x0, dtype=np.float64)
    if x.shape != (A.shape[1],):
        raise ValueError(f"x0 must have shape ({A.shape[1]},), got {x.shape}")
    projector = SketchProjector(A, b, sketch=sketch, sampling=sampling, rng=np.random.default_rng(rng))
    return projector.run(x, rtol, atol, max_iter, block_size=block_size)


class SketchProjector:
    """Sketch-and-project on one system ``A x = b``, run as often as needed.

    Holds the system, its Gram matrix ``A A^T`` and the random stream, so a caller can resume
    from an iterate with a tighter accuracy or a larger block (the constrained solvers do).
    :func:`sketch_and_project` is one call of :meth:`run`.

    Parameters
    ----------
    A : ndarray (N, n) or scipy sparse matrix
    b : ndarray (N,)
    sketch, sampling :
        As in :func:`sketch_and_project`.
    rng : numpy Generator
    """

    def __init__(self, A, b: np.ndarray, *, sketch: str, sampling: str, rng: np.random.Generator) -> None:
        check_choice("sketch", sketch, SKETCHES)
        check_choice("sampling", sampling, ("uniform", "row_norm"))
        self.system, self.sketch, self.rng = _System(A, b), sketch, rng
        diag = self.system.diag
        self.probs = diag / diag.sum() if sampling == "row_norm" and diag.sum() > 0 else None
        self.block_size = 1

    def _draw_rows(self, count: int) -> np.ndarray:
        N = self.system.A.shape[0]
        return (
            self.rng.choice(N, size=count, p=self.probs)
            if self.probs is not None
            else self.rng.integers(0, N, size=count)
        )

    def _steps(self, x, r, count: int) -> None:
        system, s = self.system, self.block_size
        if self.sketch == "row" and s == 1:
            system.rows_step(x, r, self._draw_rows(count))
            return
        if self.sketch == "gaussian" and s == 1:
            system.gaussian_vector_steps(x, r, self.rng.standard_normal((count, system.A.shape[0])))
            return
        N = system.A.shape[0]
        for _ in range(count):
            if self.sketch == "row":
                system.block_rows_step(x, r, self.rng.choice(N, size=s, replace=False, p=self.probs))
            elif self.sketch == "gaussian":
                system.sketch_step(x, r, gaussian_sketch(s, N, self.rng))
            else:
                system.sketch_step(x, r, count_sketch(s, N, self.rng))

    def run(
        self,
        x: np.ndarray,
        rtol: float,
        atol: float,
        max_iter: int,
        *,
        block_size: int = 1,
        deadline: float | None = None,
    ) -> SketchResult:
        """Steps of ``block_size`` rows from ``x`` (updated in place) until
        ``||A x - b|| <= max(rtol ||b||, atol)``, ``max_iter`` steps or the
        ``time.perf_counter()`` value ``deadline`` (status ``TIME_LIMIT``)."""
        check_int("block_size", block_size, 1)
        self.block_size = min(block_size, self.system.A.shape[0])
        system = self.system
        tol = max(rtol * float(np.linalg.norm(system.b)), atol)
        r = system.residual(x)
        nit = 0
        # steps between residual (and deadline) checks: a sweep of the equations for the
        # compiled one-row steps, fewer for the costlier one-vector and block steps
        N = system.A.shape[0]
        if self.block_size == 1:
            chunk = N if self.sketch == "row" else min(50, N)
        else:
            chunk = max(1, min(N // self.block_size, 32))
        while True:
            rnorm = float(np.linalg.norm(r))
            if not np.isfinite(rnorm):
                return SketchResult(x, Status.NONFINITE, nit, rnorm)
            if rnorm <= tol:
                r = system.residual(x)  # the updated residual drifts; confirm on the true one
                rnorm = float(np.linalg.norm(r))
                if rnorm <= tol:
                    return SketchResult(x, Status.CONVERGED, nit, rnorm)
            if nit >= max_iter:
                return SketchResult(x, Status.MAX_ITER, nit, float(np.linalg.norm(system.residual(x))))
            if deadline is not None and time.perf_counter() >= deadline:
                return SketchResult(x, Status.TIME_LIMIT, nit, float(np.linalg.norm(system.residual(x))))
            count = min(chunk, max_iter - nit)
            self._steps(x, r, count)
            nit += count
