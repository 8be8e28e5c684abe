"""Equality-constrained solvers: ``alm-sketch`` (exact augmented Lagrangian Newton with
randomized iterative sketching) and ``alm-newton`` (the same with direct or MINRES solves)."""

from . import alm_newton, alm_sketch

__all__ = ["alm_newton", "alm_sketch"]
