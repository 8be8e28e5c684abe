"""Smooth parts of the problems ``bcd`` solves, with the iterate's state maintained per block update.

Each objective holds the iterate ``x``, the predictions ``z`` (``A x``, ``Q x`` or the
logits ``A W^T``) and the FULL gradient ``g = grad f(x)``, and keeps them exact after every
block update ``x_b += delta_b`` without a pass over the data (``f(x)`` is formed from ``z``
when asked, in ``O(m)``, ``O(n)`` or ``O(N k)``):

* :class:`LinearModelObjective` (least squares, logistic; ``A`` dense or CSC sparse):
  ``dz = A_b delta_b`` touches only the rows where a block column has an entry; on those
  rows ``du = L'(z_new) - L'(z_old)`` and ``g += A_rows^T du`` through the CSR rows
  (:mod:`._kernels`). Cost: the entries of the touched rows (sparse); ``O(m n)`` for dense
  ``A``, since every row is touched.
* :class:`QuadraticObjective` (``x^T Q x / 2 - c^T x``): ``g += Q[:, b] delta_b``, the
  entries of the block's columns.
* :class:`~._softmax_objective.SoftmaxObjective` (its own module): a block update changes the
  logits of every row, so the gradient is re-formed from the maintained logits, ``O(N k n)``.

Each one also gives the curvature quantities the rules use: coordinate Lipschitz constants
``L_i``, the block upper-bound matrix ``H_b`` (``f(x + d) <= f(x) + g_b^T d + d^T H_b d / 2``
for ``d`` supported on the block), the exact block Hessian, products with the full bound
matrix (iterative hard thresholding) and its absolute row sums.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from optkit.backend import get_namespace, to_numpy

__all__ = [
    "LinearModelObjective",
    "Objective",
    "QuadraticObjective",
    "SeparablePenalty",
    "gram_abs_row_sums",
    "psd_solver",
]


class SeparablePenalty:
    """The non-smooth part: ``"none"``, ``"l1"`` (``lam ||x||_1``) or ``"l1-nonneg"`` (``lam sum x``, ``x >= 0``).

    ``prox(v, step)`` is the proximal map of ``step * g`` with a per-coordinate ``step``.
    """

    def __init__(self, kind: str, lam: float = 0.0) -> None:
        self.kind = kind
        self.lam = float(lam)

    @property
    def smooth(self) -> bool:
        """Whether there is no penalty at all (no constraint, ``lam = 0``)."""
        return self.kind == "none" or (self.kind == "l1" and self.lam == 0.0)

    def value(self, x: np.ndarray) -> float:
        if self.kind == "l1":
            return self.lam * float(np.abs(x).sum())
        if self.kind == "l1-nonneg":
            return self.lam * float(x.sum()) if np.all(x >= 0) else np.inf
        return 0.0

    def change(self, x: np.ndarray, delta: np.ndarray) -> float:
        """``g(x + delta) - g(x)``, exact to rounding even far below the rounding of ``g(x)`` itself.

        Where the step does not cross zero the penalty is linear along it (``lam sign(x_j)
        delta_j``; ``lam delta_j`` on ``x >= 0``), so its change is formed from ``delta`` alone;
        differences of ``|x|`` sums lose it near a solution, where it is what a decrease test
        compares. ``inf`` when ``x + delta`` leaves the domain (``x >= 0``).
        """
        new = x + delta
        if self.kind == "l1-nonneg":
            return self.lam * float(delta.sum()) if np.all(new >= 0) else np.inf
        if self.kind != "l1":
            return 0.0
        linear = (x != 0) & (np.sign(new) == np.sign(x))
        return float(np.sum(np.where(linear, self.lam * np.sign(x) * delta, self.lam * (np.abs(new) - np.abs(x)))))

    def prox(self, v: np.ndarray, step: np.ndarray | float) -> np.ndarray:
        if self.kind == "l1":
            return np.sign(v) * np.maximum(np.abs(v) - step * self.lam, 0.0)
        if self.kind == "l1-nonneg":
            return np.maximum(v - step * self.lam, 0.0)
        return v

    def subdiff_distance(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Distance of ``-g`` to the subdifferential of the penalty at ``x`` (0 at a solution)."""
        if self.kind == "l1":
            return np.where(x != 0, np.abs(g + self.lam * np.sign(x)), np.maximum(np.abs(g) - self.lam, 0.0))
        if self.kind == "l1-nonneg":
            return np.where(x > 0, np.abs(g + self.lam), np.maximum(-g - self.lam, 0.0))
        return np.abs(g)


def psd_solver(H: np.ndarray):
    """``rhs -> H^+ rhs`` for a symmetric positive semi-definite ``H`` (b, b).

    Cholesky when ``H`` is positive definite; otherwise (a zero column of ``A`` in the block,
    parallel columns, Bohning's bound along its null direction) the pseudo-inverse from an
    eigendecomposition, dropping eigenvalues below ``b eps lambda_max``, so the step is 0
    along directions where ``f`` does not change.
    """
    try:
        factor = sla.cho_factor(H)
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh(H)
        keep = w > H.shape[0] * np.finfo(float).eps * max(float(w[-1]), 0.0)
        pseudo_inverse = (V[:, keep] / w[keep]) @ V[:, keep].T
        return lambda rhs: pseudo_inverse @ rhs
    return lambda rhs: sla.cho_solve(factor, rhs)


def kernels():
    """The numba kernels (:mod:`._kernels`), imported at the first solve: importing the solver
    registry must not import numba."""
    from . import _kernels

    return _kernels


#: entries of one chunk of ``A^T A`` formed at a time by :func:`gram_abs_row_sums` (32 MiB)
_GRAM_CHUNK_ENTRIES = 2**22
#: a sparse ``A`` with more than this share of non-zeros is kept dense
DENSE_ABOVE = 0.25
#: a sparse block whose columns hold more than this share of A's entries has its Gram formed by a numba kernel
KERNEL_GRAM_SHARE = 0.05


def gram_abs_row_sums(A) -> np.ndarray:
    """``sum_j |(A^T A)_ij|`` for every column ``i`` of ``A`` (numpy or torch dense, or scipy sparse), exactly.

    ``A^T A`` is formed a chunk of columns at a time (about 4 million entries each), so
    memory stays bounded; the cost is that of the Gram matrix: cheap for sparse ``A``,
    ``O(m n^2)`` for dense ``A`` (10^11 flops for 1000 x 10000). Done once per run, for the
    variable-block GSL rule.
    """
    n = A.shape[1]
    chunk = max(1, _GRAM_CHUNK_ENTRIES // n)
    out = np.empty(n)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        if sp.issparse(A):
            # rows of the (chunk, n) product summed from its CSR arrays: abs() of a sparse
            # product sorts its indices first, which cost 10x the product itself
            part = sp.csr_array(A[:, start:stop].T) @ A
            sums = np.zeros(stop - start)
            filled = np.flatnonzero(np.diff(part.indptr))
            if filled.size:
                sums[filled] = np.add.reduceat(np.abs(part.data), part.indptr[filled])
            out[start:stop] = sums
        else:
            xp = get_namespace(A)
            out[start:stop] = to_numpy(xp.sum(xp.abs(A.T @ A[:, start:stop]), axis=0))
    return out


def _top_eigenvalue(matvec, n: int) -> float:
    """``lambda_max`` of a symmetric PSD operator of size ``n`` (Lanczos; dense below 64)."""
    if n < 64:
        return float(np.linalg.eigvalsh(np.column_stack([matvec(e) for e in np.eye(n)]))[-1])
    op = spla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    return float(spla.eigsh(op, k=1, which="LA", v0=v0, tol=1e-8, return_eigenvectors=False)[0])


class Objective:
    """Base of the maintained objectives: ``x``, ``z``, ``g`` (full gradient), ``value()``.

    Subclasses implement ``value()`` (``f(x)`` from the maintained predictions, never a
    running sum of changes, which would drift by ``eps |f(x0)|`` per update),
    :meth:`update`, :meth:`change`, :meth:`coordinate_lipschitz`,
    :meth:`bound_matrix`, :meth:`hessian`, :meth:`bound_matvec`, :meth:`bound_abs_row_sums`
    and :meth:`recomputed`.
    """

    #: whether ``f`` is quadratic (its Hessian is the bound matrix, exact block solves apply)
    is_quadratic = False
    x: np.ndarray
    g: np.ndarray

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def bound_norm(self) -> float:
        """``lambda_max`` of the full bound matrix (computed once)."""
        if getattr(self, "_bound_norm", None) is None:
            self._bound_norm = _top_eigenvalue(self.bound_matvec, self.n)
        return self._bound_norm

    def hessian(self, block: np.ndarray) -> np.ndarray:
        """The exact block Hessian; a quadratic's is its bound matrix (others override this)."""
        return self.bound_matrix(block)

    def block_lipschitz(self, block: np.ndarray) -> float:
        """``L_b = lambda_max(H_b)``."""
        H = self.bound_matrix(block)
        return float(H[0, 0]) if H.shape[0] == 1 else float(np.linalg.eigvalsh(H)[-1])


# ------------------------------------------------------------------ least squares and logistic


def row_loss(kind: str, z, t):
    """Per-row losses at the predictions ``z`` (numpy or torch, through the array namespace)."""
    if kind == "quadratic":
        return 0.5 * (z - t) ** 2
    xp = get_namespace(z)
    return xp.logaddexp(xp.zeros_like(z), -t * z)


def row_derivative(kind: str, z, t):
    """Per-row derivatives ``l'(z_i)`` (numpy or torch)."""
    if kind == "quadratic":
        return z - t
    xp = get_namespace(z)
    # -t sigma(-t z) through exp(-log(1 + exp(t z))): no overflow for large margins
    return -t * xp.exp(-xp.logaddexp(xp.zeros_like(z), t * z))


class LinearModelObjective(Objective):
    """``f(x) = (1/m) sum_i l(a_i^T x, t_i)``: least squares (``kind="quadratic"``, ``l = (z - t)^2/2``)
    or logistic (``kind="logistic"``, ``l = log(1 + exp(-t z))``, ``t = +-1``).

    Parameters
    ----------
    A : ndarray or scipy sparse, shape (m, n), float64
        Kept as CSC (columns) and CSR (rows) when sparse with at most :data:`DENSE_ABOVE` non-zeros,
        else Fortran-ordered dense.
    target : ndarray (m,)
    kind : {"quadratic", "logistic"}
    x0 : ndarray (n,)

    Notes
    -----
    ``L_i = c ||a_i||^2`` and ``H_b = c A_b^T A_b`` with ``c = 1/m`` (least squares: exact
    Hessian) or ``c = 1/(4m)`` (logistic: ``sigma' <= 1/4``); the logistic block Hessian is
    ``A_b^T D A_b / m``, ``D = diag(sigma(z) sigma(-z))``. ``bound_abs_row_sums`` is
    ``c sum_j |(A^T A)_ij|`` (exact; see :func:`gram_abs_row_sums` for its cost).
    """

    def __init__(self, A, target: np.ndarray, kind: str, x0: np.ndarray) -> None:
        self.kind = kind
        self.is_quadratic = kind == "quadratic"
        if sp.issparse(A) and A.nnz > DENSE_ABOVE * A.shape[0] * A.shape[1]:
            # mostly non-zero (the scaled LIBSVM sets): BLAS on a dense copy beats the sparse kernels
            A = A.toarray()
        self.sparse = sp.issparse(A)
        if self.sparse:
            self.csc = sp.csc_array(A, dtype=np.float64)
            self.csc.sort_indices()
            self.csr = sp.csr_array(self.csc)
            self._marker = kernels().empty_marker(A.shape[0])
            self._rows_ws = np.empty(A.shape[0], dtype=np.int64)
            self._vals_ws = np.empty(A.shape[0])
        else:
            self.dense = np.asfortranarray(A, dtype=np.float64)
        self.m = int(A.shape[0])
        self.t = np.asarray(target, dtype=np.float64)
        self.curvature = (1.0 if self.is_quadratic else 0.25) / self.m
        self.x = np.array(x0, dtype=np.float64)
        self.z = np.asarray(A @ self.x, dtype=np.float64).ravel()
        self.u = row_derivative(kind, self.z, self.t) / self.m
        self.g = np.asarray(A.T @ self.u, dtype=np.float64).ravel()
        self._bound_norm = None
        self._losses = row_loss(kind, self.z, self.t)
        self._last_trial = None

    def _gram(self, block: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """``A_b^T diag(weights) A_b`` as a dense (b, b) array.

        Sparse ``A``: a block holding more than :data:`KERNEL_GRAM_SHARE` of the entries (a
        working set) is formed by the cheaper of two numba kernels, by columns
        (:func:`~._kernels.weighted_gram_columns`, ``~|b| nnz(A_b) / 2``) or by rows
        (:func:`~._kernels.weighted_gram`, ``nnz(A) + sum_i nnz_b(a_i)^2 / 2``); a smaller one
        by a sparse product of its columns.
        """
        if self.sparse:
            indptr = self.csc.indptr
            block_entries = int((indptr[block + 1] - indptr[block]).sum())
            if block_entries > KERNEL_GRAM_SHARE * self.csc.nnz:
                w = np.ones(self.m) if weights is None else np.asarray(weights, dtype=np.float64)
                by_columns = block.shape[0] * block_entries / 2
                by_rows = self.csc.nnz + block_entries**2 / (2 * self.m)
                if by_columns <= by_rows:
                    csc = self.csc
                    return kernels().weighted_gram_columns(
                        csc.indptr, csc.indices, csc.data, block, w, np.zeros(self.m)
                    )
                position = np.full(self.n, -1, dtype=np.int64)
                position[block] = np.arange(block.shape[0])
                csr = self.csr
                return kernels().weighted_gram(csr.indptr, csr.indices, csr.data, position, w, block.shape[0])
            Ab = self.csc[:, block]
            left = Ab if weights is None else sp.csc_array(Ab.multiply(weights[:, None]))
            return (left.T @ Ab).toarray()
        Ab = self.dense[:, block]
        return (Ab.T if weights is None else Ab.T * weights) @ Ab

    def _touched(self, block: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows ``R`` where ``A_b delta`` has entries and the product on them."""
        if self.sparse:
            count = kernels().csc_block_product(
                self.csc.indptr,
                self.csc.indices,
                self.csc.data,
                block,
                delta,
                self._marker,
                self._rows_ws,
                self._vals_ws,
            )
            return self._rows_ws[:count].copy(), self._vals_ws[:count].copy()
        return np.arange(self.m), self.dense[:, block] @ delta

    def _trial(self, block: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, A_b delta on them, the new per-row losses there)``; the last trial is kept, so
        the update after a line search accepts its step does not form the product again."""
        last = self._last_trial
        if last is not None and np.array_equal(last[0], block) and np.array_equal(last[1], delta):
            return last[2]
        rows, dz = self._touched(block, delta)
        trial = rows, dz, row_loss(self.kind, self.z[rows] + dz, self.t[rows])
        self._last_trial = (block.copy(), delta.copy(), trial)
        return trial

    def change(self, block: np.ndarray, delta: np.ndarray) -> float:
        """``f(x + delta on block) - f(x)``, from the touched rows only (nothing is updated)."""
        rows, _, losses = self._trial(block, delta)
        # summed from per-row changes: near a solution f moves by less than its own rounding error
        return float((losses - self._losses[rows]).sum()) / self.m

    def update(self, block: np.ndarray, delta: np.ndarray) -> None:
        """``x[block] += delta``, keeping ``z``, ``g`` and ``f`` exact."""
        rows, dz, losses = self._trial(block, delta)
        self._last_trial = None
        z_new = self.z[rows] + dz
        u_new = row_derivative(self.kind, z_new, self.t[rows]) / self.m
        du = u_new - self.u[rows]
        self.z[rows] = z_new
        self.u[rows] = u_new
        self._losses[rows] = losses
        self.x[block] += delta
        if self.sparse and 2 * rows.shape[0] > self.m:
            # most rows touched (a large working set): one pass over the CSC columns reads A in order
            change = np.zeros(self.m)
            change[rows] = du
            self.g += self.csc.T @ change
        elif self.sparse:
            kernels().csr_rows_transpose_product(self.csr.indptr, self.csr.indices, self.csr.data, rows, du, self.g)
        else:
            self.g += self.dense.T @ du

    def coordinate_lipschitz(self) -> np.ndarray:
        if self.sparse:
            # ||a_i||^2 straight from the CSC arrays: a sparse elementwise product costs ~5x more
            indptr = self.csc.indptr
            norms = np.zeros(self.n)
            filled = np.flatnonzero(np.diff(indptr))
            if filled.size:
                norms[filled] = np.add.reduceat(self.csc.data**2, indptr[filled])
            return self.curvature * norms
        return self.curvature * (self.dense * self.dense).sum(axis=0)

    def bound_matrix(self, block: np.ndarray) -> np.ndarray:
        return self.curvature * self._gram(block)

    def hessian(self, block: np.ndarray) -> np.ndarray:
        if self.is_quadratic:
            return self.bound_matrix(block)
        # sigma(z) sigma(-z) = p (1 - p) with p = sigma(-t z) = -t m u, from the maintained derivative
        p = -self.t * self.u * self.m
        return self._gram(block, p * (1.0 - p)) / self.m

    def bound_matvec(self, v: np.ndarray) -> np.ndarray:
        A = self.csc if self.sparse else self.dense
        return self.curvature * (A.T @ (A @ v))

    def bound_abs_row_sums(self) -> np.ndarray:
        return self.curvature * gram_abs_row_sums(self.csc if self.sparse else self.dense)

    def value(self) -> float:
        """``f(x)``, the sum of the per-row losses kept at the predictions ``z``."""
        return float(self._losses.sum()) / self.m

    def dual_point(self) -> np.ndarray:
        """``u = L'(z)`` (with the ``1/m``), the datafit's gradient at the predictions."""
        return self.u

    def recomputed(self) -> dict[str, np.ndarray]:
        """``z``, ``g`` and ``f`` formed from scratch at ``x`` (for checks)."""
        A = self.csc if self.sparse else self.dense
        z = A @ self.x
        g = A.T @ (row_derivative(self.kind, z, self.t) / self.m)
        return {"z": z, "g": g, "f": float(row_loss(self.kind, z, self.t).sum()) / self.m}


# ------------------------------------------------------------------ quadratic


class QuadraticObjective(Objective):
    """``f(x) = x^T Q x / 2 - c^T x`` for a symmetric positive definite ``Q`` (dense or sparse).

    ``z = Q x``, ``g = z - c``, ``L_i = Q_ii``, ``H_b = Q_bb`` (the exact block Hessian),
    ``bound_abs_row_sums = |Q| 1`` (exact).
    """

    is_quadratic = True

    def __init__(self, Q, c: np.ndarray, x0: np.ndarray) -> None:
        self.sparse = sp.issparse(Q)
        if self.sparse:
            self.Q = sp.csc_array(Q, dtype=np.float64)
            self.Q.sort_indices()
            n = self.Q.shape[0]
            self._marker = kernels().empty_marker(n)
            self._rows_ws = np.empty(n, dtype=np.int64)
            self._vals_ws = np.empty(n)
            self._scatter = np.zeros(n)
        else:
            self.Q = np.asfortranarray(Q, dtype=np.float64)
        self.c = np.asarray(c, dtype=np.float64)
        self.x = np.array(x0, dtype=np.float64)
        self.z = np.asarray(self.Q @ self.x).ravel()
        self.g = self.z - self.c
        self._bound_norm = None

    def _column_change(self, block: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Rows touched by ``Q[:, b] delta``, the change on them and ``delta^T Q_bb delta``."""
        if self.sparse:
            count = kernels().csc_block_product(
                self.Q.indptr, self.Q.indices, self.Q.data, block, delta, self._marker, self._rows_ws, self._vals_ws
            )
            rows, dz = self._rows_ws[:count].copy(), self._vals_ws[:count].copy()
            self._scatter[rows] = dz
            curvature = float(delta @ self._scatter[block])
            self._scatter[rows] = 0.0
            return rows, dz, curvature
        dz = self.Q[:, block] @ delta
        return np.arange(self.n), dz, float(delta @ dz[block])

    def value(self) -> float:
        """``f(x)`` from ``z = Q x``, ``O(n)``."""
        return float(0.5 * self.x @ self.z - self.c @ self.x)

    def change(self, block: np.ndarray, delta: np.ndarray) -> float:
        _, _, curvature = self._column_change(block, delta)
        return float(delta @ self.g[block]) + 0.5 * curvature

    def update(self, block: np.ndarray, delta: np.ndarray) -> None:
        rows, dz, _ = self._column_change(block, delta)
        self.z[rows] += dz
        self.g[rows] += dz
        self.x[block] += delta

    def coordinate_lipschitz(self) -> np.ndarray:
        return np.asarray(self.Q.diagonal()).copy()

    def bound_matrix(self, block: np.ndarray) -> np.ndarray:
        if self.sparse:
            return self.Q[block][:, block].toarray()
        return self.Q[np.ix_(block, block)]

    hessian = bound_matrix

    def bound_matvec(self, v: np.ndarray) -> np.ndarray:
        return self.Q @ v

    def bound_abs_row_sums(self) -> np.ndarray:
        return np.asarray(abs(self.Q) @ np.ones(self.n)).ravel()

    def recomputed(self) -> dict[str, np.ndarray]:
        z = self.Q @ self.x
        return {"z": z, "g": z - self.c, "f": float(0.5 * self.x @ z - self.c @ self.x)}
