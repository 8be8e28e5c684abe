"""The Hessian of a loss at a point as a symmetric :class:`~optkit.linop.LinearOperator`.

Two sources:

- :class:`HessianOperator` ``(problem, x)``: the Hessian of a :class:`~optkit.problem.SmoothProblem`
  at ``x`` through the problem's own (counted) ``hvp``, numpy or torch;
- :meth:`HessianOperator.from_model`: the Hessian (or the generalised Gauss-Newton matrix) of
  the mean loss of a ``torch.nn.Module`` over a list of batches, with respect to its flattened
  parameters at the current weights, by backward passes through the gradient's retained graph
  (default) or by ``torch.func`` forward-over-reverse products, batched over probe vectors with
  ``vmap`` (engines in :mod:`optkit._model_hessian`).

The estimators of :mod:`optkit.spectral` and :func:`optkit.lanczos.lanczos` take either. torch
is imported only by :meth:`HessianOperator.from_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._linop_base import LinearOperator
from ._model_hessian import ModelEngine, model_engine
from .backend import backend_name, device_of
from .problem import SmoothProblem

__all__ = ["HessianOperator"]


class HessianOperator(LinearOperator):
    """The Hessian ``∇²f(x)`` of a smooth problem at a point, as a symmetric linear operator.

    Parameters
    ----------
    problem : SmoothProblem
        A problem with the ``"hvp"`` capability, numpy or torch (any device).
    x : array of shape (n,)
        The point, on the problem's backend and device. Kept, not copied.

    Notes
    -----
    Shape ``(n, n)``, tags ``{"symmetric"}``, backend, device and dtype of the problem.
    ``op @ v`` is ``problem.hvp(x, v)``, counted in ``problem.counters["hvp"]``; ``op @ V`` for
    ``V`` of shape ``(n, k)`` is ``k`` such products, column by column. The operator is
    symmetric as long as the problem's ``hvp`` is the product with a symmetric matrix (it is
    not checked). :meth:`from_model` builds the operator of a torch model instead.

    Raises
    ------
    TypeError
        ``problem`` is not a :class:`SmoothProblem`; ``x`` is not an array of its backend.
    ValueError
        The problem has no ``"hvp"`` capability; ``x`` is not of shape (n,) or is on another device.

    Examples
    --------
    >>> import numpy as np
    >>> from optkit import SmoothProblem
    >>> A = np.diag([1.0, 2.0, 3.0])
    >>> p = SmoothProblem(lambda x: x @ A @ x / 2, lambda x: A @ x, np.zeros(3), hvp=lambda x, v: A @ v)
    >>> H = HessianOperator(p, np.ones(3))
    >>> H @ np.ones(3)
    array([1., 2., 3.])
    """

    def __init__(self, problem: SmoothProblem, x: Any) -> None:
        if not isinstance(problem, SmoothProblem):
            raise TypeError(f"problem must be an optkit.SmoothProblem, got {type(problem).__name__}")
        if "hvp" not in problem.capabilities:
            raise ValueError(
                f"problem {problem.name!r} lacks the 'hvp' capability (Hessian-vector products) "
                f"that HessianOperator needs; it has {sorted(problem.capabilities)}"
            )
        if not hasattr(x, "shape") or backend_name(x) != problem.backend:
            raise TypeError(f"x must be a {problem.backend} array like the problem's x0, got {type(x).__name__}")
        if tuple(x.shape) != (problem.n,):
            raise ValueError(f"x must have shape ({problem.n},), the problem's, got {tuple(x.shape)}")
        if device_of(x) != problem.device:
            raise ValueError(f"x must be on the problem's device {problem.device!r}, got {device_of(x)!r}")
        n = problem.n
        super().__init__((n, n), problem.dtype, tags={"symmetric"}, backend=problem.backend, device=problem.device)
        self._engine = _ProblemEngine(problem, x)

    @classmethod
    def from_model(
        cls,
        model: Any,
        loss_fn: Callable | None,
        batches: Iterable[Any],
        *,
        params: Sequence[str] | None = None,
        kind: str = "hessian",
        method: str = "double-backward",
        outputs_fn: Callable | None = None,
        loss_on_outputs: Callable | None = None,
    ) -> HessianOperator:
        """The Hessian (or Gauss-Newton matrix) of a torch model's mean loss over ``batches``.

        The loss is ``L(w) = (1/B) Σ_b loss_fn(model, batch_b)`` over the ``B`` batches, as a
        function of the selected parameters ``w`` flattened and concatenated in the order of
        ``params``, the other parameters and the buffers held at their current values. The
        operator is ``∇²L`` at the model's current weights (``kind="hessian"``) or the
        generalised Gauss-Newton matrix ``(1/B) Σ_b J_bᵀ H_b J_b`` (``kind="ggn"``), with ``J_b``
        the Jacobian of ``outputs_fn(model, batch_b)`` with respect to ``w`` and ``H_b`` the
        Hessian of ``loss_on_outputs(outputs, batch_b)`` with respect to the outputs.

        Parameters
        ----------
        model : torch.nn.Module
            Called as it is (its current ``train``/``eval`` mode); not modified. Use ``eval()``
            for a deterministic operator (dropout makes every product random; batch norm in
            training mode updates its running statistics on each product).
        loss_fn : callable ``loss_fn(model, batch) -> scalar tensor``, or None
            The loss on one batch. Required for ``kind="hessian"``. For ``kind="ggn"`` it may
            be None: the loss (for :meth:`gradient`) is then
            ``loss_on_outputs(outputs_fn(model, batch), batch)``; when given, it should be that
            same function (it is not checked).
        batches : iterable
            The batches, each passed to the callables as it is (a tensor, a tuple ``(X, y)``,
            a dict ...); read once into a list and kept. For a single batch pass ``[batch]``.
        params : sequence of str, optional
            Names from ``model.named_parameters()``, in the order of the flattening. Default:
            every parameter with ``requires_grad``, in ``named_parameters()`` order.
        kind : {"hessian", "ggn"}
        method : {"double-backward", "forward-over-reverse"}
            How products are taken (see Notes): through the gradient's graph, built once and
            retained (fast; holds the graph in memory), or by ``torch.func`` forward-over-reverse
            (nothing retained; about 2-5x slower per product on the CPU).
        outputs_fn : callable ``outputs_fn(model, batch) -> tensor``, optional
            The model's outputs on a batch (``kind="ggn"`` only).
        loss_on_outputs : callable ``loss_on_outputs(outputs, batch) -> scalar tensor``, optional
            The loss as a function of the outputs (``kind="ggn"`` only); convex in the outputs
            (cross-entropy, squared error) for a positive semi-definite matrix.

        Returns
        -------
        HessianOperator
            Shape ``(n, n)`` with ``n`` the number of selected scalars; backend ``"torch"``,
            dtype and device of the parameters; tags ``{"symmetric"}`` (``{"symmetric",
            "psd"}`` for the GGN).

        Raises
        ------
        TypeError
            ``model`` is not a module; a callable is not callable; a loss is not a tensor.
        ValueError
            Unknown ``kind`` or parameter name, repeated names, no parameter selected,
            parameters of mixed dtypes or devices, no batches, a loss that is not a scalar
            (checked on the first batch at construction, and on every evaluation), ``kind="ggn"``
            without ``outputs_fn`` and ``loss_on_outputs``, unknown ``method``.

        Notes
        -----
        ``method="double-backward"`` (the default): construction runs the forward pass on every
        batch and builds the gradient of the mean loss with ``create_graph=True``; ``op @ v`` is
        then one backward pass through that retained graph (the GGN: three, see
        :class:`~optkit._model_hessian.RetainedGraphEngine`), ``op @ V`` one per column. The
        graph holds every batch's activations (and their derivatives) until the operator is
        garbage-collected: for many or large batches use ``"forward-over-reverse"``, or
        average operators built on fewer batches. The operator stays at the weights of its
        construction (an optimizer step on the model afterwards does not change it).

        ``method="forward-over-reverse"``: ``op @ v`` is one ``torch.func.jvp`` of
        ``torch.func.grad`` per batch, re-running the forward and backward passes (the GGN: one
        ``jvp`` through the model, one through the loss's gradient in the outputs, and one
        ``vjp`` through the model). ``op @ V`` for ``V`` of shape ``(n, k)`` maps these over the
        ``k`` columns with ``torch.func.vmap``; where the model does not support ``vmap``
        (``.item()``, in-place updates of buffers, random operations and other data-dependent
        code) it falls back, once and for good, to a loop over the columns, giving the same
        values, more slowly; :attr:`vectorized` says which path ran. ``vmap`` holds the ``k``
        products' intermediates at once, so memory grows with ``k``.

        Both give the same matrix to rounding. Unselected parameters are held as constants.
        For the cross-entropy of softmax logits (and any negative log-likelihood of an
        exponential family in its natural parameters) the GGN is the Fisher information matrix
        of the model's predictive distribution, averaged over the inputs.
        """
        engine = model_engine(model, loss_fn, batches, params, kind, method, outputs_fn, loss_on_outputs)
        op = cls.__new__(cls)
        n = int(engine.point.shape[0])
        tags = {"symmetric", "psd"} if kind == "ggn" else {"symmetric"}
        LinearOperator.__init__(
            op, (n, n), engine.point.dtype, tags=tags, backend="torch", device=device_of(engine.point)
        )
        op._engine = engine
        return op

    # ------------------------------------------------------------------ helpers for the tools
    @property
    def point(self) -> Any:
        """The point: ``x`` of a problem's operator, the flat selected weights of a model's."""
        return self._engine.point

    @property
    def param_names(self) -> tuple[str, ...] | None:
        """The selected parameters' names in the order of the flattening (None for a problem)."""
        return getattr(self._engine, "names", None)

    @property
    def vectorized(self) -> bool | None:
        """Whether ``op @ V`` ran under ``vmap`` (True), fell back to a loop (False), or has not
        run yet or has no ``vmap`` path: a problem's operator, ``method="double-backward"`` (None)."""
        return getattr(self._engine, "vectorized", None)

    def gradient(self) -> Any:
        """The gradient at the point, shape (n,): ``problem.grad(x)`` (counted), or the flat
        gradient of the model's mean loss over the batches, on the operator's backend."""
        return self._engine.gradient()

    # ------------------------------------------------------------------ LinearOperator hooks
    def _matvec(self, x):
        self._check_dtype(x)
        return self._engine.matvec(x)

    def _matmat(self, X):
        self._check_dtype(X)
        if X.shape[1] == 0:
            return self.xp.zeros((self.shape[0], 0), dtype=self.dtype, device=device_of(X))
        return self._engine.matmat(X)

    # a Hessian is symmetric: its adjoint is itself
    def _rmatvec(self, y):
        return self._matvec(y)

    def _rmatmat(self, Y):
        return self._matmat(Y)

    def _check_dtype(self, x) -> None:
        if isinstance(self._engine, ModelEngine) and x.dtype != self.dtype:
            raise TypeError(f"the operator's dtype is {self.dtype}; got a vector of dtype {x.dtype}")


# ---------------------------------------------------------------------------------- engines
class _ProblemEngine:
    """Products with a problem's Hessian at ``x`` through its counted ``hvp``."""

    def __init__(self, problem: SmoothProblem, x: Any) -> None:
        self.problem, self.point = problem, x

    def matvec(self, v: Any) -> Any:
        return self.problem.hvp(self.point, v)

    def matmat(self, V: Any) -> Any:
        cols = [self.problem.hvp(self.point, V[:, j]) for j in range(V.shape[1])]
        if backend_name(V) == "torch":
            import torch

            return torch.stack(cols, dim=1)
        import numpy as np

        return np.stack(cols, axis=1)

    def gradient(self) -> Any:
        return self.problem.grad(self.point)
