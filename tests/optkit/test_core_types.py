"""Result, Status, backend helpers, problem kinds and the data directory."""

import numpy as np
import pytest

import optkit
from optkit import LinearSystemProblem, Result, SmoothProblem, Status
from optkit.backend import convert, get_namespace, optional_import
from optkit.data import Dataset, data_dir, find_dataset, register_dataset
from optkit.validation import check_choice, check_int, check_nonnegative, check_positive


def test_status_messages_and_codes():
    assert Status.CONVERGED.success and Status.CONVERGED.code == 0
    assert not Status.BREAKDOWN.success
    assert "max_iter" in Status.MAX_ITER.message
    assert len({s.code for s in Status}) == len(Status)


def test_result_is_frozen_and_converts_to_scipy():
    res = Result(
        x=np.array([1.0, 2.0]), fun=3.0, status=Status.MAX_ITER, nit=7,
        counters={"fun": 8, "grad": 8, "matvec": 3}, metrics={"grad_norm": 1e-3},
    )
    assert res.message == Status.MAX_ITER.message and not res.success
    with pytest.raises(AttributeError):
        res.x = None
    with pytest.raises(TypeError):
        res.counters["fun"] = 0
    sp = res.to_scipy()
    np.testing.assert_allclose(sp.x, [1.0, 2.0])
    assert (sp.nfev, sp.njev, sp.matvec, sp.nit, sp.status, sp.success) == (8, 8, 3, 7, Status.MAX_ITER.code, False)
    assert sp.grad_norm == 1e-3
    with pytest.raises(TypeError, match="status must be an optkit.Status"):
        Result(x=None, status="converged")


def test_namespace_refuses_mixed_backends():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="mix backends"):
        get_namespace(np.ones(2), torch.ones(2))
    assert get_namespace(np.ones(2), 1.0, None).__name__.endswith("numpy")


def test_convert_round_trip_and_dtype():
    pytest.importorskip("torch")
    x = np.arange(3.0)
    t = convert(x, "torch", dtype="float32")
    assert str(t.dtype) == "torch.float32"
    back = convert(t, "numpy", dtype=np.float64)
    np.testing.assert_allclose(back, x)
    with pytest.raises(ValueError, match="device='cuda' is not available with backend='numpy'"):
        convert(x, "numpy", device="cuda")
    with pytest.raises(ValueError, match="backend must be 'numpy' or 'torch'"):
        convert(x, "jax")


def test_optional_import_names_the_extra():
    with pytest.raises(ImportError, match="optional dependency 'no_such_pkg_xyz' is not installed \\(needed by solver 'x'\\)"):
        optional_import("no_such_pkg_xyz", "solver 'x'")


def test_linear_system_problem_validates_inputs():
    A = np.diag([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"b must have shape \(3,\) to match A \(3, 3\), got \(2,\)"):
        LinearSystemProblem(A, np.ones(2))
    with pytest.raises(ValueError, match="b contains NaN"):
        LinearSystemProblem(A, np.array([1.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="A must be square"):
        LinearSystemProblem(np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match=r"x0 must have shape \(3,\)"):
        LinearSystemProblem(A, np.ones(3), np.ones(4))


def test_linear_system_problem_capabilities_evaluate_and_to_torch():
    A = np.diag([1.0, 2.0, 4.0])
    p = LinearSystemProblem(A, np.ones(3), tags={"symmetric", "psd"}, metadata={"x_true": [1.0, 0.5, 0.25]})
    assert {"matvec", "matrix", "symmetric", "psd"} <= p.capabilities
    m = p.evaluate(np.array([1.0, 0.5, 0.0]))
    np.testing.assert_allclose(m["residual"], 1.0 / np.sqrt(3.0))
    np.testing.assert_allclose(m["error"], 0.25 / np.linalg.norm([1.0, 0.5, 0.25]))
    pytest.importorskip("torch")
    pt = p.to("torch")
    assert pt.backend == "torch" and "matrix" not in pt.capabilities
    np.testing.assert_allclose(pt.evaluate(pt.x0 + 1.0)["residual"], p.evaluate(p.x0 + 1.0)["residual"])


def test_linear_system_problem_reports_energy_and_f_gap_when_f_opt_is_known():
    A = np.diag([1.0, 2.0, 4.0])
    b = np.ones(3)
    x_star = np.array([1.0, 0.5, 0.25])
    f_opt = -0.5 * float(b @ x_star)
    x = np.array([1.0, 0.5, 0.0])
    energy = 0.5 * float(x @ A @ x) - float(b @ x)
    # exact small rationals: only rounding separates the two ways of computing the gap
    by_difference = LinearSystemProblem(A, b, metadata={"f_opt": f_opt}).evaluate(x)
    np.testing.assert_allclose([by_difference["energy"], by_difference["f_gap"]], [energy, energy - f_opt], rtol=1e-15)
    by_error = LinearSystemProblem(A, b, metadata={"f_opt": f_opt, "x_true": x_star}).evaluate(x)
    np.testing.assert_allclose([by_error["energy"], by_error["f_gap"]], [energy, energy - f_opt], rtol=1e-15)
    assert "energy" not in LinearSystemProblem(A, b).evaluate(x)


def test_linear_system_f_gap_from_x_true_resolves_gaps_below_the_cancellation_floor():
    A = np.diag([1e9, 2e9])
    b = np.array([1e9, 2e9])
    x_star = np.ones(2)
    p = LinearSystemProblem(A, b, metadata={"f_opt": -1.5e9, "x_true": x_star})
    x = x_star + np.array([1e-9, 0.0])
    # the gap is 1e9 * (1e-9)^2 / 2 = 5e-10, far below the rounding of energies near 1.5e9 (~2e-7)
    np.testing.assert_allclose(p.evaluate(x)["f_gap"], 5e-10, rtol=1e-6)


def test_smooth_problem_counts_and_evaluates():
    p = SmoothProblem(lambda x: float(x @ x), lambda x: 2 * x, np.ones(2), metadata={"f_opt": 0.0})
    assert p.capabilities == {"fun", "grad"}
    p.fun(p.x0), p.grad(p.x0), p.grad(p.x0)
    assert (p.counters["fun"], p.counters["grad"]) == (1, 2)
    ev = p.evaluate(np.array([3.0, 4.0]))
    np.testing.assert_allclose([ev["fun"], ev["grad_norm"], ev["f_gap"]], [25.0, 10.0, 25.0])
    assert p.counters["fun"] == 1  # evaluate is not counted
    with pytest.raises(ValueError, match="provides no Hessian-vector product"):
        p.hvp(p.x0, p.x0)
    with pytest.raises(ValueError, match="x0 contains NaN"):
        SmoothProblem(None, None, np.array([np.nan]))
    with pytest.raises(ValueError, match="cannot change backend"):
        p.to("torch")


def test_data_dir_and_dataset_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTKIT_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    register_dataset(Dataset("test/tiny", ("tiny/file.txt", "tiny/file.txt.gz")))
    with pytest.raises(FileNotFoundError, match="dataset 'test/tiny' not found; looked for .*file.txt"):
        find_dataset("test/tiny")
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "file.txt.gz").write_bytes(b"")
    assert find_dataset("test/tiny") == tmp_path / "tiny" / "file.txt.gz"
    with pytest.raises(KeyError, match="unknown dataset 'test/nope'"):
        find_dataset("test/nope")


def test_solve_rejects_what_is_not_a_problem():
    with pytest.raises(TypeError, match="problem must be an optkit Problem"):
        optkit.solve(42, "cg")


@pytest.mark.parametrize(
    "check, value, match",
    [
        (lambda v: check_int("n", v, 1), 0, "n must be an integer >= 1, got 0"),
        (lambda v: check_int("n", v, 1), True, "n must be an integer >= 1, got True"),
        (lambda v: check_int("n", v, 1), 2.0, "n must be an integer >= 1, got 2.0"),
        (lambda v: check_positive("reg", v), 0.0, "reg must be a positive finite number, got 0.0"),
        (lambda v: check_positive("reg", v), float("inf"), "reg must be a positive finite number, got inf"),
        (lambda v: check_nonnegative("lam", v), -1e-3, "lam must be a finite number >= 0, got -0.001"),
        (lambda v: check_choice("rhs", v, ("ones", "random")), "zeros", "rhs must be one of 'ones', 'random', got 'zeros'"),
    ],
)
def test_validation_errors_name_the_argument(check, value, match):
    with pytest.raises(ValueError, match=match):
        check(value)


def test_validation_returns_normalised_values():
    assert check_int("n", np.int64(3), 1) == 3 and type(check_int("n", np.int64(3), 1)) is int
    assert check_positive("reg", 2) == 2.0 and check_nonnegative("lam", 0) == 0.0
    assert check_choice("rhs", "ones", ("ones",)) == "ones"


def test_uncounted_evaluations_leave_the_counters_alone():
    p = SmoothProblem(lambda x: float(x @ x), lambda x: 2 * x, np.ones(3), name="toy/uncounted")
    p.fun(p.x0)
    with p.uncounted() as same:
        assert same is p
        p.fun(p.x0), p.grad(p.x0), p.fun_and_grad(p.x0)
    p.grad(p.x0)
    assert p.counters == {"fun": 1, "grad": 1}
    with pytest.raises(RuntimeError), p.uncounted():
        p.fun(p.x0)
        raise RuntimeError
    assert p.counters == {"fun": 1, "grad": 1}
