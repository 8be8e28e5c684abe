"""sparse-ot and its POT baseline pot-sparsity-constrained: sparsity-constrained OT (Liu,
Puigcerver & Blondel, ICLR 2023), ``min <T, C> + reg/2 ||T||^2`` over transport plans with at
most ``k = max_nz`` nonzeros per column.

Reference values: ``ot.emd2`` (exact OT) for k = 1, cvxpy/Clarabel and POT's l2 smooth OT for
k >= n, POT's sparsity-constrained solver elsewhere.
"""

import warnings

import numpy as np
import pytest

import optkit
from optkit import OTProblem, Status
from solvers.ot.sparse_ot import sparse_dual, sparse_plan

ot = pytest.importorskip("ot")
pytestmark = pytest.mark.usefixtures("one_blas_thread")


def clouds(n, m, seed, uniform=True):
    """Random 2-D point clouds, squared Euclidean cost scaled to max 1."""
    rng = np.random.default_rng(seed)
    C = ot.dist(rng.random((n, 2)), rng.random((m, 2)))
    C /= C.max()
    if uniform:
        return np.full(n, 1 / n), np.full(m, 1 / m), C
    a, b = rng.random(n) + 0.2, rng.random(m) + 0.2
    return a / a.sum(), b / b.sum(), C


def clusters(n, seed):
    """Non-uniform weights that one source per column can meet: target j sits next to source
    group(j) (well-separated grid of sources, jitter 0.05), and a_i = sum of b over group i,
    so the exact OT plan is the group assignment."""
    rng = np.random.default_rng(seed)
    centers = np.stack(np.meshgrid(np.arange(n), [0.0]), -1).reshape(-1, 2)[:n] + 0.1 * rng.random((n, 2))
    group = np.repeat(np.arange(n), rng.integers(1, 4, n))
    rng.shuffle(group)
    b = rng.random(group.size) + 0.2
    b /= b.sum()
    C = ot.dist(centers, centers[group] + 0.05 * rng.standard_normal((group.size, 2)))
    return np.bincount(group, weights=b, minlength=n), b, C / C.max()


def max_nnz_per_column(P):
    P = P.toarray() if hasattr(P, "toarray") else np.asarray(P)
    return int(np.count_nonzero(P, axis=0).max())


def solve(a, b, C, reg, solver="sparse-ot", **options):
    return optkit.solve(OTProblem(a, b, C, reg), solver, **options)


# ------------------------------------------------------------------------ k = 1: exact OT


@pytest.mark.parametrize("n, seed", [(8, 0), (13, 1), (20, 2)])
def test_k1_uniform_is_exact_ot(n, seed):
    # For k = 1 the dual's convex relaxation is exact OT plus (reg/2) ||b||^2 for *every* reg
    # (the convex envelope of (reg/2)||t||^2 over 1-sparse t >= 0 is (reg/2)(sum t)^2), so reg
    # only sets the conditioning; 1e-3 is small next to the cost gaps (costs in [0, 1]).
    a, b, C = clouds(n, n, seed)
    reg, tol = 1e-3, 1e-10
    res = solve(a, b, C, reg, max_nz=1, tol=tol)
    emd = ot.emd2(a, b, C)
    assert res.status is Status.CONVERGED, res.message
    assert res.metrics["marginal_error"] <= tol and max_nnz_per_column(res.x) == 1
    # one entry per column and marginal error e: |<T, C> - OT| <= e * max C
    np.testing.assert_allclose(res.metrics["cost"], emd, rtol=0, atol=tol * C.max())
    np.testing.assert_allclose(res.metrics["dual"], emd + reg / 2 * (b @ b), rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.x * n, ot.emd(a, b, C) * n, atol=1e-8)  # the unique assignment


@pytest.mark.parametrize("seed", [0, 1])
def test_k1_non_uniform_weights_that_admit_one_source_per_column(seed):
    a, b, C = clusters(10, seed)
    assert not np.allclose(a, a[0]) and not np.allclose(b, b[0])
    reg, tol = 1e-3, 1e-10
    res = solve(a, b, C, reg, max_nz=1, tol=tol)
    emd = ot.emd2(a, b, C)
    assert res.status is Status.CONVERGED, res.message
    assert max_nnz_per_column(res.x) == 1
    np.testing.assert_allclose(res.metrics["cost"], emd, rtol=0, atol=tol * C.max())
    np.testing.assert_allclose(res.metrics["dual"], emd + reg / 2 * (b @ b), rtol=0, atol=1e-12)


def test_k1_generic_non_uniform_weights_fail_honestly():
    # Generic non-uniform weights cannot be met with one source per column (a = (1/2, 1/2),
    # b = (1) already fails), so there is no feasible k = 1 plan: the run must say so. The dual
    # is still a lower bound of exact OT (+ reg/2 ||b||^2, weak duality), and L-BFGS gets close
    # to it although the maximum is a kink (relative gap 1.5e-4 here, at most ~7e-3 measured on
    # 12 such instances with n = 8..18: a regression bound, not a guarantee).
    a, b, C = clouds(9, 12, 4, uniform=False)
    reg = 1e-2
    res = solve(a, b, C, reg, max_nz=1)
    emd = ot.emd2(a, b, C)
    assert res.status is Status.FAILED
    assert "binds in" in res.message and "max_nz=1" in res.message
    assert res.extras["binding_columns"] > 0 and max_nnz_per_column(res.x) == 1
    lower = res.metrics["dual"] - reg / 2 * (b @ b)
    assert lower <= emd + 1e-12
    np.testing.assert_allclose(lower, emd, rtol=1e-2)
    assert solve(a, b, C, reg, "pot-sparsity-constrained", max_nz=1).status is not Status.CONVERGED


@pytest.mark.parametrize("cost", ["constant", "integers", "duplicated points"])
def test_k1_ties_are_resolved(cost):
    # Ties in the top-1 sets at the dual optimum: with a constant cost, or duplicated points,
    # every column prefers the same row at every dual point; the plan is then an assignment
    # among the tied rows (a maximum flow), and it is still exact OT.
    n = 12
    rng = np.random.default_rng(7)
    if cost == "constant":
        C = np.ones((n, n))
    elif cost == "integers":
        C = rng.integers(0, 3, (n, n)).astype(float)
    else:
        x = rng.random((n // 3, 2))
        C = ot.dist(np.repeat(x, 3, axis=0), rng.random((n, 2)))
    a = np.full(n, 1 / n)
    res = solve(a, a, C, 1e-3, max_nz=1)
    assert res.status is Status.CONVERGED, res.message
    assert res.extras["ties_resolved"] and max_nnz_per_column(res.x) == 1
    np.testing.assert_allclose(res.x * n, np.round(res.x * n), atol=1e-12)  # a permutation / n
    np.testing.assert_allclose(res.metrics["cost"], ot.emd2(a, a, C), rtol=1e-12, atol=1e-15)
    assert res.trace[-1]["marginal_error"] == pytest.approx(res.metrics["marginal_error"], abs=1e-15)


# ------------------------------------------------------------ k >= n: quadratically regularised OT


def quadratic_ot_cvxpy(a, b, C, reg):
    cp = pytest.importorskip("cvxpy")
    T = cp.Variable(C.shape, nonneg=True)
    objective = cp.Minimize(cp.sum(cp.multiply(T, C)) + reg / 2 * cp.sum_squares(T))
    problem = cp.Problem(objective, [cp.sum(T, axis=1) == a, cp.sum(T, axis=0) == b])
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert problem.status == "optimal"
    return T.value, problem.value


@pytest.mark.parametrize("extra", [0, 5])
def test_k_at_least_n_is_quadratic_ot(extra):
    a, b, C = clouds(7, 9, 3, uniform=False)
    reg = 0.05
    T_ref, value = quadratic_ot_cvxpy(a, b, C, reg)
    assert (T_ref > 1e-6).sum(axis=0).max() >= 3  # the l2 plan has several entries per column
    res = solve(a, b, C, reg, max_nz=7 + extra)
    assert res.status is Status.CONVERGED and res.extras["max_nz"] == 7
    np.testing.assert_allclose(res.x, T_ref, rtol=0, atol=1e-8)  # Clarabel at 1e-12 gaps
    np.testing.assert_allclose(res.metrics["objective"], value, rtol=1e-10)
    np.testing.assert_allclose(res.metrics["gap"], 0.0, atol=1e-12)  # strong duality
    # POT's l2 smooth OT (the same dual, L-BFGS-B run until it stalls: L1 error ~1e-7)
    with warnings.catch_warnings():  # POT passes SciPy's deprecated `disp` option
        warnings.filterwarnings("ignore", message=r".*`disp` and `iprint`", category=DeprecationWarning)
        G = ot.smooth.smooth_ot_dual(a, b, C, reg, reg_type="l2", stopThr=1e-16, numItermax=10000)
    np.testing.assert_allclose(res.x, G, rtol=0, atol=1e-6)
    pot = solve(a, b, C, reg, "pot-sparsity-constrained", max_nz=7 + extra, stop_thr=1e-16)
    assert pot.extras["reg_type"] == "l2" and pot.extras["max_nz"] == 7
    np.testing.assert_allclose(pot.x, res.x, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------- the cardinality constraint


@pytest.mark.parametrize("k", [1, 2, 3, 9, 10, 15])
@pytest.mark.parametrize("case", ["dense l2 plan", "integer costs"])
def test_never_more_than_k_nonzeros_per_column(k, case):
    n = 10
    if case == "dense l2 plan":  # reg large: the l2 plan has ~all entries, so the constraint binds
        a, b, C = clouds(n, 12, 5, uniform=False)
        reg = 1.0
    else:  # many ties
        a, b, C = clouds(n, 12, 6, uniform=False)
        C = np.random.default_rng(6).integers(0, 2, C.shape).astype(float)
        reg = 0.1
    for solver, sparse in (("sparse-ot", False), ("sparse-ot", True), ("pot-sparsity-constrained", k % 2 == 0)):
        res = solve(a, b, C, reg, solver, max_nz=k, max_iter=200, sparse_plan=sparse)
        assert max_nnz_per_column(res.x) <= min(k, n), (solver, res.status)
        assert hasattr(res.x, "toarray") is sparse
        alpha, beta = res.extras["potentials"]
        assert max_nnz_per_column(sparse_plan(alpha, beta, C, reg, k)) <= min(k, n)


def test_agrees_with_pot_where_pot_works():
    a, b, C = clouds(7, 9, 3, uniform=False)
    reg = 0.05
    for k in (3, 4):  # the cardinality constraint is active here for k = 3 ...
        ours = solve(a, b, C, reg, max_nz=k)
        pot = solve(a, b, C, reg, "pot-sparsity-constrained", max_nz=k, stop_thr=1e-16)
        assert ours.status is Status.CONVERGED and ours.metrics["marginal_error"] <= 1e-9
        # POT stops when L-BFGS-B stalls, at an L1 error of ~1e-7; to that accuracy they agree
        assert pot.metrics["marginal_error"] < 1e-6
        np.testing.assert_allclose(ours.x, pot.x, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours.metrics["dual"], pot.metrics["dual"], rtol=0, atol=1e-12)
        assert ours.metrics["dual"] >= pot.metrics["dual"] - 1e-15
    T3 = solve(a, b, C, reg, max_nz=3).x
    T2 = quadratic_ot_cvxpy(a, b, C, reg)[0]
    assert np.abs(T3 - T2).max() < 1e-6  # ... but does not change the optimum (max 3 per column)


def test_a_kink_is_reported_as_failure_by_both():
    # k = 2 where the relaxation's plan needs 3 entries in a column: no 2-sparse plan from the dual
    a, b, C = clouds(7, 9, 3, uniform=False)
    res = solve(a, b, C, 0.05, max_nz=2)
    assert res.status is Status.FAILED and "binds in" in res.message
    assert res.extras["binding_columns"] >= 1 and max_nnz_per_column(res.x) <= 2
    assert res.metrics["marginal_error"] > 1e-3
    pot = solve(a, b, C, 0.05, "pot-sparsity-constrained", max_nz=2, stop_thr=1e-16)
    # SciPy reports success on its relative-reduction test, above tol: STALLED (BlackBoxRun's rule)
    assert pot.status is Status.STALLED and pot.extras["library_status"] == 0
    assert "POT / L-BFGS-B stopped (CONVERGENCE" in pot.message and "marginal_error = 0.025 > tol" in pot.message
    assert res.metrics["dual"] >= pot.metrics["dual"] - 1e-12  # ours is the better lower bound


# --------------------------------------------------------------------------------- the dual


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_dual_gradient_matches_finite_differences(k):
    a, b, C = clouds(5, 6, 8, uniform=False)
    reg = 0.1
    rng = np.random.default_rng(k)
    alpha, beta = 0.3 * rng.standard_normal(5), 0.3 * rng.standard_normal(6) + 0.5
    value, ga, gb = sparse_dual(alpha, beta, a, b, C, reg, k)
    T = sparse_plan(alpha, beta, C, reg, k)
    assert np.count_nonzero(T) > 0
    np.testing.assert_allclose(ga, a - T.sum(axis=1), atol=1e-15)
    np.testing.assert_allclose(gb, b - T.sum(axis=0), atol=1e-15)
    v, h = np.concatenate([alpha, beta]), 1e-6
    fd = np.empty(11)
    for i in range(11):
        e = np.zeros(11)
        e[i] = h
        hi = sparse_dual((v + e)[:5], (v + e)[5:], a, b, C, reg, k)[0]
        lo = sparse_dual((v - e)[:5], (v - e)[5:], a, b, C, reg, k)[0]
        fd[i] = (hi - lo) / (2 * h)
    # D is piecewise quadratic: central differences are exact up to rounding (~1e-16 / h)
    np.testing.assert_allclose(np.concatenate([ga, gb]), fd, rtol=1e-7, atol=1e-9)
    # and the value: sum_j (1/2 reg) sum over the top-k positive scores, squared
    S = alpha[:, None] + beta[None, :] - C
    top = -np.sort(-S, axis=0)[:k]
    expected = alpha @ a + beta @ b - (np.maximum(top, 0) ** 2).sum() / (2 * reg)
    np.testing.assert_allclose(value, expected, rtol=1e-14)


# ------------------------------------------------------------------------ options and problems


@pytest.mark.parametrize("solver", ["sparse-ot", "pot-sparsity-constrained"])
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3", None])
def test_bad_max_nz_is_an_error_naming_it(solver, bad):
    with pytest.raises(ValueError, match=r"^max_nz must be an integer >= 1"):
        optkit.get_solver(solver, max_nz=bad)


@pytest.mark.parametrize(
    "options, word",
    [
        ({"memory": 0}, "memory"),
        ({"polish": "yes"}, "polish"),
        ({"sparse_plan": 1}, "sparse_plan"),
        ({"tol": 0}, "tol"),
    ],
)
def test_bad_options_name_the_option(options, word):
    with pytest.raises(ValueError, match=rf"^{word} must"):
        optkit.get_solver("sparse-ot", **options)


def test_bad_arguments_of_the_helpers_and_the_baseline():
    with pytest.raises(ValueError, match=r"^max_nz must be an integer >= 1, got 0"):
        sparse_dual(np.zeros(2), np.zeros(2), np.ones(2) / 2, np.ones(2) / 2, np.ones((2, 2)), 0.1, 0)
    with pytest.raises(ValueError, match=r"^max_nz must be an integer >= 1, got 1.5"):
        sparse_plan(np.zeros(2), np.zeros(2), np.ones((2, 2)), 0.1, 1.5)
    with pytest.raises(ValueError, match=r"^stop_thr must"):
        optkit.get_solver("pot-sparsity-constrained", stop_thr=-1.0)
    with pytest.raises(ValueError, match=r"^sparse_plan must"):
        optkit.get_solver("pot-sparsity-constrained", sparse_plan="no")
    with pytest.raises(TypeError, match="unknown option.*'k'"):
        optkit.get_solver("sparse-ot", k=3)


def test_bad_problems_and_starts_are_clear_errors():
    with pytest.raises(ValueError, match="accepts OTProblem"):
        optkit.solve(optkit.get_problem("linear/poisson-2d", n=4), "sparse-ot")
    a, b, C = clouds(4, 5, 0)
    p = OTProblem(a, b, C, 0.1)
    with pytest.raises(ValueError, match=r"x0 must have shape \(9,\)"):
        optkit.solve(p, "sparse-ot", x0=np.zeros(8))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        optkit.solve(p, "sparse-ot", x0=(np.zeros(4), np.full(5, np.nan)))
    with pytest.raises(ValueError, match="x0 is not supported"):
        optkit.solve(p, "pot-sparsity-constrained", x0=np.zeros(9))
    torch = pytest.importorskip("torch")
    pt = OTProblem(*(torch.as_tensor(v) for v in (a, b, C)), 0.1)
    for solver in ("sparse-ot", "pot-sparsity-constrained"):
        assert "not on backend 'torch'" in optkit.get_solver(solver).check(pt)


# --------------------------------------------------------------------- trace, counters, limits


def test_trace_counters_potentials_and_limits():
    a, b, C = clouds(15, 15, 9)
    p = OTProblem(a, b, C, 0.01)
    res = optkit.solve(p, "sparse-ot", max_nz=3)
    assert res.status is Status.CONVERGED and res.nit > 10
    assert [row["iter"] for row in res.trace] == list(range(res.nit + 1))
    assert res.trace[0]["marginal_error"] > 1e-3 and res.trace[-1]["marginal_error"] <= 1e-9
    np.testing.assert_allclose(res.trace[-1]["dual"], res.metrics["dual"], rtol=1e-15)
    assert res.counters["fun"] == res.counters["grad"] >= res.nit - len(res.extras["newton_iters"])
    alpha, beta = res.extras["potentials"]
    np.testing.assert_array_equal(sparse_plan(alpha, beta, C, 0.01, 3), res.x)
    value, ga, gb = sparse_dual(alpha, beta, a, b, C, 0.01, 3)
    np.testing.assert_allclose(value, res.metrics["dual"], rtol=1e-15)
    np.testing.assert_allclose(np.abs(ga).sum() + np.abs(gb).sum(), res.metrics["marginal_error"], atol=1e-15)
    # the problem's own measures of the plan agree (its "dual" is the entropic one: not used)
    measures = p.evaluate(res.x, res.extras)
    np.testing.assert_allclose(measures["marginal_error"], res.metrics["marginal_error"], atol=1e-15)
    np.testing.assert_allclose(measures["cost"], res.metrics["cost"], rtol=1e-13)
    # limits and the callback
    short = optkit.solve(p, "sparse-ot", max_nz=3, max_iter=3)
    assert short.status is Status.MAX_ITER and short.nit == 3 and len(short.trace) == 4
    stopped = optkit.solve(p, "sparse-ot", max_nz=3, callback=lambda info: info["iter"] == 2)
    assert stopped.status is Status.USER_STOPPED and stopped.nit == 2
    # a converged start needs no iteration; plain L-BFGS-B also gets there at a looser tol
    again = optkit.solve(p, "sparse-ot", max_nz=3, x0=res.extras["potentials"])
    assert again.status is Status.CONVERGED and again.nit == 0
    plain = optkit.solve(p, "sparse-ot", max_nz=3, polish=False, tol=1e-6)
    assert plain.status is Status.CONVERGED and plain.extras["newton_iters"] == ()
    np.testing.assert_allclose(plain.x, res.x, atol=1e-6)


def test_max_iter_zero_and_ctrl_c(monkeypatch):
    import scipy.optimize

    a, b, C = clouds(15, 15, 9)
    p = OTProblem(a, b, C, 0.01)
    zero = optkit.solve(p, "sparse-ot", max_nz=3, max_iter=0)
    assert zero.status is Status.MAX_ITER and zero.nit == 0 and len(zero.trace) == 1
    assert zero.counters["fun"] == 1  # the start's evaluation only
    # the start: alpha = 0 and the beta for which every column of the plan sums to b_j
    np.testing.assert_array_equal(zero.extras["potentials"][0], np.zeros(15))
    np.testing.assert_allclose(zero.x.sum(axis=0), b, rtol=1e-12)

    short = optkit.solve(p, "sparse-ot", max_nz=3, max_iter=3)

    def ctrl_c_at_3(info):  # Ctrl-C from the callback path, inside L-BFGS-B's callback
        if info["iter"] == 3:
            raise KeyboardInterrupt

    by_callback = optkit.solve(p, "sparse-ot", max_nz=3, callback=ctrl_c_at_3)
    real_minimize = scipy.optimize.minimize

    def minimize(fun, x0, **kwargs):  # Ctrl-C inside L-BFGS-B, at its 5th evaluation
        calls = []

        def interrupted(v):
            calls.append(v)
            if len(calls) == 5:
                raise KeyboardInterrupt
            return fun(v)

        return real_minimize(interrupted, x0, **kwargs)

    monkeypatch.setattr(scipy.optimize, "minimize", minimize)
    in_library = optkit.solve(p, "sparse-ot", max_nz=3)
    monkeypatch.undo()
    assert by_callback.status is Status.USER_STOPPED and by_callback.nit == 3
    assert in_library.status is Status.USER_STOPPED and 0 < in_library.nit < 5
    # both return what a run capped at their last iteration returns: the best iterate so far
    capped = optkit.solve(p, "sparse-ot", max_nz=3, max_iter=in_library.nit)
    for res, ref in ((by_callback, short), (in_library, capped)):
        assert [row["iter"] for row in res.trace] == list(range(res.nit + 1))
        np.testing.assert_array_equal(res.x, ref.x)
        np.testing.assert_array_equal(res.extras["potentials"][1], ref.extras["potentials"][1])
        assert res.metrics == ref.metrics

def test_sparse_plan_and_float32():
    a, b, C = clouds(6, 8, 10)
    dense = solve(a, b, C, 0.05, max_nz=3)
    sparse = solve(a, b, C, 0.05, max_nz=3, sparse_plan=True)
    assert dense.status is Status.CONVERGED and sparse.status is Status.CONVERGED
    np.testing.assert_array_equal(sparse.x.toarray(), dense.x)
    assert sparse.x.nnz <= 3 * 8
    # float32 weights sum to 1 only to ~3e-8, so no plan meets both marginals better than that
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    single = solve(a32, b32, C.astype(np.float32), 0.05, max_nz=3, tol=1e-6)
    assert single.x.dtype == np.float32 and single.extras["potentials"][0].dtype == np.float32
    assert single.status is Status.CONVERGED
    np.testing.assert_allclose(single.x, dense.x, atol=1e-6)
    mismatch = abs(float(a32.astype(float).sum()) - float(b32.astype(float).sum()))
    assert mismatch > 1e-9
    failed = solve(a32, b32, C.astype(np.float32), 0.05, max_nz=3, tol=mismatch / 2)
    assert failed.status is Status.FAILED and "total masses differ" in failed.message


def test_pot_baseline_result_conventions():
    a, b, C = clouds(8, 8, 11)
    res = solve(a, b, C, 0.05, "pot-sparsity-constrained", max_nz=np.int64(2), tol=1e-3)
    assert res.extras["reg_type"] == "sparsity_constrained" and res.extras["max_nz"] == 2
    assert [row["iter"] for row in res.trace] == [0, res.nit]
    assert res.trace[0]["marginal_error"] == pytest.approx(2.0) and res.trace[0]["dual"] == 0.0
    assert res.counters["fun"] >= res.nit > 0
    alpha, beta = res.extras["potentials"]
    np.testing.assert_allclose(sparse_plan(alpha, beta, C, 0.05, 2), res.x, atol=1e-15)
    np.testing.assert_allclose(sparse_dual(alpha, beta, a, b, C, 0.05, 2)[0], res.metrics["dual"], rtol=1e-12)


def test_pot_baseline_max_iter_zero_callback_and_ctrl_c(monkeypatch):
    a, b, C = clouds(8, 8, 11)
    p = OTProblem(a, b, C, 0.05)
    full = optkit.solve(p, "pot-sparsity-constrained", max_nz=2, tol=1e-3)
    after = optkit.solve(p, "pot-sparsity-constrained", max_nz=2, tol=1e-3, callback=lambda info: info["iter"] > 0)
    assert after.status is Status.USER_STOPPED and after.nit == full.nit > 0
    np.testing.assert_array_equal(after.x, full.x)
    assert after.metrics["marginal_error"] == full.metrics["marginal_error"]

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ot.smooth, "smooth_ot_dual", ctrl_c)
    interrupted = optkit.solve(p, "pot-sparsity-constrained", max_nz=2)
    monkeypatch.setattr(ot.smooth, "smooth_ot_dual", lambda *args, **kwargs: pytest.fail("POT must not run"))
    zero = optkit.solve(p, "pot-sparsity-constrained", max_nz=2, max_iter=0)
    before = optkit.solve(p, "pot-sparsity-constrained", max_nz=2, callback=lambda info: True)
    # each ends at the start: zero potentials, whose plan is max(-C, 0) / reg = 0 (C >= 0)
    for res, status in ((interrupted, Status.USER_STOPPED), (zero, Status.MAX_ITER), (before, Status.USER_STOPPED)):
        assert res.status is status and res.nit == 0 and len(res.trace) == 1
        assert res.counters == {"fun": 0, "grad": 0}
        np.testing.assert_array_equal(res.x, np.zeros((8, 8)))
        np.testing.assert_array_equal(res.extras["potentials"][0], np.zeros(8))
        np.testing.assert_allclose(res.metrics["marginal_error"], 2.0, rtol=1e-15)  # |a|_1 + |b|_1
