"""Dense oracles of the M-FAC tests: inverses of damped empirical Fishers, numpy float64."""

import numpy as np


def dense_inverse(window, damp):
    """F⁻¹ for F = damp·I + Gᵀ G / m, G the rows of ``window`` (m, d)."""
    m, d = window.shape
    return np.linalg.inv(damp * np.eye(d) + window.T @ window / m)


def block_diagonal_inverse(window, damp, block_size):
    """The inverse of the block-diagonal Fisher on contiguous blocks of ``block_size`` coordinates."""
    d = window.shape[1]
    result = np.zeros((d, d))
    for start in range(0, d, block_size):
        block = slice(start, min(start + block_size, d))
        result[block, block] = dense_inverse(window[:, block], damp)
    return result
