"""Shared cases of the torch-optimizer tests: a finite-sum problem with a matrix variable, and the
hand-written loop that the adapter's runs must equal."""

import numpy as np
import torch

from optkit import FiniteSumProblem
from optkit.backend import get_namespace


class MultiOutputLeastSquares(FiniteSumProblem):
    """``(1/N) sum_i ||W a_i - y_i||^2 / 2`` over W of shape (k, d): a matrix variable."""

    def __init__(self, A, Y, x0=None, name="toy/multi-ls"):
        k, d = Y.shape[1], A.shape[1]
        xp = get_namespace(A)
        x0 = xp.zeros(k * d, dtype=A.dtype) if x0 is None else x0
        super().__init__(x0, A.shape[0], x_shape=(k, d), name=name)
        self.A, self.Y = A, Y

    def _batch_fg(self, x, indices):
        A, Y = self.A[indices], self.Y[indices]
        R = A @ x.reshape(self.x_shape).T - Y
        return (R * R).sum() / (2 * A.shape[0]), (R.T @ A).reshape(-1) / A.shape[0]

    def _converted(self, conv):
        return MultiOutputLeastSquares(conv(self.A), conv(self.Y), conv(self.x0), name=self.name)


def multi_ls(n=40, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    return MultiOutputLeastSquares(A, A @ rng.standard_normal((d, k)) + 0.1 * rng.standard_normal((n, k)))


def hand_written_path(problem, make_optimizer, steps, *, batch_size=None, seed=0):
    """The loop the adapter must equal: ``make_optimizer([weight])`` fed the problem's own (batch)
    gradients; the variable (n,) after each step."""
    shape = getattr(problem, "x_shape", (problem.n,))
    weight = torch.nn.Parameter(torch.as_tensor(problem.x0).reshape(shape).clone())
    opt = make_optimizer([weight])
    batches = problem.batches(batch_size, seed=seed) if batch_size else None
    path = []
    for _ in range(steps):
        x = weight.detach().reshape(-1).numpy()
        _, g = problem.batch_fun_and_grad(x, next(batches)) if batches else problem.fun_and_grad(x)
        weight.grad = torch.as_tensor(g).reshape(shape).clone()
        opt.step()
        path.append(weight.detach().reshape(-1).numpy().copy())
    return path
