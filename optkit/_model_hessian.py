"""Products with the Hessian (or Gauss-Newton matrix) of a torch model's mean loss, two ways.

The engines behind :meth:`optkit.hessian.HessianOperator.from_model`:

- :class:`RetainedGraphEngine` (``method="double-backward"``): the gradient of the mean loss is
  built once, with ``create_graph=True``, and each product is one backward pass through that
  retained graph (reverse-over-reverse, as PyHessian does). Fast, but the graph (the activations
  of every batch, twice) stays in memory as long as the operator lives;
- :class:`ForwardOverReverseEngine` (``method="forward-over-reverse"``): ``torch.func.jvp`` of
  ``torch.func.grad``, re-running the forward and backward passes on each product, ``vmap``ped
  over the columns of ``op @ V``. Nothing is retained between products.

Both see the model through ``functional_call`` on the flat selected weights; the model is never
modified.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from .backend import optional_import
from .validation import check_choice

KINDS = ("hessian", "ggn")
METHODS = ("double-backward", "forward-over-reverse")


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


def _check_outputs(torch, value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"outputs_fn must return a torch.Tensor, got {type(value).__name__}")
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


def model_engine(model, loss_fn, batches, params, kind, method, outputs_fn, loss_on_outputs) -> ModelEngine:
    """Check the arguments of ``from_model`` and build the engine of ``method``."""
    check_choice("method", method, METHODS)
    cls = RetainedGraphEngine if method == "double-backward" else ForwardOverReverseEngine
    return cls(model, loss_fn, batches, params, kind, outputs_fn, loss_on_outputs)


class ModelEngine:
    """The checked arguments, the flat point and the loss as a function of the flat weights."""

    vectorized: bool | None = None

    def __init__(self, model, loss_fn, batches, params, kind, outputs_fn, loss_on_outputs) -> None:
        torch = optional_import("torch", "HessianOperator.from_model")
        check_choice("kind", kind, KINDS)
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
        self.shapes = [t.shape for t in tensors]
        self.sizes = [t.numel() for t in tensors]
        self.point = torch.cat([t.reshape(-1) for t in tensors])
        # the unselected parameters enter as constants: no derivative is taken through them
        self.frozen = {"model." + k: p.detach() for k, p in named.items() if k not in self.names}
        self.loss_fn, self.outputs_fn, self.loss_on_outputs = loss_fn, outputs_fn, loss_on_outputs
        self.module = _bound(torch, model, self._batch_loss)

    # the functions of the flat weights w on one batch
    def _batch_loss(self, model, batch, what):
        if what == "outputs":
            return _check_outputs(self.torch, self.outputs_fn(model, batch))
        if self.loss_fn is not None:
            return _check_loss(self.torch, "loss_fn", self.loss_fn(model, batch))
        return self._outer(self.outputs_fn(model, batch), batch)

    def _outer(self, outputs, batch):
        return _check_loss(self.torch, "loss_on_outputs", self.loss_on_outputs(outputs, batch))

    def _call(self, w, batch, what):
        parts = self.torch.split(w, self.sizes)
        weights = {"model." + k: p.view(s) for k, p, s in zip(self.names, parts, self.shapes)}
        return self.func.functional_call(self.module, weights | self.frozen, (batch, what))


class ForwardOverReverseEngine(ModelEngine):
    """``torch.func.jvp`` of ``torch.func.grad`` per product, ``vmap``ped over columns."""

    def __init__(self, model, loss_fn, *args) -> None:
        super().__init__(model, loss_fn, *args)
        torch = self.torch
        # the products evaluate lazily: check the callables on the first batch now
        with torch.no_grad():
            first = self.batches[0]
            if loss_fn is not None:
                _check_loss(torch, "loss_fn", loss_fn(model, first))
            if self.kind == "ggn":
                self._outer(_check_outputs(torch, self.outputs_fn(model, first)), first)
        _load_forward_ad(torch)

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

    # under no_grad (which torch.func's transforms override inside): no autograd graph is
    # recorded outside them, and the results are plain tensors
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


class RetainedGraphEngine(ModelEngine):
    """One backward pass per product through the gradient's graph, built once and retained.

    Building the graph evaluates the callables on every batch, which checks them.

    The Hessian: ``g = ∇L(w)`` with ``create_graph=True``; ``H v = ∂(gᵀv)/∂w``. The GGN
    ``(1/B) Σ_b J_bᵀ H_b J_b`` per batch: ``J_b v`` by the double-vjp trick (the vjp
    ``u -> J_bᵀ u`` is linear in a dummy ``u``, and its vjp in ``u`` is ``J_b v``), then
    ``H_b (J_b v)`` through the outputs' gradient, then ``J_bᵀ`` through the outputs: three
    backward passes. ``op @ V`` loops over the columns: on the CPU that measured faster than
    ``autograd.grad(..., is_grads_batched=True)`` (0.53 against 0.67 ms per column on the
    2410-weight digits MLP of examples/hessian_vs_pyhessian.py).
    """

    def __init__(self, *args) -> None:
        super().__init__(*args)
        torch = self.torch
        with torch.enable_grad():
            self.w = self.point.detach().clone().requires_grad_(True)
            if self.kind == "hessian":
                losses = [self._call(self.w, b, "loss") for b in self.batches]
                self.grad = self._grad(sum(losses) / len(losses), self.w, create_graph=True)
            else:
                self._build_ggn()

    def _grad(self, out, inp, grad_out=None, *, create_graph=False):
        """``∂(grad_outᵀ out)/∂inp``; zeros where ``out`` does not depend on ``inp`` (a constant
        gradient: the loss is linear in the weights and its Hessian is zero)."""
        if not out.requires_grad:
            return self.torch.zeros_like(inp)
        return self.torch.autograd.grad(
            out, inp, grad_out, retain_graph=True, create_graph=create_graph, materialize_grads=True
        )[0]

    def _build_ggn(self):
        self.outputs, self.out_grads, self.dummies, losses = [], [], [], []
        for b in self.batches:
            out = self._call(self.w, b, "outputs")
            loss = self._outer(out, b)
            losses.append(loss)
            self.outputs.append(out)
            self.out_grads.append(self._grad(loss, out, create_graph=True))
            u = self.torch.zeros_like(out, requires_grad=True)
            self.dummies.append((u, self._grad(out, self.w, u, create_graph=True)))
        self.grad = self._grad(sum(losses) / len(losses), self.w)

    def matvec(self, v):
        if self.kind == "hessian":
            return self._grad(self.grad, self.w, v)
        total = 0
        for out, g_out, (u, pulled) in zip(self.outputs, self.out_grads, self.dummies):
            jv = self._grad(pulled, u, v)
            total = total + self._grad(out, self.w, self._grad(g_out, out, jv))
        return total / len(self.batches)

    def matmat(self, V):
        return self.torch.stack([self.matvec(V[:, j]) for j in range(V.shape[1])], dim=1)

    def gradient(self):
        return self.grad.detach().clone()


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
