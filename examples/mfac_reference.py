"""The published M-FAC algorithms re-implemented in plain torch, as a test oracle and a benchmark anchor.

Not part of the optkit package: ``tests/solvers/test_mfac_reference.py`` and
``examples/mfac_step_cost.py`` import it. It follows the reference code of Frantar, Kurtic and
Alistarh (``IST-DASLab/M-FAC``, MIT: ``optim.py`` and ``prun.py``) on its CPU path, without the
CUDA kernels or the splitting of the buffer across GPUs, and keeps its semantics:

* :class:`DynamicInverse` is ``HInvFastUpMulti``: a ring buffer ``G`` (m, d) of gradients and its
  Gram matrix ``G Gᵀ``; ``setup`` factorises ``Gram / damp + m I`` by LU *without pivoting*, keeps
  ``D = triu(U - m I)`` and the denominators ``m + diag(D)``, and rebuilds the coefficient matrix
  ``B`` row by row from the row being replaced (the rows above it do not change); ``mul`` runs the
  forward elimination; ``update`` and ``update_mul`` replace the oldest row (``update_mul`` before
  multiplying by the new gradient).
* :class:`ReferenceMFAC` is the reference optimizer's step: weight decay added to the gradient,
  the gradient inserted into a zero-initialised window, ``u = F⁻¹ g``, momentum
  ``v = mu v + (1 - mu) u``, ``w -= lr u``, exactly-zero weights frozen with ``sparse``.
* :class:`StaticBatchInverse` is ``HInvFastBatch`` (the static algorithm on a batch of blocks:
  ``v_i = F_{i-1}⁻¹ g_i`` and ``m + g_iᵀ v_i`` by recursion, ``mul``, ``diag``) and
  :class:`StaticBlockInverse` is ``HInvFastBlock`` on one device (contiguous blocks, last shorter).
* :class:`DenseWoodbury` is ``HInvSlow``: the dense (d, d) inverse by m Sherman-Morrison updates.

Every inverse is of ``F = damp I + (1/m) sum_i g_i g_iᵀ`` over the m rows of the window.

Where this differs from running the reference itself (checked with torch 2.13 on the CPU):

* ``setup`` calls ``torch.lu(A, pivot=False)``, deprecated since torch 1.13 in favour of
  ``torch.linalg.lu_factor``. Both accept ``pivot=False`` on CUDA only; on the CPU they raise
  "LU without pivoting is not implemented on the CPU", so the reference's CPU path never ran.
  :func:`lu_without_pivoting` is a Doolittle loop of m vectorised rank-1 updates, on any device
  (the matrix is symmetric positive definite, so every pivot is at least m).
* The reference's guard ``if USE_CUDA and m % 32 != 0 or m > 1024`` parses as
  ``(USE_CUDA and m % 32 != 0) or m > 1024``: without its CUDA extension it still rejects m > 1024
  (``HInvFastUpMulti(torch.zeros((1025, 10)), dev="cpu", gpus=["cpu"])`` raises ``ValueError``).
  Here any m >= 1 is accepted.
* The reference optimizer always holds its window in float32; here ``dtype`` chooses (float64 in
  the tests), and the gradient is cast to it.
* ``HInvFastBatch`` overwrites the gradients it is given with the ``v_i``; here they are copied.
  :class:`DynamicInverse` does use the tensor it is given as its buffer, as the reference does on
  one device.
"""

from __future__ import annotations

import torch


def lu_without_pivoting(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LU factors of a square matrix with no row exchanges (Doolittle).

    Parameters
    ----------
    a : torch.Tensor, shape (n, n), floating, any device
        A matrix whose leading principal minors are all non-zero (here: symmetric positive definite).

    Returns
    -------
    lower, upper : torch.Tensor, shape (n, n)
        ``lower`` unit lower triangular, ``upper`` upper triangular, ``lower @ upper == a``.
    """
    n = a.shape[0]
    packed = a.clone()
    for k in range(n - 1):
        packed[k + 1 :, k] /= packed[k, k]
        packed[k + 1 :, k + 1 :].addr_(packed[k + 1 :, k], packed[k, k + 1 :], alpha=-1)
    eye = torch.eye(n, dtype=a.dtype, device=a.device)
    return torch.tril(packed, -1) + eye, torch.triu(packed)


class DynamicInverse:
    """``HInvFastUpMulti``: F⁻¹ of a sliding window of gradients, updated one row at a time.

    Parameters
    ----------
    grads : torch.Tensor, shape (m, d), floating, any device
        The initial window; used as the ring buffer itself (not copied). The reference optimizer
        starts from zeros.
    damp : float
        The damping ``damp`` of ``F``.

    Attributes
    ----------
    grads : (m, d) the window ``G``. dots : (m, m) ``G Gᵀ``. last : int, the row replaced next.
    giHig : (m, m) ``D``, upper triangular, ``D[i, j] = g_iᵀ F_{i-1}⁻¹ g_j`` (j >= i) with
    ``F_{i-1}`` the damped Fisher of rows ``< i``. denom : (m,) ``m + diag(D)``.
    coef : (m, m) ``B``, lower triangular, ``v_i = F_{i-1}⁻¹ g_i = sum_k B[i, k] g_k``.
    """

    def __init__(self, grads: torch.Tensor, damp: float = 1e-5):
        self.m, self.d = grads.shape
        self.lambd = 1.0 / damp
        self.grads = grads
        self.dots = grads @ grads.T
        self.last = 0
        self.coef = self.lambd * torch.eye(self.m, dtype=grads.dtype, device=grads.device)
        self.setup()

    def setup(self) -> None:
        """Recompute ``D``, the denominators and the rows of ``B`` from ``last`` on: O(m³)."""
        shift = self.m * torch.eye(self.m, dtype=self.dots.dtype, device=self.dots.device)
        _, upper = lu_without_pivoting(self.lambd * self.dots + shift)
        self.giHig = torch.triu(upper - shift)
        self.denom = self.m + torch.diagonal(self.giHig)
        # tmp[i, k] = -D[k, i] / denom[k]: minus the weight of v_k in v_i
        tmp = -self.giHig.T / self.denom.reshape(1, -1)
        for i in range(max(self.last, 1), self.m):
            self.coef[i, :i] = tmp[i, :i] @ self.coef[:i, :i]

    def mul(self, x: torch.Tensor, dots: torch.Tensor | None = None) -> torch.Tensor:
        """F⁻¹ x for x of shape (d,); ``dots`` is ``G x`` when the caller has it. O(dm + m²)."""
        if dots is None:
            dots = self.grads @ x
        # forward elimination: entry i becomes g_iᵀ F_{i-1}⁻¹ x = v_iᵀ x
        proj = self.lambd * dots
        for i in range(1, self.m):
            proj[i:] -= self.giHig[i - 1, i:] * (proj[i - 1] / self.denom[i - 1])
        return self.lambd * x - ((proj / self.denom) @ self.coef) @ self.grads

    def _insert(self, g: torch.Tensor) -> torch.Tensor:
        self.grads[self.last] = g
        dots = self.grads @ g
        self.dots[self.last, :] = dots
        self.dots[:, self.last] = dots
        self.setup()
        return dots

    def update(self, g: torch.Tensor) -> None:
        """Replace the oldest row of the window with ``g`` (d,)."""
        self._insert(g)
        self.last = (self.last + 1) % self.m

    def update_mul(self, g: torch.Tensor) -> torch.Tensor:
        """Replace the oldest row with ``g`` (d,), then return F⁻¹ g on the new window."""
        dots = self._insert(g)
        result = self.mul(g, dots)
        self.last = (self.last + 1) % self.m
        return result


class ReferenceMFAC:
    """The reference optimizer's step (``optim.py::MFAC``) on a list of parameters.

    Parameters
    ----------
    params : iterable of torch.Tensor
        The parameters, all on one device; their gradients are concatenated in this order.
    lr, momentum, weight_decay, num_grads, damp, sparse
        As the reference's ``lr``, ``momentum``, ``weight_decay``, ``ngrads``, ``damp``, ``sparse``.
    dtype : torch.dtype
        The window's dtype (the reference: always float32).
    grads : torch.Tensor, shape (num_grads, number of optimised weights), optional
        An initial window, used as the buffer; zeros (the reference) when omitted.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        num_grads: int = 1024,
        damp: float = 1e-5,
        sparse: bool = False,
        dtype: torch.dtype = torch.float32,
        grads: torch.Tensor | None = None,
    ):
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay, self.sparse = lr, momentum, weight_decay, sparse
        with torch.no_grad():
            w = torch.cat([p.reshape(-1) for p in self.params])
        self.nweights = w.numel()
        if sparse:
            self.mask = w != 0
            w = w[self.mask]
        device = w.device
        if momentum > 0:
            self.v = torch.zeros(w.numel(), dtype=dtype, device=device)
        if grads is None:
            grads = torch.zeros((num_grads, w.numel()), dtype=dtype, device=device)
        self.hinv = DynamicInverse(grads, damp=damp)

    @torch.no_grad()
    def step(self) -> None:
        """One step from the parameters' ``.grad``."""
        parts = []
        for p in self.params:
            grad = p.grad + self.weight_decay * p if self.weight_decay > 0 else p.grad
            parts.append(grad.reshape(-1))
        g = torch.cat(parts).to(self.hinv.grads.dtype)
        if self.sparse:
            g = g[self.mask]
        update = self.hinv.update_mul(g)
        if self.momentum > 0:
            self.v = self.momentum * self.v + (1 - self.momentum) * update
            update = self.v
        if self.sparse:
            expanded = torch.zeros(self.nweights, dtype=update.dtype, device=update.device)
            expanded[self.mask] = update
            update = expanded
        offset = 0
        for p in self.params:
            p.add_(update[offset : offset + p.numel()].reshape(p.shape), alpha=-self.lr)
            offset += p.numel()


class StaticBatchInverse:
    """``HInvFastBatch``: the static algorithm on b blocks at once.

    Parameters
    ----------
    grads : torch.Tensor, shape (b, m, d), floating, any device
        The m gradients of each block (copied).
    damp : float

    Attributes
    ----------
    Hg : (b, m, d) ``v_i = F_{i-1}⁻¹ g_i`` of each block. denom : (b, m) ``m + g_iᵀ v_i``.
    """

    def __init__(self, grads: torch.Tensor, damp: float = 1e-5):
        self.b, self.m, self.d = grads.shape
        self.lambd = 1.0 / damp
        self.Hg = torch.empty_like(grads)
        self.denom = torch.zeros((self.b, self.m), dtype=grads.dtype, device=grads.device)
        for i in range(self.m):
            g = grads[:, i, :]
            v = self.lambd * g
            if i > 0:
                previous = self.Hg[:, :i, :]
                weights = torch.einsum("bkd,bd->bk", previous, g) / self.denom[:, :i]
                v = v - torch.einsum("bk,bkd->bd", weights, previous)
            self.Hg[:, i, :] = v
            self.denom[:, i] = self.m + torch.einsum("bd,bd->b", g, v)

    def mul(self, x: torch.Tensor) -> torch.Tensor:
        """F⁻¹ x blockwise, x of shape (b, d)."""
        weights = torch.einsum("bkd,bd->bk", self.Hg, x) / self.denom
        return self.lambd * x - torch.einsum("bk,bkd->bd", weights, self.Hg)

    def diag(self) -> torch.Tensor:
        """diag(F⁻¹) of each block, shape (b, d)."""
        result = torch.full((self.b, self.d), self.lambd, dtype=self.Hg.dtype, device=self.Hg.device)
        for i in range(self.m):
            result -= self.Hg[:, i, :] ** 2 / self.denom[:, i].reshape(-1, 1)
        return result


class StaticBlockInverse:
    """``HInvFastBlock`` on one device: F block-diagonal over contiguous blocks of ``block_size``
    coordinates (the last block shorter), the full blocks in one :class:`StaticBatchInverse`.

    Parameters
    ----------
    grads : torch.Tensor, shape (m, d)
    block_size : int
    damp : float
    """

    def __init__(self, grads: torch.Tensor, block_size: int, damp: float = 1e-5):
        m, self.d = grads.shape
        full = self.d // block_size * block_size
        self.parts = []
        if full:
            blocks = grads[:, :full].T.reshape(-1, block_size, m).transpose(1, 2)
            self.parts.append(StaticBatchInverse(blocks, damp))
        if full < self.d:
            self.parts.append(StaticBatchInverse(grads[:, full:].reshape(1, m, -1), damp))

    def mul(self, x: torch.Tensor) -> torch.Tensor:
        """F⁻¹ x, x of shape (d,)."""
        results, offset = [], 0
        for part in self.parts:
            size = part.b * part.d
            results.append(part.mul(x[offset : offset + size].reshape(part.b, part.d)).reshape(-1))
            offset += size
        return torch.cat(results)

    def diag(self) -> torch.Tensor:
        """diag(F⁻¹), shape (d,)."""
        return torch.cat([part.diag().reshape(-1) for part in self.parts])


class DenseWoodbury:
    """``HInvSlow``: the dense F⁻¹, (d, d), from ``I / damp`` by m Sherman-Morrison updates.

    Parameters
    ----------
    grads : torch.Tensor, shape (m, d)
    damp : float
    """

    def __init__(self, grads: torch.Tensor, damp: float = 1e-5):
        m, d = grads.shape
        self.H = torch.eye(d, dtype=grads.dtype, device=grads.device) / damp
        for g in grads:
            hg = self.H @ g
            self.H -= torch.outer(hg, hg) / (m + g @ hg)

    def mul(self, x: torch.Tensor) -> torch.Tensor:
        """F⁻¹ x."""
        return self.H @ x
