"""GaLore's options and defaults: one table, read by the optimizers' param groups and by the solver recipes.

``GALORE_OPTIONS`` holds every per-group option of the GaLore optimizers except ``rank``, with its
default and meaning; :func:`check_galore_options` validates a set of them (errors name the option).
The optimizers (:mod:`solvers.lowrank.galore_adamw` and its siblings) take these as group
options, the recipes (:mod:`solvers.lowrank.recipes`) as solver options with the same names and
defaults. ``rank`` is the one difference: in an optimizer a group without a rank trains
full-rank (default ``None``), while a recipe always projects (default 128).

This module imports no torch, so the registry can read it without loading torch.
"""

from __future__ import annotations

from typing import Any, Mapping

from optkit.validation import check_choice, check_int, check_positive

__all__ = [
    "GALORE_DEFAULTS",
    "GALORE_OPTIONS",
    "MOMENT_RULES",
    "PROJ_BITS",
    "PROJ_SIDES",
    "PROJ_SOURCES",
    "RECIPE_RANK",
    "REFRESH_POLICIES",
    "check_galore_options",
]

# the names optkit.projection takes (a test checks they agree with it)
PROJ_SOURCES = ("svd", "randomized", "dct", "random")
PROJ_SIDES = ("auto", "left", "right")
MOMENT_RULES = ("keep", "reset", "rotate")
REFRESH_POLICIES = ("fixed", "adaptive")
#: ``proj_bits``: ``None`` keeps the basis dense, 8 or 4 quantises it group-wise (Q-GaLore)
PROJ_BITS = (None, 8, 4)

#: The default rank of a recipe (an optimizer group's default is ``None``: not projected).
RECIPE_RANK = 128

#: Every GaLore group option but ``rank``: ``name -> (default, meaning)``.
GALORE_OPTIONS: dict[str, tuple[Any, str]] = {
    "update_proj_gap": (200, "steps between basis refreshes (the initial gap of the adaptive policy)"),
    "scale": (1.0, "GaLore's alpha, multiplying the update projected back (the paper pre-trains with 0.25)"),
    "proj": ("svd", "basis source: " + ", ".join(PROJ_SOURCES)),
    "proj_side": ("auto", "which side of a weight the basis multiplies: " + ", ".join(PROJ_SIDES)),
    "moments": ("keep", "what the moments do when the basis changes: " + ", ".join(MOMENT_RULES)),
    "refresh": ("fixed", "refresh every update_proj_gap steps, or adaptively: " + ", ".join(REFRESH_POLICIES)),
    "power_iters": (0, "power iterations of the randomized source"),
    "oversample": (8, "extra columns of the randomized source's test matrix"),
    "proj_seed": (0, "base seed of the randomized and random sources (the same on every rank)"),
    "error_feedback": (False, "add what the projection dropped to the next gradient (a full-size buffer)"),
    "proj_bits": (None, "store the basis quantised to 8 or 4 bits per value (None: dense, parameter dtype)"),
    "proj_group_size": (256, "values per quantisation group of a quantised basis (even for 4 bits)"),
}

#: An optimizer group's defaults: ``rank`` (``None``: full-rank) and the table's.
GALORE_DEFAULTS: dict[str, Any] = {"rank": None, **{name: default for name, (default, _) in GALORE_OPTIONS.items()}}


def check_galore_options(options: Mapping[str, Any]) -> None:
    """Validate GaLore options (any subset of ``rank`` and :data:`GALORE_OPTIONS`) before any work.

    Raises
    ------
    ValueError
        Naming the first invalid option and what it must be.
    """
    rank = options.get("rank")
    if rank is not None:
        check_int("rank", rank, 1)
    checks = {
        "update_proj_gap": lambda v: check_int("update_proj_gap", v, 1),
        "scale": lambda v: check_positive("scale", v),
        "proj": lambda v: check_choice("proj", v, PROJ_SOURCES),
        "proj_side": lambda v: check_choice("proj_side", v, PROJ_SIDES),
        "moments": lambda v: check_choice("moments", v, MOMENT_RULES),
        "refresh": lambda v: check_choice("refresh", v, REFRESH_POLICIES),
        "power_iters": lambda v: check_int("power_iters", v, 0),
        "oversample": lambda v: check_int("oversample", v, 0),
        "proj_seed": lambda v: check_int("proj_seed", v, 0),
        "error_feedback": _check_bool("error_feedback"),
        "proj_bits": lambda v: check_choice("proj_bits", v, PROJ_BITS),
        "proj_group_size": lambda v: check_int("proj_group_size", v, 1),
    }
    for name, check in checks.items():
        if name in options:
            check(options[name])
    if options.get("proj_bits") == 4 and options.get("proj_group_size", 256) % 2:
        raise ValueError(f"proj_group_size must be even with proj_bits=4, got {options['proj_group_size']!r}")


def _check_bool(name: str):
    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")

    return check
