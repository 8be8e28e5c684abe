"""The POT baselines: pot-sinkhorn-log, pot-sinkhorn (chunked, stopping on optkit's L1 measure) and pot-emd."""

import numpy as np
import pytest

import optkit
from optkit import Status
from optkit.ot_problem import OTProblem

ot = pytest.importorskip("ot")


def _l1(P, a, b):
    return np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum()


@pytest.mark.parametrize("spec", ["ot/random-assignment:n=60,eta=100", "ot/digits:cost=l1,eta=50"])
def test_sinkhorn_wrappers_reach_our_tol_and_agree(spec):
    p = optkit.get_problem(spec)
    tol = 1e-10
    results = {name: optkit.solve(p, name, tol=tol) for name in ("pot-sinkhorn-log", "pot-sinkhorn", "sinkhorn")}
    for name, res in results.items():
        assert res.status is Status.CONVERGED, (name, res.message)
        assert _l1(res.x, p.a, p.b) <= tol, name
        np.testing.assert_allclose(res.metrics["marginal_error"], _l1(res.x, p.a, p.b), rtol=1e-12)
        # (sinkhorn's trace error is computed from its potentials, the result's from the plan)
        np.testing.assert_allclose(res.trace[-1]["marginal_error"], res.metrics["marginal_error"], atol=1e-14)
    log_res, knopp = results["pot-sinkhorn-log"], results["pot-sinkhorn"]
    # the same iteration in two parametrisations: same number of iterations, same plan
    assert log_res.nit == knopp.nit and log_res.nit % 10 == 0
    np.testing.assert_allclose(log_res.x, knopp.x, rtol=1e-8, atol=1e-300)
    np.testing.assert_allclose(log_res.x, results["sinkhorn"].x, atol=1e-8 * log_res.x.max(), rtol=0)
    # the potentials are those of the returned plan
    f, g = log_res.extras["potentials"]
    np.testing.assert_allclose(np.exp((f[:, None] + g[None, :] - p.C) / p.reg), log_res.x, rtol=1e-12)


def test_chunks_continue_pot_exactly():
    p = optkit.get_problem("ot/point-clouds", n=30, eta=300, seed=3)
    res = optkit.solve(p, "pot-sinkhorn-log", tol=1e-300, max_iter=53, check_every=7)
    assert res.status is Status.MAX_ITER and res.nit == 53
    assert [row["iter"] for row in res.trace] == [0, 7, 14, 21, 28, 35, 42, 49, 53]
    P_ref = ot.sinkhorn(p.a, p.b, p.C, p.reg, method="sinkhorn_log", numItermax=53, stopThr=0.0, warn=False)
    np.testing.assert_allclose(res.x, P_ref, rtol=1e-12, atol=1e-300)


def test_pot_criterion_stops_where_pot_stops():
    p = optkit.get_problem("ot/random-assignment", n=50, eta=100)
    tol = 1e-9
    res = optkit.solve(p, "pot-sinkhorn-log", tol=tol, criterion="pot")
    _, log = ot.sinkhorn(p.a, p.b, p.C, p.reg, method="sinkhorn_log", stopThr=tol, numItermax=10000, log=True)
    assert res.status is Status.CONVERGED and res.nit == log["niter"] + 1
    # POT's test is the L2 error of the column marginal; the reported measure is still ours
    np.testing.assert_allclose(res.metrics["marginal_error"], _l1(res.x, p.a, p.b), rtol=1e-12)
    assert np.linalg.norm(res.x.sum(0) - p.b) < tol


def test_time_limited_run_reports_the_error_it_reached():
    p = optkit.get_problem("ot/random-assignment", n=80, eta=3000)
    res = optkit.solve(p, "pot-sinkhorn-log", tol=1e-13, time_limit=0.05)
    assert res.status is Status.TIME_LIMIT and res.nit > 0
    err = res.metrics["marginal_error"]
    assert 1e-13 < err < 2 and np.isfinite(err)
    np.testing.assert_allclose(err, _l1(res.x, p.a, p.b), rtol=1e-12)
    assert res.trace[-1]["iter"] == res.nit and res.trace[-1]["marginal_error"] == err


def test_knopp_underflow_is_nonfinite_status():
    n = 20
    C = 0.5 + 0.5 * (1 - np.eye(n))  # exp(-C / reg) <= exp(-1000) = 0: the whole kernel underflows
    a = np.full(n, 1.0 / n)
    p = OTProblem(a, a.copy(), C, 5e-4, name="underflow")
    res = optkit.solve(p, "pot-sinkhorn", tol=1e-9)
    assert res.status is Status.NONFINITE and "numerical errors" in res.message and res.nit == 0
    assert np.all(np.isfinite(res.x)) and res.metrics["marginal_error"] > 1.9
    good = optkit.solve(p, "pot-sinkhorn-log", tol=1e-9)
    assert good.status is Status.CONVERGED
    np.testing.assert_allclose(good.x, np.eye(n) / n, atol=1e-12)


def test_torch_backend_matches_numpy():
    torch = pytest.importorskip("torch")
    p = optkit.get_problem("ot/point-clouds", n=25, eta=100, seed=4)
    ref = optkit.solve(p, "pot-sinkhorn-log", tol=1e-10)
    res = optkit.solve(p.to("torch"), "pot-sinkhorn-log", tol=1e-10)
    assert isinstance(res.x, torch.Tensor) and res.status is Status.CONVERGED and res.nit == ref.nit
    np.testing.assert_allclose(res.x.numpy(), ref.x, rtol=1e-10, atol=1e-300)
    emd = optkit.solve(p.to("torch"), "pot-emd")
    assert isinstance(emd.x, torch.Tensor)
    np.testing.assert_allclose(emd.fun, ot.emd2(p.a, p.b, p.C), rtol=1e-12)


def test_emd_is_exact():
    p = optkit.get_problem("ot/digits", cost="l1", eta=100, i=3, j=8)
    res = optkit.solve(p, "pot-emd")
    assert res.status is Status.CONVERGED and res.nit == 1
    exact = ot.emd2(p.a, p.b, p.C, numItermax=10**7)
    np.testing.assert_allclose(res.fun, exact, rtol=1e-12)
    np.testing.assert_allclose((res.x * p.C).sum(), exact, rtol=1e-12)
    np.testing.assert_allclose(float(p.metadata["emd_cost"]), exact, rtol=1e-12)
    assert res.metrics["marginal_error"] <= 1e-12
    # LP duality: feasible potentials whose value is the cost, tight on the plan's support
    u, v = res.extras["potentials"]
    slack = p.C - u[:, None] - v[None, :]
    assert slack.min() >= -1e-12
    np.testing.assert_allclose(u @ p.a + v @ p.b, exact, rtol=1e-10)
    assert np.abs(slack[res.x > 1e-14]).max() < 1e-12
    capped = optkit.solve(p, "pot-emd", max_iter=3)
    assert capped.status is Status.MAX_ITER and "numItermax" in capped.message


def test_options_are_checked():
    with pytest.raises(ValueError, match="criterion"):
        optkit.get_solver("pot-sinkhorn-log", criterion="l2")
    with pytest.raises(ValueError, match="check_every"):
        optkit.get_solver("pot-sinkhorn", check_every=0)
    p = optkit.get_problem("ml/least-squares")
    assert "accepts OTProblem" in optkit.get_solver("pot-emd").check(p)


# ------------------------------------------------ the run: max_iter = 0, the callback, Ctrl-C


def _sinkhorn_interrupted_at_call(monkeypatch, call):
    """Make ``ot.sinkhorn`` (one chunk per call) raise Ctrl-C on its ``call``-th call."""
    real, calls = ot.sinkhorn, []

    def sinkhorn(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ot, "sinkhorn", sinkhorn)


@pytest.mark.parametrize("name", ["pot-sinkhorn-log", "pot-sinkhorn"])
def test_sinkhorn_max_iter_zero_callback_and_ctrl_c(name, monkeypatch):
    p = optkit.get_problem("ot/point-clouds", n=20, eta=100, seed=5)
    ref = optkit.solve(p, name, tol=1e-12, max_iter=20)
    assert ref.status is Status.MAX_ITER and [row["iter"] for row in ref.trace] == [0, 10, 20]

    zero = optkit.solve(p, name, max_iter=0)
    assert zero.status is Status.MAX_ITER and zero.nit == 0 and len(zero.trace) == 1
    np.testing.assert_allclose(zero.x, np.exp(-p.C / p.reg), rtol=1e-15)  # the plan of the zero start

    stopped = optkit.solve(p, name, tol=1e-12, callback=lambda info: info["iter"] == 20)
    _sinkhorn_interrupted_at_call(monkeypatch, 3)
    interrupted = optkit.solve(p, name, tol=1e-12)
    for res in (stopped, interrupted):  # both return the plan and potentials of the last chunk
        assert res.status is Status.USER_STOPPED and res.nit == 20
        assert [row["iter"] for row in res.trace] == [0, 10, 20]
        np.testing.assert_array_equal(res.x, ref.x)
        np.testing.assert_array_equal(res.extras["potentials"][0], ref.extras["potentials"][0])
        assert res.metrics["marginal_error"] == ref.metrics["marginal_error"] > 1e-12


def test_emd_max_iter_zero_callback_and_ctrl_c(monkeypatch):
    p = optkit.get_problem("ot/point-clouds", n=20, eta=100, seed=5)
    exact = optkit.solve(p, "pot-emd")
    assert exact.status is Status.CONVERGED and [row["iter"] for row in exact.trace] == [0, 1]
    # the start: the independent coupling a b^T (b sums to 1 here), a feasible plan
    start = np.outer(p.a, p.b)
    assert exact.trace[0]["marginal_error"] < 1e-15

    after = optkit.solve(p, "pot-emd", callback=lambda info: info["iter"] == 1)
    assert after.status is Status.USER_STOPPED and after.nit == 1 and after.fun == exact.fun
    np.testing.assert_array_equal(after.x, exact.x)

    monkeypatch.setattr(ot, "emd", lambda *args, **kwargs: pytest.fail("POT must not run"))
    zero = optkit.solve(p, "pot-emd", max_iter=0)
    before = optkit.solve(p, "pot-emd", callback=lambda info: True)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ot, "emd", ctrl_c)
    interrupted = optkit.solve(p, "pot-emd")
    for res, status in ((zero, Status.MAX_ITER), (before, Status.USER_STOPPED), (interrupted, Status.USER_STOPPED)):
        assert res.status is status and res.nit == 0 and res.fun is None and len(res.trace) == 1
        np.testing.assert_allclose(res.x, start, rtol=1e-15)


def test_emd_max_iter_counts_pivots_not_the_call():
    # A 2 x 2 problem needs at most one pivot: POT says OPTIMAL with numItermax = 1, and
    # that verdict (not the run's one recorded call reaching max_iter = 1) decides.
    p = OTProblem(np.array([0.5, 0.5]), np.array([0.5, 0.5]), np.array([[0.0, 1.0], [1.0, 0.0]]), 1.0)
    res = optkit.solve(p, "pot-emd", max_iter=1)
    assert res.status is Status.CONVERGED and res.extras["library_status"] == 1
    np.testing.assert_allclose(res.x, np.eye(2) / 2, atol=1e-15)
