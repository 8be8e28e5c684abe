"""Low-rank projection of gradient matrices: the core of the GaLore family.

A :class:`Projector` is an immutable configuration: a **basis source** (``"svd"``,
``"randomized"``, ``"dct"``, ``"random"``) × a **refresh policy** (:class:`FixedGap`,
:class:`AdaptiveGap`, or every step) × a **storage** (a dense basis in the parameter's dtype,
a group-quantised int8 or int4 basis (Q-GaLore), or, for ``"dct"``, int32 indices into one
DCT basis shared by all parameters of a size) × a **side**. Its per-parameter state is a plain
dict of tensors and Python numbers, made by
:meth:`Projector.init_state` and kept by the optimizer in ``optimizer.state[p]``, so an
optimizer's ``state_dict()`` loads with ``torch.load(weights_only=True)`` and lands on the
parameter's device.

For a gradient ``G`` of shape ``(m, n)`` and an orthonormal basis ``B``:

* side ``"left"``: ``B`` is ``(m, r)``, the projected gradient is ``Bᵀ G`` of shape ``(r, n)``;
* side ``"right"``: ``B`` is ``(n, r)``, the projected gradient is ``G B`` of shape ``(m, r)``.

``side="auto"`` reduces the smaller dimension (GaLore's ``std`` rule: right when ``m ≥ n``).
The side is decided once, from the shape, and stored: it is never re-guessed from a
projected tensor's shape (the root of several shape bugs in the reference code). When the
rank reaches the projected dimension there is nothing to save, and the projector is the
identity (``scale`` still applies), so full-rank GaLore is exactly the base optimizer.

torch only, CPU or CUDA, any floating dtype; factorisations run in float32.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

import torch

from . import _projection_sources as sources
from .quantization import load_quantized, store_quantized
from .validation import check_choice, check_int, check_positive

__all__ = ["AdaptiveGap", "FixedGap", "Projected", "Projector", "subspace_similarity"]

SOURCES = ("svd", "randomized", "dct", "random")
SIDES = ("auto", "left", "right")
MOMENT_RULES = ("keep", "reset", "rotate")
STORAGES = ("dense", "int8", "int4")
STORAGE_BITS = {"int8": 8, "int4": 4}
# the side is stored as a number: optimizer.load_state_dict would mangle a string in the state
IDENTITY, LEFT, RIGHT = 0, 1, 2


@dataclass(frozen=True)
class FixedGap:
    """Refresh the basis every ``gap`` steps: at steps 0, gap, 2·gap, … (``gap=1``: every step)."""

    gap: int = 200

    def __post_init__(self) -> None:
        check_int("gap", self.gap, minimum=1)


@dataclass(frozen=True)
class AdaptiveGap:
    """Lazy refresh (Q-GaLore): the gap grows while the subspace is stable.

    At each refresh after the first, the similarity of the new and old subspaces
    (:func:`subspace_similarity`, invariant to the signs and rotation of the basis vectors)
    joins a window of the last ``window`` values; when the window is full and its mean is at
    least ``threshold``, the gap is multiplied by ``factor`` (up to ``max_gap``).
    """

    gap: int = 200
    threshold: float = 0.4
    factor: int = 2
    window: int = 5
    max_gap: int | None = None

    def __post_init__(self) -> None:
        check_int("gap", self.gap, minimum=1)
        check_int("factor", self.factor, minimum=1)
        check_int("window", self.window, minimum=1)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
        if self.max_gap is not None:
            check_int("max_gap", self.max_gap, minimum=self.gap)


RefreshPolicy = Union[FixedGap, AdaptiveGap]


class Projected(NamedTuple):
    """What :meth:`Projector.project` returns.

    Attributes
    ----------
    low : tensor
        The projected gradient, shape ``(r, n)`` (left) or ``(m, r)`` (right), the gradient's dtype.
    changed : bool
        The basis was replaced at this step (not its first construction): moments built in
        the old basis must be moved with :meth:`Projector.transport`.
    rotation : tensor of shape (r, r) or None
        ``B_newᵀ B_old`` (float32) when ``changed``, for moment rotation; ``None`` otherwise.
    refresh_s : float
        Seconds spent building the basis at this step (0.0 without a refresh).
    """

    low: torch.Tensor
    changed: bool
    rotation: torch.Tensor | None
    refresh_s: float


def subspace_similarity(rotation: torch.Tensor) -> float:
    """``‖B_newᵀ B_old‖_F² / r`` in [0, 1]: 1 for the same subspace whatever the signs, 0 for orthogonal ones."""
    return float(torch.linalg.matrix_norm(rotation) ** 2 / rotation.shape[0])


@dataclass(frozen=True)
class Projector:
    """Configuration of a gradient projector; the per-parameter state lives in a dict.

    Parameters
    ----------
    rank : int
        Target rank ``r`` (≥ 1). A rank at or above the projected dimension gives the identity.
    source : {"svd", "randomized", "dct", "random"}
        ``"svd"``: exact thin SVD of the gradient (float32), GaLore's choice.
        ``"randomized"``: range finder with ``power_iters`` power iterations and ``oversample``
        extra columns, seeded. ``"dct"``: the ``r`` DCT-II directions with the largest projected
        energy; stores int32 indices only. ``"random"``: an orthonormalised Gaussian basis, seeded.
    side : {"auto", "left", "right"}
        See the module docstring.
    refresh : int, FixedGap or AdaptiveGap
        When the basis is rebuilt; an int is a fixed gap.
    moments : {"keep", "reset", "rotate"}
        What :meth:`transport` does to optimizer moments when the basis changes: keep them as
        they are (GaLore), zero them, or rotate them into the new basis (first moments by
        ``R = B_newᵀ B_old``, second moments by ``R∘R``, which keeps them non-negative).
    scale : float
        GaLore's α, applied on the way back (:meth:`project_back`).
    oversample, power_iters : int
        Randomized source only.
    dct_method : {"auto", "fft", "matmul"}
        How the DCT similarity is formed; ``"auto"`` is the FFT on the CPU and a GEMM on GPUs.
    seed : int
        Base seed of the randomized and random sources; combined with each parameter's key.
    storage : {"dense", "int8", "int4"}
        How a basis is kept: dense in the parameter's dtype, or quantised group-wise
        (:mod:`optkit.quantization`, the group minimum as offset, nearest rounding) as
        ``basis_codes`` (uint8; int4 packs two per byte), ``basis_scale`` and ``basis_offset``
        (float32 per group). :meth:`basis` then dequantises to float32, and the projection,
        the moment rotation and the adaptive gap's similarity all use the dequantised basis.
        The ``"dct"`` source ignores it: its r int32 indices are already smaller than any basis.
    storage_group : int
        Values per quantisation group of the flattened ``(d, r)`` basis (even for ``"int4"``).
    """

    rank: int
    source: str = "svd"
    side: str = "auto"
    refresh: RefreshPolicy = FixedGap(200)
    moments: str = "keep"
    scale: float = 1.0
    oversample: int = 8
    power_iters: int = 0
    dct_method: str = "auto"
    seed: int = 0
    storage: str = "dense"
    storage_group: int = 256

    def __post_init__(self) -> None:
        check_int("rank", self.rank, minimum=1)
        check_choice("source", self.source, SOURCES)
        check_choice("side", self.side, SIDES)
        check_choice("moments", self.moments, MOMENT_RULES)
        check_choice("dct_method", self.dct_method, ("auto", "fft", "matmul"))
        check_positive("scale", self.scale)
        check_int("oversample", self.oversample, minimum=0)
        check_int("power_iters", self.power_iters, minimum=0)
        check_int("seed", self.seed, minimum=0)
        check_choice("storage", self.storage, STORAGES)
        check_int("storage_group", self.storage_group, minimum=1)
        if self.storage == "int4" and self.storage_group % 2:
            raise ValueError(
                f"storage_group must be even for int4 storage (two codes per byte), got {self.storage_group}"
            )
        if isinstance(self.refresh, bool) or not isinstance(self.refresh, (int, FixedGap, AdaptiveGap)):
            raise ValueError(f"refresh must be an int gap, FixedGap or AdaptiveGap, got {self.refresh!r}")
        if isinstance(self.refresh, int):
            object.__setattr__(self, "refresh", FixedGap(self.refresh))

    # ------------------------------------------------------------------ state
    def init_state(self, shape: tuple[int, ...], *, key: int = 0) -> dict[str, Any]:
        """A fresh per-parameter state for a gradient of ``shape`` (no basis yet).

        Parameters
        ----------
        shape : tuple of two ints
            The parameter's shape ``(m, n)``.
        key : int
            Distinguishes parameters in the seeded sources; give every rank of a distributed
            run the same key for the same parameter (e.g. its index in the optimizer).
        """
        if len(shape) != 2:
            raise ValueError(f"a projector needs a 2-D parameter, got shape {tuple(shape)}; train it full-rank instead")
        m, n = (int(s) for s in shape)
        side = {"left": LEFT, "right": RIGHT, "auto": RIGHT if m >= n else LEFT}[self.side]
        dim = m if side == LEFT else n
        rank = min(self.rank, dim)
        return {
            "side": IDENTITY if rank >= dim else side,
            "rank": rank,
            "dim": dim,
            "seed": self.seed * 1_000_003 + key,
            "refreshes": 0,
            "next_refresh": 0,
            "gap": self.refresh.gap,
            "similarities": [],
        }

    def state_nbytes(self, state: dict[str, Any]) -> int:
        """Bytes of projector storage held by one parameter's state (the shared DCT basis excluded)."""
        return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))

    def is_identity(self, state: dict[str, Any]) -> bool:
        """True when the rank reaches the projected dimension and nothing is projected."""
        return state["side"] == IDENTITY

    def low_rank_shape(self, state: dict[str, Any], shape: tuple[int, int]) -> tuple[int, int]:
        """Shape of the projected gradient of a parameter of ``shape``."""
        m, n = shape
        return {IDENTITY: (m, n), LEFT: (state["rank"], n), RIGHT: (m, state["rank"])}[state["side"]]

    # ------------------------------------------------------------ projection
    def project(self, state: dict[str, Any], grad: torch.Tensor, step: int) -> Projected:
        """Project ``grad`` (shape ``(m, n)``), rebuilding the basis first when the policy says so.

        Parameters
        ----------
        state : dict
            This parameter's state from :meth:`init_state`; updated in place.
        grad : tensor of shape (m, n)
        step : int
            Number of optimizer steps already taken for this parameter (0 at the first step).
        """
        side = state["side"]
        if side == IDENTITY:
            return Projected(grad, False, None, 0.0)
        if step >= state["next_refresh"]:
            return self._refresh(state, grad, step)
        basis = self.basis(state).to(grad.dtype)
        low = basis.mT @ grad if side == LEFT else grad @ basis
        return Projected(low, False, None, 0.0)

    def project_back(self, state: dict[str, Any], low: torch.Tensor) -> torch.Tensor:
        """``scale · B low`` (left) or ``scale · low Bᵀ`` (right): back to the parameter's shape."""
        full = self.lift(state, low)
        return full * self.scale if self.scale != 1.0 else full

    def lift(self, state: dict[str, Any], low: torch.Tensor) -> torch.Tensor:
        """``B low`` (left) or ``low Bᵀ`` (right), unscaled: the orthogonal projection of the gradient
        is ``lift(project(G))``."""
        side = state["side"]
        if side == IDENTITY:
            return low
        basis = self.basis(state).to(low.dtype)
        return basis @ low if side == LEFT else low @ basis.mT

    def basis(self, state: dict[str, Any]) -> torch.Tensor:
        """The current orthonormal basis ``B``, shape ``(m, r)`` (left) or ``(n, r)`` (right).

        Dense storage: the stored tensor (parameter dtype). ``"dct"``: the selected columns of the
        shared float32 DCT basis. int8/int4 storage: dequantised to float32 at each call (orthonormal
        up to the rounding, ``scale / 2`` per value); callers cast it.
        """
        if state["side"] == IDENTITY:
            raise ValueError("an identity projector (rank ≥ projected dimension) has no basis")
        if "indices" in state:
            shared = sources.dct_basis(state["dim"], torch.float32, state["indices"].device)
            return shared[:, state["indices"].long()]
        if "basis_codes" in state:
            return load_quantized(state, "basis", (state["dim"], state["rank"]))
        return state["basis"]

    def operator(self, state: dict[str, Any]):
        """The basis as an :class:`optkit.LinearOperator` ``P`` (``P`` lifts, ``P.H`` projects)."""
        from .linop import Dense

        return Dense(self.basis(state), tags={"orthonormal"})

    def transport(self, projected: Projected, state: dict[str, Any], moment: torch.Tensor, *, second: bool = False):
        """A moment expressed in the old basis, moved to the new one by the ``moments`` rule.

        Parameters
        ----------
        projected : Projected
            This step's :meth:`project` output; nothing happens unless ``projected.changed``.
        moment : tensor
            Of the projected gradient's shape.
        second : bool
            A second (non-negative) moment: rotated by ``R∘R``.
        """
        if not projected.changed or self.moments == "keep":
            return moment
        if self.moments == "reset":
            return torch.zeros_like(moment)
        R = projected.rotation * projected.rotation if second else projected.rotation
        R = R.to(moment.dtype)
        return R @ moment if state["side"] == LEFT else moment @ R.mT

    # ---------------------------------------------------------------- refresh
    def _refresh(self, state: dict[str, Any], grad: torch.Tensor, step: int) -> Projected:
        if grad.is_cuda:
            torch.cuda.synchronize(grad.device)
        start = time.perf_counter()
        side, rank = state["side"], state["rank"]
        oriented = grad if side == LEFT else grad.mT
        old = self.basis(state).float() if state["refreshes"] else None
        low = basis = None
        # a quantised basis is rounded once, from float32, not after a cast to a half-precision gradient's dtype
        dtype = grad.dtype if self.storage == "dense" else torch.float32
        seed = state["seed"] * 7919 + state["refreshes"]
        if self.source == "dct":
            method = self.dct_method if self.dct_method != "auto" else ("matmul" if grad.is_cuda else "fft")
            state["indices"], low = sources.select_dct(oriented, rank, method=method)
        elif self.source == "svd":
            try:
                basis = sources.svd_basis(oriented, rank).to(dtype)
            except torch.linalg.LinAlgError:
                # LAPACK's divide-and-conquer can fail on ill-conditioned gradients (GaLore#58)
                basis, low = sources.randomized_range(
                    oriented, rank, oversample=self.oversample, power_iters=2, seed=seed
                )
                basis = basis.to(dtype)
        elif self.source == "randomized":
            basis, low = sources.randomized_range(
                oriented, rank, oversample=self.oversample, power_iters=self.power_iters, seed=seed
            )
            basis = basis.to(dtype)
        else:
            basis = sources.orthonormal_random(oriented.shape[0], rank, device=grad.device, seed=seed).to(dtype)
        quantized = basis is not None and self.storage != "dense"
        rotation = None
        if old is not None:
            rotation = (basis.float() if basis is not None else self.basis(state).float()).mT @ old
            if basis is not None:
                # A singular vector's sign is arbitrary: flip each new direction to agree with the
                # old basis, so that moments kept across the refresh are not reversed at random.
                signs = torch.where(torch.diagonal(rotation) < 0, -1.0, 1.0)
                basis = basis * signs.to(basis.dtype)
                rotation = rotation * signs[:, None]
                low = None if low is None else low * signs[:, None].to(low.dtype)
        if quantized:
            store_quantized(state, "basis", basis, STORAGE_BITS[self.storage], self.storage_group)
            # project with, rotate by and measure the basis actually kept, not the one before rounding
            low = None
            basis = self.basis(state)
            rotation = None if old is None else basis.mT @ old
        elif basis is not None:
            state["basis"] = basis
        if rotation is not None:
            self._adapt_gap(state, rotation)
        if low is None:
            low = basis.to(grad.dtype).mT @ oriented
        # sources return the projection of the oriented gradient, (r, k)
        low = low if side == LEFT else low.mT
        state["refreshes"] += 1
        state["next_refresh"] = step + state["gap"]
        if grad.is_cuda:
            torch.cuda.synchronize(grad.device)
        return Projected(low, old is not None, rotation, time.perf_counter() - start)

    def _adapt_gap(self, state: dict[str, Any], rotation: torch.Tensor) -> None:
        policy = self.refresh
        if not isinstance(policy, AdaptiveGap):
            return
        window = (state["similarities"] + [subspace_similarity(rotation)])[-policy.window :]
        state["similarities"] = window
        if len(window) == policy.window and math.fsum(window) / len(window) >= policy.threshold:
            grown = state["gap"] * policy.factor
            state["gap"] = grown if policy.max_gap is None else min(grown, policy.max_gap)
