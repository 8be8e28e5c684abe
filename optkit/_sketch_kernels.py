"""Compiled inner loops of :mod:`optkit.sketch` (numba, cached on disk).

Each runs a batch of one-dimensional sketch-and-project steps on ``A x = b``, updating the
iterate ``x`` and the residual ``r = A x - b`` in place.
"""

import numba
import numpy as np

__all__ = ["gaussian_csr", "gaussian_dense", "kaczmarz_csr", "kaczmarz_dense"]


@numba.njit(cache=True)
def kaczmarz_dense(A, gram, x, r, order):
    for i in order:
        g = gram[i, i]
        if g > 0.0:
            alpha = r[i] / g
            x -= alpha * A[i]
            r -= alpha * gram[:, i]


@numba.njit(cache=True)
def kaczmarz_csr(a_ptr, a_idx, a_val, g_ptr, g_idx, g_val, diag, x, r, order):
    # gram = A A^T is symmetric, so its row i is its column i
    for i in order:
        if diag[i] > 0.0:
            alpha = r[i] / diag[i]
            for k in range(a_ptr[i], a_ptr[i + 1]):
                x[a_idx[k]] -= alpha * a_val[k]
            for k in range(g_ptr[i], g_ptr[i + 1]):
                r[g_idx[k]] -= alpha * g_val[k]


@numba.njit(cache=True)
def gaussian_dense(A, gram, x, r, vectors):
    for j in range(vectors.shape[0]):
        s = vectors[j]
        u = A.T @ s
        uu = u @ u
        if uu > 0.0:
            alpha = (s @ r) / uu
            x -= alpha * u
            r -= alpha * (gram @ s)


@numba.njit(cache=True)
def gaussian_csr(a_ptr, a_idx, a_val, x, r, vectors):
    n_rows = a_ptr.size - 1
    u = np.zeros(x.size)
    for j in range(vectors.shape[0]):
        s = vectors[j]
        u[:] = 0.0
        for i in range(n_rows):
            for k in range(a_ptr[i], a_ptr[i + 1]):
                u[a_idx[k]] += a_val[k] * s[i]
        uu = u @ u
        if uu > 0.0:
            alpha = (s @ r) / uu
            x -= alpha * u
            for i in range(n_rows):
                acc = 0.0
                for k in range(a_ptr[i], a_ptr[i + 1]):
                    acc += a_val[k] * u[a_idx[k]]
                r[i] -= alpha * acc
