"""Basis sources of :mod:`optkit.projection`: exact SVD, randomized range finder, DCT selection, random.

Every source works on a gradient matrix ``G`` already oriented so that the projected
dimension is its first one (the caller passes ``G`` for a left projection and ``Gᵀ`` for a
right one): a source returns a column-orthonormal ``basis`` of shape ``(d, r)`` whose span
approximates the leading left singular subspace of ``G`` (shape ``(d, k)``). torch only,
CPU or CUDA; any floating dtype (the factorisations run in float32).
"""

from __future__ import annotations

import math

import torch

__all__ = ["dct_basis", "dct_rows", "orthonormal_random", "randomized_range", "select_dct", "svd_basis"]

_DCT_CACHE: dict[tuple[int, torch.dtype, str], torch.Tensor] = {}


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed % (2**63))


def svd_basis(G: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r`` leading left singular vectors of ``G`` (thin SVD in float32), shape ``(d, r)``.

    cuSOLVER has no half-precision SVD, so the factorisation always runs in float32; the
    result is float32 and the caller casts it to the storage dtype.
    """
    # a rank above the other dimension needs directions outside G's range: the full U has them
    U, _, _ = torch.linalg.svd(G.float(), full_matrices=r > min(G.shape))
    return U[:, :r].contiguous()


def randomized_range(
    G: torch.Tensor, r: int, *, oversample: int, power_iters: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomized range finder (Halko, Martinsson & Tropp 2011, Alg. 4.4 + 5.1).

    Returns the basis ``B`` of shape ``(d, r)`` (float32) and the projected gradient ``Bᵀ G``
    of shape ``(r, k)`` in ``G``'s dtype, read off the small matrix ``QᵀG`` the method forms
    anyway (saving one product with ``G``).

    The GEMMs with ``G`` run in ``G``'s dtype (bf16 on GPU stays on the tensor cores);
    re-orthonormalisation between power iterations runs in float32, the small eigenproblem
    that orders the directions in float64. The Gaussian test matrix comes from a generator seeded with
    ``seed``, so every rank of a distributed run draws the same one.
    """
    d, k = G.shape
    width = min(r + oversample, d)
    omega = torch.randn(k, width, generator=_generator(G.device, seed), device=G.device, dtype=torch.float32)
    Y = G @ omega.to(G.dtype)
    for _ in range(power_iters):
        Q = torch.linalg.qr(Y.float()).Q.to(G.dtype)
        Y = G @ (G.mT @ Q)
    Q = torch.linalg.qr(Y.float()).Q
    # Order the range's directions by the eigenvectors of the small (width, width) Gram matrix
    # M Mᵀ, M = Qᵀ G, in float64: an SVD of the (width, k) matrix M would cost ten times more,
    # and squaring the spectrum only blurs the directions that are discarded. All `width`
    # vectors are there in case r exceeds k.
    M = Q.mT @ G.float()
    _, vectors = torch.linalg.eigh((M @ M.mT).double())
    leading = vectors.flip(1)[:, :r].float()
    return (Q @ leading).contiguous(), (leading.mT @ M).to(G.dtype)


def orthonormal_random(d: int, r: int, *, device: torch.device, seed: int) -> torch.Tensor:
    """An orthonormalised Gaussian ``(d, r)`` matrix (float32), seeded."""
    gaussian = torch.randn(d, r, generator=_generator(device, seed), device=device, dtype=torch.float32)
    return torch.linalg.qr(gaussian).Q.contiguous()


def dct_basis(d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The orthonormal DCT-II basis of size ``d`` as columns: ``Q[j, k] = c_k cos(π k (2j+1) / 2d)``.

    Built once per ``(d, dtype, device)`` and shared by every parameter of that size.
    """
    key = (d, dtype, str(device))
    if key not in _DCT_CACHE:
        j = torch.arange(d, dtype=torch.float64)
        k = torch.arange(d, dtype=torch.float64)
        Q = torch.cos(math.pi * torch.outer(2 * j + 1, k) / (2 * d)) * math.sqrt(2.0 / d)
        Q[:, 0] /= math.sqrt(2.0)
        _DCT_CACHE[key] = Q.to(device=device, dtype=dtype)
    return _DCT_CACHE[key]


def dct_rows(G: torch.Tensor) -> torch.Tensor:
    """``Qᵀ G`` for the orthonormal DCT-II basis ``Q`` of size ``d = G.shape[0]``, by FFT (float32).

    Makhoul's algorithm: reorder each column to ``(x_0, x_2, …, x_3, x_1)``, take a length-``d``
    FFT and rotate by ``exp(-iπk/2d)``: O(d log d) per column instead of the O(d²) product.
    """
    d = G.shape[0]
    x = G.float()
    v = torch.cat([x[0::2], x[1::2].flip(0)], dim=0)
    V = torch.fft.fft(v, dim=0)
    k = torch.arange(d, device=G.device, dtype=torch.float32)
    twiddle = torch.polar(torch.ones_like(k), -math.pi * k / (2 * d))
    S = (V * twiddle[:, None]).real * math.sqrt(2.0 / d)
    S[0] /= math.sqrt(2.0)
    return S


def select_dct(G: torch.Tensor, r: int, *, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """DCT column selection: the ``r`` DCT directions carrying most of ``G``'s energy.

    Parameters
    ----------
    G : tensor of shape (d, k)
    r : int
    method : {"fft", "matmul"}
        How ``S = Qᵀ G`` is formed: FFT (O(d k log d), the CPU default) or one GEMM with the
        shared basis (faster on GPUs).

    Returns
    -------
    indices : int32 tensor of shape (r,)
        The selected DCT frequencies, ascending: the ``r`` rows of ``S`` with the largest
        Euclidean norms.
    low : tensor of shape (r, k), ``G``'s dtype
        The projected gradient ``Q[:, indices]ᵀ G``, read out of ``S`` (no second product).
    """
    if method == "fft":
        S = dct_rows(G)
    else:
        S = dct_basis(G.shape[0], torch.float32, G.device).mT @ G.float()
    norms = torch.linalg.vector_norm(S, dim=1)
    indices = torch.sort(torch.topk(norms, r, sorted=False).indices).values
    return indices.to(torch.int32), S[indices].to(G.dtype)
