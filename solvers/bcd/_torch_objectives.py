"""The dense objectives of ``bcd`` on torch: the heavy tensors on the problem's device, the rules on the host.

Same interface and semantics as :class:`~._objectives.LinearModelObjective` (dense ``A``) and
:class:`~._objectives.SoftmaxObjective`; only where things live differs:

* on the problem's device, in its dtype: ``A`` (as given, row-major: torch's CPU products
  ``A^T u`` and ``R^T A`` run 20-25% faster on it than on a column-major copy, and no copy is
  made), the predictions ``z`` (softmax: the logits ``(N, k)``), ``u = L'(z)`` and the softmax
  residual ``P - Y``;
* on the host, numpy float64: the iterate ``x``, the full gradient ``g`` and every ``(b, b)``
  matrix (``bound_matrix``, ``hessian``), so the rules of :mod:`.selection` and :mod:`.updates`
  run unchanged on ``np.*``.

Transfers per block update (``update``): to the device the block's indices and its ``delta``
(``b`` numbers; softmax: the ``(b, k)`` scatter of ``delta`` into classes), back to the host
the full gradient (``n`` numbers; softmax: its data part, ``k n``) and ``f`` (one scalar).
Each is one synchronisation of ``O(n)`` bytes against the update's ``O(m n)`` (linear model,
two GEMVs) or ``O(N k n)`` (softmax, a GEMM) of device work, and the greedy rules need all of
``g`` on the host every iteration anyway. ``change`` (line searches) sends ``delta`` and
returns one scalar; ``bound_matrix`` and ``hessian`` return ``b^2`` numbers, formed once per
fixed block (cached by the rules) or once per step.
"""

from __future__ import annotations

import numpy as np
import torch

from ._objectives import Objective, gram_abs_row_sums, row_derivative, row_loss
from ._softmax_objective import SoftmaxObjective

__all__ = ["TorchLinearModelObjective", "TorchSoftmaxObjective"]


def _host(tensor: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy of ``tensor`` (one device-to-host transfer)."""
    return tensor.detach().to("cpu", torch.float64).numpy()


class _TorchObjective(Objective):
    """Moves indices and vectors to the objective's device and dtype."""

    device: torch.device
    dtype: torch.dtype

    def _index(self, block: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(block, dtype=torch.int64, device=self.device)

    def _vector(self, values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=self.dtype, device=self.device)


# ------------------------------------------------------------------ least squares and logistic


class TorchLinearModelObjective(_TorchObjective):
    """:class:`~._objectives.LinearModelObjective` for a dense torch ``A``: least squares or logistic.

    Parameters
    ----------
    A : torch.Tensor, shape (m, n), dense (strided), floating
        On the device and in the dtype the work runs in.
    target : torch.Tensor or ndarray (m,)
        Moved to ``A``'s device and dtype.
    kind : {"quadratic", "logistic"}
    x0 : ndarray (n,), float64

    Notes
    -----
    ``x`` and ``g`` are numpy float64 (``g`` computed on the device, copied once per
    update); ``z`` and ``u`` are tensors on the device. ``dual_point`` returns ``u`` on the
    device, where the problem's datafit (which takes it) lives.
    """

    sparse = False

    def __init__(self, A: torch.Tensor, target, kind: str, x0: np.ndarray) -> None:
        self.kind = kind
        self.is_quadratic = kind == "quadratic"
        self.device, self.dtype = A.device, A.dtype
        self.A = A.contiguous()
        self.m = int(A.shape[0])
        self.t = torch.as_tensor(target, device=self.device).to(self.dtype)
        self.curvature = (1.0 if self.is_quadratic else 0.25) / self.m
        self.x = np.array(x0, dtype=np.float64)
        self.z = self.A @ self._vector(self.x)
        self.u = row_derivative(kind, self.z, self.t) / self.m
        self._g = self.A.T @ self.u
        self.g = _host(self._g)
        self._bound_norm = None
        self._value = None

    def _gram(self, block: np.ndarray, weights: torch.Tensor | None = None) -> np.ndarray:
        """``A_b^T diag(weights) A_b`` (b, b), formed on the device."""
        Ab = self.A[:, self._index(block)]
        return _host((Ab.T if weights is None else Ab.T * weights) @ Ab)

    def _dz(self, block: np.ndarray, delta: np.ndarray) -> torch.Tensor:
        """``A_b delta`` (m,) on the device."""
        return self.A[:, self._index(block)] @ self._vector(delta)

    def change(self, block: np.ndarray, delta: np.ndarray) -> float:
        """``f(x + delta on block) - f(x)`` (nothing is updated)."""
        z_new = self.z + self._dz(block, delta)
        return float((row_loss(self.kind, z_new, self.t) - row_loss(self.kind, self.z, self.t)).sum()) / self.m

    def update(self, block: np.ndarray, delta: np.ndarray) -> None:
        """``x[block] += delta``, keeping ``z``, ``u`` and ``g`` exact: two GEMVs on the device."""
        self.z += self._dz(block, delta)
        u_new = row_derivative(self.kind, self.z, self.t) / self.m
        self._g += self.A.T @ (u_new - self.u)
        self.u = u_new
        self.x[block] += delta
        self.g = _host(self._g)
        self._value = None

    def coordinate_lipschitz(self) -> np.ndarray:
        return self.curvature * _host((self.A * self.A).sum(dim=0))

    def bound_matrix(self, block: np.ndarray) -> np.ndarray:
        return self.curvature * self._gram(block)

    def hessian(self, block: np.ndarray) -> np.ndarray:
        if self.is_quadratic:
            return self.bound_matrix(block)
        zero = torch.zeros_like(self.z)
        s = torch.exp(-torch.logaddexp(zero, self.z) - torch.logaddexp(zero, -self.z))  # sigma(z) sigma(-z)
        return self._gram(block, s) / self.m

    def bound_matvec(self, v: np.ndarray) -> np.ndarray:
        return self.curvature * _host(self.A.T @ (self.A @ self._vector(v)))

    def bound_abs_row_sums(self) -> np.ndarray:
        return self.curvature * gram_abs_row_sums(self.A)

    def value(self) -> float:
        """``f(x)`` from ``z``, one scalar to the host per update (kept until the next one)."""
        if self._value is None:
            self._value = float(row_loss(self.kind, self.z, self.t).sum()) / self.m
        return self._value

    def dual_point(self) -> torch.Tensor:
        """``u = L'(z)`` (with the ``1/m``) on the device."""
        return self.u

    def recomputed(self) -> dict:
        """``z`` (device), ``g`` (numpy) and ``f`` formed from scratch at ``x`` (for checks)."""
        z = self.A @ self._vector(self.x)
        g = self.A.T @ (row_derivative(self.kind, z, self.t) / self.m)
        return {"z": z, "g": _host(g), "f": float(row_loss(self.kind, z, self.t).sum()) / self.m}


# ------------------------------------------------------------------ softmax


class TorchSoftmaxObjective(_TorchObjective, SoftmaxObjective):
    """:class:`~._softmax_objective.SoftmaxObjective` with the rows ``A``, the logits and ``P - Y`` on the device.

    Parameters
    ----------
    A : torch.Tensor (N, n), dense, floating
        The rows (with the ones column when ``bias``); sets the device and dtype.
    y : torch.Tensor or ndarray (N,), integer labels
    n_classes : int
    lam : float
    bias : bool
    x0 : ndarray (k n,), float64

    Notes
    -----
    The arithmetic is :class:`SoftmaxObjective`'s; only its four placement hooks differ.
    ``x = W.ravel()`` and ``g`` are numpy float64: the data part of the gradient
    ``(P - Y)^T A / N`` (k, n) is formed on the device and copied to the host once per update.
    """

    def _prepare(self, A: torch.Tensor) -> torch.Tensor:
        self.device, self.dtype = A.device, A.dtype
        return A.contiguous()

    def _device(self, values: np.ndarray) -> torch.Tensor:
        return self._vector(values)

    def _host(self, array: torch.Tensor) -> np.ndarray:
        return _host(array)

    def _indices(self, index) -> torch.Tensor:
        return torch.as_tensor(index, device=self.device).to(torch.int64)
