"""Factorising the shifted Gram matrix ``S = G Gᵀ + shift·I`` of M-FAC's Woodbury identity.

``S`` is symmetric positive definite with every eigenvalue ``>= shift``, so Cholesky is the
stable factorisation; it can still fail in floating point when ``G Gᵀ`` was accumulated in
float32 and ``shift`` is tiny next to ``‖G‖²``. Then the symmetric eigendecomposition takes over,
with the eigenvalues clamped to ``shift`` (their exact lower bound), which never fails. Both
work in float64 on numpy arrays and torch tensors (CPU or CUDA), batched over leading axes.
The reference code instead runs an unpivoted LU on ``S / shift``, with no guard.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optkit.backend import is_torch

__all__ = ["shifted_inverse_root", "shifted_solve"]


def _shifted(gram: Any, shift: float) -> Any:
    """``gram + shift·I`` in float64 (a new array; ``gram`` is not modified)."""
    m = gram.shape[-1]
    if is_torch(gram):
        import torch

        eye = torch.eye(m, dtype=torch.float64, device=gram.device)
        return gram.to(torch.float64) + shift * eye
    return np.asarray(gram, dtype=np.float64) + shift * np.eye(m)


def _cholesky(S: Any) -> Any | None:
    """The lower Cholesky factor of every matrix in ``S``, or ``None`` when one is not positive definite."""
    if is_torch(S):
        import torch

        L, info = torch.linalg.cholesky_ex(S)
        return None if bool((info != 0).any()) else L
    try:
        return np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        return None


def _clamped_eigh(S: Any, shift: float) -> tuple[Any, Any]:
    """Eigenvalues (clamped to ``>= shift``) and eigenvectors of the symmetric ``S``."""
    if is_torch(S):
        import torch

        w, Q = torch.linalg.eigh(S)
        return w.clamp(min=shift), Q
    w, Q = np.linalg.eigh(S)
    return np.maximum(w, shift), Q


def shifted_inverse_root(gram: Any, shift: float) -> Any:
    """``R`` with ``Rᵀ R = (gram + shift·I)⁻¹``, float64, batched.

    Parameters
    ----------
    gram : array or tensor, shape (..., m, m)
        Symmetric positive semi-definite matrices (any float dtype; used in float64).
    shift : float
        ``> 0``.

    Returns
    -------
    array or tensor, shape (..., m, m), float64
        ``L⁻¹`` of the Cholesky factor ``L`` (lower triangular), or ``Λ^{-1/2} Qᵀ`` from the
        eigendecomposition when Cholesky fails.
    """
    S = _shifted(gram, shift)
    L = _cholesky(S)
    if is_torch(S):
        import torch

        if L is not None:
            eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device).expand_as(S)
            return torch.linalg.solve_triangular(L, eye, upper=False)
        w, Q = _clamped_eigh(S, shift)
        return (Q / w.sqrt().unsqueeze(-2)).mT
    if L is not None:
        return np.linalg.inv(L)
    w, Q = _clamped_eigh(S, shift)
    return np.swapaxes(Q / np.sqrt(w)[..., None, :], -1, -2)


def shifted_solve(gram: Any, shift: float, rhs: Any) -> Any:
    """``(gram + shift·I)⁻¹ rhs`` in float64 for one torch Gram matrix.

    Parameters
    ----------
    gram : torch.Tensor, shape (m, m)
        Symmetric positive semi-definite (any float dtype; used in float64).
    shift : float
        ``> 0``.
    rhs : torch.Tensor, shape (m,)

    Returns
    -------
    torch.Tensor, shape (m,), float64
    """
    import torch

    S = _shifted(gram, shift)
    b = rhs.to(torch.float64).unsqueeze(-1)
    L = _cholesky(S)
    if L is not None:
        return torch.cholesky_solve(b, L).squeeze(-1)
    w, Q = _clamped_eigh(S, shift)
    return Q @ ((Q.mT @ b).squeeze(-1) / w)
