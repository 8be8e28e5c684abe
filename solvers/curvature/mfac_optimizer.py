"""The M-FAC optimizer: preconditioning by the inverse empirical Fisher of a sliding gradient window.

Frantar, Kurtic and Alistarh, "M-FAC: Efficient Matrix-Free Approximations of Second-Order
Information", NeurIPS 2021 (the dynamic algorithm).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from optkit.torch_optim import restore_state_dtypes
from optkit.validation import check_int, check_nonnegative, check_positive

from ._gram_factor import shifted_solve
from .mfac_inverse import MFACInverse

__all__ = ["MFAC"]


class MFAC(torch.optim.Optimizer):
    """Steps ``w ← w − lr · F⁻¹ g`` with ``F`` the damped empirical Fisher of the last ``m`` gradients.

    All parameters form one vector of ``d`` coordinates (concatenated in param-group order).
    The optimizer keeps the last ``m`` gradients in a ring buffer ``G`` (``m × d``, zero rows
    until ``m`` steps have been taken) and their Gram matrix ``G Gᵀ``, and uses

        F = λ I + (1/m) Σ_{i ≤ m} g_i g_iᵀ,   F⁻¹ g = (g − Gᵀ (G Gᵀ + mλ I)⁻¹ G g) / λ.

    One step: ``g = ∇ + weight_decay · w`` (L2 added to the gradient, per group, as the
    reference does); ``g`` replaces the oldest row of ``G``; the new Gram row is ``G g``, which
    is also the first product of the inverse-Fisher product (one pass over ``G``); a Cholesky
    factorisation of ``G Gᵀ + mλ I`` in float64 (``O(m³)``; the eigendecomposition when
    rounding makes it fail) gives ``z``; ``u = (g − Gᵀ z)/λ`` is the second pass; with
    momentum ``v ← μ v + (1 − μ) u`` and ``u = v``; then ``w ← w − lr · u`` with each group's
    ``lr``. A step costs two passes over the buffer plus ``O(m³)`` on an ``m × m`` matrix.

    Parameters
    ----------
    params : iterable of tensors or dicts
        Parameters or param groups, all on one device (CPU or CUDA). A group may set its own
        ``lr`` and ``weight_decay``. The parameter set is fixed when the optimizer is built.
    lr : float
        Learning rate (> 0). Default 1e-3 (the reference's).
    num_grads : int
        ``m >= 1``, the window of gradients (any size; the reference caps it at 1024). Memory
        is ``m · d`` values of the buffer dtype. Default 1024 (the reference's).
    damp : float
        ``λ > 0``. Default 1e-5 (the reference's). ``F⁻¹ g ≈ g/λ`` along directions the
        window has not seen, so the step there is ``lr/λ`` times the gradient: choose ``lr``
        and ``λ`` together (see docs/methods/mfac.md).
    momentum : float
        ``μ`` in [0, 1): exponential average of the preconditioned directions. Default 0.
    weight_decay : float
        ``>= 0``, L2 coefficient added to the gradient before preconditioning. Default 0.
    sparse : bool
        Freeze the weights that are exactly zero now (a pruned model): their coordinates are
        left out of the window and never updated, so ``d`` counts only the others.

    Notes
    -----
    The state is tensors only, kept under the first parameter: ``grads`` (``m × d`` buffer),
    ``gram`` (``m × m``), ``step`` (gradients taken), ``skipped`` (non-finite gradients
    refused), ``momentum_buffer`` (``d``, with momentum) and ``mask`` (over all coordinates,
    with ``sparse``). ``state_dict()`` saves with ``torch.save`` and loads with
    ``torch.load(weights_only=True)``; a run resumed from it continues bit for bit as the
    uninterrupted one on the CPU. The buffer dtype is the parameters' promoted dtype, at least
    float32. A gradient with a NaN or inf is refused: weights, window and momentum stay as
    they were and ``skipped`` counts it.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        num_grads: int = 1024,
        damp: float = 1e-5,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        sparse: bool = False,
    ) -> None:
        check_positive("lr", lr)
        self.num_grads = check_int("num_grads", num_grads, 1)
        self.damp = check_positive("damp", damp)
        if check_nonnegative("momentum", momentum) >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        check_nonnegative("weight_decay", weight_decay)
        if not isinstance(sparse, bool):
            raise TypeError(f"sparse must be true or false, got {sparse!r}")
        self.sparse = sparse
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        for group in self.param_groups:
            check_positive("lr", group["lr"])
            check_nonnegative("weight_decay", group["weight_decay"])
        self._params = [p for group in self.param_groups for p in group["params"]]
        if not self._params:
            raise ValueError("MFAC got no parameters to optimize")
        devices = {p.device for p in self._params}
        if len(devices) > 1:
            raise ValueError(f"MFAC keeps one gradient window: all parameters must be on one device, got {devices}")
        self._init_state()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_params", None) is not None:
            raise ValueError("MFAC's gradient window spans a fixed set of parameters: build a new optimizer instead")
        super().add_param_group(param_group)

    # ------------------------------------------------------------------ state
    @property
    def _state(self) -> dict[str, torch.Tensor]:
        return self.state[self._params[0]]

    def _init_state(self) -> None:
        dtype = torch.float32
        for p in self._params:
            if not p.is_floating_point():
                raise ValueError(f"MFAC needs floating-point parameters, got one of dtype {p.dtype}")
            dtype = torch.promote_types(dtype, p.dtype)
        device = self._params[0].device
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).to(dtype) for p in self._params])
        state = self._state
        if self.sparse:
            state["mask"] = flat != 0
            d = int(state["mask"].sum())
        else:
            d = flat.numel()
        if d == 0:
            raise ValueError("MFAC(sparse=True) got parameters that are all exactly zero: nothing to optimize")
        state["grads"] = torch.zeros((self.num_grads, d), dtype=dtype, device=device)
        state["gram"] = torch.zeros((self.num_grads, self.num_grads), dtype=dtype, device=device)
        state["step"] = torch.zeros((), dtype=torch.int64)
        state["skipped"] = torch.zeros((), dtype=torch.int64)
        if self.momentum > 0:
            state["momentum_buffer"] = torch.zeros(d, dtype=dtype, device=device)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` of an MFAC optimizer of the same options and parameters,
        keeping the window's dtypes (see :func:`optkit.torch_optim.restore_state_dtypes`)."""
        saved = state_dict["state"].get(0, {})
        expected = {k: (v.shape, v.dtype) for k, v in self._state.items()}
        found = {k: (v.shape, v.dtype) for k, v in saved.items() if isinstance(v, torch.Tensor)}
        if found != expected:
            raise ValueError(
                f"this state_dict holds a different M-FAC window: {_describe(found)}, but this optimizer "
                f"(num_grads={self.num_grads}, momentum={self.momentum}, sparse={self.sparse}) has {_describe(expected)}"
            )
        super().load_state_dict(state_dict)
        restore_state_dtypes(self, state_dict)

    # ------------------------------------------------------------------ products
    def _flat(self, tensors: Iterable[torch.Tensor]) -> torch.Tensor:
        """Concatenated over the parameters, in the window's dtype, restricted to the mask."""
        dtype = self._state["grads"].dtype
        flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
        return flat[self._state["mask"]] if self.sparse else flat

    def _solve(self, x: torch.Tensor, Gx: torch.Tensor) -> torch.Tensor:
        """``F⁻¹ x`` given ``Gx = G x``."""
        G, gram = self._state["grads"], self._state["gram"]
        z = shifted_solve(gram, self.num_grads * self.damp, Gx)
        return (x - G.T @ z.to(G.dtype)) / self.damp

    @torch.no_grad()
    def ihvp(self, x: torch.Tensor) -> torch.Tensor:
        """``F⁻¹ x`` on the current window.

        Parameters
        ----------
        x : torch.Tensor, shape (d,)
            On the parameters' device, ``d`` the window's coordinates (the unfrozen ones with
            ``sparse``).

        Returns
        -------
        torch.Tensor, shape (d,), in the window's dtype
        """
        G = self._state["grads"]
        if tuple(x.shape) != (G.shape[1],):
            raise ValueError(f"x must be a vector of shape ({G.shape[1]},), got {tuple(x.shape)}")
        x = x.to(dtype=G.dtype, device=G.device)
        return self._solve(x, G @ x)

    def inverse_fisher(self) -> MFACInverse:
        """:class:`MFACInverse` of the current window (a copy: it does not follow later steps)."""
        return MFACInverse(self._state["grads"].clone(), self.damp)

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One M-FAC step with the gradients in the parameters' ``.grad`` (``None`` counts as zero).

        ``closure`` (optional) re-evaluates the model and returns the loss; it is called once
        with gradients enabled, before the step, as in ``torch.optim.SGD``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        state = self._state
        g = self._flat(self._decayed_gradients())
        if not bool(torch.isfinite(g).all()):
            state["skipped"] += 1
            return loss
        G, gram = state["grads"], state["gram"]
        slot = int(state["step"]) % self.num_grads
        G[slot] = g
        Gg = G @ g
        gram[slot, :] = Gg
        gram[:, slot] = Gg
        u = self._solve(g, Gg)
        if self.momentum > 0:
            v = state["momentum_buffer"]
            v.mul_(self.momentum).add_(u, alpha=1 - self.momentum)
            u = v
        self._apply(u)
        state["step"] += 1
        return loss

    def _decayed_gradients(self) -> Iterable[torch.Tensor]:
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                yield g + group["weight_decay"] * p if group["weight_decay"] else g

    def _apply(self, u: torch.Tensor) -> None:
        """``w ← w − lr · u`` per group, ``u`` over the window's coordinates."""
        if self.sparse:
            mask = self._state["mask"]
            full = torch.zeros(mask.shape, dtype=u.dtype, device=u.device)
            full[mask] = u
            u = full
        offset = 0
        for group in self.param_groups:
            for p in group["params"]:
                n = p.numel()
                p.add_(u[offset : offset + n].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += n


def _describe(shapes: dict[str, tuple]) -> str:
    return ", ".join(f"{k} {tuple(s)} {str(t).removeprefix('torch.')}" for k, (s, t) in sorted(shapes.items())) or "nothing"
