"""The sparse-linear-model baselines (scikit-learn, skglm, celer) on the target ladder, and scipy-spsolve.

Each baseline's solution is checked against a CLARABEL (cvxpy) reference on a small Lasso,
non-negative Lasso and L1-logistic problem; the ladder itself is checked on a fake library
with a fake clock; options and problem kinds are refused with reasons.
"""

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse as sp

import optkit
from optkit import LinearSystemProblem, Status
from optkit.composite_problem import L1, CompositeProblem, L1NonNegative, LogisticDatafit, QuadraticDatafit
from solvers.baselines._target_ladder import DEFAULT_LIBRARY_TOLS, LadderFit, LadderSolver

pytestmark = pytest.mark.usefixtures("one_blas_thread")

cp = pytest.importorskip("cvxpy")
pytest.importorskip("sklearn")
pytest.importorskip("skglm")
pytest.importorskip("celer")

TOL = 1e-9  # the relative duality gap every baseline is run to


def lasso():
    # m > n: full column rank, so F is strongly convex and x* is unique
    return optkit.get_problem("ml/lasso/synthetic", m=40, n=15, density=0.3, lam_ratio=0.1)


def nonnegative_lasso():
    p = lasso()
    return CompositeProblem(p.matrix, QuadraticDatafit(p.datafit.b), L1NonNegative(p.penalty.lam), name="nn-lasso")


def logistic():
    return optkit.get_problem("ml/l1-logistic/synthetic", m=40, n=15, density=0.3, lam_ratio=0.1)


def sparse(make):
    """The same problem with ``A`` as a scipy sparse matrix with 64-bit indices (as the LIBSVM loader makes)."""

    def build():
        p = make()
        A = sp.csc_array(p.matrix)
        A.indices, A.indptr = A.indices.astype(np.int64), A.indptr.astype(np.int64)
        return CompositeProblem(A, p.datafit, p.penalty, name=f"sparse-{p.name}")

    return build


PROBLEMS = {
    "lasso": lasso,
    "nn-lasso": nonnegative_lasso,
    "logistic": logistic,
    "sparse-lasso": sparse(lasso),
    "sparse-logistic": sparse(logistic),
}


def clarabel_reference(problem):
    """``x*`` and ``F*`` from CLARABEL, and the strong-convexity modulus ``mu`` of ``F`` near ``x*``."""
    A, m = problem.matrix, problem.m
    x = cp.Variable(problem.n, nonneg=isinstance(problem.penalty, L1NonNegative))
    if isinstance(problem.datafit, LogisticDatafit):
        loss = cp.sum(cp.logistic(-cp.multiply(problem.datafit.y, A @ x))) / m
    else:
        loss = cp.sum_squares(A @ x - problem.datafit.b) / (2 * m)
    cp.Problem(cp.Minimize(loss + problem.penalty.lam * cp.norm1(x))).solve(
        solver="CLARABEL", tol_gap_abs=1e-13, tol_gap_rel=1e-13, tol_feas=1e-13
    )
    x_ref = np.asarray(x.value)
    if isinstance(problem.datafit, LogisticDatafit):
        s = 1 / (1 + np.exp(-problem.datafit.y * (A @ x_ref)))
        curvature = s * (1 - s)
    else:
        curvature = np.ones(m)
    mu = float(np.linalg.eigvalsh(A.T @ (curvature[:, None] * A) / m)[0])
    return x_ref, problem.fun(x_ref), mu


REFERENCES = {}


def reference(kind):
    kind = kind.removeprefix("sparse-")
    if kind not in REFERENCES:
        REFERENCES[kind] = clarabel_reference(PROBLEMS[kind]())
    return REFERENCES[kind]


CASES = [
    ("sklearn-lasso", ("lasso", "nn-lasso", "sparse-lasso")),
    ("sklearn-lasso:selection=random", ("lasso", "nn-lasso")),
    ("skglm-gramcd", ("lasso", "nn-lasso", "sparse-lasso")),
    ("skglm-gramcd:greedy=False", ("lasso",)),
    ("skglm-anderson", ("lasso", "nn-lasso", "logistic", "sparse-lasso", "sparse-logistic")),
    ("celer-lasso", ("lasso", "nn-lasso", "sparse-lasso")),
    ("sklearn-l1-logistic", ("logistic", "sparse-logistic")),
    ("sklearn-l1-logistic:solver=saga", ("logistic", "sparse-logistic")),
    ("skglm-prox-newton", ("logistic", "sparse-logistic")),
    ("celer-logistic", ("logistic", "sparse-logistic")),
]


@pytest.mark.parametrize(("spec", "kind"), [pytest.param(s, k, id=f"{s}-{k}") for s, kinds in CASES for k in kinds])
def test_the_solution_is_clarabels(spec, kind):
    problem = PROBLEMS[kind]()
    x_ref, f_ref, mu = reference(kind)
    res = optkit.get_solver(spec, tol=TOL).solve(problem)
    assert res.status is Status.CONVERGED, res.message
    assert res.metrics["rel_duality_gap"] <= TOL
    # F(x) - F* <= gap <= TOL F; CLARABEL's own F* is good to ~1e-12
    np.testing.assert_allclose(res.fun, f_ref, rtol=TOL + 1e-11)
    # strong convexity near x*: ||x - x*||^2 <= 2 (F(x) - F*) / mu, with F(x) - F* <= TOL F
    np.testing.assert_allclose(res.x, x_ref, rtol=0, atol=np.sqrt(2 * TOL * f_ref / mu) + 1e-8)
    if kind == "nn-lasso":
        assert np.all(res.x >= 0)
    assert [row["iter"] for row in res.trace] == [0, res.nit]
    assert res.trace[-1]["time"] <= res.time_s <= res.extras["ladder_time_s"]
    assert res.extras["library_tol"] in DEFAULT_LIBRARY_TOLS


# ----------------------------------------------------------------------------- the ladder, on a fake library


@dataclass(frozen=True, kw_only=True)
class FakeLibrary(LadderSolver):
    """A library returning ``x* + error(library_tol)`` after ``seconds(library_tol)`` on the fake clock."""

    name = "fake-ladder"
    datafits = (QuadraticDatafit,)
    errors: tuple = ()  # the perturbation of x* at each rung
    n_iter: int = 5

    def prepare(self, problem, x0):
        return {"x": reference("lasso")[0], "calls": CALLS}

    def fit(self, data, x0, library_tol):
        rung = self.library_tols.index(library_tol)
        data["calls"].append(library_tol)
        CLOCK[0] += rung + 1.0  # rung k takes k + 1 seconds
        return LadderFit(data["x"] + self.errors[rung], self.n_iter)


CLOCK = [0.0]
CALLS = []


@pytest.fixture
def fake_clock(monkeypatch):
    CLOCK[0] = 0.0
    CALLS.clear()
    monkeypatch.setattr("optkit.solver.time.perf_counter", lambda: CLOCK[0])


LADDER = (1e-1, 1e-2, 1e-3, 1e-4)


def test_the_ladder_stops_at_the_first_rung_meeting_tol_and_reports_its_time_alone(fake_clock):
    # relative gaps ~ 1.4e-2 / errors: rung 2 (1e-8 off x*, gap 1.4e-7) is the first within 1e-6
    errors = (1e-1, 1e-3, 1e-8, 0.0)
    res = FakeLibrary(tol=1e-6, library_tols=LADDER, errors=errors).solve(lasso())
    assert res.status is Status.CONVERGED
    assert CALLS == [1e-1, 1e-2, 1e-3]
    assert res.time_s == 3.0 and res.extras["ladder_time_s"] == 1.0 + 2.0 + 3.0
    assert res.extras["library_tol"] == 1e-3
    assert [row["time"] for row in res.trace] == [0.0, 3.0]
    assert [rung["library_tol"] for rung in res.extras["ladder"]] == [1e-1, 1e-2, 1e-3]
    assert [rung["time_s"] for rung in res.extras["ladder"]] == [1.0, 2.0, 3.0]
    np.testing.assert_allclose(res.x, reference("lasso")[0] + 1e-8, rtol=0, atol=1e-15)


def test_no_rung_meeting_tol_is_stalled_with_the_best_gap(fake_clock):
    errors = (1e-1, 1e-3, 1e-2, 1e-2)  # rung 1 is the closest to x*, and never within tol
    res = FakeLibrary(tol=1e-12, library_tols=LADDER, errors=errors).solve(lasso())
    assert res.status is Status.STALLED and "rel_duality_gap" in res.message
    assert len(CALLS) == 4 and res.extras["library_tol"] == 1e-2
    assert res.time_s == 2.0 and res.extras["ladder_time_s"] == 10.0
    gaps = [rung["rel_duality_gap"] for rung in res.extras["ladder"]]
    assert res.metrics["rel_duality_gap"] == min(gaps)


def test_a_fit_using_max_iter_ends_the_ladder_and_the_time_limit_counts_every_fit(fake_clock):
    errors = (1e-1, 1e-2, 1e-3, 1e-4)
    capped = FakeLibrary(tol=1e-12, library_tols=LADDER, errors=errors, n_iter=7, max_iter=7).solve(lasso())
    assert capped.status is Status.MAX_ITER and CALLS == [1e-1] and capped.nit == 7
    CALLS.clear()
    limited = FakeLibrary(tol=1e-12, library_tols=LADDER, errors=errors, time_limit=2.5).solve(lasso())
    assert limited.status is Status.TIME_LIMIT and CALLS == [1e-1, 1e-2]  # 1 + 2 seconds >= 2.5
    assert limited.time_s == 2.0 and limited.extras["ladder_time_s"] == 3.0


@pytest.mark.parametrize("spec", ["sklearn-lasso", "skglm-gramcd", "skglm-anderson"])
def test_least_squares_without_penalty_runs_to_f_gap(spec):
    # the BCD paper's problem A: lam = 0, where the duality gap is F itself, so only f_gap can stop it
    p = lasso()
    A, b = p.matrix, p.datafit.b
    x_ls = np.linalg.lstsq(A, b, rcond=None)[0]
    f_opt = float(np.sum((A @ x_ls - b) ** 2) / (2 * p.m))
    problem = CompositeProblem(A, QuadraticDatafit(b), L1(0.0), metadata={"f_opt": f_opt})
    res = optkit.get_solver(spec, tol=1e-10, target="f_gap").solve(problem)
    assert res.status is Status.CONVERGED and res.metrics["f_gap"] <= 1e-10
    # F is strongly convex (A has full column rank): ||x - x_ls||^2 <= 2 f_gap / lambda_min(A^T A / m)
    mu = np.linalg.eigvalsh(A.T @ A / p.m)[0]
    np.testing.assert_allclose(res.x, x_ls, rtol=0, atol=np.sqrt(2e-10 / mu) + 1e-12)


def test_target_f_gap_stops_on_the_known_optimum():
    problem = lasso()
    problem.metadata["f_opt"] = reference("lasso")[1]
    res = optkit.get_solver("sklearn-lasso", tol=1e-10, target="f_gap").solve(problem)
    assert res.status is Status.CONVERGED and res.metrics["f_gap"] <= 1e-10
    reason = optkit.get_solver("sklearn-lasso", target="f_gap").check(lasso())
    assert "metadata['f_opt']" in reason


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("spec", "options", "argument"),
    [
        ("sklearn-lasso", {"selection": "greedy"}, "selection"),
        ("sklearn-lasso", {"seed": 1.5}, "seed"),
        ("sklearn-lasso", {"target": "kkt"}, "target"),
        ("sklearn-lasso", {"library_tols": (1e-3, 1e-2)}, "library_tols"),
        ("sklearn-lasso", {"library_tols": ()}, "library_tols"),
        ("celer-lasso", {"library_tols": (1e-2, -1e-3)}, "library_tols"),
        ("sklearn-l1-logistic", {"solver": "lbfgs"}, "solver"),
        ("skglm-gramcd", {"greedy": "yes"}, "greedy"),
        ("skglm-anderson", {"ws_strategy": "random"}, "ws_strategy"),
        ("skglm-anderson", {"p0": 0}, "p0"),
        ("skglm-prox-newton", {"max_pn_iter": 0}, "max_pn_iter"),
        ("celer-lasso", {"prune": 1}, "prune"),
        ("celer-lasso", {"max_epochs": 0}, "max_epochs"),
        ("scipy-spsolve", {"permutation": "AMD"}, "permutation"),
    ],
)
def test_bad_options_are_errors_naming_the_argument(spec, options, argument):
    with pytest.raises((ValueError, TypeError), match=argument):
        optkit.get_solver(spec, **options)


def lasso_with_a_zero_column():
    A = lasso().matrix.copy()
    A[:, 3] = 0.0
    return CompositeProblem(A, QuadraticDatafit(lasso().datafit.b), L1(lasso().penalty.lam), name="zero-column")


def test_greedy_gramcd_solves_a_lasso_with_a_zero_column():
    problem = lasso_with_a_zero_column()
    res = optkit.get_solver("skglm-gramcd", tol=TOL).solve(problem)
    assert res.status is Status.CONVERGED and res.x[3] == 0.0
    # both within a relative gap of TOL of F*
    np.testing.assert_allclose(res.fun, optkit.get_solver("sklearn-lasso", tol=TOL).solve(problem).fun, rtol=2 * TOL)


def test_problems_of_the_wrong_kind_are_refused_with_a_reason():
    assert "LogisticDatafit" in optkit.get_solver("sklearn-lasso").check(logistic())
    assert "QuadraticDatafit" in optkit.get_solver("skglm-prox-newton").check(lasso())
    assert "L1NonNegative" in optkit.get_solver("sklearn-l1-logistic").check(
        CompositeProblem(logistic().matrix, LogisticDatafit(logistic().datafit.y), L1NonNegative(0.1))
    )
    poisson = optkit.get_problem("linear/poisson-2d", n=4)
    assert "CompositeProblem" in optkit.get_solver("celer-lasso").check(poisson)
    zero_lam = CompositeProblem(logistic().matrix, LogisticDatafit(logistic().datafit.y), L1(0.0))
    for name in ("sklearn-l1-logistic", "celer-logistic"):
        assert "lam > 0" in optkit.get_solver(name).check(zero_lam)
    zero_lam_lasso = CompositeProblem(lasso().matrix, QuadraticDatafit(lasso().datafit.b), L1(0.0))
    assert "lam > 0" in optkit.get_solver("celer-lasso").check(zero_lam_lasso)
    empty_column = lasso_with_a_zero_column()
    assert "column 3" in optkit.get_solver("skglm-gramcd", greedy=False).check(empty_column)
    assert optkit.get_solver("skglm-gramcd").check(empty_column) is None  # the greedy rule never picks it
    with pytest.raises(ValueError, match="accepts CompositeProblem"):
        optkit.get_solver("sklearn-lasso").solve(poisson)
    with pytest.raises(ValueError, match="x0 must be 0"):
        optkit.get_solver("sklearn-l1-logistic").solve(logistic(), x0=np.ones(15))
    dense = LinearSystemProblem(np.eye(3) * 2.0, np.ones(3))
    assert "sparse" in optkit.get_solver("scipy-spsolve").check(dense)
    assert (
        optkit.get_solver("scipy-spsolve").check(LinearSystemProblem(sp.eye(3, format="csr") * 2.0, np.ones(3))) is None
    )


def test_a_start_other_than_zero_is_where_every_fit_starts():
    x0 = np.full(15, 0.1)
    for spec in ("sklearn-lasso", "skglm-anderson", "celer-lasso"):
        res = optkit.get_solver(spec, tol=TOL).solve(lasso(), x0=x0)
        assert res.status is Status.CONVERGED
        np.testing.assert_allclose(res.trace[0]["fun"], lasso().fun(x0), rtol=1e-14)


# ----------------------------------------------------------------------------- scipy-spsolve


def test_spsolve_solves_a_sparse_system_directly():
    problem = optkit.get_problem("linear/poisson-2d", n=12)
    for permutation in ("COLAMD", "NATURAL"):
        res = optkit.get_solver("scipy-spsolve", tol=1e-12, permutation=permutation).solve(problem)
        assert res.status is Status.CONVERGED and res.nit == 1 and res.metrics["residual"] <= 1e-12
        # an SPD system of 144 unknowns with condition ~100: a direct solve agrees to ~1e-13
        np.testing.assert_allclose(res.x, np.linalg.solve(problem.matrix.toarray(), problem.b), rtol=1e-10)
    singular = LinearSystemProblem(sp.csr_matrix(np.array([[1.0, 1.0], [1.0, 1.0]])), np.array([1.0, 2.0]))
    assert optkit.get_solver("scipy-spsolve").solve(singular).status is Status.NONFINITE
    assert optkit.get_solver("scipy-spsolve", max_iter=0).solve(problem).nit == 0
