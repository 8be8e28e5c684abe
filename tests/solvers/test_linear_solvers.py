"""Linear-system solvers x Poisson problems: accuracy, iteration parity with SciPy, limits, errors."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import optkit
from optkit import LinearSystemProblem, Status
from optkit.krylov import cg as krylov_cg

SOLVERS = [
    ("cg", {}),
    ("pcg", {"preconditioner": "jacobi"}),
    ("pcg", {"preconditioner": "ichol"}),
    ("pcg", {"preconditioner": "none"}),
    ("scipy-cg", {}),
    ("pyamg", {}),
    ("pyamg", {"accel": "none"}),
]

PROBLEMS = [
    "linear/poisson-2d:n=24,rhs=random,seed=1",
    "linear/poisson-2d:n=20,coefficient=random,rhs=manufactured,seed=2",
    "linear/poisson-3d:n=8,coefficient=variable,rhs=smooth",
    "linear/poisson-3d:n=9",
]

TOL = 1e-8


def ids(value):
    if isinstance(value, tuple):
        name, opts = value
        return name + "".join(f"-{v}" for v in opts.values())
    return value


@pytest.fixture(scope="module")
def reference():
    """spsolve solutions and exact 2-norm condition numbers, computed once per problem."""
    out = {}
    for spec in PROBLEMS:
        p = optkit.get_problem(spec)
        dense = p.matrix.toarray()
        out[spec] = (spla.spsolve(p.matrix.tocsc(), p.b), np.linalg.cond(dense))
    return out


@pytest.mark.parametrize("spec", PROBLEMS, ids=ids)
@pytest.mark.parametrize("solver", SOLVERS, ids=ids)
def test_solves_to_tolerance(solver, spec, reference):
    name, opts = solver
    p = optkit.get_problem(spec)
    res = optkit.solve(p, name, tol=TOL, max_iter=2000, **opts)
    assert res.status is Status.CONVERGED, res.message
    assert res.solver == name and res.problem == p.name
    true_residual = p.evaluate(res.x)["residual"]
    assert res.metrics["residual"] < TOL
    assert true_residual <= 1.01 * TOL
    x_ref, cond = reference[spec]
    error = np.linalg.norm(res.x - x_ref) / np.linalg.norm(x_ref)
    assert error <= cond * TOL
    if "x_true" in p.metadata:
        assert p.evaluate(res.x)["error"] <= cond * TOL
    # the trace: iterations 0..nit, the last row's residual is the final metric
    assert [row["iter"] for row in res.trace] == list(range(res.nit + 1))
    np.testing.assert_allclose(res.trace[-1]["residual"], res.metrics["residual"], rtol=1e-12)
    assert res.trace[0]["residual"] > TOL and res.time_s > 0


def scipy_iterations(A, b, **kw):
    count = [0]

    def cb(xk):
        count[0] += 1

    x, info = spla.cg(A, b, rtol=TOL, atol=0.0, maxiter=5000, callback=cb, **kw)
    assert info == 0
    return count[0], x


@pytest.mark.parametrize("spec", PROBLEMS, ids=ids)
def test_cg_takes_exactly_scipys_iterations(spec):
    p = optkit.get_problem(spec)
    nit, x_scipy = scipy_iterations(p.matrix, p.b)
    ours = optkit.solve(p, "cg", tol=TOL, max_iter=5000)
    wrapped = optkit.solve(p, "scipy-cg", tol=TOL, max_iter=5000)
    assert ours.nit == wrapped.nit == nit == krylov_cg(p.A, p.b, rtol=TOL).nit
    np.testing.assert_allclose(ours.x, x_scipy, rtol=1e-10, atol=1e-12 * np.abs(x_scipy).max())
    assert ours.counters["matvec"] == ours.nit + 1  # plus r0 = b - A x0
    assert wrapped.counters["matvec"] == wrapped.nit  # SciPy skips A x0 for x0 = 0
    # Jacobi-PCG is SciPy's CG with M = diag(A)^-1
    d = p.matrix.diagonal()
    nit_jacobi, _ = scipy_iterations(p.matrix, p.b, M=sp.diags(1 / d))
    assert optkit.solve(p, "pcg", tol=TOL, max_iter=5000, preconditioner="jacobi").nit == nit_jacobi


def test_ichol_needs_fewer_iterations():
    p = optkit.get_problem("linear/poisson-2d", n=48, coefficient="random")
    plain = optkit.solve(p, "cg", tol=TOL, max_iter=5000)
    pre = optkit.solve(p, "pcg", tol=TOL, max_iter=5000, preconditioner="ichol")
    amg = optkit.solve(p, "pyamg", tol=TOL)
    assert pre.success and plain.success and amg.success
    assert pre.nit < 0.5 * plain.nit and amg.nit < 0.2 * plain.nit
    assert pre.extras["preconditioner"] == "ichol" and pre.extras["ichol_shift"] == 0.0
    assert pre.metrics["setup_time_s"] > 0 and amg.metrics["setup_time_s"] > 0
    assert amg.extras["levels"] >= 2 and amg.extras["operator_complexity"] > 1


def test_torch_parity():
    torch = pytest.importorskip("torch")
    p = optkit.get_problem("linear/poisson-2d", n=20, coefficient="variable", rhs="random")
    pt = p.to("torch")
    assert pt.backend == "torch" and {"psd", "symmetric"} <= pt.capabilities
    for name, opts in [("cg", {}), ("pcg", {"preconditioner": "jacobi"})]:
        ref = optkit.solve(p, name, tol=TOL, **opts)
        res = optkit.solve(pt, name, tol=TOL, **opts)
        assert isinstance(res.x, torch.Tensor) and res.x.dtype == torch.float64
        assert res.status is Status.CONVERGED and res.nit == ref.nit
        # rounding differs (summation order), so converged iterates agree to about cond * tol ...
        np.testing.assert_allclose(res.x.numpy(), ref.x, rtol=1e-5, atol=1e-8 * np.abs(ref.x).max())
        assert res.metrics["residual"] < TOL
        # ... and early iterates to rounding
        early, early_t = optkit.solve(p, name, max_iter=10, **opts), optkit.solve(pt, name, max_iter=10, **opts)
        np.testing.assert_allclose(early_t.x.numpy(), early.x, rtol=1e-12, atol=1e-14)
    f32 = optkit.solve(p.to("torch", dtype="float32"), "cg", tol=1e-4)
    assert f32.success and f32.x.dtype == torch.float32 and p.evaluate(f32.x.double().numpy())["residual"] < 2e-4


def test_solvers_that_cannot_run_on_torch_say_why():
    pytest.importorskip("torch")
    pt = optkit.get_problem("linear/poisson-2d", n=8).to("torch")
    solver = optkit.get_solver("pcg", preconditioner="ichol")
    reason = solver.check(pt)
    assert reason is not None and "ichol" in reason and "numpy only" in reason
    with pytest.raises(ValueError, match="numpy only"):
        solver.solve(pt)
    assert "not on backend 'torch'" in optkit.get_solver("scipy-cg").check(pt)
    assert optkit.get_solver("pyamg").check(pt) is not None  # no matrix entries on torch
    assert optkit.get_solver("pcg", preconditioner="jacobi").check(pt) is None


def test_requirements():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((6, 6))
    general = LinearSystemProblem(B, rng.standard_normal(6))
    for name in ["cg", "pcg", "scipy-cg", "pyamg"]:
        assert "requires ['psd']" in optkit.get_solver(name).check(general)
    # an operator without entries: ichol and pyamg need the matrix
    p = optkit.get_problem("linear/poisson-2d", n=6)
    matrix_free = LinearSystemProblem(optkit.aslinearoperator(p.matrix, tags={"psd"}), p.b)
    assert "matrix" in optkit.get_solver("pcg", preconditioner="ichol").check(matrix_free)
    assert "matrix" in optkit.get_solver("pyamg").check(matrix_free)
    assert optkit.solve(matrix_free, "scipy-cg", tol=TOL).success
    assert optkit.get_solver("cg").check(matrix_free) is None


def test_breakdown_passes_through():
    A = np.diag([1.0, 2.0, -3.0, 4.0])
    p = LinearSystemProblem(A, np.ones(4), tags={"psd"})  # a false claim
    res = optkit.solve(p, "cg", tol=TOL)
    assert res.status is Status.BREAKDOWN
    assert "not positive definite" in res.message
    assert np.isfinite(res.x).all()


@pytest.mark.parametrize("solver", SOLVERS, ids=ids)
def test_max_iter_returns_the_partial_iterate(solver):
    name, opts = solver
    p = optkit.get_problem("linear/poisson-2d", n=30)
    res = optkit.solve(p, name, tol=TOL, max_iter=3, **opts)
    assert res.status is Status.MAX_ITER and res.nit == 3
    assert p.evaluate(res.x)["residual"] > TOL and np.abs(res.x).max() > 0
    again = optkit.solve(p, name, tol=TOL, max_iter=3, **opts)
    np.testing.assert_array_equal(res.x, again.x)
    zero = optkit.solve(p, name, tol=TOL, max_iter=0, **opts)
    assert zero.status is Status.MAX_ITER and zero.nit == 0
    np.testing.assert_array_equal(zero.x, p.x0)


def test_cg_partial_iterates_match_scipy():
    p = optkit.get_problem("linear/poisson-3d", n=7, coefficient="variable")
    ours = optkit.solve(p, "cg", max_iter=5)
    theirs = optkit.solve(p, "scipy-cg", max_iter=5)
    np.testing.assert_allclose(ours.x, theirs.x, rtol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS, ids=ids)
def test_time_limit_returns_the_iterate_reached(solver, monkeypatch):
    name, opts = solver
    p = optkit.get_problem("linear/poisson-2d", n=96)
    full = optkit.solve(p, name, tol=1e-12, max_iter=5000, **opts)
    # A clock that advances one second per reading makes the limit land at the same
    # iteration on any machine, whatever its load.
    ticks = itertools.count()
    monkeypatch.setattr("optkit.solver.time.perf_counter", lambda: float(next(ticks)))
    limit = 6.0
    res = optkit.solve(p, name, tol=1e-12, max_iter=5000, time_limit=limit, **opts)
    monkeypatch.undo()
    assert res.status is Status.TIME_LIMIT
    assert limit <= res.time_s and res.nit < full.nit
    assert res.trace[-1]["iter"] == res.nit and res.trace[-1]["time"] >= limit
    # the returned x is the iterate of iteration nit
    if res.nit > 0:
        same = optkit.solve(p, name, tol=1e-12, max_iter=res.nit, **opts)
        np.testing.assert_array_equal(res.x, same.x)
    else:
        np.testing.assert_array_equal(res.x, p.x0)


@pytest.mark.parametrize("name", ["scipy-cg", "pyamg"])
def test_baseline_callback_can_stop(name):
    p = optkit.get_problem("linear/poisson-2d", n=30)
    seen = []

    def callback(info):
        seen.append(info["iter"])
        return info["iter"] == 2

    res = optkit.solve(p, name, tol=TOL, callback=callback)
    assert res.status is Status.USER_STOPPED and res.nit == 2 and seen == [0, 1, 2]


@pytest.mark.parametrize("accel", ["cg", "none"])
def test_pyamg_ctrl_c_returns_the_last_iterate(accel):
    p = optkit.get_problem("linear/poisson-2d", n=30)

    def interrupt(info):  # Ctrl-C inside PyAMG's loop, which calls back after each iteration
        if info["iter"] == 3:
            raise KeyboardInterrupt

    res = optkit.solve(p, "pyamg", tol=TOL, accel=accel, callback=interrupt)
    assert res.status is Status.USER_STOPPED and res.nit == 3
    same = optkit.solve(p, "pyamg", tol=TOL, accel=accel, max_iter=3)
    np.testing.assert_array_equal(res.x, same.x)
    assert res.metrics["residual"] == same.metrics["residual"] == res.trace[-1]["residual"] > TOL


@pytest.mark.parametrize("accel", ["cg", "none"])
def test_pyamg_converging_at_its_last_allowed_iteration_converges(accel):
    p = optkit.get_problem("linear/poisson-2d", n=30)
    full = optkit.solve(p, "pyamg", tol=TOL, accel=accel)
    edge = optkit.solve(p, "pyamg", tol=TOL, accel=accel, max_iter=full.nit)
    assert edge.status is Status.CONVERGED and edge.nit == full.nit
    np.testing.assert_array_equal(edge.x, full.x)
    assert optkit.solve(p, "pyamg", tol=TOL, accel=accel, max_iter=full.nit - 1).status is Status.MAX_ITER


def test_pyamg_negative_info_is_a_breakdown(monkeypatch):
    import pyamg.multilevel

    # PyAMG's CG returns info = -1 when it meets an indefinite matrix or preconditioner
    monkeypatch.setattr(pyamg.multilevel.MultilevelSolver, "solve", lambda self, b, x0, **kw: (x0.copy(), -1))
    p = optkit.get_problem("linear/poisson-2d", n=10)
    res = optkit.solve(p, "pyamg", tol=TOL)
    assert res.status is Status.BREAKDOWN and res.extras["library_status"] == -1 and res.nit == 0
    assert "breakdown" in res.message
    np.testing.assert_array_equal(res.x, p.x0)


@pytest.mark.parametrize(
    "name,options,word",
    [
        ("cg", {"tol": 0.0}, "tol"),
        ("cg", {"tol": -1e-3}, "tol"),
        ("pcg", {"tol": float("nan")}, "tol"),
        ("pcg", {"preconditioner": "ilu"}, "preconditioner"),
        ("scipy-cg", {"max_iter": -1}, "max_iter"),
        ("pyamg", {"accel": "gmres"}, "accel"),
        ("pyamg", {"cycle": "X"}, "cycle"),
        ("pyamg", {"time_limit": 0}, "time_limit"),
    ],
)
def test_bad_options_name_the_option(name, options, word):
    with pytest.raises(ValueError, match=rf"^{word} must"):
        optkit.get_solver(name, **options)


def test_none_from_a_spec_means_no_preconditioner():
    p = optkit.get_problem("linear/poisson-2d", n=10)
    from optkit.registry import parse_spec

    _, opts = parse_spec("pcg:preconditioner=none", "solver spec")
    assert opts == {"preconditioner": None}
    assert optkit.solve(p, "pcg", **opts).nit == optkit.solve(p, "cg").nit
    _, opts = parse_spec("pyamg:accel=none", "solver spec")
    assert optkit.solve(p, "pyamg", **opts).nit == optkit.solve(p, "pyamg", accel="none").nit


def test_unknown_option():
    with pytest.raises(TypeError, match="'precond'"):
        optkit.get_solver("pcg", precond="jacobi")


def test_jacobi_needs_a_positive_diagonal():
    A = sp.csr_matrix(np.array([[0.0, 0.0], [0.0, 1.0]]))
    p = LinearSystemProblem(A, np.ones(2), tags={"psd"})
    with pytest.raises(ValueError, match="positive diagonal"):
        optkit.solve(p, "pcg", preconditioner="jacobi")


def test_zero_rhs():
    p = optkit.get_problem("linear/poisson-2d", n=5)
    p0 = LinearSystemProblem(p.matrix, np.zeros(p.n), np.ones(p.n), tags={"psd"})
    for name in ["cg", "pcg"]:
        res = optkit.solve(p0, name)
        assert res.success and res.nit == 0
        np.testing.assert_array_equal(res.x, np.zeros(p.n))


def test_registration_and_lazy_imports():
    assert {"cg", "pcg", "scipy-cg", "scipy-lbfgsb", "pyamg"} <= set(optkit.list_solvers())
    code = (
        "import sys, solvers, problems; "
        "heavy = [m for m in ('pyamg', 'sklearn', 'torch', 'cvxpy', 'numba') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
