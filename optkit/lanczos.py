"""The Lanczos process on a symmetric operator: one recurrence, extended on demand.

:class:`LanczosProcess` holds the recurrence (basis, tridiagonal coefficients) and grows it by
``extend(steps)``; :func:`lanczos` runs it for a fixed number of steps, and
:func:`optkit.spectral.top_eigenpairs` and :func:`optkit.spectral.spectral_density` build on it.
With full reorthogonalisation (the default; two Gram-Schmidt passes against the whole basis,
"twice is enough") the basis stays orthonormal to working precision and the Ritz values have no
spurious copies; without it (less work per step) converged Ritz values reappear as "ghost"
eigenvalues once orthogonality is lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import convert, to_numpy
from .linop import LinearOperator, aslinearoperator
from .validation import check_int

__all__ = ["LanczosProcess", "LanczosResult", "lanczos"]


@dataclass(frozen=True)
class LanczosResult:
    """The Lanczos decomposition ``A Q_k = Q_k T_k + β_k q_{k+1} e_kᵀ`` after ``steps`` steps.

    Attributes
    ----------
    alpha : numpy.ndarray, shape (steps,)
        Diagonal of ``T_k`` (float64).
    beta : numpy.ndarray, shape (steps,)
        ``beta[:-1]`` is the off-diagonal of ``T_k``; ``beta[-1]`` is ``β_k``, the norm of the
        next residual (0 after a breakdown), which gives the Ritz residuals.
    basis : array or tensor, shape (n, steps)
        ``Q_k``, on the operator's backend, device and dtype.
    steps : int
    breakdown : bool
        True when the Krylov space became invariant (``β`` fell to rounding level): every Ritz
        value is then an eigenvalue of ``A``.
    products : array or tensor, shape (n, steps), or None
        ``A Q_k`` as the matvecs returned it (``keep_products=True``): the Ritz vectors' images
        ``A Q_k s = products @ s`` without another matvec.
    """

    alpha: np.ndarray
    beta: np.ndarray
    basis: Any
    steps: int
    breakdown: bool
    products: Any = None

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (ascending) and eigenvectors of ``T_k``, float64 numpy."""
        from scipy.linalg import eigh_tridiagonal

        if self.steps == 1:
            return self.alpha.copy(), np.ones((1, 1))
        return eigh_tridiagonal(self.alpha, self.beta[:-1])


def _start_vector(op: LinearOperator, v0: Any, seed: int) -> Any:
    n = op.shape[0]
    if v0 is None:
        v = np.random.default_rng(seed).standard_normal(n)
    else:
        if tuple(getattr(v0, "shape", ())) != (n,):
            raise ValueError(f"v0 must be a vector of shape ({n},), got shape {tuple(getattr(v0, 'shape', ()))}")
        v = to_numpy(v0).astype(np.float64)
        if not np.all(np.isfinite(v)) or not np.any(v):
            raise ValueError("v0 must be finite and nonzero")
    v = v / np.linalg.norm(v)
    return convert(v, op.backend, None if op.backend == "numpy" else op.device, op.dtype)


class LanczosProcess:
    """The Lanczos recurrence on a real symmetric operator, grown step by step.

    Parameters
    ----------
    A : LinearOperator (or anything :func:`~optkit.linop.aslinearoperator` accepts)
        Real symmetric, shape ``(n, n)``, numpy or torch (CPU or CUDA). Symmetry is assumed,
        not checked (a non-symmetric ``A`` gives meaningless coefficients).
    v0 : array or tensor, shape (n,), optional
        Start vector (normalised here); default a seeded Gaussian vector.
    reorthogonalize : bool
        Full reorthogonalisation (default) or the plain three-term recurrence.
    seed : int
        Seed of the default start vector.
    keep_products : bool
        Keep every matvec ``A q_i`` as well (memory of a second basis), so that Ritz residuals
        ``||A y - θ y||`` are exact without further matvecs.

    Notes
    -----
    One step costs one matvec, ``O(n)`` vector work and, with reorthogonalisation, two passes
    over the basis (``O(n k)``). The basis is kept in either case (the Ritz vectors need it).
    """

    def __init__(
        self, A: Any, *, v0: Any = None, reorthogonalize: bool = True, seed: int = 0, keep_products: bool = False
    ) -> None:
        op = aslinearoperator(A)
        n, m = op.shape
        if n != m or n == 0:
            raise ValueError(f"Lanczos needs a square, non-empty operator, got shape {op.shape}")
        if str(op.dtype).removeprefix("torch.") not in ("float32", "float64"):
            raise ValueError(f"Lanczos needs a real float32 or float64 operator, got dtype {op.dtype}")
        for name, flag in (("reorthogonalize", reorthogonalize), ("keep_products", keep_products)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be true or false, got {flag!r}")
        self.op, self.reorthogonalize = op, reorthogonalize
        q0 = _start_vector(op, v0, check_int("seed", seed, 0))
        # the basis as the rows of one (capacity, n) array, doubled when full: each vector is
        # contiguous, and nothing is re-stacked per step
        self._Q = self._zeros(min(n, 16))
        self._Q[0] = q0
        self._W = self._zeros(min(n, 16)) if keep_products else None
        self._vectors = 1
        self._alpha: list[float] = []
        self._beta: list[float] = []
        self.breakdown = False

    @property
    def steps(self) -> int:
        return len(self._alpha)

    def _zeros(self, rows: int) -> Any:
        op = self.op
        device = None if op.backend == "numpy" else op.device
        return op.xp.zeros((rows, op.shape[0]), dtype=op.dtype, device=device)

    def _append(self, q: Any) -> None:
        if self._vectors == self._Q.shape[0]:
            grown = self._zeros(min(self.op.shape[0], 2 * self._vectors))
            grown[: self._vectors] = self._Q
            self._Q = grown
            if self._W is not None:
                products = self._zeros(grown.shape[0])
                products[: self._vectors] = self._W
                self._W = products
        self._Q[self._vectors] = q
        self._vectors += 1

    def extend(self, steps: int) -> LanczosResult:
        """Take up to ``steps`` more steps (fewer at a breakdown or at ``n`` steps); the decomposition so far."""
        self.advance(steps)
        return self.result()

    def tridiagonal(self) -> LanczosResult:
        """The coefficients so far without the basis (``basis`` and ``products`` None): enough
        for the Ritz values and their residual estimates, and copies nothing."""
        return LanczosResult(np.array(self._alpha), np.array(self._beta), None, self.steps, self.breakdown)

    def advance(self, steps: int) -> None:
        """Take up to ``steps`` more steps (fewer at a breakdown or at ``n`` steps)."""
        check_int("steps", steps, 0)
        n = self.op.shape[0]
        eps = float(np.finfo(np.float32 if "32" in str(self.op.dtype) else np.float64).eps)
        for _ in range(steps):
            if self.breakdown or self.steps >= n:
                break
            k = self.steps
            q = self._Q[k]
            w = self.op.matvec(q)
            if self._W is not None:
                self._W[k] = w
            alpha = float(q @ w)
            if self.reorthogonalize:
                # two Gram-Schmidt passes against the whole basis, q_k and q_(k-1) included, do
                # the three-term recurrence's subtractions too
                Q = self._Q[: k + 1]
                for _ in range(2):
                    w = w - (Q @ w) @ Q
            else:
                w = w - alpha * q
                if self._beta:
                    w = w - self._beta[-1] * self._Q[k - 1]
            beta = math.sqrt(float(w @ w))
            self._alpha.append(alpha)
            self._beta.append(beta)
            scale = max(abs(alpha), beta, abs(self._beta[-2]) if len(self._beta) > 1 else 0.0)
            if beta <= 10 * n * eps * scale:
                self._beta[-1] = 0.0
                self.breakdown = True
            elif self.steps < n:
                self._append(w / beta)

    def result(self) -> LanczosResult:
        """The decomposition after the steps taken so far (the basis is a copy)."""
        k = self.steps
        xp = self.op.xp
        basis = xp.asarray(self._Q[:k].T, copy=True) if k else None
        products = xp.asarray(self._W[:k].T, copy=True) if k and self._W is not None else None
        return LanczosResult(np.array(self._alpha), np.array(self._beta), basis, k, self.breakdown, products)


def lanczos(A: Any, k: int, *, v0: Any = None, reorthogonalize: bool = True, seed: int = 0) -> LanczosResult:
    """``k`` steps of Lanczos on the symmetric ``A`` (fewer if the Krylov space becomes invariant).

    Parameters
    ----------
    A : LinearOperator or array, shape (n, n)
        Real symmetric; numpy or torch.
    k : int
        ``1 <= k <= n``.
    v0, reorthogonalize, seed :
        As :class:`LanczosProcess`.

    Returns
    -------
    LanczosResult
    """
    process = LanczosProcess(A, v0=v0, reorthogonalize=reorthogonalize, seed=seed)
    n = process.op.shape[0]
    k = check_int("k", k, 1)
    if k > n:
        raise ValueError(f"k must be at most n = {n} (the operator's size), got {k}")
    return process.extend(k)
