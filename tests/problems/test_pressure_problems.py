"""problems.pressure: the matrix against a cell-by-cell reference and hand-typed cases, the
nullspace, the divergence right-hand side, the geometries, the suite, bad inputs."""

import itertools

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

import optkit
from problems.pressure import (
    AIR,
    FLUID,
    GEOMETRIES,
    SOLID,
    _divergence_rhs,
    cell_flags,
    nullspace_basis,
    pressure_matrix,
    pressure_problem,
)

F, S = FLUID, SOLID
STEPS = [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]


def reference_matrix(flags, outside, solid_rows):
    """The pressure matrix built cell by cell from the rules, with plain loops and a dense array."""
    shape = flags.shape
    all_cells = list(itertools.product(*(range(s) for s in shape)))
    if solid_rows == "remove":
        unknowns = [c for c in all_cells if flags[c] == FLUID]
    else:
        unknowns = all_cells
    row_of = {cell: row for row, cell in enumerate(unknowns)}
    M = np.zeros((len(unknowns), len(unknowns)))
    for cell in unknowns:
        row = row_of[cell]
        if flags[cell] != FLUID:
            M[row, row] = 1.0
            continue
        for step in STEPS:
            neighbour = tuple(c + s for c, s in zip(cell, step))
            if all(0 <= c < size for c, size in zip(neighbour, shape)):
                kind = flags[neighbour]
            else:
                kind = SOLID if outside == "solid" else AIR
            if kind == FLUID:
                M[row, row] += 1.0
                M[row, row_of[neighbour]] -= 1.0
            elif kind == AIR:
                M[row, row] += 1.0
    cells = [np.ravel_multi_index(c, shape) for c in unknowns]
    return M, np.array(cells)


def hand_made_flags():
    """4x4x4 cells: fluid, a solid step on the floor, a solid pillar, air in a top corner and
    one air cell in a side wall."""
    flags = np.full((4, 4, 4), F, dtype=np.uint8)
    flags[0, :2, :] = S
    flags[1:3, 2, 1] = S
    flags[3, 2:, 2:] = AIR
    flags[2, 0, 3] = AIR
    return flags


@pytest.mark.parametrize("outside", ["solid", "air"])
@pytest.mark.parametrize("solid_rows", ["remove", "identity"])
def test_matrix_equals_cell_by_cell_reference(outside, solid_rows):
    flags = hand_made_flags()
    A, cells = pressure_matrix(flags, outside=outside, solid_rows=solid_rows)
    expected, expected_cells = reference_matrix(flags, outside, solid_rows)
    np.testing.assert_array_equal(cells, expected_cells)
    np.testing.assert_array_equal(A.toarray(), expected)
    assert A.has_sorted_indices and A.dtype == np.float64


def test_tiny_grid_typed_in():
    # shape (2, 2, 1), C order: cell 0 = (0,0) fluid, 1 = (0,1) fluid, 2 = (1,0) air, 3 = (1,1) solid
    flags = np.array([[[F], [F]], [[AIR], [S]]], dtype=np.uint8)
    A, cells = pressure_matrix(flags)
    # cell 0: fluid neighbour 1 and air cell 2; cell 1: fluid neighbour 0, solid cell 3; rest walls
    np.testing.assert_array_equal(A.toarray(), [[2, -1], [-1, 1]])
    np.testing.assert_array_equal(cells, [0, 1])
    A, _ = pressure_matrix(flags, outside="air")
    # four more open faces each: the two in x, and one each in the two other directions
    np.testing.assert_array_equal(A.toarray(), [[6, -1], [-1, 5]])
    A, cells = pressure_matrix(flags, solid_rows="identity")
    np.testing.assert_array_equal(A.toarray(), [[2, -1, 0, 0], [-1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(cells, [0, 1, 2, 3])
    assert nullspace_basis(pressure_matrix(flags)[0]) is None  # air: Dirichlet, nonsingular
    closed = np.full((2, 2, 1), F, dtype=np.uint8)
    np.testing.assert_array_equal(nullspace_basis(pressure_matrix(closed)[0]), np.full((4, 1), 0.5))


def pockets(n=6):
    """Two closed fluid pockets separated by a solid wall, one solid obstacle in the first."""
    flags = np.full((n, n, n), F, dtype=np.uint8)
    flags[:, :, 2] = S
    flags[1, 1, 0] = S
    return flags


@pytest.mark.parametrize(
    ("flags", "k"),
    [
        (pockets(), 2),
        (np.where(np.arange(6)[:, None, None] * np.ones((6, 6, 6)) >= 5, AIR, pockets()).astype(np.uint8), None),
        (np.full((5, 5, 5), F, dtype=np.uint8), 1),
    ],
    ids=["two-closed-pockets", "both-open-to-air", "closed-box"],
)
def test_nullspace(flags, k):
    A, _ = pressure_matrix(flags)
    Z = nullspace_basis(A)
    if k is None:
        assert Z is None
        assert np.linalg.eigvalsh(A.toarray())[0] > 1e-3  # nonsingular, clearly
        return
    assert Z.shape == (A.shape[0], k)
    assert connected_components(A, directed=False)[0] == k  # every region is closed here
    # Z holds 0 and 1/sqrt(region size): exact up to the rounding of the products
    np.testing.assert_allclose(A @ Z, 0, atol=1e-14)
    np.testing.assert_allclose(Z.T @ Z, np.eye(k), atol=1e-14)
    eigenvalues = np.linalg.eigvalsh(A.toarray())
    # integer matrices of size <= 216: the null eigenvalues come out at rounding level, the
    # smallest nonzero one of these grids is above 0.05
    assert np.sum(np.abs(eigenvalues) < 1e-10) == k
    assert eigenvalues[k] > 1e-2


def test_one_closed_pocket_next_to_an_open_one():
    flags = pockets()
    flags[-1, :, 3:] = AIR  # the second pocket gets air above it
    A, _ = pressure_matrix(flags)
    Z = nullspace_basis(A)
    assert Z.shape[1] == 1
    closed = np.flatnonzero(Z[:, 0])
    cells = pressure_matrix(flags)[1]
    assert np.all(np.unravel_index(cells[closed], flags.shape)[2] < 2)  # the pocket left of the wall


@pytest.mark.parametrize("geometry", ["box", "spheres", "bunny"])
def test_right_hand_side_is_in_the_range(geometry):
    for rhs in ("divergence", "random"):
        p = pressure_problem(12, geometry, seed=3, rhs=rhs)
        Z = p.metadata["nullspace"]
        assert Z is not None
        # projected in float64: what is left is rounding of ||b||
        np.testing.assert_allclose(Z.T @ p.b, 0, atol=1e-13 * np.linalg.norm(p.b))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_divergence_sums_to_zero_over_each_closed_region(seed):
    flags = pockets(8)
    flags[5:7, 5:7, 5:7] = S
    raw = _divergence_rhs(flags, SOLID, np.random.default_rng(seed))
    A, cells = pressure_matrix(flags)
    Z = nullspace_basis(A)
    assert Z.shape[1] == 2
    b = raw.ravel()[cells]
    scale = np.abs(b).max()
    assert scale > 0.1  # the field is not trivially zero
    # discrete divergence theorem: the interior faces cancel, the boundary faces carry no flux;
    # the sum of ~250 terms of size ~1 loses ~1e-13 to rounding
    regions = (Z > 0).T.astype(float)
    np.testing.assert_allclose(regions @ b, 0, atol=1e-12 * scale)
    # the check can fail: with flux through the grid's faces (outside taken as air) it does
    leaky = _divergence_rhs(flags, AIR, np.random.default_rng(seed)).ravel()[cells]
    assert np.abs(regions @ leaky).max() > 1e-3 * scale


@pytest.mark.parametrize("geometry", [g for g in GEOMETRIES if g != "box"])
def test_geometry_is_deterministic_per_seed_and_varies_with_it(geometry):
    np.testing.assert_array_equal(cell_flags(20, geometry, seed=4), cell_flags(20, geometry, seed=4))
    assert not np.array_equal(cell_flags(20, geometry, seed=4), cell_flags(20, geometry, seed=5))


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_geometry_is_defined_in_unit_coordinates(geometry):
    fractions = []
    for n in (32, 64):
        flags = cell_flags(n, geometry, seed=1)
        assert (flags == FLUID).any()
        fractions.append([np.mean(flags == kind) for kind in (FLUID, SOLID, AIR)])
    # the same shapes sampled at two resolutions: the counts differ only in the surface cells, a
    # share ~1/n of the shape, and they mostly cancel; 5 % relative still tells a shape that would
    # scale with n (a radius in cells) apart. A kind absent at one resolution is absent at both.
    np.testing.assert_allclose(fractions[0], fractions[1], rtol=0.05, atol=0)


def test_liquid_has_air_above_and_fluid_below():
    flags = cell_flags(16, "liquid", seed=2)
    assert np.all(flags[-1] == AIR) and np.all(flags[0] == FLUID)  # axis 0 is the vertical
    assert set(np.unique(flags)) == {FLUID, AIR}
    assert pressure_problem(16, "liquid", seed=2).metadata["nullspace"] is None


def test_problem_metadata_and_dtype():
    p = pressure_problem(8, "spheres", seed=1, dtype="float32")
    flags = p.metadata["flags"]
    assert p.metadata["grid"] == (8, 8, 8) and p.b.dtype == np.float32
    np.testing.assert_array_equal(flags.ravel()[p.metadata["cells"]], FLUID)
    assert p.b.size == np.sum(flags == FLUID)
    assert p.name == "linear/pressure-3d" and {"symmetric", "psd"} <= p.capabilities


def test_suite_resolves_and_builds():
    specs = optkit.get_suite("pressure")
    assert len(specs) == 6 and all(s.startswith("linear/pressure-3d:") for s in specs)
    for spec in specs:
        small = spec.replace("n=32", "n=16").replace("n=64", "n=16")
        p = optkit.get_problem(small)
        assert p.metadata["grid"] == (16, 16, 16) and p.b.size > 0


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: pressure_matrix(np.zeros((4, 4), dtype=np.uint8)), "flags"),
        (lambda: pressure_matrix(np.full((2, 2, 2), 3)), "flags"),
        (lambda: pressure_matrix(np.full((2, 2, 2), SOLID)), "flags"),
        (lambda: pressure_matrix(np.zeros((2, 2, 2)), outside="vacuum"), "outside"),
        (lambda: pressure_matrix(np.zeros((2, 2, 2)), solid_rows="zero"), "solid_rows"),
        (lambda: cell_flags(8, "teapot"), "geometry"),
        (lambda: cell_flags(1, "box"), "n"),
        (lambda: pressure_problem(8, rhs="ones"), "rhs"),
        (lambda: pressure_problem(8, dtype="float16"), "dtype"),
        (lambda: pressure_problem(8, outside="vacuum"), "outside"),
        (lambda: pressure_problem(8, solid_rows="zero"), "solid_rows"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
