"""The finite-sum problem kind: a smooth empirical risk ``f(x) = (1/N) sum_i l_i(x) + r(x)``.

What stochastic and torch optimizers need on top of a :class:`~optkit.problem.SmoothProblem`:
the number of samples, seeded minibatches (one reshuffle per epoch), the gradient of a
minibatch, and the shape the variable has as a model parameter. The full objective and
gradient stay available, so deterministic solvers (L-BFGS) run on the same problem and every
solver is judged by the same exact measures.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import numpy as np

from .backend import convert, device_of
from .problem import SmoothProblem
from .validation import check_int

__all__ = ["FiniteSumProblem"]


class FiniteSumProblem(SmoothProblem, abc.ABC):
    """``f(x) = (1/N) sum_{i<N} l_i(x) + r(x)`` over ``N = n_samples`` samples.

    Parameters
    ----------
    x0 : array of shape (n,)
        Starting point (numpy or torch; sets the backend and device).
    n_samples : int
        ``N``, the number of terms.
    x_shape : tuple of int, optional
        The variable's shape as a model parameter (``prod(x_shape) == n``): a torch
        optimizer sees ``x.reshape(x_shape)``, so a matrix variable (the weights of a
        softmax regression, ``(classes, features)``) is a 2-D parameter that low-rank
        optimizers can project. Default ``(n,)``.
    name, metadata :
        As in :class:`~optkit.problem.Problem`; ``metadata["f_opt"]`` is the optimal value
        when known.

    Subclasses implement ``_batch_fg(x, indices) -> (float, grad)``: the mean of ``l_i`` over
    ``indices`` (an int array of sample indices on the problem's backend and device) plus
    ``r``, and its gradient of shape (n,). The full ``fun``/``grad`` default to the batch of
    all samples; subclasses may override ``_f``/``_g`` with something faster.

    Counters: ``fun``/``grad`` for full evaluations (as every smooth problem), and for
    minibatches ``batch_grad`` (calls) and ``samples`` (sample gradients computed, so that
    ``samples / N`` is the number of epochs' worth of work).
    Capabilities: ``{"fun", "grad", "batch_grad"}`` plus what the subclass adds.
    """

    kind: ClassVar[str] = "finite-sum"

    def __init__(
        self,
        x0: Any,
        n_samples: int,
        *,
        x_shape: Sequence[int] | None = None,
        name: str = "finite-sum",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(None, None, x0, name=name, metadata=metadata)
        self.n_samples = check_int("n_samples", n_samples, 1)
        shape = (int(x0.shape[0]),) if x_shape is None else tuple(int(s) for s in x_shape)
        if int(np.prod(shape)) != int(x0.shape[0]):
            raise ValueError(f"x_shape {shape} must hold the {int(x0.shape[0])} entries of x0")
        self.x_shape = shape

    @property
    def capabilities(self) -> frozenset[str]:
        return super().capabilities | {"batch_grad"}

    # ------------------------------------------------------------------ minibatches

    def batch_fun_and_grad(self, x: Any, indices: Any) -> tuple[float, Any]:
        """Mean loss over the samples ``indices`` plus the regulariser, and its gradient (n,).

        Counted: ``batch_grad += 1``, ``samples += len(indices)``.
        """
        self.counters["batch_grad"] += 1
        self.counters["samples"] += int(indices.shape[0])
        f, g = self._batch_fg(x, indices)
        return float(f), g

    def batches(self, batch_size: int, *, seed: int = 0) -> Iterator[Any]:
        """An endless stream of minibatches of sample indices, on the problem's backend and device.

        Each epoch is a fresh permutation of ``range(N)`` drawn from ``numpy`` generator
        ``default_rng(seed)``, cut into ``ceil(N / batch_size)`` batches (the last may be
        smaller), so every sample is used once per epoch and the stream is the same for
        every solver given the same seed.
        """
        batch_size = check_int("batch_size", batch_size, 1)
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(self.n_samples)
            for start in range(0, self.n_samples, batch_size):
                yield convert(order[start : start + batch_size], self.backend, device_of(self.x0))

    # ------------------------------------------------------------------ full objective

    def all_samples(self) -> Any:
        """``arange(N)`` on the problem's backend and device."""
        return convert(np.arange(self.n_samples), self.backend, device_of(self.x0))

    def _f(self, x: Any) -> Any:
        return self._batch_fg(x, self.all_samples())[0]

    def _g(self, x: Any) -> Any:
        return self._batch_fg(x, self.all_samples())[1]

    def fun_and_grad(self, x: Any) -> tuple[float, Any]:
        self.counters["fun"] += 1
        self.counters["grad"] += 1
        f, g = self._batch_fg(x, self.all_samples())
        return float(f), g

    @abc.abstractmethod
    def _batch_fg(self, x: Any, indices: Any) -> tuple[Any, Any]:
        """``(mean of l_i over indices + r, its gradient (n,))`` on the problem's backend."""
