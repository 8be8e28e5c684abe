"""Private to :mod:`solvers.ot.sparse_ot`: the dual of sparsity-constrained OT, evaluated.

Everything the ``sparse-ot`` solver computes on the dual apart from driving L-BFGS-B (see
:mod:`solvers.ot.sparse_ot` for the problem, the dual and the handling of ties):

* **Value and gradient**: :class:`_SparseDual` evaluates ``D`` and ``grad D`` at a point
  (with the top-k selection of each column's scores), caching the last evaluation as an
  :class:`_Eval`; :func:`sparse_dual` and :func:`sparse_plan` are the public one-shot forms.
* **Start**: :func:`_column_potentials`, the ``beta`` that maximises ``D(alpha, .)``.
* **Newton polish**: :func:`_newton_direction`, the exact step on the quadratic piece of
  ``D`` holding a point (a sparse direct solve).
* **Plan recovery**: :meth:`_Eval.k_sparse` (exact ties broken toward the lowest row) and
  :func:`_resolve_ties` (for ``k = 1``, a 1-sparse plan that meets the marginals, by
  maximum flow).

The public names are re-exported by :mod:`solvers.ot.sparse_ot`; import them from there.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from optkit.backend import to_numpy
from optkit.validation import check_int

__all__ = ["sparse_dual", "sparse_plan"]


# ---------------------------------------------------------------------------- the dual


def _top_k(S: np.ndarray, k: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Per row of ``S`` (m, n): indices (m, k) of the ``k`` largest entries and their values.

    ``k >= n`` returns ``(None, S)``: every entry. Ties at the k-th value are broken by
    ``np.argpartition`` (deterministically for a given input), so exactly ``k`` entries are kept.
    """
    n = S.shape[1]
    if k >= n:
        return None, S
    idx = np.argpartition(S, n - k, axis=1)[:, n - k :]
    return idx, np.take_along_axis(S, idx, axis=1)


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """``x @ y`` without BLAS: a threaded BLAS dot is slow when the machine is busy."""
    return float(np.einsum("i,i->", x, y))


class _Eval:
    """One evaluation of the dual at ``v = (alpha, beta)``: value, gradient, and the entries
    ``(rows, cols)`` with positive score in the top-k of their column, ``vals`` = their score /
    ``reg`` times ``share``. ``share`` is None unless some column has an exact tie at its k-th
    largest score, where it is the fraction ``r / t`` of the ``t`` tied entries competing for
    ``r`` places (1 elsewhere): the gradient then averages the tied choices (see
    :func:`sparse_dual`). ``binding`` = columns with more than ``k`` positive scores, where the
    cardinality constraint is active."""

    __slots__ = ("binding", "cols", "dual", "error", "grad", "rows", "share", "v", "vals")

    def __init__(self, v, dual, grad, rows, cols, vals, share, binding) -> None:
        self.v, self.dual, self.grad = v, dual, grad
        self.rows, self.cols, self.vals, self.share, self.binding = rows, cols, vals, share, binding
        self.error = float(np.abs(grad).sum())

    def k_sparse(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The plan's entries with exact ties broken toward the lowest row index (at most k per column)."""
        if self.share is None:
            return self.rows, self.cols, self.vals
        whole = self.share == 1.0
        tied = np.flatnonzero(~whole)  # np.nonzero order: by column, then by row
        cols = self.cols[tied]
        start = np.searchsorted(cols, cols)  # first tied entry of the same column
        places = np.rint(self.share[tied] * np.bincount(cols)[cols])  # r of the column
        keep = np.concatenate([np.flatnonzero(whole), tied[np.arange(tied.size) - start < places]])
        keep.sort()
        return self.rows[keep], self.cols[keep], self.vals[keep] / self.share[keep]


class _SparseDual:
    """The dual ``D`` of one instance in float64, with the last evaluation cached.

    ``CT`` is ``C^T`` stored C-contiguous, so that one column ``c_j`` of the plan is one
    contiguous row of the scores. Only positive scores can enter the plan, so an evaluation
    finds them first and runs the top-k selection (``np.partition``) only on the columns
    with more than ``k`` of them: O(nm) elementwise work plus a partition of the binding
    columns, instead of a partition of every column.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, C: np.ndarray, reg: float, k: int) -> None:
        self.a = np.asarray(a, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        self.CT = np.ascontiguousarray(np.asarray(C, dtype=np.float64).T)
        self.n, self.m = self.a.shape[0], self.b.shape[0]
        self.reg = float(reg)
        self.k = min(int(k), self.n)
        self.evals = 0
        self.last: _Eval | None = None

    def evaluate(self, v: np.ndarray, *, count: bool = True) -> _Eval:
        """``D`` and its gradient at ``v``; ``count=False`` for measurements (trace only)."""
        if self.last is not None and np.array_equal(self.last.v, v):
            return self.last
        n, k = self.n, self.k
        alpha, beta = v[:n], v[n:]
        S = beta[:, None] + alpha[None, :]
        S -= self.CT  # S[j, i] = alpha_i + beta_j - C_ij
        mask = S > 0
        over = np.flatnonzero(np.count_nonzero(mask, axis=1) > k)
        share = None
        if over.size:  # keep the k largest of these columns' (positive) scores
            sub = S[over]
            kth = np.partition(sub, n - k, axis=1)[:, n - k, None]
            above = sub > kth
            at = sub == kth
            mask[over] = above | at
            tied = np.count_nonzero(at, axis=1)
            places = k - np.count_nonzero(above, axis=1)
            if np.any(tied > places):  # exact ties at the k-th score: share the places
                W = mask.astype(np.float64)
                W[over] = np.where(at, (places / tied)[:, None], W[over])
        cols, rows = np.nonzero(mask)
        pos = S[cols, rows]
        if over.size and np.any(tied > places):
            share = W[cols, rows]
            pos_w = pos * share
        else:
            pos_w = pos
        vals = pos_w / self.reg
        dual = _dot(alpha, self.a) + _dot(beta, self.b) - 0.5 * _dot(pos, vals)
        grad = np.concatenate(
            [
                self.a - np.bincount(rows, weights=vals, minlength=n),
                self.b - np.bincount(cols, weights=vals, minlength=self.m),
            ]
        )
        if count:
            self.evals += 1
        self.last = _Eval(v.copy(), dual, grad, rows, cols, vals, share, int(over.size))
        return self.last

    def fun_grad(self, v: np.ndarray) -> tuple[float, np.ndarray]:
        """``(-D, -grad D)``: the function scipy minimises."""
        e = self.evaluate(v)
        return -e.dual, -e.grad

    def plan(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, *, sparse: bool) -> Any:
        """The plan ``T[rows, cols] = vals``: dense (n, m) ndarray or ``scipy.sparse.csr_array``."""
        if sparse:
            from scipy.sparse import csr_array

            return csr_array((vals, (rows, cols)), shape=(self.n, self.m))
        T = np.zeros((self.n, self.m))
        T[rows, cols] = vals
        return T

    def marginal_error(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> float:
        """``||T 1 - a||_1 + ||T^T 1 - b||_1`` of the plan ``T[rows, cols] = vals``."""
        return float(
            np.abs(np.bincount(rows, weights=vals, minlength=self.n) - self.a).sum()
            + np.abs(np.bincount(cols, weights=vals, minlength=self.m) - self.b).sum()
        )


def _checked_k(max_nz: Any) -> int:
    return check_int("max_nz", max_nz, 1)


def sparse_dual(alpha: Any, beta: Any, a: Any, b: Any, C: Any, reg: float, max_nz: int) -> tuple[float, Any, Any]:
    """The sparsity-constrained dual ``D(alpha, beta)`` and its gradient (numpy, float64).

    Returns ``(value, grad_alpha, grad_beta)`` with ``grad_alpha = a - T 1`` and
    ``grad_beta = b - T^T 1``, ``T = sparse_plan(alpha, beta, C, reg, max_nz)``, except at
    exact ties at a column's k-th largest score, where ``D`` is not differentiable and the
    returned subgradient averages the tied choices (see the module docstring).
    ``max_nz >= n`` is the quadratically regularised (l2) dual.
    """
    k = _checked_k(max_nz)
    a, b = to_numpy(a), to_numpy(b)
    ev = _SparseDual(a, b, to_numpy(C), reg, k)
    e = ev.evaluate(np.concatenate([np.asarray(to_numpy(alpha), float), np.asarray(to_numpy(beta), float)]))
    return e.dual, e.grad[: ev.n].copy(), e.grad[ev.n :].copy()


def sparse_plan(alpha: Any, beta: Any, C: Any, reg: float, max_nz: int, *, sparse: bool = False) -> Any:
    """The plan of the potentials: column ``j`` is ``max(s, 0) / reg`` on the ``max_nz`` largest
    entries of ``s = alpha + beta_j - C[:, j]`` and 0 elsewhere (at most ``max_nz`` nonzeros;
    exact ties broken toward the lowest row index).

    Dense (n, m) float64 ndarray, or a ``scipy.sparse.csr_array`` with ``sparse=True``.
    """
    k = _checked_k(max_nz)
    C = to_numpy(C)
    n, m = C.shape
    ev = _SparseDual(np.zeros(n), np.zeros(m), C, reg, k)
    e = ev.evaluate(np.concatenate([np.asarray(to_numpy(alpha), float), np.asarray(to_numpy(beta), float)]))
    return ev.plan(*e.k_sparse(), sparse=sparse)


# ---------------------------------------------------------------------------- start, Newton polish, plan recovery


def _column_potentials(ev: _SparseDual, alpha: np.ndarray) -> np.ndarray:
    """The ``beta`` that maximises ``D(alpha, .)``: every column of the plan sums to ``b_j``.

    Column by column, the top-k set of ``alpha + beta_j - c_j`` does not depend on
    ``beta_j``; on it, ``sum max(v_l + beta_j, 0) = reg * b_j`` is a simplex-projection
    threshold (sort the k values, find how many stay positive).
    """
    S = alpha[None, :] - ev.CT
    _, vals = _top_k(S, ev.k)
    vals = -np.sort(-vals, axis=1)  # descending, (m, k)
    cum = np.cumsum(vals, axis=1)
    counts = np.arange(1, vals.shape[1] + 1)
    shifts = (ev.reg * ev.b[:, None] - cum) / counts
    rho = np.maximum(np.count_nonzero(vals + shifts > 0, axis=1), 1)
    return shifts[np.arange(ev.m), rho - 1]


def _newton_direction(ev: _SparseDual, e: _Eval) -> np.ndarray | None:
    """The Newton step on the quadratic piece of ``D`` that holds ``e``; ``None`` if it fails.

    On the piece, ``D`` is quadratic with Hessian ``-H / reg``, ``H`` the signless Laplacian
    of the bipartite support graph of the plan (rows and columns as nodes). ``H`` is
    singular along ``(+1 rows, -1 columns)`` of each connected component; fixing one node
    per component (its potential does not move) leaves a positive definite system,
    solved sparse-directly. If the piece's maximiser lies inside the piece, one step lands on
    it exactly.
    """
    from scipy.sparse import bmat, coo_array, diags_array
    from scipy.sparse.csgraph import connected_components
    from scipy.sparse.linalg import MatrixRankWarning, spsolve

    rows, cols, _ = e.k_sparse()
    if rows.size == 0:
        return None
    n, m = ev.n, ev.m
    A = coo_array((np.ones(rows.size), (rows, cols)), shape=(n, m)).tocsr()
    H = bmat(
        [
            [diags_array(np.bincount(rows, minlength=n).astype(float)), A],
            [A.T, diags_array(np.bincount(cols, minlength=m).astype(float))],
        ],
        format="csr",
    )
    _, labels = connected_components(H, directed=False)
    keep = np.ones(n + m, dtype=bool)
    keep[np.unique(labels, return_index=True)[1]] = False
    if not keep.any():
        return None
    sub = H[keep][:, keep].tocsc()
    d = np.zeros(n + m)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MatrixRankWarning)
        try:
            with np.errstate(all="ignore"):
                d[keep] = ev.reg * spsolve(sub, e.grad[keep])
        except (MatrixRankWarning, RuntimeError, ValueError):
            return None
    return d if np.all(np.isfinite(d)) else None


def _resolve_ties(ev: _SparseDual, e: _Eval) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For ``k = 1``: a plan with one source per column that meets both marginals, chosen among
    each column's tied best sources at ``e``; ``None`` if there is none (or it is not tried).

    At a dual maximiser the plan of a k = 1 problem may need ties: with duplicated points or
    a constant cost, every column prefers the same source at *every* dual point, so the top-1
    plan of any dual point piles mass on one row, and L-BFGS stalls at the (optimal) kink.
    The optimal 1-sparse plans are then the assignments of each column ``j`` to one of its
    tied sources ``{i : s_ij >= max_i s_ij - eta}`` with ``sum_{j -> i} b_j = a_i``. With equal
    column weights ``b_j = w`` and ``a_i / w`` integers this is an integral maximum flow
    (source -> column, capacity 1; column -> tied row, 1; row -> sink, ``a_i / w``), solved by
    ``scipy.sparse.csgraph.maximum_flow`` for ``eta = reg * w * (0, 1e-12, 1e-9, 1e-6)`` in
    turn (``reg * w`` is the score of a column's entry at a feasible point). Unequal column
    weights make it a subset-sum problem, which is not attempted. The plan's values are the
    column weights, so it meets the column marginals exactly.
    """
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import maximum_flow

    n = ev.n
    live = np.flatnonzero(ev.b > 0)
    if ev.k != 1 or live.size == 0:
        return None
    unit = float(ev.b[live].max())
    if np.abs(ev.b[live] - unit).max() > 1e-12 * unit:
        return None
    caps = ev.a / unit
    caps_int = np.rint(caps)
    if np.abs(caps - caps_int).max() > 1e-9 or int(caps_int.sum()) != live.size:
        return None
    S = e.v[n:][live, None] + e.v[None, :n] - ev.CT[live]
    smax = S.max(axis=1)
    if np.any(smax <= 0):
        return None
    L = live.size
    sink = L + n + 1
    to_sink = np.flatnonzero(caps_int > 0)
    for rel in (0.0, 1e-12, 1e-9, 1e-6):
        tj, ti = np.nonzero(S >= (smax - rel * ev.reg * unit)[:, None])
        src = np.concatenate([np.zeros(L, dtype=np.int64), 1 + tj, L + 1 + to_sink])
        dst = np.concatenate([1 + np.arange(L), L + 1 + ti, np.full(to_sink.size, sink)])
        cap = np.concatenate([np.ones(L + tj.size), caps_int[to_sink]]).astype(np.int32)
        flow = maximum_flow(csr_array((cap, (src, dst)), shape=(sink + 1, sink + 1)), 0, sink)
        if flow.flow_value == L:
            F = flow.flow.tocsr()[1 : L + 1, L + 1 : L + 1 + n].tocoo()
            chosen = F.data > 0
            cols = live[F.row[chosen]]
            return F.col[chosen].astype(np.int64), cols, ev.b[cols].copy()
    return None
