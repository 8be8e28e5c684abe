"""Parts of :mod:`optkit.saddle_point`: ``B_rho^{-1}`` and the MINRES monitor.

``B_rho = B + J^T J / w`` (``w = 1/rho + delta_c``) is applied by :class:`Factor` (exact) or
:class:`Nystrom` (randomized); both raise :class:`NotPositiveDefinite` when they find ``B_rho``
is not positive definite, and have ``solve(V)`` (``(n,)`` or ``(n, k)``), ``grow()`` and ``rank``.
:class:`Monitor` is MINRES's callback: it stops refinement passes on the true residual.
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = ["PASS_DECREASE", "PASS_RTOL", "Factor", "Monitor", "NotPositiveDefinite", "Nystrom"]

#: MINRES's own tolerance in a refinement pass, relative to the pass's first residual in the ``P^{-1}``-norm.
PASS_RTOL = 1e-14
#: A pass that does not bring the true residual to PASS_DECREASE times its start stalls the solve.
PASS_DECREASE = 0.5


class NotPositiveDefinite(Exception):
    """``B_rho`` is not positive definite."""


class Factor:
    """Exact ``B_rho^{-1}``: dense Cholesky or sparse SuperLU with symmetric ordering."""

    rank = None

    def __init__(self, B, J, weight: float) -> None:
        if sp.issparse(B) or sp.issparse(J):
            B_rho = sp.csc_array(sp.csr_array(B) + sp.csr_array(J).T @ sp.csr_array(J) / weight)
            try:
                # no row pivoting (diag_pivot_thresh=0, symmetric mode): U's diagonal holds the pivots of
                # an LDL^T factorisation, all positive exactly when B_rho is positive definite (Sylvester)
                lu = spla.splu(
                    B_rho, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
                )
            except RuntimeError as err:
                raise NotPositiveDefinite(f"B_rho is singular ({err})") from None
            pivots = lu.U.diagonal()
            if not (np.array_equal(lu.perm_r, lu.perm_c) and np.all(pivots > 0)):
                raise NotPositiveDefinite(f"B_rho has {int(np.sum(pivots <= 0))} non-positive pivots (or a zero one)")
            self.solve = lu.solve
        else:
            try:
                factor = sla.cho_factor(B + (J.T @ J) / weight, lower=True, check_finite=False)
            except np.linalg.LinAlgError as err:
                raise NotPositiveDefinite(f"the Cholesky factorisation of B_rho failed ({err})") from None
            self.solve = lambda V: sla.cho_solve(factor, V, check_finite=False)

    def grow(self) -> bool:
        return False


class Nystrom:
    """Randomized Nystrom approximation ``B_rho ~ U diag(lam) U^T`` and its preconditioner inverse.

    Stable shifted version (Frangella, Tropp & Udell 2023, Algorithm 2.1): ``Q = qr(Omega)``,
    ``Y = B_rho Q + nu Q`` with ``nu = sqrt(n) eps ||Y||_F``, ``C = chol(Q^T Y)``,
    ``U S V^T = svd(Y C^{-1})``, ``lam = max(S^2 - nu, 0)``. Applied as

        B_rho^{-1} ~ U (diag(lam) + mu I)^{-1} U^T + (I - U U^T) / (lam_l + mu),   mu = nu,

    the paper's ``P^{-1}`` divided by ``lam_l + mu``: the block preconditioner needs ``B_rho``'s
    own scale next to ``w I``. ``mu = nu`` keeps it positive definite; the sketch resolves no
    eigenvalue below ``nu``. The raw products ``B_rho Omega`` are kept, so doubling the rank
    costs only the new columns.
    """

    def __init__(self, B, J, weight: float, rank: int, rng: np.random.Generator) -> None:
        self._B, self._J, self._weight, self._rng = B, J, weight, rng
        self.n = B.shape[0]
        self._omega = np.empty((self.n, 0))
        self._products = np.empty((self.n, 0))
        self.rank = 0
        self._extend(min(rank, self.n))

    def _apply(self, V: np.ndarray) -> np.ndarray:
        return self._B @ V + self._J.T @ (self._J @ V) / self._weight

    def _extend(self, rank: int) -> None:
        new = self._rng.standard_normal((self.n, rank - self.rank))
        omega = np.hstack([self._omega, new])
        products = np.hstack([self._products, np.asarray(self._apply(new))])
        Q, R = np.linalg.qr(omega)
        Y = sla.solve_triangular(R, products.T, trans="T").T  # B_rho Q = (B_rho Omega) R^{-1}
        if not np.all(np.isfinite(Y)):
            raise NotPositiveDefinite("the Nystrom sketch B_rho @ Omega is not finite")
        shift = math.sqrt(self.n) * np.finfo(float).eps * float(np.linalg.norm(Y))
        Y += shift * Q
        core = Q.T @ Y
        try:
            C = sla.cholesky((core + core.T) / 2, lower=False, check_finite=False)
        except np.linalg.LinAlgError:
            raise NotPositiveDefinite("Q^T B_rho Q of the Nystrom sketch is not positive definite") from None
        U, S, _ = np.linalg.svd(sla.solve_triangular(C, Y.T, trans="T").T, full_matrices=False)
        lam = np.maximum(S**2 - shift, 0.0)
        mu = max(shift, np.finfo(float).tiny)
        self._omega, self._products, self.rank = omega, products, rank
        self._U, self._inv = U, 1.0 / (lam + mu)
        self._tail = 1.0 / (lam[-1] + mu)

    def solve(self, V: np.ndarray) -> np.ndarray:
        coeffs = self._U.T @ V
        scale = (self._inv - self._tail)[:, None] if V.ndim == 2 else self._inv - self._tail
        return self._tail * V + self._U @ (scale * coeffs)

    def grow(self) -> bool:
        """Double the rank (up to n); False when it is already n."""
        if self.rank >= self.n:
            return False
        self._extend(min(2 * self.rank, self.n))
        return True


class Monitor:
    """MINRES's callback in refinement passes: stop on the true residual ``||K z - b|| <= rtol ||b||`` or the deadline.

    A pass from the best iterate ``z0`` solves ``K dz = r0 = b - K z0`` from ``dz = 0``, so MINRES's
    own tolerance (:data:`PASS_RTOL`, in the ``P^{-1}``-norm) is relative to ``r0``: each pass can
    gain that many digits, however far the ``P^{-1}``-norm is from the 2-norm. Keeps the iterate
    with the smallest true residual (under a poor low-rank Nystrom preconditioner it can grow).
    """

    def __init__(self, K, b: np.ndarray, rtol: float, deadline: float | None, z: np.ndarray) -> None:
        self.K, self.b, self.rtol, self.deadline = K, b, rtol, deadline
        self.b_norm = float(np.linalg.norm(b))
        self.timed_out = self.nonfinite = False
        self.best_z = z.copy()
        self.best = self.pass_start = float(np.linalg.norm(K @ z - b)) / self.b_norm

    def start_pass(self) -> np.ndarray:
        """``r0 = b - K z0`` for a pass from the best iterate ``z0``."""
        self.base, self.pass_start = self.best_z.copy(), self.best
        self.r0 = self.b - self.K @ self.base
        return self.r0

    def improved(self) -> bool:
        """Whether this pass lowered the best true residual to ``PASS_DECREASE`` times its start or below."""
        return self.best <= PASS_DECREASE * self.pass_start

    def past_deadline(self) -> bool:
        self.timed_out = self.timed_out or (self.deadline is not None and time.perf_counter() >= self.deadline)
        return self.timed_out

    def __call__(self, dz: np.ndarray) -> bool:
        if self.past_deadline():
            return True
        z = self.base + dz
        # from z itself, not K dz - r0: that one differs by the rounding of r0, eps ||K|| ||z0||
        residual = float(np.linalg.norm(self.K @ z - self.b)) / self.b_norm
        if not math.isfinite(residual):
            self.nonfinite = True
            return True
        if residual < self.best:
            self.best_z, self.best = z, residual
        return residual <= self.rtol
