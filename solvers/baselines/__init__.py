"""Baselines wrapped from other libraries, registered like optkit's own solvers."""

from . import (
    celer_solvers,
    ipopt_solver,
    peft_lora,
    pot_solvers,
    pot_sparsity,
    pyamg_solver,
    q_galore_torch,
    regot_solvers,
    scipy_constrained,
    scipy_least_squares,
    scipy_solvers,
    skglm_solvers,
    sklearn_linear,
    torch_optimizers,
)

__all__ = [
    "celer_solvers",
    "ipopt_solver",
    "peft_lora",
    "pot_solvers",
    "pot_sparsity",
    "pyamg_solver",
    "q_galore_torch",
    "regot_solvers",
    "scipy_constrained",
    "scipy_least_squares",
    "scipy_solvers",
    "skglm_solvers",
    "sklearn_linear",
    "torch_optimizers",
]
