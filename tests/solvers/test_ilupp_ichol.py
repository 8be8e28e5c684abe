"""pcg:preconditioner=ilupp, ilupp's IC(0), against the project's own IC(0) (solvers.linear.ichol)."""

import numpy as np
import pytest

import optkit
from optkit import Status
from solvers.linear.ichol import ichol

ilupp = pytest.importorskip("ilupp")

SPEC = "linear/poisson-3d:n=12,rhs=random,seed=3"


def test_ilupp_ic0_application_equals_ours():
    A = optkit.get_problem(SPEC).matrix
    ours = ichol(A)
    assert ours.shift == 0.0  # a Poisson matrix is an M-matrix: IC(0) needs no shift
    theirs = ilupp.IChol0Preconditioner(A.copy())
    r = np.random.default_rng(0).standard_normal(A.shape[0])
    # both are the zero-fill incomplete Cholesky on tril(A)'s pattern in the natural order (no
    # reordering, no modified/diagonal-compensated variant), so they differ only by the rounding of
    # the factorisation and of the two triangular solves: 1e-10 relative leaves ample room
    np.testing.assert_allclose(theirs @ r, ours.solve(r), rtol=1e-10, atol=0)
    (L,) = theirs.factors()
    np.testing.assert_allclose(L.toarray(), ours.L.toarray(), rtol=0, atol=1e-12)


def test_pcg_ilupp_iterations_equal_pcg_ichol():
    problem = optkit.get_problem(SPEC)
    runs = {kind: optkit.solve(problem, "pcg", preconditioner=kind, tol=1e-8) for kind in ("ichol", "ilupp")}
    for kind, res in runs.items():
        assert res.status is Status.CONVERGED, (kind, res.message)
    assert runs["ilupp"].nit == runs["ichol"].nit
    assert runs["ilupp"].extras["preconditioner"] == "ilupp"
    # the same preconditioner to rounding: the iterates agree far below the 1e-8 tolerance
    np.testing.assert_allclose(runs["ilupp"].x, runs["ichol"].x, rtol=1e-9, atol=1e-12)
    assert "setup_time_s" in runs["ilupp"].metrics


def test_ilupp_refuses_torch_problems():
    pytest.importorskip("torch")
    problem = optkit.get_problem(SPEC).to("torch")
    with pytest.raises(ValueError, match="preconditioner='ilupp' runs on numpy only"):
        optkit.solve(problem, "pcg", preconditioner="ilupp")
