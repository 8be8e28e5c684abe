"""Registries of solvers, problems and suites, filled by decorators and entry points.

Names are lowercase and hyphenated (``"cg"``, ``"linear/poisson-2d"``); lookup is
case-insensitive; registering a second object under a taken name is an error; an
unknown name's error lists the close matches. Packages plug in through the entry-point
groups ``optkit.solvers`` and ``optkit.problems``: each entry point names a module that
registers its contents when imported. Entry points are loaded on the first lookup, and
a failing one becomes a warning, not an error.
"""

from __future__ import annotations

import difflib
import inspect
import re
import warnings
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable, Iterator

__all__ = [
    "Registry",
    "get_problem",
    "get_solver",
    "get_suite",
    "list_problems",
    "list_solvers",
    "list_suites",
    "load_plugins",
    "check_params",
    "parse_spec",
    "register_problem",
    "register_problem_family",
    "register_solver",
    "register_suite",
    "scoped_registrations",
]

# the member placeholder of a family name, as listed: "cutest/<name>"
FAMILY_MEMBER = "<name>"

_WORD = r"[a-z0-9][a-z0-9._-]*"
# "cg", "linear/poisson-2d", "ml/lasso/a9a": at most three words joined by "/"
_NAME = re.compile(rf"^{_WORD}(/{_WORD}){{0,2}}$")
_PREFIX = re.compile(rf"^{_WORD}(/{_WORD})?$")


class Registry:
    """A case-insensitive name -> object table, lazily completed from an entry-point group."""

    def __init__(self, kind: str, group: str | None) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, Any] = {}
        self._families: dict[str, Callable[[str], Any]] = {}
        self._loaded = group is None

    def add(self, name: str, obj: Any) -> None:
        """Register ``obj`` under ``name``; a different object under a taken name is an error."""
        key = name.lower()
        if not _NAME.match(key):
            raise ValueError(
                f"{self.kind} name {name!r} must be lowercase words joined by '-', "
                "optionally 'family/name' or 'family/kind/name' (e.g. 'linear/poisson-2d')"
            )
        current = self._items.get(key)
        if current is not None and current is not obj:
            raise ValueError(f"{self.kind} name {name!r} is already registered to {current!r}")
        self._items[key] = obj

    def add_family(self, prefix: str, resolve: Callable[[str], Any]) -> None:
        """Register every ``prefix/<member>`` name at once: ``resolve(member)`` returns the
        object (``member`` as the user spelled it) or raises ``KeyError`` with a hint."""
        key = prefix.lower()
        if not _PREFIX.match(key):
            raise ValueError(
                f"{self.kind} family prefix {prefix!r} must be one or two lowercase words (e.g. 'cutest', 'ml/lasso')"
            )
        if key in self._families and self._families[key] is not resolve:
            raise ValueError(f"{self.kind} family {prefix!r} is already registered")
        self._families[key] = resolve

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in entry_points(group=self.group):
            try:
                ep.load()
            except Exception as exc:  # a broken plug-in must not break the others
                warnings.warn(f"could not load {self.group} entry point {ep.name!r} ({ep.value}): {exc}", stacklevel=3)

    def get(self, name: str) -> Any:
        """The object registered under ``name``; ``KeyError`` listing close matches otherwise."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        self._load()
        key = name.lower()
        family, _, member = name.rpartition("/")
        if key not in self._items and member and family.lower() in self._families:
            resolve = self._families[family.lower()]
            # "family/<name>" stands for the whole family (what `optkit list` shows)
            return resolve if member == FAMILY_MEMBER else resolve(member)
        if key not in self._items:
            close = difflib.get_close_matches(key, self._items, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint} (optkit list {self.kind}s shows them all)")
        return self._items[key]

    def names(self) -> list[str]:
        """All registered names, sorted; a family appears once, as ``prefix/<name>``."""
        self._load()
        return sorted([*self._items, *(f"{prefix}/{FAMILY_MEMBER}" for prefix in self._families)])

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except KeyError:
            return False
        return True


SOLVERS = Registry("solver", "optkit.solvers")
PROBLEMS = Registry("problem", "optkit.problems")
SUITES = Registry("suite", None)


def register_solver(name: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`~optkit.solver.Solver` subclass under ``name``."""

    def deco(cls: type) -> type:
        cls.name = name.lower()
        SOLVERS.add(name, cls)
        return cls

    return deco


def register_problem(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register a problem factory ``f(**params) -> Problem`` under ``name``.

    The factory's keyword parameters are the problem's parameters; the name given to
    the problem it builds should be ``name``.
    """

    def deco(factory: Callable) -> Callable:
        if name.lower() in SUITES._items:
            raise ValueError(f"problem name {name!r} is already a suite name; a bench argument could mean either")
        PROBLEMS.add(name, factory)
        return factory

    return deco


def register_problem_family(prefix: str, resolve: Callable[[str], Callable]) -> None:
    """Register the problems ``prefix/<member>`` for members known only when asked for.

    ``resolve(member)`` returns the problem factory of ``member`` (as the user spelled it)
    or raises ``KeyError`` naming close matches. Used for collections too large to list
    one by one, such as the ~1,100 CUTEst problems of S2MPJ (``cutest/HS28``);
    ``optkit list problems`` shows the family once, as ``prefix/<name>``, with the
    docstring of ``resolve``. ``prefix`` is one or two words (``"cutest"``, ``"ml/lasso"``),
    and a family may share its prefix with a registered problem: ``ml/logistic`` (one
    problem) and ``ml/logistic/<name>`` (a family) live side by side.
    """
    PROBLEMS.add_family(prefix, resolve)


def register_suite(name: str, specs: Iterable[str], *, extend: bool = False) -> None:
    """Register the suite ``name`` as a list of problem specs (see :func:`parse_spec`).

    With ``extend=True`` the specs are appended to an existing suite (creating it if
    needed), so that a package can add its problems to a shared suite such as ``demo``.
    """
    specs = list(specs)
    for spec in specs:
        parse_spec(spec)
    key = name.lower()
    if key in PROBLEMS._items:
        raise ValueError(f"suite name {name!r} is already a problem name; a bench argument could mean either")
    if extend and key in SUITES._items:
        SUITES._items[key].extend(s for s in specs if s not in SUITES._items[key])
        return
    SUITES.add(name, specs)


def parse_spec(spec: str, what: str = "problem spec") -> tuple[str, dict[str, Any]]:
    """Split a spec ``"family/name:key=value,key=value"`` into name and parameters.

    Values are parsed as int, then float, then ``true``/``false``/``none``, else kept as
    strings. ``what`` names the kind of spec in error messages.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a {what} must be a non-empty string, got {spec!r}")
    name, _, params_text = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, params_text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {spec!r}: parameter {item!r} is not of the form key=value")
        params[key.strip()] = parse_value(value.strip())
    return name, params


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"1e-8"`` -> 1e-08, ``"true"`` -> True, ``"none"`` -> None, else the string."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def check_params(what: str, func: Callable, params: dict[str, Any]) -> None:
    """Raise a ``TypeError`` naming each key of ``params`` that ``func`` does not take."""
    signature = inspect.signature(func)
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    unknown = sorted(set(params) - set(signature.parameters))
    if unknown:
        raise TypeError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for {what}; "
            f"valid parameters: {', '.join(signature.parameters) or '(none)'}"
        )


def get_problem(name: str, **params: Any):
    """Build the registered problem ``name`` (or a spec ``"name:key=value,..."``) with ``params``.

    Examples
    --------
    >>> p = optkit.get_problem("linear/poisson-2d", n=64)  # doctest: +SKIP
    """
    base, spec_params = parse_spec(name)
    factory = PROBLEMS.get(base)
    params = {**spec_params, **params}
    check_params(f"problem {base!r}", factory, params)
    return factory(**params)


def get_solver(name: str, **options: Any):
    """An instance of the registered solver ``name`` (or a spec ``"name:key=value,..."``) with ``options``.

    The spelling is the one ``optkit bench`` and the command line take:
    ``get_solver("pcg:preconditioner=ichol", tol=1e-8)``; keyword ``options`` override the
    spec's. An unknown option is a ``TypeError`` that names it and lists the valid ones.

    Examples
    --------
    >>> optkit.get_solver("pcg:preconditioner=ichol,tol=1e-8").tol  # doctest: +SKIP
    1e-08
    """
    base, spec_options = parse_spec(name, what="solver spec")
    cls = SOLVERS.get(base)
    options = {**spec_options, **options}
    cls.check_option_names(options)
    return cls(**options)


def load_plugins() -> None:
    """Import every ``optkit.solvers`` and ``optkit.problems`` entry point (once)."""
    SOLVERS._load()
    PROBLEMS._load()


@contextmanager
def scoped_registrations() -> Iterator[None]:
    """Undo, on exit, every registration made inside the block (solvers, problems, families, suites).

    For tests and notebooks that register throwaway solvers or problems: what they register
    does not outlive the block, so ``list_solvers()`` elsewhere sees only the real ones. The
    entry points are loaded first, so they stay registered.

    Examples
    --------
    >>> with scoped_registrations():  # doctest: +SKIP
    ...     register_solver("my-test-solver")(MySolver)
    ...     optkit.solve(problem, "my-test-solver")
    """
    load_plugins()
    saved = [(reg, dict(reg._items), dict(reg._families)) for reg in (SOLVERS, PROBLEMS, SUITES)]
    suites = {name: list(specs) for name, specs in SUITES._items.items()}
    try:
        yield
    finally:
        for reg, items, families in saved:
            reg._items, reg._families = items, families
        for name, specs in suites.items():
            SUITES._items[name][:] = specs


def get_suite(name: str) -> list[str]:
    """The problem specs of suite ``name``."""
    load_plugins()
    return list(SUITES.get(name))


def list_solvers() -> list[str]:
    """Names of all registered solvers."""
    return SOLVERS.names()


def list_problems() -> list[str]:
    """Names of all registered problem families."""
    return PROBLEMS.names()


def list_suites() -> list[str]:
    """Names of all registered suites."""
    load_plugins()
    return SUITES.names()
