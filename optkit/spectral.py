"""Matrix-free spectral estimators on any symmetric :class:`~optkit.linop.LinearOperator`.

- :func:`hutchinson_trace`: Hutchinson's estimator with Rademacher probes, or Hutch++ (Meyer,
  Musco, Musco, Woodruff 2021: a low-rank part taken exactly, Hutchinson on the rest);
- :func:`hutchinson_diagonal`: ``mean(z ⊙ A z)`` over Rademacher probes;
- :func:`top_eigenpairs`: extreme eigenpairs by Lanczos (:mod:`optkit.lanczos`), grown until
  the Ritz residuals meet the tolerance;
- :func:`spectral_density`: stochastic Lanczos quadrature (Lin, Saad, Yang 2016; Ghorbani,
  Krishnan, Xiao 2019 for neural-network Hessians).

Every estimate comes with its error measure: the standard error across probes, or the Ritz
residuals ``‖A v − θ v‖``. numpy or torch operators (CPU or CUDA); probes are drawn from a
seeded numpy stream and moved to the operator's device, so a seed gives the same probes on
every backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import convert, to_numpy
from .lanczos import LanczosProcess
from .linop import LinearOperator, aslinearoperator
from .validation import check_choice, check_int, check_positive

__all__ = [
    "Eigenpairs",
    "Estimate",
    "SpectralDensity",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "spectral_density",
    "top_eigenpairs",
]


@dataclass(frozen=True)
class Estimate:
    """A stochastic estimate.

    Attributes
    ----------
    value : float or numpy.ndarray
    stderr : float or numpy.ndarray
        Standard error of ``value`` (the sample standard deviation of the per-probe estimates
        over ``sqrt(probes)``; for Hutch++, of its Hutchinson part).
    probes : int
        Matrix-vector products used.
    """

    value: Any
    stderr: Any
    probes: int


@dataclass(frozen=True)
class Eigenpairs:
    """Extreme eigenpairs from Lanczos.

    Attributes
    ----------
    values : numpy.ndarray, shape (k,)
        Ritz values, in the order asked for (largest first for ``"LA"``/``"LM"``).
    vectors : array or tensor, shape (n, k)
        Ritz vectors on the operator's backend.
    residuals : numpy.ndarray, shape (k,)
        ``‖A v − θ v‖`` of each pair, computed from the matvecs ``A Q`` the Lanczos process kept (an eigenvalue of ``A`` lies within
        that distance of ``θ``).
    steps : int
        Lanczos steps: the matvecs (the residuals need none more).
    converged : bool
        Every residual ``<= tol · max(|θ|)``.
    """

    values: np.ndarray
    vectors: Any
    residuals: np.ndarray
    steps: int
    converged: bool


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature: per probe, Ritz values (nodes) and their weights.

    Attributes
    ----------
    nodes, weights : numpy.ndarray, shape (probes, steps)
        Each row's weights sum to 1: the quadrature of ``vᵀ f(A) v`` for a unit probe ``v``,
        an estimate of ``tr f(A) / n``.
    n : int
        The operator's size.
    """

    nodes: np.ndarray
    weights: np.ndarray
    n: int

    @property
    def support(self) -> tuple[float, float]:
        """Smallest and largest node."""
        return float(self.nodes.min()), float(self.nodes.max())

    def density(self, grid: Any, sigma: float) -> np.ndarray:
        """The eigenvalue density smoothed by a Gaussian of width ``sigma``, on ``grid`` (integrates to 1)."""
        sigma = check_positive("sigma", sigma)
        t = np.asarray(grid, dtype=np.float64)[:, None]
        kernel = np.exp(-0.5 * ((t - self.nodes.ravel()[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return kernel @ self.weights.ravel() / self.nodes.shape[0]

    def trace(self) -> float:
        """``n · mean(Σ weights · nodes)``: the trace estimate of the same quadrature."""
        return float(self.n * np.mean(np.sum(self.weights * self.nodes, axis=1)))


def _operator(A: Any) -> LinearOperator:
    op = aslinearoperator(A)
    if op.shape[0] != op.shape[1] or op.shape[0] == 0:
        raise ValueError(f"the operator must be square and non-empty, got shape {op.shape}")
    return op


def _rademacher(op: LinearOperator, count: int, rng: np.random.Generator) -> Any:
    Z = rng.integers(0, 2, size=(op.shape[0], count)).astype(np.float64) * 2 - 1
    return convert(Z, op.backend, None if op.backend == "numpy" else op.device, op.dtype)


def _mean_and_stderr(samples: np.ndarray) -> tuple[Any, Any]:
    """Mean over axis 0, and its standard error (``nan`` with one sample)."""
    p = samples.shape[0]
    mean = samples.mean(axis=0)
    stderr = samples.std(axis=0, ddof=1) / math.sqrt(p) if p > 1 else np.full_like(mean, np.nan)
    return mean, stderr


def hutchinson_trace(A: Any, probes: int = 100, *, method: str = "hutchinson", seed: int = 0) -> Estimate:
    """Estimate ``tr(A)`` from matrix-vector products with Rademacher probes.

    Parameters
    ----------
    A : LinearOperator or array, shape (n, n)
        Symmetric (numpy or torch).
    probes : int
        Matvecs to spend (``>= 1``; Hutch++ needs ``>= 3``).
    method : {"hutchinson", "hutch++"}
        Hutch++ spends a third of the matvecs on a range sketch ``Q`` of ``A S``, a third on
        ``tr(Qᵀ A Q)`` exactly and a third on Hutchinson for ``(I − QQᵀ) A (I − QQᵀ)``: for
        matrices with a decaying spectrum its error falls as ``1/probes``, not ``1/√probes``.
    seed : int

    Returns
    -------
    Estimate
        ``value`` and ``stderr`` floats.
    """
    op = _operator(A)
    probes = check_int("probes", probes, 1)
    check_choice("method", method, ("hutchinson", "hutch++"))
    rng = np.random.default_rng(check_int("seed", seed, 0))
    if method == "hutchinson":
        Z = _rademacher(op, probes, rng)
        samples = to_numpy(op.xp.sum(Z * op.matmat(Z), axis=0)).astype(np.float64)
        value, stderr = _mean_and_stderr(samples)
        return Estimate(float(value), float(stderr), probes)
    if probes < 3:
        raise ValueError(
            f"probes must be at least 3 for hutch++ (a third each for sketch, exact part, residual), got {probes}"
        )
    xp = op.xp
    third = probes // 3
    Q, _ = xp.linalg.qr(op.matmat(_rademacher(op, third, rng)))
    exact = float(xp.sum(Q * op.matmat(Q)))
    G = _rademacher(op, probes - 2 * third, rng)
    G = G - Q @ (Q.T @ G)
    samples = to_numpy(xp.sum(G * op.matmat(G), axis=0)).astype(np.float64)
    value, stderr = _mean_and_stderr(samples)
    return Estimate(exact + float(value), float(stderr), probes)


def hutchinson_diagonal(A: Any, probes: int = 100, *, seed: int = 0, batch: int = 64) -> Estimate:
    """Estimate ``diag(A)`` as the mean of ``z ⊙ A z`` over Rademacher probes ``z``.

    Parameters
    ----------
    A : LinearOperator or array, shape (n, n)
    probes : int
        ``>= 1`` matvecs.
    seed : int
    batch : int
        Probes per ``matmat`` (memory ``n · batch``).

    Returns
    -------
    Estimate
        ``value`` and ``stderr`` float64 numpy arrays of shape (n,). The error of entry ``i``
        falls as ``1/√probes`` (its variance is ``Σ_{j≠i} A_ij²``).
    """
    op = _operator(A)
    probes = check_int("probes", probes, 1)
    batch = check_int("batch", batch, 1)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    total = np.zeros(op.shape[0])
    total_sq = np.zeros(op.shape[0])
    for start in range(0, probes, batch):
        Z = _rademacher(op, min(batch, probes - start), rng)
        S = to_numpy(Z * op.matmat(Z)).astype(np.float64)
        total += S.sum(axis=1)
        total_sq += (S * S).sum(axis=1)
    mean = total / probes
    if probes > 1:
        variance = np.maximum(total_sq - probes * mean * mean, 0.0) / (probes - 1)
        stderr = np.sqrt(variance / probes)
    else:
        stderr = np.full_like(mean, np.nan)
    return Estimate(mean, stderr, probes)


def top_eigenpairs(
    A: Any,
    k: int = 1,
    *,
    which: str = "LA",
    tol: float = 1e-8,
    max_steps: int | None = None,
    reorthogonalize: bool = True,
    seed: int = 0,
) -> Eigenpairs:
    """The ``k`` extreme eigenpairs of the symmetric ``A`` by Lanczos.

    Lanczos runs ``k`` steps, then grows until the ``k`` wanted Ritz pairs have residual
    estimates ``β_m |s_mi| <= tol · max|θ|`` (checked from the tridiagonal coefficients alone,
    after every step up to 16 steps, then every ``m // 8`` steps), the Krylov space is invariant, or ``max_steps`` (default
    ``n``) is reached. The returned residuals
    ``||A v - θ v||`` are then computed exactly from the matvecs the process kept
    (``A v = A Q s``), with no further matvec.

    Parameters
    ----------
    A : LinearOperator or array, shape (n, n)
    k : int
        ``1 <= k <= n``.
    which : {"LA", "SA", "LM"}
        Largest algebraic, smallest algebraic or largest magnitude (scipy's names).
    tol : float
        Relative tolerance on the residuals.
    max_steps : int, optional
    reorthogonalize : bool
        Full reorthogonalisation (default). Without it, a converged eigenvalue comes back as
        several Ritz values ("ghosts"); they are returned as they are, so that the effect shows.
    seed : int
        Seed of the start vector.

    Returns
    -------
    Eigenpairs
    """
    op = _operator(A)
    n = op.shape[0]
    k = check_int("k", k, 1)
    if k > n:
        raise ValueError(f"k must be at most n = {n} (the operator's size), got {k}")
    check_choice("which", which, ("LA", "SA", "LM"))
    tol = check_positive("tol", tol)
    max_steps = n if max_steps is None else check_int("max_steps", max_steps, k)
    process = LanczosProcess(op, reorthogonalize=reorthogonalize, seed=seed, keep_products=True)
    process.advance(min(k, max_steps))
    while True:
        result = process.tridiagonal()
        theta, S = result.ritz()
        order = {"LA": np.argsort(-theta), "SA": np.argsort(theta), "LM": np.argsort(-np.abs(theta))}[which][:k]
        estimates = np.abs(result.beta[-1] * S[-1, order])
        scale = max(float(np.max(np.abs(theta))), np.finfo(np.float64).tiny)
        converged = len(order) == k and bool(np.all(estimates <= tol * scale))
        if converged or result.breakdown or process.steps >= max_steps:
            break
        # every step while short; then every ~1/8 more, so the O(m^2) checks stay a small share
        process.advance(min(max(1, process.steps // 8), max_steps - process.steps))
    result = process.result()
    xp = op.xp
    coefficients = convert(
        np.ascontiguousarray(S[:, order]), op.backend, None if op.backend == "numpy" else op.device, op.dtype
    )
    vectors = result.basis @ coefficients
    values = theta[order]
    place = None if op.backend == "numpy" else op.device
    residual_vectors = result.products @ coefficients - vectors * convert(values, op.backend, place, op.dtype)
    residuals = to_numpy(xp.linalg.vector_norm(residual_vectors, axis=0)).astype(np.float64)
    converged = len(order) == k and bool(np.all(residuals <= tol * scale * max(1.0, math.sqrt(n))))
    return Eigenpairs(values, vectors, residuals, result.steps, converged)


def spectral_density(
    A: Any, probes: int = 10, steps: int = 80, *, reorthogonalize: bool = True, seed: int = 0
) -> SpectralDensity:
    """Stochastic Lanczos quadrature of the eigenvalue density of the symmetric ``A``.

    For each of ``probes`` unit Rademacher vectors ``v``, ``steps`` Lanczos steps from ``v``
    give ``T``; its eigenvalues ``θ_i`` (nodes) and the squared first components ``τ_i`` of its
    eigenvectors (weights) are the Gauss quadrature of ``vᵀ f(A) v``. Averaged over probes, this
    estimates the spectral measure ``(1/n) Σ_j δ(t − λ_j)``.

    Parameters
    ----------
    A : LinearOperator or array, shape (n, n)
    probes : int
        ``>= 1`` (PyHessian's ``n_v``; matvecs are ``probes · steps``).
    steps : int
        ``1 <= steps <= n`` Lanczos steps per probe (PyHessian's ``iter``, default 100).
    reorthogonalize : bool
        Full reorthogonalisation (default; PyHessian's density makes one Gram-Schmidt pass
        against all previous vectors, this makes two).
    seed : int

    Returns
    -------
    SpectralDensity
    """
    op = _operator(A)
    n = op.shape[0]
    probes = check_int("probes", probes, 1)
    steps = check_int("steps", steps, 1)
    if steps > n:
        raise ValueError(f"steps must be at most n = {n} (the operator's size), got {steps}")
    rng = np.random.default_rng(check_int("seed", seed, 0))
    nodes = np.zeros((probes, steps))
    weights = np.zeros((probes, steps))
    for p in range(probes):
        v0 = rng.integers(0, 2, size=n).astype(np.float64) * 2 - 1
        result = LanczosProcess(op, v0=v0, reorthogonalize=reorthogonalize).extend(steps)
        theta, S = result.ritz()
        m = result.steps
        # an early breakdown leaves fewer nodes: the rest carry zero weight at the last node
        nodes[p, :m], weights[p, :m] = theta, S[0, :] ** 2
        nodes[p, m:] = theta[-1]
    return SpectralDensity(nodes, weights, n)
