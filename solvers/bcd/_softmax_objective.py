"""The softmax objective of ``bcd``, written once for numpy and (through four hooks) torch.

Mean cross-entropy of ``softmax(A W^T)`` plus ``lam/2 ||W_r||_F^2``, ``x = W.ravel()`` with
``W`` of shape (k, n). A block update changes the logits of every row, hence every row's
probabilities, so the gradient ``(P - Y)^T A / N`` is re-formed from the maintained logits:
``O(N k n)`` per update, the price of a full gradient (no cheaper update exists).

The arithmetic goes through the array namespace of ``A`` (:func:`optkit.backend.get_namespace`);
where the arrays live is decided by four hooks, :meth:`SoftmaxObjective._device`,
:meth:`~SoftmaxObjective._host`, :meth:`~SoftmaxObjective._indices` and
:meth:`~SoftmaxObjective._prepare`, which are identities here and move data to and from the
device in :class:`~._torch_objectives.TorchSoftmaxObjective`. The iterate ``x``, the gradient
``g`` and every ``(b, b)`` matrix are numpy float64 on the host either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optkit.backend import get_namespace

from ._objectives import Objective, gram_abs_row_sums

__all__ = ["SoftmaxObjective"]


class SoftmaxObjective(Objective):
    """Mean cross-entropy of ``softmax(A W^T)`` plus ``lam/2 ||W_r||_F^2``; ``x = W.ravel()``, ``W`` (k, n).

    Parameters
    ----------
    A : ndarray (N, n)
        Dense rows (with the ones column already appended when ``bias``).
    y : int array (N,)
    n_classes : int
    lam : float
    bias : bool
        The last column of ``W`` holds unregularised intercepts.
    x0 : ndarray (k n,)

    Notes
    -----
    Coordinate ``i = c n + j`` is ``W[c, j]``. ``L_i = ||a_j||^2 / (4 N) + lam_j``: the
    diagonal Hessian entry is ``(1/N) sum p_c (1 - p_c) a_j^2`` and ``p (1 - p) <= 1/4``.
    ``H_b`` is the block of Bohning's bound ``(1/2)(I_k - 1 1^T / k) (x) A^T A / N + lam``,
    which dominates the Hessian ``(1/N) sum (diag(p) - p p^T) (x) a a^T`` everywhere (so its
    diagonal, ``(1 - 1/k)/2 ||a_j||^2/N``, exceeds ``L_i`` when ``k > 2``).
    """

    def __init__(self, A: Any, y: Any, n_classes: int, lam: float, bias: bool, x0: np.ndarray) -> None:
        self.A = self._prepare(A)
        self.xp = get_namespace(self.A)
        self.N, self.width = (int(d) for d in self.A.shape)
        self.k = int(n_classes)
        self.lam = float(lam)
        self.mask = np.ones(self.width)
        if bias:
            self.mask[-1] = 0.0
        self.labels = self._indices(y)
        self._rows = self._indices(np.arange(self.N))
        self.x = np.array(x0, dtype=np.float64)
        self.z = self.A @ self._device(self._W()).T
        self._refresh()
        self._bound_norm = None

    # ------------------------------------------------------------------ where the arrays live

    def _prepare(self, A: Any) -> Any:
        """``A`` as the objective keeps it (numpy: C-contiguous float64)."""
        return np.ascontiguousarray(A, dtype=np.float64)

    def _device(self, values: np.ndarray) -> Any:
        """Host numbers as an array next to ``A``."""
        return values

    def _host(self, array: Any) -> np.ndarray:
        """An array next to ``A`` as host numpy float64."""
        return np.asarray(array, dtype=np.float64)

    def _indices(self, index: Any) -> Any:
        """Integer indices usable on ``A``'s arrays."""
        return np.asarray(index, dtype=np.int64)

    # ------------------------------------------------------------------ the objective

    def _W(self) -> np.ndarray:
        return self.x.reshape(self.k, self.width)

    def value(self) -> float:
        """``f(x)``, formed from the logits at the last update."""
        return self._value

    def _loss(self, Z: Any, W: np.ndarray) -> tuple[float, Any]:
        xp = self.xp
        top = xp.max(Z, axis=1)
        lse = top + xp.log(xp.sum(xp.exp(Z - top[:, None]), axis=1))
        data = float(xp.mean(lse - Z[self._rows, self.labels]))
        Wr = W * self.mask
        return data + 0.5 * self.lam * float((Wr * Wr).sum()), lse

    def _gradient(self, Z: Any, lse: Any, W: np.ndarray) -> tuple[Any, np.ndarray]:
        """The residual ``P - Y`` (N, k) next to ``A`` and the full gradient (k n,) on the host."""
        R = self.xp.exp(Z - lse[:, None])
        R[self._rows, self.labels] -= 1.0
        return R, (self._host(R.T @ self.A) / self.N + self.lam * W * self.mask).ravel()

    def _refresh(self) -> None:
        W = self._W()
        self._value, lse = self._loss(self.z, W)
        self._residual, self.g = self._gradient(self.z, lse, W)

    def _logit_change(self, block: np.ndarray, delta: np.ndarray) -> Any:
        classes, columns = np.divmod(block, self.width)
        scatter = np.zeros((block.shape[0], self.k))
        scatter[np.arange(block.shape[0]), classes] = delta
        return self.A[:, self._indices(columns)] @ self._device(scatter)

    def change(self, block: np.ndarray, delta: np.ndarray) -> float:
        W = self._W().copy()
        W.ravel()[block] += delta
        value, _ = self._loss(self.z + self._logit_change(block, delta), W)
        return value - self._value

    def update(self, block: np.ndarray, delta: np.ndarray) -> None:
        """``x[block] += delta``: the logits by a rank-``b`` product, then ``P`` and the gradient (one GEMM)."""
        self.z = self.z + self._logit_change(block, delta)
        self.x[block] += delta
        self._refresh()

    # ------------------------------------------------------------------ curvature

    def coordinate_lipschitz(self) -> np.ndarray:
        squares = self._host(self.xp.sum(self.A * self.A, axis=0))
        return np.tile(0.25 * squares / self.N + self.lam * self.mask, self.k)

    def _regulariser(self, block: np.ndarray) -> np.ndarray:
        return np.diag(self.lam * self.mask[block % self.width])

    def bound_matrix(self, block: np.ndarray) -> np.ndarray:
        classes, columns = np.divmod(block, self.width)
        Ab = self.A[:, self._indices(columns)]
        coupling = 0.5 * ((classes[:, None] == classes[None, :]) - 1.0 / self.k)
        return coupling * self._host(Ab.T @ Ab) / self.N + self._regulariser(block)

    def hessian(self, block: np.ndarray) -> np.ndarray:
        classes, columns = np.divmod(block, self.width)
        Ab = self.A[:, self._indices(columns)]
        P = self._residual + 0.0
        P[self._rows, self.labels] += 1.0  # back from P - Y to P
        weighted = Ab * P[:, self._indices(classes)]
        same = classes[:, None] == classes[None, :]
        data = same * self._host(weighted.T @ Ab) - self._host(weighted.T @ weighted)
        return data / self.N + self._regulariser(block)

    def bound_matvec(self, v: np.ndarray) -> np.ndarray:
        V = v.reshape(self.k, self.width)
        centred = self._device(V - V.mean(axis=0, keepdims=True))
        data = self._host((centred @ self.A.T) @ self.A)
        return (0.5 * data / self.N + self.lam * V * self.mask).ravel()

    def bound_abs_row_sums(self) -> np.ndarray:
        # sum over classes of |(delta_cc' - 1/k) / 2| is (k - 1) / k; the diagonal's lam adds
        row = (1.0 - 1.0 / self.k) * gram_abs_row_sums(self.A) / self.N + self.lam * self.mask
        return np.tile(row, self.k)

    def recomputed(self) -> dict[str, Any]:
        """The logits ``z`` (next to ``A``), ``g`` and ``f`` formed from scratch at ``x`` (for checks)."""
        W = self._W()
        Z = self.A @ self._device(W).T
        value, lse = self._loss(Z, W)
        _, g = self._gradient(Z, lse, W)
        return {"z": Z, "g": g, "f": value}
