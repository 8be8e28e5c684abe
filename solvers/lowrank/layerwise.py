"""Layer-wise optimizer stepping: each parameter is updated as soon as its gradient is complete.

:class:`LayerwiseOptimizer` wraps any ``torch.optim.Optimizer``: one inner optimizer per parameter,
stepped from a post-accumulate-grad hook at the gradient-accumulation boundary, after which the
gradient is freed, so the weight gradients of the whole model never exist at once (GaLore's
"per-layer weight updates"). It differs from the reference implementation (GaLore's
``torchrun_main.py``, HF's ``*_layerwise`` optimizers) in three ways: it honours gradient
accumulation, it has one learning-rate scheduler clock (the wrapper's own param groups), and it
runs under ``DistributedDataParallel`` by stepping in a communication hook, after the all-reduce.
FSDP2 (``fully_shard``) parameters are refused: FSDP2 already frees each unsharded gradient
after its reduce-scatter, so a plain optimizer over the sharded parameters gets the memory
saving that layer-wise stepping gives elsewhere.

INT8 weights (:class:`~solvers.lowrank.int8_linear.Int8Linear`, Q-GaLore) fire no post-accumulate-grad
hook: their code tensor requires no grad and their gradient accumulates in ``layer.weight_grad``.
They are stepped from the layer's weight-gradient hook instead, with the same accumulation count
and the same learning-rate clock as every other parameter (under DDP: in :meth:`step`, see
:meth:`attach`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from optkit.validation import check_int

from ._galore_common import GaLoreMixin
from ._sharded import is_dtensor
from .int8_linear import Int8Linear, quantized_linear_of

__all__ = ["LayerwiseOptimizer"]

# Group keys that describe membership, not hyperparameters: never copied into an inner group.
_NOT_HYPERPARAMETERS = frozenset({"params", "param_names"})


@dataclass(slots=True)
class _Layer:
    """One trained parameter's inner optimizer and its accumulation tally."""

    optimizer: torch.optim.Optimizer
    group: int  # index into the wrapper's param_groups, which load_state_dict replaces by new dicts
    pending: int = 0  # backward passes accumulated into .grad since this parameter last stepped
    steps: int = 0  # inner steps since the wrapper's last step()
    reached: int = 0  # backward passes the latest inner step used
    quantized: Int8Linear | None = None  # the layer of an INT8 weight (its gradient is layer.weight_grad)


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Step each parameter during backward, as soon as its accumulated gradient is complete.

    Every trainable parameter gets its own inner optimizer, built by ``optimizer_factory``, and a
    post-accumulate-grad hook. The hook counts the backward passes that reach the parameter; on
    the ``accumulation_steps``-th it copies the hyperparameters of the parameter's group in this
    wrapper into the inner optimizer, steps it and sets ``p.grad = None``. On the other
    micro-batches it does nothing, so gradients accumulate as usual.

    The wrapper is itself a ``torch.optim.Optimizer`` whose ``param_groups`` are the user's groups,
    filled in with the inner optimizers' defaults, so any ``torch.optim.lr_scheduler`` attached to
    it drives every inner optimizer (one clock, stepped once per optimizer step). ``step()`` is
    called at each boundary like a plain optimizer's; the parameters have already moved by then,
    so it only checks the accounting (see :meth:`step`). ``zero_grad()`` is the base class's and
    harmless.

    Parameters
    ----------
    params : iterable of tensors, or of dicts with a ``"params"`` entry
        As for any torch optimizer. Parameters with ``requires_grad=False`` when the group is added
        are kept in their group but never stepped, except the ``weight_codes`` of an
        :class:`~solvers.lowrank.int8_linear.Int8Linear` (stepped from its weight-gradient hook, by
        a factory that builds a Q-GaLore optimizer for it). Any shape, dtype and device the inner
        optimizer supports; torch tensors only.
    optimizer_factory : callable
        ``optimizer_factory(groups) -> torch.optim.Optimizer``, called once per trainable parameter
        with a one-group list ``[{"params": [p], **hyperparameters of p's group}]``. A class with
        defaults is ``functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01)``; a
        factory may also choose by group or shape, e.g. a GaLore optimizer for 2-D weights. For
        checkpoints to load with ``torch.load(weights_only=True)``, its state must hold only
        tensors and Python scalars, as the torch optimizers' does.
    accumulation_steps : int, default 1
        Backward passes per optimizer step.

    Raises
    ------
    ValueError
        If ``accumulation_steps`` is not an integer >= 1, no parameter requires grad, or a
        parameter is an FSDP2 ``DTensor``.

    Notes
    -----
    Single process, ``k = accumulation_steps``::

        opt = LayerwiseOptimizer(model.parameters(), partial(torch.optim.AdamW, lr=1e-3), accumulation_steps=k)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
        for batch in loader:
            for micro in batch.chunk(k):
                (loss_fn(model(micro)) / k).backward()  # the k-th backward steps every layer
            opt.step()
            sched.step()
            opt.zero_grad()

    Under ``DistributedDataParallel`` call :meth:`attach` before the first backward and run the
    first ``k - 1`` micro-batches of each step inside ``ddp_model.no_sync()`` (see :meth:`attach`).

    Limitations: gradient clipping by global norm is impossible, because the gradients never
    coexist (clip per parameter inside the inner optimizer if needed). Gradients must come from
    ``backward()``; ``torch.autograd.grad`` and gradients assigned by hand fire no hook. At least
    one parameter must take part in every micro-batch: that is how the boundary is recognised.
    The hooks hold this optimizer alive and keep stepping; call :meth:`remove_hooks` before
    building another optimizer over the same parameters.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        optimizer_factory: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
        *,
        accumulation_steps: int = 1,
    ) -> None:
        self.accumulation_steps = check_int("accumulation_steps", accumulation_steps, 1)
        self._factory = optimizer_factory
        self._layers: dict[torch.Tensor, _Layer] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._distributed = False
        super().__init__(params, defaults={})
        if not self._layers:
            raise ValueError("LayerwiseOptimizer got no trainable parameter (none has requires_grad=True)")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group as ``torch.optim.Optimizer`` does; build and hook its trainable parameters."""
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        if any(is_dtensor(p) for p in group["params"]):
            raise ValueError(
                "LayerwiseOptimizer does not take FSDP2 (DTensor) parameters: FSDP2 already frees each unsharded "
                "gradient after its reduce-scatter, so use the plain optimizer on the sharded parameters, or "
                "layer-wise stepping under DistributedDataParallel (LayerwiseOptimizer.attach)"
            )
        hyperparameters = {key: value for key, value in group.items() if key not in _NOT_HYPERPARAMETERS}
        first = sum(len(earlier["params"]) for earlier in self.param_groups[:index])
        for position, p in enumerate(group["params"], start=first):
            quantized = quantized_linear_of(p)
            if not p.requires_grad and quantized is None:
                continue
            inner = self._factory([{**hyperparameters, "params": [p]}])
            if isinstance(inner, GaLoreMixin):
                # seeded projectors draw what one optimizer over all the groups would (its index, not 0)
                inner.set_param_key(p, position)
            # One state mapping for all: the base class's state_dict then packs every inner state.
            self.state.update(inner.state)
            inner.state = self.state
            # The wrapper's group gets the inner defaults, so schedulers find "lr" and state_dict saves them.
            for key, value in inner.param_groups[0].items():
                if key not in _NOT_HYPERPARAMETERS:
                    group.setdefault(key, value)
            self._layers[p] = _Layer(inner, index, quantized=quantized)
            if quantized is None:
                self._handles.append(p.register_post_accumulate_grad_hook(self._on_gradient))
            else:
                self._handles.append(quantized.register_weight_grad_hook(lambda _, codes=p: self._on_gradient(codes)))

    @property
    def inner_optimizers(self) -> list[torch.optim.Optimizer]:
        """The per-parameter optimizers, in parameter order."""
        return [layer.optimizer for layer in self._layers.values()]

    def remove_hooks(self) -> None:
        """Remove the post-accumulate-grad hooks: backward no longer steps or counts.

        A communication hook registered by :meth:`attach` stays (DDP cannot unregister one).
        """
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def attach(self, ddp_model: torch.nn.parallel.DistributedDataParallel) -> torch.nn.parallel.DistributedDataParallel:
        """Step under ``DistributedDataParallel``, after each bucket's all-reduce; returns ``ddp_model``.

        DDP runs post-accumulate-grad hooks before it all-reduces, so stepping there would use each
        rank's own gradient. This registers a communication hook instead: it averages the bucket
        over ``ddp_model.process_group`` and, when the all-reduce completes, steps the bucket's
        parameters with the averaged gradients. Every rank then applies the same update. The
        post-accumulate-grad hooks only count backward passes from now on.

        Call it once, before the first backward (DDP accepts one communication hook). Every
        parameter of this optimizer must belong to ``ddp_model``; DDP parameters of other
        optimizers get their averaged gradient in ``.grad`` as usual. The loop, ``k =
        accumulation_steps``::

            ddp_model = DistributedDataParallel(model, gradient_as_bucket_view=True)
            opt = LayerwiseOptimizer(model.parameters(), factory, accumulation_steps=k)
            opt.attach(ddp_model)
            for batch in loader:
                for i, micro in enumerate(batch.chunk(k)):
                    with ddp_model.no_sync() if i < k - 1 else contextlib.nullcontext():
                        (loss_fn(ddp_model(micro)) / k).backward()
                opt.step()
                sched.step()
                opt.zero_grad()

        After the synchronising backward, DDP writes the (already applied) averaged gradients back
        into ``.grad``; ``step()`` frees them. INT8 weights are no DDP parameters that require grad:
        their ``weight_grad`` is accumulated on each rank and ``step()`` steps them, their inner
        Q-GaLore optimizer averaging it over the ranks first (all ranks step them in the same
        order). With ``gradient_as_bucket_view=True`` they are views
        of DDP's buckets and cost no memory. Every parameter in a bucket is stepped at each
        synchronisation, also one no rank used (its gradient is then zero), where a plain
        optimizer would skip it.

        Raises
        ------
        RuntimeError
            If an optimizer is already attached.
        ValueError
            If a parameter of this optimizer is not a parameter of ``ddp_model``.
        """
        if self._distributed:
            raise RuntimeError("this LayerwiseOptimizer is already attached to a DistributedDataParallel model")
        managed = {id(p) for p in ddp_model.parameters()}
        if any(id(p) not in managed for p in self._layers):
            raise ValueError("every parameter of the LayerwiseOptimizer must be a parameter of ddp_model")
        ddp_model.register_comm_hook(ddp_model.process_group, self._allreduce_then_step)
        self._distributed = True
        return ddp_model

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Close the accumulation window; the hooks have already stepped the parameters.

        Call it once per optimizer step, after the ``accumulation_steps``-th backward. A parameter
        that took part in only some of the window's micro-batches (a conditional branch) has not
        reached its count; it is stepped here with what it accumulated, as a plain optimizer would.
        Under DDP the averaged gradients left in ``.grad`` are freed.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and calls ``backward()``; its return value is returned.

        Raises
        ------
        RuntimeError
            If the window is off the boundary: no parameter has stepped yet but some have
            accumulated gradients (step() called early, or ``accumulation_steps`` too large);
            a parameter received backward passes after it stepped (``accumulation_steps`` too
            small, or step() called late); under DDP, gradients were synchronised after a number
            of backward passes other than ``accumulation_steps``, or more than once. Parameters
            already stepped in the window stay stepped.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        message = self._window_error()
        if message is not None:
            raise RuntimeError(message)
        for p, layer in self._layers.items():
            if layer.pending:
                self._step_layer(p, layer)
            layer.steps = 0
            if self._distributed:
                p.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As ``torch.optim.Optimizer.zero_grad``, also for the INT8 weights' ``weight_grad``."""
        super().zero_grad(set_to_none=set_to_none)
        for layer in self._layers.values():
            if layer.quantized is not None:
                layer.quantized.clear_weight_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base class's state dict (every inner state, the groups) plus the accumulation tallies.

        It loads with ``torch.load(weights_only=True)`` when the inner optimizers' states do.
        Gradients accumulated mid-window are the model's, not in here: checkpoint at a boundary,
        after :meth:`step`, or save the gradients too.
        """
        state = super().state_dict()
        tallies = []
        for group in self.param_groups:
            for p in group["params"]:
                layer = self._layers.get(p)
                tallies.append([0, 0, 0] if layer is None else [layer.pending, layer.steps, layer.reached])
        state["layerwise"] = tallies
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; the optimizer must have been built the same way (groups, sizes)."""
        state_dict = dict(state_dict)
        tallies = state_dict.pop("layerwise", None)
        if tallies is None:
            raise ValueError("state_dict has no 'layerwise' entry: it was not saved by a LayerwiseOptimizer")
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for p, (pending, steps, reached) in zip(params, tallies, strict=True):
            layer = self._layers.get(p)
            if layer is not None:
                layer.pending, layer.steps, layer.reached = pending, steps, reached
        # The base class replaced self.state by a new mapping; the inner optimizers must share it again.
        for layer in self._layers.values():
            layer.optimizer.state = self.state

    def _window_error(self) -> str | None:
        k = self.accumulation_steps
        if self._distributed:
            # INT8 weights are outside DDP's buckets: they accumulate until step() steps them
            layers = [layer for layer in self._layers.values() if layer.quantized is None]
            if not layers:
                return None
        else:
            layers = list(self._layers.values())
        stepped = [layer for layer in layers if layer.steps]
        pending = max(layer.pending for layer in layers)
        if self._distributed:
            if not stepped and pending:
                return (
                    f"step() was called after {pending} backward passes without a gradient synchronisation; "
                    "the last micro-batch of each step must run outside ddp_model.no_sync()"
                )
            if pending:
                return (
                    f"{pending} backward passes ran after the gradient synchronisation; call step() right after "
                    "the synchronising backward"
                )
            if stepped:
                synchronisations = max(layer.steps for layer in stepped)
                reached = max(layer.reached for layer in stepped)
                if synchronisations > 1 or reached != k:
                    return (
                        f"gradients were synchronised {synchronisations} times since the last step(), the last "
                        f"after {reached} backward passes, but accumulation_steps={k}: run the first "
                        "accumulation_steps - 1 micro-batches of each step inside ddp_model.no_sync()"
                    )
            return None
        if not stepped:
            if pending:
                return (
                    f"step() was called after {pending} backward passes, before any parameter reached "
                    f"accumulation_steps={k}; call it at the accumulation boundary"
                )
            return None
        # A stepped parameter has had steps * k backward passes, plus those since its last step.
        passes = max(layer.steps * k + layer.pending for layer in stepped)
        if passes != k:
            return (
                f"parameters received {passes} backward passes since the last step(), but accumulation_steps={k}; "
                "call step() after every accumulation_steps backward passes"
            )
        return None

    def _on_gradient(self, p: torch.Tensor) -> None:
        layer = self._layers[p]
        layer.pending += 1
        if not self._distributed and layer.pending == self.accumulation_steps:
            self._step_layer(p, layer)

    def _step_layer(self, p: torch.Tensor, layer: _Layer, grad: torch.Tensor | None = None) -> None:
        inner_group = layer.optimizer.param_groups[0]
        for key, value in self.param_groups[layer.group].items():
            if key not in _NOT_HYPERPARAMETERS:
                inner_group[key] = value
        if grad is not None:
            p.grad = grad
        layer.reached, layer.pending = layer.pending, 0
        layer.steps += 1
        layer.optimizer.step()
        p.grad = None
        if layer.quantized is not None:
            layer.quantized.weight_grad = None

    # Unannotated: DDP checks a hook's annotations against the objects, and here they would be strings.
    def _allreduce_then_step(self, process_group, bucket):
        # DDP's default hook (average, then all-reduce), followed by the steps on the result.
        buffer = bucket.buffer()
        buffer.div_(process_group.size())
        work = dist.all_reduce(buffer, group=process_group, async_op=True)

        def step_bucket(future: torch.futures.Future) -> torch.Tensor:
            for p, grad in zip(bucket.parameters(), bucket.gradients()):
                layer = self._layers.get(p)
                if layer is not None:
                    self._step_layer(p, layer, grad)
            return future.value()[0]

        return work.get_future().then(step_bucket)
