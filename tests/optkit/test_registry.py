"""Registry: names, collisions, close-match errors, specs, entry-point failures, public API."""

from dataclasses import dataclass

import numpy as np
import pytest

import optkit
from optkit.registry import (
    Registry,
    parse_spec,
    register_problem,
    register_solver,
    register_suite,
    scoped_registrations,
)
from optkit.solver import Solver


def test_lookup_is_case_insensitive_and_collision_is_an_error():
    reg = Registry("widget", None)
    obj = object()
    reg.add("my-widget", obj)
    assert reg.get("MY-Widget") is obj
    reg.add("my-widget", obj)  # the same object again is harmless (module re-import)
    with pytest.raises(ValueError, match="widget name 'My-Widget' is already registered"):
        reg.add("My-Widget", object())


def test_unknown_name_lists_close_matches():
    reg = Registry("widget", None)
    for name in ("sinkhorn", "sinkhorn-log", "sns"):
        reg.add(name, object())
    with pytest.raises(KeyError, match="unknown widget 'sinkorn'; did you mean 'sinkhorn'"):
        reg.get("sinkorn")


@pytest.mark.parametrize("bad", ["With Space", "under_score/", "a/b/c/d", "", "-lead"])
def test_bad_names_are_refused(bad):
    with pytest.raises(ValueError, match="must be lowercase words"):
        Registry("widget", None).add(bad, object())


def test_parse_spec_types_values():
    assert parse_spec("linear/poisson-2d:n=512,coefficient=variable,tol=1e-8,flag=true,x=none") == (
        "linear/poisson-2d",
        {"n": 512, "coefficient": "variable", "tol": 1e-8, "flag": True, "x": None},
    )
    assert parse_spec("cg") == ("cg", {})
    with pytest.raises(ValueError, match="'n512' is not of the form key=value"):
        parse_spec("linear/poisson-2d:n512")


def test_broken_entry_point_is_a_warning(monkeypatch):
    class BrokenEntryPoint:
        name, value = "broken", "does.not.exist"

        def load(self):
            raise ImportError("no module named does")

    monkeypatch.setattr("optkit.registry.entry_points", lambda group: [BrokenEntryPoint()])
    reg = Registry("widget", "optkit.widgets")
    with pytest.warns(UserWarning, match="could not load optkit.widgets entry point 'broken'"):
        assert reg.names() == []


def _quadratic(n=3, scale=1.0):
    d = scale * np.arange(1.0, n + 1)
    return optkit.SmoothProblem(
        lambda x: 0.5 * x @ (d * x), lambda x: d * x, np.ones(n), name="test-registry/quadratic"
    )


@dataclass(frozen=True, kw_only=True)
class _Noop(Solver):
    depth: int = 1

    def solve(self, problem, *, x0=None, callback=None):
        return optkit.Result(x=problem.x0, status=optkit.Status.CONVERGED, solver=self.name, problem=problem.name)


@pytest.fixture(scope="module", autouse=True)
def test_registrations():
    """This module's throwaway problem, solver and suite, gone from the registries afterwards."""
    with scoped_registrations():
        register_problem("test-registry/quadratic")(_quadratic)
        register_solver("test-registry-noop")(_Noop)
        register_suite("test-registry-suite", ["test-registry/quadratic:n=2", "test-registry/quadratic:n=4"])
        yield


def test_public_api_round_trip():
    assert "test-registry-noop" in optkit.list_solvers()
    assert "test-registry/quadratic" in optkit.list_problems()
    assert optkit.get_suite("test-registry-suite") == ["test-registry/quadratic:n=2", "test-registry/quadratic:n=4"]
    problem = optkit.get_problem("test-registry/quadratic:n=4", scale=2.0)
    assert problem.n == 4
    np.testing.assert_allclose(problem.grad(np.ones(4)), [2.0, 4.0, 6.0, 8.0])
    res = optkit.solve(problem, "test-registry-noop", depth=3)
    assert res.status is optkit.Status.CONVERGED and res.solver == "test-registry-noop"


def test_unknown_option_and_parameter_are_named():
    with pytest.raises(TypeError, match="unknown option.*'detph'.*valid options: tol, max_iter, time_limit, depth"):
        optkit.get_solver("test-registry-noop", detph=2)
    with pytest.raises(TypeError, match="unknown parameter.*'m'.*valid parameters: n, scale"):
        optkit.get_problem("test-registry/quadratic", m=3)
    with pytest.raises(KeyError, match="unknown solver 'test-registry-nop'; did you mean 'test-registry-noop'"):
        optkit.solve("test-registry/quadratic", "test-registry-nop")


def test_solve_rejects_non_solver_objects():
    with pytest.raises(TypeError, match="solver must be an optkit Solver or a registered name, got int"):
        optkit.solve("test-registry/quadratic", 3)


def test_problem_family_resolves_members_on_demand_and_is_listed_once():
    reg = Registry("problem", None)
    members = {"alpha": lambda: "A", "beta": lambda: "B"}

    def resolve(member):
        """The fam family."""
        if member.lower() not in members:
            raise KeyError(f"no member {member!r}")
        return members[member.lower()]

    reg.add("plain/one", lambda: 1)
    reg.add_family("fam", resolve)
    assert reg.get("fam/ALPHA")() == "A" and reg.get("Fam/beta")() == "B"
    assert reg.get("fam/<name>") is resolve
    assert reg.names() == ["fam/<name>", "plain/one"]
    assert "fam/alpha" in reg and "fam/gamma" not in reg and "plain/one" in reg
    with pytest.raises(KeyError, match="no member 'gamma'"):
        reg.get("fam/gamma")
    with pytest.raises(ValueError, match="one or two lowercase words"):
        reg.add_family("a/b/c", resolve)
    # a two-word family beside a plain problem of the same prefix: "plain/one" and "plain/one/<name>"
    reg.add_family("plain/one", lambda member: {"x": lambda: "X"}[member])
    assert reg.get("plain/one")() == 1 and reg.get("plain/one/x")() == "X"
    assert reg.names() == ["fam/<name>", "plain/one", "plain/one/<name>"]
    with pytest.raises(ValueError, match="already registered"):
        reg.add_family("fam", lambda m: None)


def test_suite_and_problem_names_may_not_collide():
    optkit.list_problems()  # load the plug-ins first
    with pytest.raises(ValueError, match="already a problem name"):
        register_suite("linear/poisson-2d", ["linear/poisson-2d:n=8"])
    with pytest.raises(ValueError, match="already a suite name"):
        register_problem("demo")(lambda: None)


def test_get_solver_and_solve_take_the_spec_spelling_of_bench():
    solver = optkit.get_solver("pcg:preconditioner=ichol,tol=1e-8", max_iter=7)
    assert (solver.preconditioner, solver.tol, solver.max_iter) == ("ichol", 1e-8, 7)
    assert optkit.get_solver("pcg:tol=1e-8", tol=1e-3).tol == 1e-3  # keywords override the spec
    with pytest.raises(TypeError, match="unknown option.*'nonsense'"):
        optkit.get_solver("pcg:nonsense=1")
    res = optkit.solve("linear/poisson-2d:n=16", "pcg:preconditioner=ichol", tol=1e-10)
    assert res.status is optkit.Status.CONVERGED and res.metrics["residual"] < 1e-10


def test_scoped_registrations_leave_nothing_behind():
    before = (optkit.list_solvers(), optkit.list_problems(), optkit.list_suites(), optkit.get_suite("demo"))
    with scoped_registrations():
        register_solver("test-scoped-noop")(dataclass(frozen=True, kw_only=True)(type("Scoped", (_Noop,), {})))
        register_problem("test-scoped/quadratic")(_quadratic)
        register_suite("demo", ["test-scoped/quadratic"], extend=True)
        assert "test-scoped-noop" in optkit.list_solvers() and "test-scoped/quadratic" in optkit.get_suite("demo")
    assert (optkit.list_solvers(), optkit.list_problems(), optkit.list_suites(), optkit.get_suite("demo")) == before
