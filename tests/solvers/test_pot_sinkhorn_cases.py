"""optkit's ``sinkhorn`` and ``sns`` on the kinds of cases POT's own Sinkhorn tests use.

POT's wheel does not ship its tests, so these are cases of the same kinds (not copies):
uniform weights on Gaussian points with the squared Euclidean cost at ``reg = 1``,
non-uniform weights, rectangular plans (``n != m``, POT's warm-start sizes 10 x 20), a small
``reg`` for the log-domain method, and a warm start. The reference is
``ot.sinkhorn(..., method="sinkhorn_log")`` run to a tight tolerance; optkit's plans must
equal it to a relative 5e-10 entry by entry. Both solvers stop at a marginal error of 1e-13,
and the largest relative difference measured on these cases is 5e-11 (Sinkhorn at
``reg = 5e-3``), so the bound leaves a factor 10 and is far above rounding (~1e-14).
"""

import functools

import numpy as np
import pytest

import optkit
from optkit import OTProblem, Status
from optkit.backend import convert
from optkit.ot_problem import marginal_error

ot = pytest.importorskip("ot")

SOLVERS = ["sinkhorn", "sns"]
BACKENDS = ["numpy", "torch"]
TOL = 1e-13  # marginal error asked of optkit's solvers
PLAN_RTOL = 5e-10


def _weights(rng, n):
    w = rng.random(n) + 0.1
    return w / w.sum()


def _uniform():
    rng = np.random.RandomState(0)
    x = rng.randn(100, 2)
    return ot.unif(100), ot.unif(100), ot.dist(x, x), 1.0


def _non_uniform():
    rng = np.random.default_rng(1)
    xs, xt = rng.random((60, 2)), rng.random((60, 2))
    return _weights(rng, 60), _weights(rng, 60), ot.dist(xs, xt), 0.05


def _rectangular_uniform():
    rng = np.random.default_rng(2)
    xs, xt = rng.random((10, 2)), rng.random((20, 2))
    return ot.unif(10), ot.unif(20), ot.dist(xs, xt), 1.0


def _rectangular_non_uniform():
    rng = np.random.default_rng(3)
    xs, xt = rng.random((40, 2)), rng.random((25, 2))
    return _weights(rng, 40), _weights(rng, 25), ot.dist(xs, xt), 0.1


def _small_reg():
    # eta = 200 on costs in [0, 1]: kernel entries down to exp(-200) ~ 1e-87, the regime
    # POT's log-domain method is meant for (smaller reg makes POT's run take minutes)
    rng = np.random.default_rng(4)
    xs, xt = rng.random((30, 2)), rng.random((30, 2))
    C = ot.dist(xs, xt)
    return ot.unif(30), ot.unif(30), C / C.max(), 5e-3


CASES = {
    "uniform": _uniform,
    "non_uniform": _non_uniform,
    "rectangular_uniform": _rectangular_uniform,
    "rectangular_non_uniform": _rectangular_non_uniform,
    "small_reg": _small_reg,
}


@functools.cache
def _reference(case):
    """The case's arrays and POT's plan, computed once for all solvers and backends."""
    a, b, C, reg = CASES[case]()
    return a, b, C, reg, _pot_plan(a, b, C, reg)[0]


def _pot_plan(a, b, C, reg, **kwargs):
    """POT's log-domain plan and potentials (cost units), to a tight tolerance."""
    P, log = ot.sinkhorn(a, b, C, reg, method="sinkhorn_log", stopThr=1e-15, numItermax=200_000, log=True, **kwargs)
    return P, (reg * log["log_u"], reg * log["log_v"])


def _as_numpy(x):
    return x.numpy() if hasattr(x, "numpy") else x


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "torch":
        pytest.importorskip("torch")
    return request.param


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_equals_pot_sinkhorn_log(case, solver, backend):
    a, b, C, reg, P_ref = _reference(case)
    problem = OTProblem(a, b, C, reg, name=case).to(backend)
    res = optkit.solve(problem, solver, tol=TOL, max_iter=100_000)
    assert res.status is Status.CONVERGED, res.message
    P = _as_numpy(res.x)
    assert P.shape == (a.shape[0], b.shape[0]) and P.dtype == np.float64
    np.testing.assert_allclose(P, P_ref, rtol=PLAN_RTOL, atol=0)
    # the reference itself meets the marginals it was asked for
    np.testing.assert_allclose(P_ref.sum(1), a, rtol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_warm_start_from_pot_potentials(solver, backend):
    """As POT's warm-start test: a run started from the potentials of a few early iterations
    ends at the plan of a cold run; and a start at the solution stops at once."""
    a, b, C, reg = _rectangular_non_uniform()
    P_ref, potentials_ref = _pot_plan(a, b, C, reg)
    with pytest.warns(UserWarning, match="did not converge"):  # on purpose: 5 iterations only
        P_early, log = ot.sinkhorn(a, b, C, reg, method="sinkhorn_log", numItermax=5, stopThr=0.0, log=True)
    early = (reg * log["log_u"], reg * log["log_v"])
    assert marginal_error(P_early, a, b) > 1e-6  # a genuinely unconverged start
    problem = OTProblem(a, b, C, reg).to(backend)
    res = optkit.solve(problem, solver, tol=TOL, x0=tuple(convert(v, backend) for v in early))
    assert res.status is Status.CONVERGED, res.message
    np.testing.assert_allclose(_as_numpy(res.x), P_ref, rtol=PLAN_RTOL, atol=0)
    # POT's own warm start from the same potentials lands on the same plan
    P_pot_warm, _ = _pot_plan(a, b, C, reg, warmstart=(early[0] / reg, early[1] / reg))
    np.testing.assert_allclose(P_pot_warm, P_ref, rtol=PLAN_RTOL, atol=0)
    # started at POT's solution, optkit has nothing left to do
    again = optkit.solve(problem, solver, tol=1e-12, x0=tuple(convert(v, backend) for v in potentials_ref))
    assert again.status is Status.CONVERGED and again.nit == 0
    np.testing.assert_allclose(_as_numpy(again.x), P_ref, rtol=PLAN_RTOL, atol=0)
