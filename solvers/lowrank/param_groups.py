"""Choosing which weights GaLore projects: ``galore_param_groups(model, target, rank=…)``."""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch

__all__ = ["galore_param_groups", "select_linear_modules"]

# the GaLore reference scripts project the nn.Linear weights of attention and MLP blocks
_ATTN_MLP = re.compile(r".*(attn|attention|mlp).*")


def select_linear_modules(model: torch.nn.Module, target: str | Sequence[str] = "all-linear") -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` that ``target`` selects.

    Parameters
    ----------
    model : torch.nn.Module
    target : str or sequence of str
        ``"all-linear"``: every ``nn.Linear`` except the output layer (the module holding
        ``model.get_output_embeddings()`` when the model has one, else one named ``lm_head``).
        ``"attn-mlp"``: linear modules whose name contains ``attn``, ``attention`` or ``mlp``
        (the GaLore paper's choice). Another string: a regular expression that must match
        the whole module name. A sequence: module names, each matching a module of that
        name or ending in ``.<name>`` (``"q_proj"`` selects every ``…self_attn.q_proj``).

    Raises
    ------
    ValueError
        When nothing is selected; the message lists the model's linear modules.
    """
    linear = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if isinstance(target, str) and target == "all-linear":
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        chosen = [n for n, m in linear.items() if m is not output and n.split(".")[-1] != "lm_head"]
    elif isinstance(target, str):
        pattern = _ATTN_MLP if target == "attn-mlp" else re.compile(target)
        chosen = [n for n in linear if pattern.fullmatch(n)]
    elif isinstance(target, Sequence) and all(isinstance(t, str) for t in target):
        chosen = [n for n in linear if any(n == t or n.endswith("." + t) for t in target)]
    else:
        raise ValueError(f"target must be 'all-linear', 'attn-mlp', a regex or a list of module names, got {target!r}")
    if not chosen:
        shown = ", ".join(list(linear)[:24]) + (f", … ({len(linear)} in all)" if len(linear) > 24 else "")
        raise ValueError(
            f"target {target!r} selects no nn.Linear module of {type(model).__name__}; "
            f"its linear modules are: {shown or '(none)'}"
        )
    return chosen


def galore_param_groups(
    model: torch.nn.Module, target: str | Sequence[str] = "all-linear", *, rank: int, **galore_options: Any
) -> list[dict[str, Any]]:
    """Param groups for a GaLore optimizer: selected linear weights projected, everything else full-rank.

    Parameters
    ----------
    model : torch.nn.Module
    target : str or sequence of str
        Which linear modules to project (see :func:`select_linear_modules`).
    rank : int
        The projection rank (positive).
    **galore_options
        Other per-group GaLore options (``update_proj_gap``, ``scale``, ``proj``, …).

    Returns
    -------
    list of dict
        ``[{"params": full-rank parameters}, {"params": projected weights, "rank": rank, …}]``;
        only parameters with ``requires_grad``. The first group is omitted when empty.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    modules = dict(model.named_modules())
    projected = [modules[n].weight for n in select_linear_modules(model, target) if modules[n].weight.requires_grad]
    ids = {id(p) for p in projected}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest}] if rest else []
    return groups + [{"params": projected, "rank": rank, **galore_options}]
