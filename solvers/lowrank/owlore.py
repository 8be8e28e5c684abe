"""OwLore: outlier-weighted layer sampling with GaLore on the sampled layers (Li et al., 2024); LISA as its uniform case.

A model's repeated blocks (LLaMA's ``model.layers``, BERT's ``encoder.layer``) are trained a few
at a time: every ``interval`` steps, ``active_layers`` blocks are drawn without replacement,
with probabilities proportional to each block's outlier ratio (``sampling="owl"``) or uniformly
(``sampling="uniform"``, LISA, Pan et al., 2024); the other blocks are frozen. Everything outside
the blocks (embeddings, final norm, head) trains at every step.

The outlier ratio of a block (OWL, Yin et al., 2024) is computed here from calibration batches
(:func:`layer_outlier_ratios`); the reference implementation reads it from a precomputed file,
keeps the moments of deactivated layers and resumes a re-sampled layer from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from optkit.validation import check_choice, check_int, check_positive

from .galore_adamw import GaLoreAdamW
from .param_groups import select_linear_modules

__all__ = ["OwLoreAdamW", "find_layers", "layer_outlier_ratios", "owlore_param_groups", "sample_layers"]

SAMPLING_RULES = ("owl", "uniform")
LAYER_STATES = ("fresh", "keep")


def find_layers(model: torch.nn.Module, layers: str | Sequence[torch.nn.Module] | None = None) -> list[torch.nn.Module]:
    """The repeated blocks of ``model`` that layer sampling draws from.

    Parameters
    ----------
    model : torch.nn.Module
    layers : str, sequence of torch.nn.Module, or None
        ``None``: the outermost ``nn.ModuleList`` whose children (at least two) are all of one class,
        the longest such list when there are several (LLaMA's ``model.layers``, BERT's
        ``encoder.layer``). A string: the dotted path of a module whose children are the blocks
        (``"model.layers"``). A sequence: the blocks themselves, modules of ``model``.

    Returns
    -------
    list of torch.nn.Module

    Raises
    ------
    ValueError
        When no list of identical blocks is found, or two of the longest length are (an
        encoder-decoder model: name one with ``layers``), or a given block is not part of ``model``.
    """
    if isinstance(layers, str):
        try:
            container = model.get_submodule(layers)
        except AttributeError as error:
            raise ValueError(f"layers={layers!r} names no submodule of {type(model).__name__}: {error}") from None
        blocks = list(container.children())
    elif layers is not None:
        blocks = list(layers)
        owned = {id(m) for m in model.modules()}
        stray = [
            i for i, block in enumerate(blocks) if not isinstance(block, torch.nn.Module) or id(block) not in owned
        ]
        if stray:
            raise ValueError(f"layers must be modules of the model; entries {stray} are not")
    else:
        blocks = _detect_blocks(model)
    if not blocks:
        raise ValueError(f"layers={layers!r} holds no block")
    return blocks


def _detect_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    candidates = {
        name: lst
        for name, lst in model.named_modules()
        if isinstance(lst, torch.nn.ModuleList) and len(lst) >= 2 and len({type(m) for m in lst}) == 1
    }
    # a list inside a block (the experts of a mixture-of-experts layer) is not the block list
    outer = {name: lst for name, lst in candidates.items() if not any(_inside(name, other) for other in candidates)}
    if not outer:
        raise ValueError(
            f"found no nn.ModuleList of at least two blocks of one class in {type(model).__name__}; pass "
            "layers= (a module path such as 'model.layers', or the list of blocks)"
        )
    longest = max(len(lst) for lst in outer.values())
    best = [name for name, lst in outer.items() if len(lst) == longest]
    if len(best) > 1:
        shown = ", ".join(f"{name!r} ({longest} x {type(outer[name][0]).__name__})" for name in best)
        raise ValueError(f"several block lists of {type(model).__name__} qualify: {shown}; choose one with layers=")
    return list(outer[best[0]])


def _inside(name: str, other: str) -> bool:
    """Whether module ``name`` lies strictly inside module ``other`` (``""`` is the model itself)."""
    return name != other and (other == "" or name.startswith(other + "."))


def _default_forward(model: torch.nn.Module, batch: Any) -> Any:
    return model(**batch) if isinstance(batch, Mapping) else model(batch)


@torch.no_grad()
def layer_outlier_ratios(
    model: torch.nn.Module,
    layers: Sequence[torch.nn.Module],
    calibration_batches: Iterable[Any],
    *,
    forward: Callable[[torch.nn.Module, Any], Any] | None = None,
    M: float = 13.0,
) -> torch.Tensor:
    """OWL's layer-wise outlier ratio ``D_l`` of each block, from calibration batches.

    For every ``nn.Linear`` of block ``l`` with weight ``W`` (shape ``(out, in)``), the Wanda
    score is ``A_ij = |W_ij| · ‖X_j‖₂``, where ``‖X_j‖₂`` is the Euclidean norm of input feature
    ``j`` over every calibration token that reached the layer. The scores of all the block's
    linear layers are pooled; ``D_l`` is the fraction of them strictly above ``M`` times their mean.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode without gradients (its mode is restored afterwards); weights of any
        floating dtype and device.
    layers : sequence of torch.nn.Module
        The blocks (see :func:`find_layers`), each with at least one ``nn.Linear``.
    calibration_batches : iterable
        At least one batch, each passed to ``forward``.
    forward : callable ``(model, batch) -> Any``, optional
        Runs the model on a batch; its result is ignored. Default ``model(**batch)`` for a
        mapping, else ``model(batch)``. A task's loss function works as well.
    M : float
        The outlier multiplier (> 0); OWL and OwLore use 13.

    Returns
    -------
    torch.Tensor of shape (L,), float64, on the CPU
        ``D_l`` as a fraction in ``[0, 1]``; the references report the same quantity in percent
        (``100 · D_l``). Pooling multiplies every norm of a block by one constant when norms are
        taken as means over samples instead of sums over tokens (as OWL's code does), which
        leaves ``D_l`` unchanged.

    Raises
    ------
    ValueError
        Before running the model, when a block has no ``nn.Linear`` or ``M`` is not positive;
        after it, when no batch was given or a linear layer received no input.
    """
    check_positive("M", M)
    forward = forward or _default_forward
    linears = [[(name, m) for name, m in block.named_modules() if isinstance(m, torch.nn.Linear)] for block in layers]
    empty = [index for index, found in enumerate(linears) if not found]
    if empty:
        raise ValueError(f"layers {empty} have no nn.Linear module: no outlier ratio can be computed for them")
    squares = {
        m: torch.zeros(m.in_features, dtype=torch.float64, device=m.weight.device)
        for found in linears
        for _, m in found
    }

    def accumulate(module: torch.nn.Module, args: tuple) -> None:
        x = args[0].detach()
        squares[module] += x.reshape(-1, x.shape[-1]).double().square().sum(dim=0)

    handles = [m.register_forward_pre_hook(accumulate) for m in squares]
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in calibration_batches:
            forward(model, batch)
            count += 1
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if count == 0:
        raise ValueError("calibration_batches must hold at least one batch")
    ratios = []
    for index, found in enumerate(linears):
        silent = [name or "<block>" for name, m in found if not squares[m].any()]
        if silent:
            raise ValueError(f"nn.Linear {silent} of layer {index} received no input during calibration")
        # float64 scores: the count above M·mean must not depend on how the threshold rounds
        scores = [m.weight.detach().double().abs() * squares[m].sqrt() for _, m in found]
        total = sum(int(s.numel()) for s in scores)
        threshold = M * float(sum(s.sum() for s in scores)) / total
        ratios.append(sum(int((s > threshold).sum()) for s in scores) / total)
    return torch.tensor(ratios, dtype=torch.float64)


def sample_layers(weights: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct indices drawn with probabilities proportional to ``weights``, without replacement.

    Without replacement with probabilities ``p = weights / weights.sum()`` means successive draws,
    each from the indices not yet drawn with ``p`` renormalised over them: the distribution of
    ``numpy.random.Generator.choice(L, count, replace=False, p=p)``. ``torch.multinomial`` without
    replacement draws exactly that (exponential keys, Efraimidis–Spirakis), in draw order.

    Parameters
    ----------
    weights : torch.Tensor of shape (L,)
        Non-negative, on the CPU, with at least ``count`` positive entries.
    count : int
        1 ≤ count ≤ L.
    generator : torch.Generator
        A CPU generator; the same seed gives the same draws on every machine and rank.

    Returns
    -------
    torch.LongTensor of shape (count,)
        The indices in the order drawn.
    """
    if weights.dim() != 1 or not 1 <= count <= weights.numel():
        raise ValueError(f"count must be in [1, {weights.numel()}] for weights of shape (L,), got {count!r}")
    return torch.multinomial(weights.to(torch.float64), count, replacement=False, generator=generator)


def owlore_param_groups(
    model: torch.nn.Module,
    layers: Sequence[torch.nn.Module],
    target: str | Sequence[str] = "all-linear",
    *,
    rank: int | None,
    **galore_options: Any,
) -> list[dict[str, Any]]:
    """Param groups for :class:`OwLoreAdamW`: the blocks' selected linear weights projected, the rest full-rank.

    Parameters
    ----------
    model : torch.nn.Module
    layers : sequence of torch.nn.Module
        The blocks; only linear weights inside them are projected. Parameters outside them
        (embeddings, final norm, head) train full-rank at every step, as in LISA.
    target : str or sequence of str
        Which linear modules to project (:func:`solvers.lowrank.param_groups.select_linear_modules`).
    rank : int or None
        The projection rank; ``None`` trains everything full-rank (LISA).
    **galore_options
        Other GaLore group options.

    Returns
    -------
    list of dict
        ``[{"params": full-rank}, {"params": projected, "rank": rank, ...}]`` over the parameters
        with ``requires_grad``; an empty group is left out.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if rank is None:
        if galore_options:
            raise ValueError(f"GaLore options {sorted(galore_options)} need a rank")
        return [{"params": trainable}]
    check_int("rank", rank, 1)
    modules = dict(model.named_modules())
    in_blocks = {id(p) for block in layers for p in block.parameters()}
    projected = [
        modules[name].weight
        for name in select_linear_modules(model, target)
        if modules[name].weight.requires_grad and id(modules[name].weight) in in_blocks
    ]
    if not projected:
        raise ValueError(f"target {target!r} selects no trainable linear weight inside the layers")
    chosen = {id(p) for p in projected}
    rest = [p for p in trainable if id(p) not in chosen]
    return ([{"params": rest}] if rest else []) + [{"params": projected, "rank": rank, **galore_options}]


class OwLoreAdamW(GaLoreAdamW):
    """GaLoreAdamW on a few sampled blocks at a time, AdamW on everything outside the blocks.

    Every ``interval`` steps, ``γ = min(active_layers, L)`` of the ``L`` blocks are drawn without
    replacement (:func:`sample_layers`) with probabilities ``p_l ∝ D_l``, the blocks' outlier
    ratios (``sampling="owl"``, OwLore), or ``p_l = 1/L`` (``"uniform"``, LISA). The drawn blocks'
    parameters get ``requires_grad=True``; the others ``requires_grad=False`` and ``grad = None``,
    so autograd computes and stores no gradient for them. Parameters of the optimizer outside
    every block are never frozen.

    Protocol: construction draws the first set, so the first forward already runs with it;
    :meth:`step` updates the parameters that have a gradient and, after every step whose count
    is a multiple of ``interval``, draws the next set, which applies from the next forward. A
    training loop only calls ``step()``; each set trains exactly ``interval`` steps.

    Parameters
    ----------
    params : iterable of tensors or dicts
        Parameters or param groups, as for :class:`GaLoreAdamW` (see :func:`owlore_param_groups`:
        the blocks' linear weights projected, the rest full-rank; groups without ``rank`` are
        AdamW, which with ``sampling="uniform"`` is LISA). Build the optimizer while every one of
        them has ``requires_grad=True``.
    layers : sequence of torch.nn.Module
        The blocks (:func:`find_layers`), disjoint, each holding parameters of ``params``.
    outlier_ratios : sequence of float or tensor of shape (L,), optional
        ``D_l`` (:func:`layer_outlier_ratios`), non-negative with at least ``γ`` positive entries;
        required by ``sampling="owl"``, refused by ``"uniform"``.
    sampling : {"owl", "uniform"}
    active_layers : int
        ``γ``, blocks trained at once (OwLore: 5); more than ``L`` means all of them.
    interval : int
        ``K``, steps between draws (OwLore: 50).
    layer_state : {"fresh", "keep"}
        ``"fresh"``: the moments and projector state of a block leaving the active set are deleted,
        and a block drawn again starts from zero moments and a new basis, so the state holds ``γ``
        blocks at most (a block drawn in two consecutive sets keeps its state). ``"keep"``: the
        reference's behaviour, for comparison: every block's state stays after it is frozen and
        is resumed when it is drawn again, so the state grows to that of GaLore over every block
        ever drawn (all ``L`` in a long run).
    seed : int
        Seeds the sampler's ``torch.Generator`` (CPU): the same draws on every rank.
    lr, betas, eps, weight_decay, **galore :
        As :class:`GaLoreAdamW`.

    Attributes
    ----------
    active : tuple of int
        The blocks trained now, ascending.
    probabilities : torch.Tensor of shape (L,), float64
        ``p_l``.

    Notes
    -----
    ``state_dict()`` adds ``"sampling"``: the generator state (uint8 tensor), the step count and
    the active blocks (int64 tensor); a resumed run equals an uninterrupted one bit for bit, across
    draws too. A block restarted fresh gets a projector seed of its own (the parameter's index
    plus the number of parameters times the draw count), so seeded sources (``"random"``,
    ``"randomized"``) do not repeat the basis of its previous activation.

    Under ``DistributedDataParallel``, wrap the model before building the optimizer (DDP leaves
    out of its all-reduce every parameter frozen when it is wrapped) with
    ``find_unused_parameters=True`` (frozen blocks produce no gradient); every rank draws the same
    blocks. DDP's gradient buckets keep room for every parameter, so under DDP frozen blocks save
    optimizer state but not gradient memory. FSDP2 (DTensor) parameters are refused.

    When training ends, the blocks of the last draw are the only trainable ones;
    ``model.requires_grad_(True)`` makes the whole model trainable again.
    """

    supports_fsdp2 = False
    fsdp2_alternatives = "blocks frozen and thawed between steps are not supported under fully_shard; use DDP"

    def __init__(
        self,
        params: Iterable[Any],
        layers: Sequence[torch.nn.Module],
        *,
        outlier_ratios: Sequence[float] | torch.Tensor | None = None,
        sampling: str = "owl",
        active_layers: int = 5,
        interval: int = 50,
        layer_state: str = "fresh",
        seed: int = 0,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        **galore: Any,
    ) -> None:
        check_choice("sampling", sampling, SAMPLING_RULES)
        check_int("active_layers", active_layers, 1)
        check_int("interval", interval, 1)
        check_choice("layer_state", layer_state, LAYER_STATES)
        check_int("seed", seed, 0)
        if isinstance(layers, torch.nn.Module) and not isinstance(layers, torch.nn.ModuleList):
            raise TypeError(f"layers must be a sequence of blocks, got one {type(layers).__name__}")
        layers = list(layers)
        if not layers or not all(isinstance(block, torch.nn.Module) for block in layers):
            raise ValueError("layers must be a non-empty sequence of torch.nn.Module blocks")
        count = min(active_layers, len(layers))
        weights = _sampling_weights(sampling, outlier_ratios, len(layers), count)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **galore)
        self._layer_params = self._params_by_layer(layers)
        self.sampling, self.layer_state, self.interval, self.active_layers = sampling, layer_state, interval, count
        self.probabilities = weights / weights.sum()
        self._generator = torch.Generator().manual_seed(seed)
        self._clock = 0
        self._base_keys = dict(self._param_keys)
        self.active: tuple[int, ...] = ()
        self._activate(self._draw())

    def _params_by_layer(self, layers: list[torch.nn.Module]) -> list[list[torch.Tensor]]:
        owner: dict[int, int] = {}
        for index, block in enumerate(layers):
            for p in block.parameters():
                if owner.setdefault(id(p), index) != index:
                    raise ValueError(f"layers {owner[id(p)]} and {index} share a parameter; blocks must be disjoint")
        by_layer: list[list[torch.Tensor]] = [[] for _ in layers]
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) in owner:
                    if not p.requires_grad:
                        raise ValueError("build the optimizer while every parameter given has requires_grad=True")
                    by_layer[owner[id(p)]].append(p)
        empty = [index for index, found in enumerate(by_layer) if not found]
        if empty:
            raise ValueError(f"layers {empty} hold no parameter of this optimizer")
        return by_layer

    def _draw(self) -> tuple[int, ...]:
        return tuple(sorted(int(i) for i in sample_layers(self.probabilities, self.active_layers, self._generator)))

    def _activate(self, active: tuple[int, ...]) -> None:
        """Train the blocks ``active`` from the next forward on, freeze (and in "fresh" mode release) the others."""
        draws = self._clock // self.interval
        for index, params in enumerate(self._layer_params):
            on = index in active
            for p in params:
                p.requires_grad_(on)
                if on:
                    if "projector" not in self.state.get(p, {}):
                        self._param_keys[p] = self._base_keys[p] + len(self._base_keys) * draws
                else:
                    p.grad = None
                    if self.layer_state == "fresh":
                        self.state.pop(p, None)
        self.active = active

    def step(self, closure=None):
        """One step on every parameter with a gradient, then the next draw when ``interval`` steps are done;
        returns ``closure()``'s loss if given."""
        loss = super().step(closure)
        self._clock += 1
        if self._clock % self.interval == 0:
            self._activate(self._draw())
        return loss

    def state_dict(self) -> dict[str, Any]:
        """As :class:`GaLoreAdamW`'s, plus ``"sampling"``: ``generator`` (uint8 tensor), ``clock`` (int),
        ``active`` (int64 tensor)."""
        out = super().state_dict()
        out["sampling"] = {
            "generator": self._generator.get_state(),
            "clock": self._clock,
            "active": torch.tensor(self.active, dtype=torch.int64),
        }
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`: the moments, the sampler, and the saved active blocks made trainable."""
        sampling = state_dict.get("sampling")
        if not isinstance(sampling, Mapping) or {"generator", "clock", "active"} - set(sampling):
            raise ValueError("state_dict has no 'sampling' entry: it was not saved by OwLoreAdamW")
        active = tuple(int(i) for i in sampling["active"])
        if len(active) != self.active_layers or not all(0 <= i < len(self._layer_params) for i in active):
            raise ValueError(
                f"the saved active blocks {active} do not fit {self.active_layers} of {len(self._layer_params)} layers"
            )
        super().load_state_dict(state_dict)
        self._generator.set_state(sampling["generator"])
        self._clock = int(sampling["clock"])
        self._activate(active)


def _sampling_weights(sampling: str, outlier_ratios: Any, n_layers: int, count: int) -> torch.Tensor:
    if sampling == "uniform":
        if outlier_ratios is not None:
            raise ValueError("outlier_ratios are used by sampling='owl' only; drop them for 'uniform'")
        return torch.ones(n_layers, dtype=torch.float64)
    if outlier_ratios is None:
        raise ValueError("sampling='owl' needs outlier_ratios (see layer_outlier_ratios)")
    weights = torch.as_tensor(outlier_ratios, dtype=torch.float64).detach().cpu()
    if weights.shape != (n_layers,) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"outlier_ratios must be {n_layers} finite non-negative numbers, one per layer, got {weights}")
    if int((weights > 0).sum()) < count:
        raise ValueError(
            f"only {int((weights > 0).sum())} layers have a positive outlier ratio, fewer than the {count} to draw "
            "without replacement; lower M, draw fewer layers, or use sampling='uniform'"
        )
    return weights
