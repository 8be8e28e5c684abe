"""The Hessian of a loss at a point as a symmetric :class:`~optkit.linop.LinearOperator`.

Two sources:

- :class:`HessianOperator` ``(problem, x)``: the Hessian of a :class:`~optkit.problem.SmoothProblem`
  at ``x`` through the problem's own (counted) ``hvp``, numpy or torch;
- :meth:`HessianOperator.from_model`: the Hessian (or the generalised Gauss-Newton matrix) of
  the mean loss of a ``torch.nn.Module`` over a list of batches, with respect to its flattened
  parameters at the current weights, by ``torch.func`` forward-over-reverse products, batched
  over probe vectors with ``vmap``.

The estimators of :mod:`optkit.spectral` and :func:`optkit.lanczos.lanczos` take either. torch
is imported only by :meth:`HessianOperator.from_model`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._linop_base import LinearOperator
from .backend import backend_name, device_of, optional_import
from .problem import SmoothProblem
from .validation import check_choice

__all__ = ["HessianOperator"]

_KINDS = ("hessian", "ggn")


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
            without ``outputs_fn`` and ``loss_on_outputs``.

        Notes
        -----
        ``op @ v`` is one forward-over-reverse product per batch: ``torch.func.jvp`` of
        ``torch.func.grad`` (the GGN: one ``jvp`` through the model, one through the loss's
        gradient in the outputs, and one ``vjp`` through the model). ``op @ V`` for ``V`` of
        shape ``(n, k)`` maps these over the ``k`` columns with ``torch.func.vmap``; where the
        model does not support ``vmap`` (``.item()``, in-place updates of buffers, random
        operations and other data-dependent code) it falls back, once and for good, to a loop
        over the columns, giving the same values, more slowly; :attr:`vectorized` says which
        path ran. ``vmap`` holds the ``k`` products' intermediates at once, so memory grows with
        ``k``. For the cross-entropy of softmax logits (and any negative log-likelihood of an
        exponential family in its natural parameters) the GGN is the Fisher information matrix
        of the model's predictive distribution, averaged over the inputs.
        """
        engine = _ModelEngine(model, loss_fn, batches, params, kind, outputs_fn, loss_on_outputs)
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
        run yet or has no ``vmap`` path, a problem's operator (None)."""
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
        if isinstance(self._engine, _ModelEngine) and x.dtype != self.dtype:
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


def _check_callable(name: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def _check_loss(torch, name: str, value: Any) -> Any:
    """``value`` if it is a floating scalar tensor, else a TypeError/ValueError naming ``name``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must return a scalar torch.Tensor, got {type(value).__name__}")
    if value.ndim != 0:
        raise ValueError(
            f"{name} must return a scalar (0-dimensional) tensor, got shape {tuple(value.shape)}; "
            "reduce it, e.g. with .mean()"
        )
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must return a floating tensor, got dtype {value.dtype}")
    return value


def _select(model: Any, params: Sequence[str] | None) -> tuple[str, ...]:
    named = dict(model.named_parameters())
    if params is None:
        names = tuple(k for k, p in named.items() if p.requires_grad)
        if not names:
            raise ValueError("params: the model has no parameter with requires_grad; name the parameters to use")
        return names
    if isinstance(params, str) or not all(isinstance(k, str) for k in params):
        raise TypeError(f"params must be a sequence of parameter names (str), got {params!r}")
    names = tuple(params)
    if not names:
        raise ValueError("params must name at least one parameter, got an empty sequence")
    unknown = [k for k in names if k not in named]
    if unknown:
        raise ValueError(f"params: unknown parameter names {unknown}; the model has {list(named)}")
    if len(set(names)) != len(names):
        raise ValueError(f"params must not repeat a name, got {list(names)}")
    return names


class _ModelEngine:
    """Forward-over-reverse products with the Hessian or GGN of a model's mean loss."""

    def __init__(self, model, loss_fn, batches, params, kind, outputs_fn, loss_on_outputs) -> None:
        torch = optional_import("torch", "HessianOperator.from_model")
        check_choice("kind", kind, _KINDS)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if kind == "hessian":
            if loss_fn is None:
                raise ValueError('loss_fn is required for kind="hessian"')
        elif outputs_fn is None or loss_on_outputs is None:
            raise ValueError('kind="ggn" needs both outputs_fn(model, batch) and loss_on_outputs(outputs, batch)')
        for name, fn in (("loss_fn", loss_fn), ("outputs_fn", outputs_fn), ("loss_on_outputs", loss_on_outputs)):
            if fn is not None:
                _check_callable(name, fn)
        if isinstance(batches, torch.Tensor):
            raise TypeError("batches must be an iterable of batches; for a single tensor batch pass [batch]")
        self.batches = list(batches)
        if not self.batches:
            raise ValueError("batches must hold at least one batch, got none")
        self.names = _select(model, params)
        named = dict(model.named_parameters())
        tensors = [named[k].detach() for k in self.names]
        places = {(t.dtype, str(t.device)) for t in tensors}
        if len(places) > 1:
            raise ValueError(f"params must share one dtype and device, got {sorted(map(str, places))}")
        if not tensors[0].dtype.is_floating_point:
            raise ValueError(f"params must be floating, got dtype {tensors[0].dtype}")
        self.torch, self.func, self.kind = torch, torch.func, kind
        _load_forward_ad(torch)
        self.shapes = [t.shape for t in tensors]
        self.sizes = [t.numel() for t in tensors]
        self.point = torch.cat([t.reshape(-1) for t in tensors])
        self.loss_fn, self.outputs_fn, self.loss_on_outputs = loss_fn, outputs_fn, loss_on_outputs
        self.module = _bound(torch, model, self._batch_loss)
        self.vectorized: bool | None = None
        with torch.no_grad():
            first = self.batches[0]
            if loss_fn is not None:
                _check_loss(torch, "loss_fn", loss_fn(model, first))
            if kind == "ggn":
                out = outputs_fn(model, first)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"outputs_fn must return a torch.Tensor, got {type(out).__name__}")
                _check_loss(torch, "loss_on_outputs", loss_on_outputs(out, first))

    # the functions of the flat weights w on one batch
    def _batch_loss(self, model, batch, what):
        if what == "outputs":
            return self.outputs_fn(model, batch)
        if self.loss_fn is not None:
            return _check_loss(self.torch, "loss_fn", self.loss_fn(model, batch))
        return self._outer(self.outputs_fn(model, batch), batch)

    def _outer(self, outputs, batch):
        return _check_loss(self.torch, "loss_on_outputs", self.loss_on_outputs(outputs, batch))

    def _call(self, w, batch, what):
        parts = self.torch.split(w, self.sizes)
        weights = {"model." + k: p.view(s) for k, p, s in zip(self.names, parts, self.shapes)}
        return self.func.functional_call(self.module, weights, (batch, what))

    def _column(self, batch):
        """``v -> (Hessian or GGN of the batch's loss) v`` for one batch."""
        func, w = self.func, self.point
        if self.kind == "hessian":
            g = func.grad(lambda u: self._call(u, batch, "loss"))
            return lambda v: func.jvp(g, (w,), (v,))[1]
        outputs, pullback = func.vjp(lambda u: self._call(u, batch, "outputs"), w)
        g_out = func.grad(lambda o: self._outer(o, batch))

        def ggn(v):
            jv = func.jvp(lambda u: self._call(u, batch, "outputs"), (w,), (v,))[1]
            return pullback(func.jvp(g_out, (outputs,), (jv,))[1])[0]

        return ggn

    # under no_grad (which torch.func's transforms override inside): no autograd graph through
    # the model's other, trainable parameters is recorded, and the results are plain tensors
    def matvec(self, v):
        with self.torch.no_grad():
            return sum(self._column(b)(v) for b in self.batches) / len(self.batches)

    def matmat(self, V):
        with self.torch.no_grad():
            return sum(self._columns(self._column(b), V) for b in self.batches) / len(self.batches)

    def _columns(self, column, V):
        if self.vectorized is not False:
            try:
                out = self.func.vmap(column, in_dims=1, out_dims=1)(V)
            except (RuntimeError, NotImplementedError):  # vmap's refusals; the loop re-raises any real error
                self.vectorized = False
            else:
                self.vectorized = True
                return out
        return self.torch.stack([column(V[:, j]) for j in range(V.shape[1])], dim=1)

    def gradient(self):
        grad = self.func.grad(lambda u, b: self._call(u, b, "loss"))
        with self.torch.no_grad():
            return sum(grad(self.point, b) for b in self.batches) / len(self.batches)


def _load_forward_ad(torch) -> None:
    """Run one tiny ``jvp``: torch (2.13) loads its forward-mode decompositions on the first one, through
    ``torch.jit.script``, whose own deprecation warning the caller can do nothing about; it is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
        one = torch.ones(1)
        torch.func.jvp(torch.sin, (one,), (one,))


def _bound(torch, model, fn):
    """A module whose ``forward(batch, what)`` is ``fn(model, batch, what)``: ``functional_call``
    on it substitutes the weights that ``fn`` sees through ``model`` (under the prefix ``model.``)."""

    class _Bound(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch, what):
            return fn(self.model, batch, what)

    return _Bound()
