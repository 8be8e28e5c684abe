"""Optimal values of the BCD paper problems (:mod:`problems.bcd_paper`), by methods independent of BCD.

Each function returns ``F*`` in optkit's scaling (the mean over the ``m`` rows for the
regression and classification problems):

* least squares: 0 when X has full row rank (checked by the rank of the dense X), else the
  minimum through LAPACK's least-squares solve (gelsy);
* non-negative Lasso: a Lawson-Hanson active-set method (exact solves on the support, finite
  termination) whose KKT conditions are checked to 1e-10 relative;
* logistic and softmax regression: the infimum 0 when the classes are separable (a separating
  weight found by least squares or, failing that, by a HiGHS feasibility LP, and checked), else
  the minimum by L-BFGS at ``gtol = 1e-12``;
* quadratics ``x^T Q x / 2 - c^T x``: a sparse LU solve with one step of iterative refinement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lstsq
from scipy.optimize import linprog, minimize
from scipy.sparse.linalg import splu
from scipy.special import logsumexp

__all__ = ["classification_optimum", "least_squares_optimum", "nonnegative_lasso_optimum", "quadratic_optimum"]

#: Relative tolerance of the KKT check of :func:`nonnegative_lasso_optimum`.
KKT_RTOL = 1e-10
#: The largest gradient entry accepted at the end of :func:`classification_optimum`'s L-BFGS,
#: relative to the largest at 0.
GRAD_RTOL = 1e-8


def _dense(X: Any) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)


def least_squares_optimum(X: Any, y: np.ndarray) -> float:
    """``min_w ||X w - y||^2 / (2 m)`` for X (m, n) dense or sparse: 0.0 when rank X = m."""
    Xd = _dense(X)
    m = Xd.shape[0]
    if np.linalg.matrix_rank(Xd) == m:
        return 0.0
    w = lstsq(Xd, y, lapack_driver="gelsy")[0]
    r = Xd @ w - y
    return float(r @ r) / (2 * m)


def nonnegative_lasso_optimum(X: Any, y: np.ndarray, lam: float, max_iter: int = 10000) -> tuple[float, np.ndarray]:
    """``min_{w >= 0} ||X w - y||^2 / (2 m) + lam sum(w)`` by the Lawson-Hanson active-set method.

    Parameters
    ----------
    X : scipy sparse or ndarray, shape (m, n)
    y : ndarray, shape (m,)
    lam : float
        ``>= 0``, in optkit's scaling (the paper's lambda divided by ``m``).

    Returns
    -------
    f_opt : float
    w : ndarray of float64, shape (n,)

    Raises
    ------
    RuntimeError
        When the KKT conditions do not hold to :data:`KKT_RTOL` at the end (a support whose
        columns are dependent), rather than returning an inexact value.
    """
    X = sp.csc_array(X) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    m, n = X.shape
    # the paper's scaling: 0.5 ||X w - y||^2 + mu sum(w), gradient X^T (X w - y) + mu
    mu = lam * m
    scale = max(float(np.max(np.abs(X.T @ y))), mu, 1.0)
    w = np.zeros(n)
    support: list[int] = []
    for _ in range(max_iter):
        grad = X.T @ (X @ w - y) + mu
        grad[support] = np.inf
        j = int(np.argmin(grad))
        if grad[j] >= -KKT_RTOL * scale:
            break
        support.append(j)
        while True:
            z = _support_solve(X, y, mu, support)
            if np.all(z > 0):
                w[support] = z
                break
            # move from w towards z until the first coordinate reaches 0, and drop it (and any other at 0)
            current = w[support]
            blocked = np.flatnonzero(z <= 0)
            ratios = current[blocked] / (current[blocked] - z[blocked])
            first = int(np.argmin(ratios))
            w[support] = current + ratios[first] * (z - current)
            w[support[blocked[first]]] = 0.0
            kept = [i for i in support if w[i] > 0]
            w[np.setdiff1d(support, kept)] = 0.0
            support = kept
    grad = X.T @ (X @ w - y) + mu
    violation = max(np.max(np.abs(grad[support]), initial=0.0), -np.min(grad, initial=0.0))
    if violation > KKT_RTOL * scale:
        raise RuntimeError(f"the active-set method ended with a KKT violation {violation:.3e} (scale {scale:.3e})")
    r = X @ w - y
    return float(0.5 * (r @ r) + mu * w.sum()) / m, w


def _support_solve(X: Any, y: np.ndarray, mu: float, support: list[int]) -> np.ndarray:
    """The stationary point of ``0.5 ||X_S z - y||^2 + mu sum(z)`` on the support S (Gram solve + one refinement)."""
    XS = _dense(X[:, support])
    gram = XS.T @ XS
    rhs = XS.T @ y - mu
    z = np.linalg.solve(gram, rhs)
    return z + np.linalg.solve(gram, rhs - XS.T @ (XS @ z))


def _targets(labels: np.ndarray, n_classes: int | None) -> np.ndarray:
    """Scores whose margins are all 1: the labels +-1 (binary), or one-hot rows (m, k) (multiclass)."""
    return labels.astype(np.float64) if n_classes is None else np.eye(n_classes)[labels]


def _min_margin(X: Any, labels: np.ndarray, n_classes: int | None, weights: np.ndarray) -> float:
    """The smallest margin of ``weights`` (w (d,) binary; W (k, d) flattened, multiclass)."""
    if n_classes is None:
        return float(np.min(labels * (X @ weights)))
    logits = X @ weights.reshape(n_classes, -1).T
    rows = np.arange(logits.shape[0])
    own = logits[rows, labels]
    logits[rows, labels] = -np.inf
    return float(np.min(own - logits.max(axis=1)))


def _margin_rows(X: Any, labels: np.ndarray, n_classes: int | None) -> Any:
    """``M`` (sparse) with ``M v`` the margins of the weights ``v``: rows ``labels_i x_i`` (binary), or for
    every sample i and class ``c != y_i`` the row ``(e_{y_i} - e_c) kron x_i`` (multiclass)."""
    X = sp.csr_array(X)
    if n_classes is None:
        return sp.csr_array(sp.diags_array(labels) @ X)
    m, d = X.shape
    samples = np.repeat(np.arange(m), n_classes)
    others = np.tile(np.arange(n_classes), m)
    keep = others != labels[samples]
    samples, others = samples[keep], others[keep]
    picked = X[samples]
    row = np.repeat(np.arange(samples.size), np.diff(picked.indptr))
    own_cols = labels[samples][row] * d + picked.indices
    other_cols = others[row] * d + picked.indices
    return sp.csr_array(
        (np.r_[picked.data, -picked.data], (np.r_[row, row], np.r_[own_cols, other_cols])),
        shape=(samples.size, n_classes * d),
    )


def _separable(X: Any, labels: np.ndarray, n_classes: int | None) -> bool:
    """Whether some weights give every sample a positive margin (checked on the weights found).

    First a least-squares fit of scores with unit margins (exact when X has full row rank),
    then, if its margins are not all positive, a HiGHS feasibility LP ``M v >= 1``.
    """
    Xd = _dense(X)
    # complete orthogonal factorisation (gelsy): five times faster than the SVD at 1000 x 10000
    fit = lstsq(Xd, _targets(labels, n_classes), lapack_driver="gelsy")[0]
    if _min_margin(Xd, labels, n_classes, fit.T.ravel()) > 0.5:
        return True
    M = _margin_rows(X, labels, n_classes)
    lp = linprog(np.zeros(M.shape[1]), A_ub=-M, b_ub=-np.ones(M.shape[0]), bounds=(None, None), method="highs")
    return lp.status == 0 and _min_margin(Xd, labels, n_classes, lp.x) > 0


def classification_optimum(X: Any, labels: np.ndarray, n_classes: int | None = None) -> float:
    """The infimum of the mean logistic (``n_classes=None``, labels +-1) or softmax loss (int labels).

    0.0 when the classes are separable (the infimum, not attained), else the minimum by L-BFGS.
    """
    labels = np.asarray(labels)
    if _separable(X, labels, n_classes):
        return 0.0
    Xd = _dense(X)
    m, d = Xd.shape
    if n_classes is None:

        def fun_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            z = -labels * (Xd @ w)
            return float(np.logaddexp(0.0, z).sum()) / m, Xd.T @ (-labels * np.exp(z - np.logaddexp(0.0, z))) / m

        size = d
    else:
        onehot = np.eye(n_classes)[labels]

        def fun_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            logits = Xd @ w.reshape(n_classes, d).T
            log_norm = logsumexp(logits, axis=1)
            value = float(np.sum(log_norm - np.sum(logits * onehot, axis=1))) / m
            return value, ((np.exp(logits - log_norm[:, None]) - onehot).T @ Xd).ravel() / m

        size = n_classes * d
    options = {"gtol": 1e-12, "ftol": 0.0, "maxiter": 100000, "maxcor": 30}
    result = minimize(fun_grad, np.zeros(size), jac=True, method="L-BFGS-B", options=options)
    # L-BFGS may end on a failed line search once rounding dominates; the gradient says whether that is optimal
    grad_norm, start_norm = float(np.max(np.abs(result.jac))), float(np.max(np.abs(fun_grad(np.zeros(size))[1])))
    if grad_norm > GRAD_RTOL * start_norm:
        raise RuntimeError(
            f"L-BFGS stopped ({result.message}) with a gradient of max-norm {grad_norm:.3e} ({start_norm:.3e} at 0)"
        )
    return float(result.fun)


def quadratic_optimum(Q: Any, c: np.ndarray) -> tuple[float, np.ndarray]:
    """``min_x x^T Q x / 2 - c^T x = -c^T Q^{-1} c / 2`` for sparse SPD ``Q``: ``(f_opt, x_star)``."""
    lu = splu(sp.csc_array(Q))
    x = lu.solve(c)
    x += lu.solve(c - Q @ x)
    return float(-0.5 * (c @ x)), x
