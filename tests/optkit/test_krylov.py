"""Tests of optkit.krylov: cg / pcg / minres against dense solves and scipy, breakdown and
non-finite statuses, torch parity and input validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.testing import assert_allclose

from optkit.krylov import CGIteration, CGState, KrylovResult, cg, minres, pcg
from optkit.linop import Dense, Diagonal, FunctionOperator, Identity, Sparse, aslinearoperator
from optkit.result import Status


def spd(n, seed=0, cond=100.0, cplx=False):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, n)) + (1j * rng.standard_normal((n, n)) if cplx else 0)
    Q, _ = np.linalg.qr(Z)
    return (Q * np.geomspace(1.0, cond, n)) @ Q.conj().T


def sym_indefinite(n, seed=0, cplx=False):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, n)) + (1j * rng.standard_normal((n, n)) if cplx else 0)
    Q, _ = np.linalg.qr(Z)
    eig = np.concatenate([-np.geomspace(1.0, 20.0, n // 2), np.geomspace(0.5, 30.0, n - n // 2)])
    return (Q * eig) @ Q.conj().T


def poisson2d(m):
    T = sp.diags_array([-1.0, 2.0, -1.0], offsets=[-1, 0, 1], shape=(m, m))
    I = sp.eye_array(m)
    return (sp.kron(I, T) + sp.kron(T, I)).tocsr()


def scipy_cg_iterations(A, b, **kw):
    count = [0]

    def cb(_):
        count[0] += 1

    x, info = spla.cg(A, b, callback=cb, **kw)
    return x, info, count[0]


# ----------------------------------------------------------------------------- CG / PCG
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_cg_solves_spd_system(cplx):
    A = spd(40, cplx=cplx)
    b = np.random.default_rng(1).standard_normal(40)
    res = cg(A, b, rtol=1e-12)
    assert isinstance(res, KrylovResult) and res.status is Status.CONVERGED and res.success
    assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-9, atol=1e-12)
    assert len(res.residual_history) == res.nit + 1 and res.matvecs == res.nit
    assert res.residual_history[0] == pytest.approx(np.linalg.norm(b), rel=1e-14)
    assert res.residual_norm == res.residual_history[-1] < 1e-12 * np.linalg.norm(b)
    assert_allclose(np.linalg.norm(b - A @ res.x), res.residual_norm, atol=1e-11 * np.linalg.norm(b))
    assert "converged" in res.message and f"after {res.nit} iterations" in res.message
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.nit = 0


def test_cg_with_initial_guess_leaves_it_untouched():
    A = spd(30, seed=2)
    b = np.ones(30)
    x0 = np.full(30, 0.3)
    res = cg(Dense(A, tags={"psd"}), b, x0, rtol=1e-11)
    assert_allclose(x0, 0.3)
    assert res.matvecs == res.nit + 1
    assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-8)


def test_cg_iteration_count_equals_scipy_on_poisson():
    A = poisson2d(32)
    b = np.ones(A.shape[0])
    x_sp, info, its = scipy_cg_iterations(A, b, rtol=1e-8)
    res = cg(Sparse(A), b, rtol=1e-8)
    assert info == 0 and res.status is Status.CONVERGED
    assert res.nit == its
    assert_allclose(res.x, x_sp, rtol=1e-10, atol=0)
    # also with atol dominating and with a starting point
    x0 = np.linspace(0, 1, A.shape[0])
    x_sp, _, its = scipy_cg_iterations(A, b, x0=x0, rtol=1e-3, atol=1e-4)
    res = cg(A, b, x0, rtol=1e-3, atol=1e-4)
    assert res.nit == its
    assert_allclose(res.x, x_sp, rtol=1e-10, atol=0)


def test_jacobi_pcg_needs_fewer_iterations():
    rng = np.random.default_rng(3)
    d = np.geomspace(1.0, 1e4, 200)
    A = poisson2d(10)[:100, :100].toarray()
    A = sp.csr_array(np.kron(np.eye(2), A) + np.diag(d))  # SPD, badly scaled diagonal
    b = rng.standard_normal(200)
    plain = cg(A, b, rtol=1e-10)
    jac = pcg(A, b, M=Diagonal(1.0 / A.diagonal()), rtol=1e-10)
    assert plain.status is Status.CONVERGED and jac.status is Status.CONVERGED
    assert jac.nit < plain.nit / 2
    ref = np.linalg.solve(A.toarray(), b)
    assert_allclose(jac.x, ref, rtol=1e-7, atol=1e-12)
    assert_allclose(cg(A, b, rtol=1e-10, M=Diagonal(1.0 / A.diagonal())).x, jac.x, rtol=1e-14)


def test_cg_indefinite_diagonal_is_a_breakdown():
    res = cg(Diagonal(np.array([-1.0, -2.0, -3.0])), np.ones(3))
    assert res.status is Status.BREAKDOWN and not res.success
    assert res.nit == 0
    assert_allclose(res.x, np.zeros(3))
    assert "not positive definite" in res.message and "iteration 1" in res.message
    d = np.array([4.0, 3.0, 2.0, 1.0, -0.5, -0.25])
    res = cg(Diagonal(d), np.ones(6), rtol=1e-12)
    assert res.status is Status.BREAKDOWN and res.nit >= 1
    assert np.all(np.isfinite(res.x))
    assert f"iteration {res.nit + 1}" in res.message
    # the returned x is the iterate of the last completed iteration
    assert_allclose(res.x, cg(Diagonal(d), np.ones(6), max_iter=res.nit).x, rtol=1e-14)


def test_pcg_indefinite_preconditioner_is_a_breakdown():
    A = spd(10, seed=4)
    res = pcg(A, np.ones(10), M=Diagonal(-np.ones(10)))
    assert res.status is Status.BREAKDOWN
    assert "preconditioner is not positive definite" in res.message
    assert "at iteration 0" in res.message and res.nit == 0
    # r0^H M r0 > 0, but a later residual meets the negative direction of M
    A = np.diag([1.0, 2.0, 3.0, 4.0])
    A[0, 3] = A[3, 0] = 0.5
    b = np.array([1.0, 1.0, 1.0, 0.0])
    res = pcg(A, b, M=Diagonal(np.array([1.0, 1.0, 1.0, -1.0])), rtol=1e-12)
    assert res.status is Status.BREAKDOWN and "preconditioner is not positive definite" in res.message
    assert res.nit == 2 and "at iteration 2" in res.message
    assert_allclose(res.x, pcg(A, b, M=Diagonal(np.array([1.0, 1.0, 1.0, -1.0])), max_iter=2).x, rtol=1e-14)


def _nan_after(A, calls_ok):
    calls = [0]

    def mv(x):
        calls[0] += 1
        y = A @ x
        if calls[0] > calls_ok:
            y[0] = np.nan
        return y

    return FunctionOperator(A.shape, mv, mv)


def test_nan_in_operator_output_is_nonfinite():
    A = spd(20, seed=5)
    b = np.ones(20)
    res = cg(_nan_after(A, 2), b, rtol=1e-12)
    assert res.status is Status.NONFINITE and "non-finite" in res.message
    assert res.nit == 2 and np.all(np.isfinite(res.x))
    assert_allclose(res.x, cg(A, b, max_iter=2).x, rtol=1e-14)
    res = minres(_nan_after(A, 3), b, rtol=1e-12)
    assert res.status is Status.NONFINITE and res.nit == 3 and np.all(np.isfinite(res.x))
    res = cg(_nan_after(A, 0), b, np.ones(20))  # already r0 = b - A x0 is NaN
    assert res.status is Status.NONFINITE and res.nit == 0


def test_max_iter_and_callback_stop():
    A = poisson2d(12)
    b = np.ones(A.shape[0])
    res = cg(A, b, rtol=1e-10, max_iter=5)
    assert res.status is Status.MAX_ITER and res.nit == 5 and len(res.residual_history) == 6
    assert "max_iter=5" in res.message and res.residual_norm > 1e-10 * np.linalg.norm(b)
    res0 = cg(A, b, np.full(A.shape[0], 2.0), max_iter=0)
    assert res0.status is Status.MAX_ITER and res0.nit == 0
    assert_allclose(res0.x, 2.0)
    seen = []
    res = cg(A, b, callback=lambda x: seen.append(x.copy()) or len(seen) == 3)
    assert res.status is Status.USER_STOPPED and res.nit == 3 and len(seen) == 3
    assert_allclose(seen[-1], res.x)
    res = minres(A, b, max_iter=4)
    assert res.status is Status.MAX_ITER and res.nit == 4
    res = minres(A, b, callback=lambda x: True)
    assert res.status is Status.USER_STOPPED and res.nit == 1


def test_zero_rhs_returns_zero():
    for solve in (cg, minres):
        res = solve(spd(5), np.zeros(5), np.ones(5))
        assert res.status is Status.CONVERGED and res.nit == 0
        assert_allclose(res.x, np.zeros(5))


def test_cg_iteration_stepper_matches_cg():
    A = Sparse(poisson2d(10))
    b = np.linspace(-1, 1, 100)
    it = CGIteration(A, b, M=Diagonal(np.full(100, 0.25)))
    tol = it.tolerance(rtol=1e-9)
    assert tol == pytest.approx(1e-9 * np.linalg.norm(b))
    state = it.init()
    assert isinstance(state, CGState) and state.k == 0
    assert_allclose(state.z, 0.25 * b)
    assert state.rz == pytest.approx(0.25 * b @ b)
    while not it.converged(state, tol) and state.status is None:
        state = it.step(state)
    ref = cg(A, b, rtol=1e-9, M=Diagonal(np.full(100, 0.25)))
    assert state.k == ref.nit and state.matvecs == ref.matvecs
    assert_allclose(state.x, ref.x, rtol=1e-14)
    assert_allclose(state.r, b - A @ state.x, atol=1e-8 * np.linalg.norm(b))
    bad = CGIteration(Diagonal(-np.ones(3)), np.ones(3))
    s = bad.step(bad.init())
    assert s.status is Status.BREAKDOWN and bad.step(s) is s


# ----------------------------------------------------------------------------- MINRES
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_minres_symmetric_indefinite(cplx):
    A = sym_indefinite(40, seed=6, cplx=cplx)
    b = np.random.default_rng(7).standard_normal(40)
    res = minres(A, b, rtol=1e-11)
    assert res.status is Status.CONVERGED
    assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-8, atol=1e-10)
    # the recurrence residual is the true residual (no preconditioner)
    assert_allclose(res.residual_norm, np.linalg.norm(b - A @ res.x), rtol=1e-3, atol=1e-12)
    assert len(res.residual_history) == res.nit + 1
    assert all(a >= c * (1 - 1e-12) for a, c in zip(res.residual_history, res.residual_history[1:]))  # monotone
    assert cg(A, b).status is not Status.CONVERGED or cplx  # CG is not for indefinite systems


def test_minres_shift_and_preconditioner():
    A = sym_indefinite(30, seed=8)
    b = np.ones(30)
    res = minres(A, b, shift=1.5, rtol=1e-11)
    assert res.status is Status.CONVERGED
    assert_allclose(res.x, np.linalg.solve(A - 1.5 * np.eye(30), b), rtol=1e-8, atol=1e-10)
    x0 = np.linspace(-1, 1, 30)
    res = minres(A, b, x0, shift=1.5, rtol=1e-11)
    assert_allclose(res.x, np.linalg.solve(A - 1.5 * np.eye(30), b), rtol=1e-8, atol=1e-10)
    D = np.diag(np.geomspace(1, 1e3, 30))
    B = D @ A @ D  # symmetric indefinite, badly scaled
    M = Diagonal(1.0 / np.abs(np.diag(B)))
    plain = minres(B, b, rtol=1e-10, max_iter=2000)
    prec = minres(B, b, M=M, rtol=1e-10)
    assert prec.status is Status.CONVERGED and prec.nit < plain.nit
    assert_allclose(prec.x, np.linalg.solve(B, b), rtol=1e-6, atol=1e-12)


def test_minres_bad_preconditioner_and_singular_system():
    A = sym_indefinite(10, seed=9)
    res = minres(A, np.ones(10), M=Diagonal(-np.ones(10)))
    assert res.status is Status.BREAKDOWN and "preconditioner is not positive definite" in res.message
    # singular consistent system: MINRES still converges
    S = np.diag([1.0, -2.0, 0.0])
    res = minres(S, np.array([1.0, 1.0, 0.0]), rtol=1e-12)
    assert res.status is Status.CONVERGED
    assert_allclose(res.x, [1.0, -0.5, 0.0], atol=1e-12)


def test_minres_agrees_with_scipy():
    A = sym_indefinite(50, seed=10)
    b = np.random.default_rng(11).standard_normal(50)
    x_sp, info = spla.minres(A, b, rtol=1e-12)
    res = minres(A, b, rtol=1e-12)
    assert info == 0 and res.status is Status.CONVERGED
    assert_allclose(res.x, x_sp, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------- torch
def test_torch_parity_float64_cpu():
    torch = pytest.importorskip("torch")
    A = poisson2d(16)
    b = np.random.default_rng(12).standard_normal(A.shape[0])
    ref = cg(A, b, rtol=1e-10)
    tA = Sparse(A).to("torch")
    tb = torch.as_tensor(b)
    res = cg(tA, tb, rtol=1e-10)
    assert isinstance(res.x, torch.Tensor) and res.x.dtype == torch.float64
    assert res.status is Status.CONVERGED and res.nit == ref.nit
    assert_allclose(res.x.numpy(), ref.x, rtol=1e-10, atol=1e-13)
    assert_allclose(res.residual_history, ref.residual_history, rtol=1e-8)
    M = np.full(A.shape[0], 0.25)
    resp = pcg(tA, tb, M=Diagonal(torch.as_tensor(M)), rtol=1e-10)
    assert_allclose(resp.x.numpy(), pcg(A, b, M=Diagonal(M), rtol=1e-10).x, rtol=1e-9, atol=1e-13)
    S = sym_indefinite(30, seed=13)
    ms = minres(torch.as_tensor(S), torch.as_tensor(b[:30]), rtol=1e-10, shift=0.7)
    ref = minres(S, b[:30], rtol=1e-10, shift=0.7)
    assert ms.status is ref.status is Status.CONVERGED
    assert_allclose(ms.x.numpy(), ref.x, rtol=0, atol=1e-9 * np.abs(ref.x).max())
    # the same recurrence: equal iterates after a fixed count. Not at convergence: this system
    # amplifies rounding ~1e5-fold every 5 steps, so the two kernels' iterates part after ~15
    # steps and the final stopping test may be crossed one step apart
    fixed = [minres(A_, b_, rtol=1e-10, shift=0.7, max_iter=10) for A_, b_ in
             ((torch.as_tensor(S), torch.as_tensor(b[:30])), (S, b[:30]))]
    assert fixed[0].nit == fixed[1].nit == 10
    assert_allclose(fixed[0].x.numpy(), fixed[1].x, rtol=0, atol=1e-11 * np.abs(fixed[1].x).max())
    res = cg(Dense(torch.as_tensor(A.toarray())), torch.ones(A.shape[0], dtype=torch.float64), rtol=1e-8)
    assert_allclose(res.x.numpy(), cg(A, np.ones(A.shape[0]), rtol=1e-8).x, rtol=1e-9)
    bad = cg(Diagonal(torch.tensor([1.0, -1.0], dtype=torch.float64)), torch.ones(2, dtype=torch.float64))
    assert bad.status is Status.BREAKDOWN


def test_torch_mixed_backends_raise():
    torch = pytest.importorskip("torch")
    A = spd(4)
    with pytest.raises(TypeError, match="b is a torch array .* but A is a numpy operator"):
        cg(A, torch.ones(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="x0 is a numpy array .* but A is a torch operator"):
        cg(torch.as_tensor(A), torch.ones(4, dtype=torch.float64), np.ones(4))
    with pytest.raises(TypeError, match="M is a torch operator"):
        pcg(A, np.ones(4), M=Identity(4, backend="torch"))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "solve", [cg, minres, lambda *a, **k: pcg(*a, M=Identity(5), **k)], ids=["cg", "minres", "pcg"]
)
def test_bad_inputs_raise_before_any_work(solve):
    calls = [0]

    def mv(x):
        calls[0] += 1
        return x

    A = FunctionOperator((5, 5), mv, mv)
    b = np.ones(5)
    cases = [
        ((A, np.ones(4)), {}, ValueError, r"b has shape \(4,\) but A has shape \(5, 5\)"),
        ((A, b, np.ones(6)), {}, ValueError, r"x0 has shape \(6,\) but A has shape \(5, 5\)"),
        ((np.ones((5, 4)), b), {}, ValueError, r"A must be square, got shape \(5, 4\)"),
        ((A, np.array([1.0, np.nan, 0, 0, 0])), {}, ValueError, "b contains NaN or inf"),
        ((A, b, np.array([np.inf, 0, 0, 0, 0])), {}, ValueError, "x0 contains NaN or inf"),
        ((A, b), {"rtol": -1e-3}, ValueError, "rtol must be a finite non-negative number"),
        ((A, b), {"atol": -1.0}, ValueError, "atol must be a finite non-negative number"),
        ((A, b), {"max_iter": -1}, ValueError, "max_iter must be >= 0"),
        ((A, b), {"callback": 3}, TypeError, "callback must be callable"),
        (("matrix", b), {}, TypeError, "of type builtins.str"),
    ]
    for args, kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            solve(*args, **kw)
    assert calls[0] == 0


def test_bad_preconditioner_inputs():
    A = spd(5)
    with pytest.raises(ValueError, match=r"M has shape \(4, 4\) but A is 5x5"):
        cg(A, np.ones(5), M=np.eye(4))
    with pytest.raises(ValueError, match="pcg needs a preconditioner M"):
        pcg(A, np.ones(5), M=None)
    with pytest.raises(ValueError, match="shift must be a finite real number"):
        minres(A, np.ones(5), shift=np.nan)
    assert cg(aslinearoperator(A), [1.0, 2.0, 3.0, 4.0, 5.0], rtol=1e-10).status is Status.CONVERGED  # lists are fine
