"""One table of GaLore options: the optimizers' group defaults and the recipes' solver options agree."""

import dataclasses

import pytest

import optkit
from solvers.lowrank.options import (
    GALORE_DEFAULTS,
    GALORE_OPTIONS,
    MOMENT_RULES,
    PROJ_SIDES,
    PROJ_SOURCES,
    RECIPE_RANK,
    check_galore_options,
)

torch = pytest.importorskip("torch")

RECIPES = ("galore-adamw", "galore-adamw8bit", "galore-adafactor")


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_exposes_every_group_option_with_the_tables_default(name):
    fields = {f.name: f.default for f in dataclasses.fields(optkit.get_solver(name))}
    for option, (default, _meaning) in GALORE_OPTIONS.items():
        assert fields[option] == default, option
    assert fields["rank"] == RECIPE_RANK and fields["target"] == "all-linear"
    solver = optkit.get_solver(name, proj_side="right", oversample=3, proj_seed=7, power_iters=0)
    assert solver.galore_options() == {
        "rank": RECIPE_RANK, **{k: v for k, (v, _) in GALORE_OPTIONS.items()},
        "proj_side": "right", "oversample": 3, "proj_seed": 7, "power_iters": 0,
    }


def test_the_optimizers_group_defaults_are_the_table():
    from solvers.lowrank import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit

    p = torch.nn.Parameter(torch.zeros(4, 3))
    for cls in (GaLoreAdamW, GaLoreAdafactor, GaLoreAdamW8bit):
        group = cls([p], lr=1e-3).param_groups[0]
        assert {k: group[k] for k in GALORE_DEFAULTS} == GALORE_DEFAULTS, cls.__name__


def test_the_tables_choices_are_the_projectors():
    from optkit import projection

    assert PROJ_SOURCES == projection.SOURCES and PROJ_SIDES == projection.SIDES
    assert MOMENT_RULES == projection.MOMENT_RULES


@pytest.mark.parametrize("options, match", [
    ({"rank": 0}, "rank must be an integer >= 1"),
    ({"proj_side": "top"}, "proj_side must be one of"),
    ({"oversample": -1}, "oversample must be an integer >= 0"),
    ({"proj_seed": 1.5}, "proj_seed must be an integer"),
    ({"refresh": "sometimes"}, "refresh must be one of"),
    ({"error_feedback": 1}, "error_feedback must be true or false"),
    ({"scale": float("inf")}, "scale must be a positive finite"),
])
def test_one_validation_for_optimizers_and_recipes(options, match):
    from solvers.lowrank import GaLoreAdamW

    with pytest.raises(ValueError, match=match):
        check_galore_options(options)
    with pytest.raises(ValueError, match=match):
        optkit.get_solver("galore-adamw", **options)
    with pytest.raises(ValueError, match=match):
        GaLoreAdamW([torch.nn.Parameter(torch.zeros(4, 3))], **{"rank": 2, **options})


def test_recipe_tol_is_the_gradient_test_not_ignored():
    task_reason = optkit.get_solver("galore-adamw", tol=1e-6).check(optkit.get_problem("llm/llama-micro"))
    assert "tol apply to smooth and finite-sum problems" in task_reason
