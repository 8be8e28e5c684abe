"""OTProblem: input validation, and the measures every OT solver is judged by."""

import numpy as np
import pytest

from optkit import OTProblem
from optkit.ot_problem import dual_objective, marginal_error, round_to_marginals

ot = pytest.importorskip("ot")


def small_case(n=6, m=4, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(n) + 0.1
    b = rng.random(m) + 0.1
    a, b = a / a.sum(), b / b.sum()
    return a, b, rng.random((n, m))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"a": np.array([0.5, -0.1, 0.6])}, "a has negative entries"),
        ({"b": np.array([0.5, np.nan, 0.5])}, "b contains NaN or inf"),
        ({"b": np.array([0.3, 0.3, 0.3])}, "a and b must have the same total mass"),
        ({"C": np.array([[0.0, np.nan, 1.0]] * 3)}, "C contains NaN or inf"),
        ({"C": np.ones((3, 2))}, r"C must have shape \(3, 3\) to match a and b"),
        ({"reg": 0.0}, "reg must be a positive finite number"),
        ({"reg": -1.0}, "reg must be a positive finite number"),
        ({"a": np.zeros(3)}, "a has zero total mass"),
    ],
)
def test_bad_inputs_name_the_argument(change, match):
    args = {"a": np.full(3, 1 / 3), "b": np.full(3, 1 / 3), "C": np.ones((3, 3)), "reg": 0.1, **change}
    with pytest.raises(ValueError, match=match):
        OTProblem(**args)


def test_measures_at_the_pot_optimum():
    a, b, C = small_case()
    reg = 0.05
    P, log = ot.sinkhorn(a, b, C, reg, method="sinkhorn_log", stopThr=1e-14, numItermax=100000, log=True)
    f, g = reg * log["log_u"], reg * log["log_v"]
    np.testing.assert_allclose(np.exp((f[:, None] + g[None, :] - C) / reg), P, rtol=1e-10)
    primal = float((P * C).sum() + reg * (P * (np.log(P) - 1)).sum())
    dual = dual_objective(f, g, a, b, C, reg)
    np.testing.assert_allclose(dual, primal, rtol=1e-10)  # strong duality
    emd = ot.emd2(a, b, C)
    problem = OTProblem(a, b, C, reg, metadata={"dual_ref": primal, "emd_cost": emd})
    measures = problem.evaluate(P, {"potentials": (f, g)})
    assert measures["marginal_error"] < 1e-12
    np.testing.assert_allclose(measures["cost"], (P * C).sum(), rtol=1e-14)
    np.testing.assert_allclose(measures["dual_gap"], 0.0, atol=1e-12)
    assert 0 <= measures["emd_gap"] < 0.5


def test_rounding_lands_on_the_marginals_and_moves_little():
    a, b, C = small_case(seed=3)
    rng = np.random.default_rng(1)
    P = np.outer(a, b) * (1 + 0.2 * rng.standard_normal((6, 4))).clip(0.5)
    err = marginal_error(P, a, b)
    R = round_to_marginals(P, a, b)
    np.testing.assert_allclose(R.sum(axis=1), a, atol=1e-15)
    np.testing.assert_allclose(R.sum(axis=0), b, atol=1e-15)
    assert (R >= 0).all() and np.abs(R - P).sum() <= 2 * err + 1e-15


def test_numpy_torch_and_sparse_plans_measure_alike():
    torch = pytest.importorskip("torch")
    import scipy.sparse as sp

    a, b, C = small_case()
    P = np.outer(a, b)
    problem = OTProblem(a, b, C, 0.1, metadata={"emd_cost": ot.emd2(a, b, C)})
    dense = problem.evaluate(P)
    tp = problem.to("torch")
    assert tp.x0.shape == (10,) and tp.backend == "torch"
    for other in (tp.evaluate(torch.as_tensor(P)), problem.evaluate(sp.csr_matrix(P))):
        for key in dense:
            np.testing.assert_allclose(other[key], dense[key], rtol=1e-12, atol=1e-14)


def test_emd_gap_is_absolute_when_the_exact_cost_is_zero():
    a = np.full(3, 1 / 3)
    C = 1.0 - np.eye(3)
    problem = OTProblem(a, a, C, 0.1, metadata={"emd_cost": 0.0})
    P = np.full((3, 3), 1 / 9)
    np.testing.assert_allclose(problem.evaluate(P)["emd_gap"], 6 / 9)


def test_potentials_of_another_regulariser_give_no_entropic_dual():
    a, b, C = small_case()
    problem = OTProblem(a, b, C, 0.1)
    potentials = (np.zeros(6), np.zeros(4))
    assert "dual" in problem.evaluate(np.outer(a, b), {"potentials": potentials})
    measures = problem.evaluate(np.outer(a, b), {"potentials": potentials, "regularization": "sparsity-constrained"})
    assert "dual" not in measures and "marginal_error" in measures


def test_dual_ignores_minus_infinite_potentials_on_zero_weights():
    a = np.array([0.5, 0.5, 0.0])
    b = np.array([0.5, 0.5])
    C = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    f, g = np.array([0.1, 0.2, -np.inf]), np.array([0.0, 0.1])
    reg = 0.5
    expected = 0.5 * 0.1 + 0.5 * 0.2 + 0.5 * 0.1 - reg * np.exp((f[:2, None] + g[None, :] - C[:2]) / reg).sum()
    np.testing.assert_allclose(dual_objective(f, g, a, b, C, reg), expected, rtol=1e-14)


# ----------------------------------------------------------------------------- dtypes and reg
def test_integer_and_bool_inputs_become_one_float_dtype():
    a, b = np.array([1, 1, 2]), np.array([2, 2])
    C = np.array([[0, 1], [1, 0], [2, 2]])
    p = OTProblem(a, b, C, 1)
    assert p.dtype == np.float64
    assert {v.dtype for v in (p.a, p.b, p.C, p.x0)} == {np.dtype(np.float64)}
    np.testing.assert_array_equal(p.C, C)  # small integers are exact in float64
    # integer weights take the dtype of a floating cost, bools count as integers
    q = OTProblem(a, b, (C > 0).astype(np.float32), 1.0)
    assert q.dtype == np.float32 and q.a.dtype == np.float32
    assert OTProblem(a, b, C > 0, 1.0).C.dtype == np.float64
    # mixed floating dtypes promote; arrays already of the dtype are kept without a copy
    Cf = C.astype(np.float64)
    r = OTProblem(a.astype(np.float32), b.astype(np.float32), Cf, 1.0)
    assert r.dtype == np.float64 and r.C is Cf


def test_integer_tensors_take_the_torch_default_dtype():
    torch = pytest.importorskip("torch")
    a, b, C = torch.tensor([1, 1, 2]), torch.tensor([2, 2]), torch.tensor([[0, 1], [1, 0], [2, 2]])
    p = OTProblem(a, b, C, 1)
    assert p.dtype == torch.get_default_dtype() and p.x0.dtype == p.dtype and p.a.dtype == p.dtype
    q = OTProblem(a, b, C.double(), 1)
    assert q.dtype == torch.float64 and q.b.dtype == torch.float64


def test_complex_arrays_are_refused():
    with pytest.raises(TypeError, match="C must hold real numbers"):
        OTProblem(np.full(2, 0.5), np.full(2, 0.5), np.ones((2, 2), dtype=complex), 1.0)


def test_float32_weights_normalised_in_float32_are_equal_mass():
    a, b, _ = small_case(n=40, m=30)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    a32, b32 = a32 / a32.sum(), b32 / b32.sum()
    assert abs(float(a32.sum(dtype=np.float64)) - float(b32.sum(dtype=np.float64))) > 1e-8  # float32 rounding
    OTProblem(a32, b32, np.ones((40, 30), dtype=np.float32), 0.1)
    with pytest.raises(ValueError, match="same total mass"):
        OTProblem(a32, b32 * np.float32(1.001), np.ones((40, 30), dtype=np.float32), 0.1)


@pytest.mark.parametrize("reg", [0.5, 2, np.float32(0.5), np.float64(0.5), np.int64(2), np.array(0.5), np.array(2)])
def test_reg_accepts_any_real_scalar(reg):
    p = OTProblem(np.full(3, 1 / 3), np.full(3, 1 / 3), np.ones((3, 3)), reg)
    assert type(p.reg) is float and p.reg == float(reg)


def test_reg_accepts_a_0d_tensor():
    torch = pytest.importorskip("torch")
    p = OTProblem(np.full(3, 1 / 3), np.full(3, 1 / 3), np.ones((3, 3)), torch.tensor(0.25))
    assert type(p.reg) is float and p.reg == 0.25


@pytest.mark.parametrize(
    "reg", [True, np.bool_(True), 0, np.float32(0.0), -1.0, np.inf, np.nan, np.array([0.5]), "0.5", 1j, None]
)
def test_reg_refuses_what_is_not_a_positive_finite_real(reg):
    with pytest.raises(ValueError, match="reg must be a positive finite number"):
        OTProblem(np.full(3, 1 / 3), np.full(3, 1 / 3), np.ones((3, 3)), reg)
