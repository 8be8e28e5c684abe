"""Pressure Poisson systems of a fluid simulator on an ``N x N x N`` grid of flagged cells.

Each cell is fluid, solid or air (:data:`FLUID`, :data:`SOLID`, :data:`AIR`), as in a
grid-based smoke or liquid solver after its advection step. The unknowns are the pressures of
the fluid cells; the 7-point stencil (scaled by ``h**2``, unit density) couples each fluid cell
to its six face neighbours:

- a fluid neighbour adds 1 to the diagonal and -1 off it;
- an air neighbour (a free surface, pressure 0: Dirichlet) adds 1 to the diagonal only;
- a solid neighbour (a wall or obstacle: zero normal velocity, Neumann) adds nothing.

Outside the grid counts as ``outside`` (solid by default: a closed container). The matrix is
symmetric positive semidefinite; every connected fluid region that touches no air has the
constant on that region in its nullspace (a closed box of smoke is pure Neumann). Such systems
get their right-hand side projected onto the range, and ``metadata["nullspace"]`` holds an
orthonormal basis of the nullspace for the solvers that use it (``dcdm`` and ``deflated-pcg``
project it out of their directions; PyAMG needs nothing: its aggregates never cross regions, so
its default constant candidate already spans the nullspace).

Geometries (:func:`cell_flags`): ``box`` (empty closed box), ``spheres`` (random sphere
obstacles), ``bunny`` (a lumpy blob from a seeded implicit surface, with two "ears"),
``liquid`` (a wavy free surface with a falling drop, air above). Right-hand sides: minus the
divergence of a seeded smooth velocity field with zero flux through solid faces (what a
projection step solves), or a Gaussian vector.

Registered problem ``linear/pressure-3d``; suite ``pressure`` (unseen obstacle geometries).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from optkit.problem import LinearSystemProblem
from optkit.registry import register_problem, register_suite
from optkit.validation import check_choice, check_int

__all__ = ["AIR", "FLUID", "GEOMETRIES", "SOLID", "cell_flags", "pressure_matrix", "pressure_problem"]

FLUID, SOLID, AIR = 0, 1, 2
GEOMETRIES = ("box", "spheres", "bunny", "liquid")
RHS = ("divergence", "random")
_FLAG_NAMES = {"solid": SOLID, "air": AIR}


def _centres(n: int) -> np.ndarray:
    """Cell-centre coordinates in [0, 1] along one axis."""
    return (np.arange(n) + 0.5) / n


def cell_flags(n: int, geometry: str = "spheres", *, obstacles: int = 4, seed: int = 0) -> np.ndarray:
    """Cell flags of one geometry on an ``n**3`` grid.

    Parameters
    ----------
    n : int
        Cells per side (``n >= 2``).
    geometry : {"box", "spheres", "bunny", "liquid"}
        ``box``: all fluid. ``spheres``: ``obstacles`` solid spheres, radii 0.08--0.2 of the
        box, centres drawn inside. ``bunny``: one solid blob at the centre whose radius varies
        by seeded Gaussian lobes over the directions, plus two ear lobes on top. ``liquid``:
        fluid below a height field ``0.4 + waves`` along axis 0 (the vertical) and a spherical
        drop above it; air elsewhere.
    obstacles : int
        Number of spheres (``spheres`` only).
    seed : int
        Seeds the random shapes; the shapes are defined in unit coordinates, so one seed gives
        the same geometry at every resolution.

    Returns
    -------
    numpy.ndarray of uint8, shape (n, n, n)
        :data:`FLUID`, :data:`SOLID` or :data:`AIR` per cell, C order.
    """
    n = check_int("n", n, 2)
    check_choice("geometry", geometry, GEOMETRIES)
    obstacles = check_int("obstacles", obstacles, 0)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    z, y, x = np.meshgrid(_centres(n), _centres(n), _centres(n), indexing="ij")
    flags = np.full((n, n, n), FLUID, dtype=np.uint8)
    if geometry == "spheres":
        for _ in range(obstacles):
            radius = rng.uniform(0.08, 0.2)
            c = rng.uniform(radius, 1 - radius, size=3)
            flags[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < radius**2] = SOLID
    elif geometry == "bunny":
        d = np.stack([z - 0.45, y - 0.5, x - 0.5])
        dist = np.sqrt((d**2).sum(axis=0)) + 1e-12
        radius = np.full_like(dist, 0.2)
        for _ in range(6):
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            cosine = np.tensordot(direction, d, axes=1) / dist
            radius += rng.uniform(0.02, 0.06) * np.exp(-((1 - cosine) / 0.15))
        flags[dist < radius] = SOLID
        for side in (-1, 1):
            ear = np.array([0.75, 0.5 + side * rng.uniform(0.05, 0.1), 0.5])
            stretch = (z - ear[0]) ** 2 / 0.15**2 + ((y - ear[1]) ** 2 + (x - ear[2]) ** 2) / 0.05**2
            flags[stretch < 1] = SOLID
    elif geometry == "liquid":
        k = rng.integers(1, 4, size=2)
        phase = rng.uniform(0, 2 * np.pi, size=2)
        height = 0.4 + 0.06 * np.sin(2 * np.pi * k[0] * y + phase[0]) * np.cos(2 * np.pi * k[1] * x + phase[1])
        flags[:] = AIR
        flags[z < height] = FLUID
        drop = np.array([rng.uniform(0.65, 0.75), *rng.uniform(0.3, 0.7, size=2)])
        flags[(z - drop[0]) ** 2 + (y - drop[1]) ** 2 + (x - drop[2]) ** 2 < 0.1**2] = FLUID
    return flags


def _check_flags(flags) -> np.ndarray:
    flags = np.asarray(flags)
    if flags.ndim != 3 or min(flags.shape) < 1:
        raise ValueError(f"flags must be a 3-D array of cells, got shape {flags.shape}")
    if not np.isin(flags, (FLUID, SOLID, AIR)).all():
        raise ValueError(f"flags must hold only FLUID ({FLUID}), SOLID ({SOLID}) and AIR ({AIR})")
    if not (flags == FLUID).any():
        raise ValueError("flags has no fluid cell: the system would be empty")
    return flags.astype(np.uint8, copy=False)


def _neighbour_flags(flags: np.ndarray, axis: int, step: int, outside: int) -> np.ndarray:
    """The flag of each cell's neighbour at ``step`` (+1 or -1) along ``axis``."""
    padded = np.pad(flags, [(1, 1) if a == axis else (0, 0) for a in range(3)], constant_values=outside)
    start = 1 + step
    return np.take(padded, range(start, start + flags.shape[axis]), axis=axis)


def pressure_matrix(flags, *, outside: str = "solid", solid_rows: str = "remove") -> tuple[sp.csr_matrix, np.ndarray]:
    """The pressure matrix of a flagged grid and the cells its unknowns stand for.

    Parameters
    ----------
    flags : array of shape (n0, n1, n2)
        :data:`FLUID`, :data:`SOLID` or :data:`AIR` per cell.
    outside : {"solid", "air"}
        What lies beyond the grid's faces.
    solid_rows : {"remove", "identity"}
        ``"remove"``: one unknown per fluid cell. ``"identity"``: one unknown per cell, with
        the rows and columns of solid and air cells replaced by the identity (their value is
        0 for a right-hand side that is 0 there).

    Returns
    -------
    A : scipy.sparse.csr_matrix, float64, shape (n, n)
        Symmetric positive semidefinite, sorted indices.
    cells : numpy.ndarray of int64, shape (n,)
        The C-order flat index in the grid of each unknown.
    """
    flags = _check_flags(flags)
    check_choice("outside", outside, tuple(_FLAG_NAMES))
    check_choice("solid_rows", solid_rows, ("remove", "identity"))
    fluid = flags == FLUID
    size = flags.size
    index = np.arange(size).reshape(flags.shape)
    diagonal = np.zeros(flags.shape)
    rows, cols = [], []
    for axis in range(3):
        for step in (-1, 1):
            neighbour = _neighbour_flags(flags, axis, step, _FLAG_NAMES[outside])
            diagonal += fluid & (neighbour != SOLID)
            if step == 1:
                pair = fluid & (neighbour == FLUID)
                i = index[pair]
                j = i + index.strides[axis] // index.itemsize
                rows += [i, j]
                cols += [j, i]
    i, j = np.concatenate(rows), np.concatenate(cols)
    if solid_rows == "remove":
        cells = index[fluid]
        position = np.full(size, -1)
        position[cells] = np.arange(cells.size)
        i, j, diag = position[i], position[j], diagonal[fluid]
    else:
        cells = index.ravel()
        diag = np.where(fluid, diagonal, 1.0).ravel()
    n = cells.size
    A = sp.coo_matrix(
        (
            np.concatenate([-np.ones(i.size), diag]),
            (np.concatenate([i, np.arange(n)]), np.concatenate([j, np.arange(n)])),
        ),
        shape=(n, n),
    ).tocsr()
    A.sort_indices()
    return A, cells


def nullspace_basis(A: sp.csr_matrix) -> np.ndarray | None:
    """Orthonormal nullspace of a pressure matrix: one normalised indicator per connected
    region whose row sums all vanish (no air, no identity row), shape ``(n, k)``; None when
    ``A`` is nonsingular."""
    count, label = connected_components(A, directed=False)
    row_sum = np.asarray(A.sum(axis=1)).ravel()
    leaky = np.zeros(count, dtype=bool)
    np.logical_or.at(leaky, label, np.abs(row_sum) > 0)
    closed = np.flatnonzero(~leaky)
    if closed.size == 0:
        return None
    Z = (label[:, None] == closed[None, :]).astype(np.float64)
    return Z / np.sqrt(Z.sum(axis=0))


def _divergence_rhs(flags: np.ndarray, outside: int, rng: np.random.Generator) -> np.ndarray:
    """``-div u`` per cell for a smooth random velocity ``u`` on the cell faces, with no
    flux through a face next to a solid cell: the right-hand side of a projection step."""
    n0, n1, n2 = flags.shape
    out = np.zeros(flags.shape)
    for axis in range(3):
        shape = [n0, n1, n2]
        shape[axis] += 1
        coords = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
        u = np.zeros(shape)
        for _ in range(4):
            k = rng.integers(1, 4, size=3)
            phase = rng.uniform(0, 2 * np.pi, size=3)
            u += rng.standard_normal() * np.prod(
                [np.sin(np.pi * k[a] * coords[a] + phase[a]) for a in range(3)], axis=0
            )
        padded = np.pad(flags, [(1, 1) if a == axis else (0, 0) for a in range(3)], constant_values=outside)
        low = np.take(padded, range(shape[axis]), axis=axis)
        high = np.take(padded, range(1, shape[axis] + 1), axis=axis)
        u[(low == SOLID) | (high == SOLID)] = 0.0
        out -= np.diff(u, axis=axis)
    return out


@register_problem("linear/pressure-3d")
def pressure_problem(
    n: int = 32,
    geometry: str = "spheres",
    *,
    obstacles: int = 4,
    seed: int = 0,
    rhs: str = "divergence",
    outside: str = "solid",
    solid_rows: str = "remove",
    dtype: str = "float64",
) -> LinearSystemProblem:
    """A pressure Poisson :class:`~optkit.problem.LinearSystemProblem` (module docstring).

    Parameters
    ----------
    n, geometry, obstacles, seed :
        As :func:`cell_flags`; ``seed`` also seeds the right-hand side.
    rhs : {"divergence", "random"}
        Minus the divergence of a seeded smooth velocity field, or a standard normal vector;
        0 on non-fluid unknowns, and projected onto the range when ``A`` is singular.
    outside, solid_rows :
        As :func:`pressure_matrix`.
    dtype : {"float64", "float32"}

    Returns
    -------
    LinearSystemProblem
        ``A`` the CSR matrix (also ``problem.matrix``), tagged ``symmetric`` and ``psd``;
        ``metadata``: ``grid`` (the shape), ``cells`` (flat grid index of each unknown),
        ``flags``, ``nullspace`` (``(n, k)`` orthonormal, or None), ``geometry``, ``seed``.
    """
    check_choice("rhs", rhs, RHS)
    check_choice("dtype", dtype, ("float64", "float32"))
    flags = cell_flags(n, geometry, obstacles=obstacles, seed=seed)
    A, cells = pressure_matrix(flags, outside=outside, solid_rows=solid_rows)
    rng = np.random.default_rng([seed, 1])
    if rhs == "divergence":
        b = _divergence_rhs(flags, _FLAG_NAMES[outside], rng).ravel()[cells]
    else:
        b = rng.standard_normal(cells.size)
    b[flags.ravel()[cells] != FLUID] = 0.0
    Z = nullspace_basis(A)
    if Z is not None:
        b -= Z @ (Z.T @ b)
    metadata = {
        "source": f"7-point pressure Poisson on a flagged {n}^3 grid, {geometry}",
        "grid": flags.shape,
        "cells": cells,
        "flags": flags,
        "nullspace": Z,
        "geometry": geometry,
        "obstacles": obstacles,
        "seed": seed,
        "rhs": rhs,
        "outside": outside,
        "solid_rows": solid_rows,
    }
    return LinearSystemProblem(
        A.astype(dtype), b.astype(dtype), tags=("symmetric", "psd"), name="linear/pressure-3d", metadata=metadata
    )


register_suite(
    "pressure",
    [
        f"linear/pressure-3d:n={n},geometry={geometry},seed={seed}"
        for n in (32, 64)
        for geometry, seed in (("spheres", 1), ("bunny", 1), ("liquid", 1))
    ],
)
