"""Baseline ``pot-sparsity-constrained``: POT's sparsity-constrained OT,
``ot.smooth.smooth_ot_dual(a, b, C, reg, reg_type="sparsity_constrained", max_nz=k)``.

POT solves the same dual as optkit's ``sparse-ot`` (see :mod:`solvers.ot.sparse_ot`) with
``scipy.optimize.minimize(method="L-BFGS-B", tol=stopThr)`` from zero potentials, and reads
the plan off the dual's gradient. The wrapper runs it unchanged, as a black box; it only
works around three quirks of POT 0.9.x:

* ``max_nz >= n`` crashes (``np.argpartition`` with ``kth = max_nz`` out of bounds). The
  problem is then quadratically regularised OT, whose dual is POT's ``reg_type="l2"``
  (the same ``delta`` with every entry kept), so the wrapper clamps ``k`` to ``n`` and calls
  that; ``extras["reg_type"]`` says which one ran.
* ``max_nz`` must be a Python ``int`` (a numpy integer is rejected): it is converted.
* POT passes SciPy's ``disp`` option, deprecated for L-BFGS-B since SciPy 1.15; that one
  ``DeprecationWarning`` is silenced during the call.

POT is imported only when a solve starts.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from optkit.backend import optional_import, to_numpy
from optkit.blackbox import BlackBoxRun, LibraryVerdict
from optkit.ot_problem import OTProblem
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.result import Result, Status
from optkit.solver import Callback, Solver
from optkit.validation import check_int, check_positive

__all__ = ["POTSparsityConstrained"]


@register_solver("pot-sparsity-constrained")
@dataclass(frozen=True, kw_only=True)
class POTSparsityConstrained(Solver):
    """POT's ``smooth_ot_dual`` with ``reg_type="sparsity_constrained"`` on an ``OTProblem``.

    Same problem, options and result conventions as ``sparse-ot``; ``reg`` of the problem
    is the quadratic weight ``gamma``.

    Options
    -------
    max_nz : int
        ``k >= 1``, the most nonzeros per column of the plan (default 2). ``k >= n`` is
        clamped to ``n`` and solved with POT's ``reg_type="l2"`` (see the module docstring).
    tol : float
        L1 violation of both marginals of the returned plan (default 1e-9). POT cannot be
        told to test it: the wrapper measures it on the returned plan (the criterion
        ``marginal_error`` of :mod:`optkit.blackbox`).
    stop_thr : float or None
        POT's ``stopThr``, which SciPy uses as both ``gtol`` and ``ftol`` of L-BFGS-B.
        Default ``tol / (n + m)``: ``max |grad_i| <= gtol`` then implies an L1 error ``<=
        tol`` (the dual's gradient is the marginal residual). But the ``ftol`` test,
        ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= stopThr``, usually stops POT first,
        well above ``tol`` (dual values are O(cost) while their late decreases are tiny);
        a smaller ``stop_thr`` (e.g. 1e-16) lets it run until L-BFGS-B stalls.
    max_iter : int
        L-BFGS-B iterations (POT's ``numItermax``; default 10000). ``0`` returns the start
        without calling POT.
    time_limit : float or None
        POT cannot be interrupted: it is checked on POT's result, and a run that took
        longer ends ``TIME_LIMIT`` (with POT's plan).
    sparse_plan : bool
        Return the plan as a ``scipy.sparse.csr_array`` instead of POT's dense ndarray.

    POT's call is one black box (:class:`optkit.blackbox.BlackBoxRun`: the start, one
    iteration that is POT's result, the status rule). Statuses: ``CONVERGED`` (measured
    error ``<= tol``, whatever SciPy said); ``STALLED`` when SciPy reports success on its
    own test above ``tol`` (the ``ftol`` test above; for ``k`` small the dual's maximum is
    often a kink where no k-sparse plan meets the marginals, see ``sparse-ot``);
    ``MAX_ITER`` (SciPy's iteration or evaluation limit); ``FAILED`` (SciPy's failures,
    e.g. an abnormal line search), each with SciPy's message; ``NONFINITE`` (NaN/inf in
    POT's plan or potentials). SciPy's ``status`` and message are
    ``extras["library_status"]`` and ``["library_message"]``. The callback can stop the
    run at either row; Ctrl-C during POT's call returns the start with ``USER_STOPPED``.

    Result: ``x`` = POT's plan (the plan of zero potentials when the run ends at the
    start); ``extras["potentials"] = (alpha, beta)``, ``extras["max_nz"]`` (after
    clamping), ``extras["reg_type"]``. Metrics: ``marginal_error``, ``dual`` (POT's final
    dual value), ``cost`` ``<T, C>``, ``objective`` ``<T, C> + reg/2 ||T||_F^2``, ``gap`` =
    ``objective - dual``. The trace has two rows: the start (zero potentials, measured with
    POT's ``dual_obj_grad``, clock paused) and POT's result (iteration SciPy's ``nit``).
    Counters: ``fun``, ``grad`` (SciPy's ``nfev``, ``njev``).
    """

    accepts: ClassVar[tuple] = (OTProblem,)
    backends: ClassVar[frozenset] = frozenset({"numpy"})

    max_nz: int = 2
    tol: float = 1e-9
    max_iter: int = 10_000
    stop_thr: float | None = None
    sparse_plan: bool = False

    def validate(self) -> None:
        super().validate()
        check_int("max_nz", self.max_nz, 1)
        if self.stop_thr is not None:
            check_positive("stop_thr", self.stop_thr)
        if not isinstance(self.sparse_plan, bool):
            raise ValueError(f"sparse_plan must be True or False, got {self.sparse_plan!r}")  # noqa: TRY004

    def solve(self, problem: Problem, *, x0: Any = None, callback: Callback | None = None) -> Result:
        self.ensure_compatible(problem)
        assert isinstance(problem, OTProblem)
        if x0 is not None:
            raise ValueError("x0 is not supported: POT's smooth_ot_dual always starts from zero potentials")
        ot = optional_import("ot", f"solver {self.name!r}")
        optional_import("ot.smooth", f"solver {self.name!r}")
        a = np.asarray(to_numpy(problem.a), dtype=np.float64)
        b = np.asarray(to_numpy(problem.b), dtype=np.float64)
        C = np.asarray(to_numpy(problem.C), dtype=np.float64)
        n, m = problem.shape
        reg = problem.reg
        k = min(int(self.max_nz), n)
        reg_type = "sparsity_constrained" if k < n else "l2"
        kwargs = {"max_nz": k} if k < n else {}
        regul = ot.smooth.SparsityConstrained(max_nz=k, gamma=reg) if k < n else ot.smooth.SquaredL2(gamma=reg)

        def measure(potentials):
            """The row at POT's start, measured with POT's own dual (its gradient is the marginal residual)."""
            with np.errstate(all="ignore"):
                dual, grad_a, grad_b = ot.smooth.dual_obj_grad(*potentials, a, b, C, regul)
            return {"marginal_error": float(np.abs(grad_a).sum() + np.abs(grad_b).sum()), "dual": float(dual)}

        run = BlackBoxRun(self, problem, callback, measure=measure, criterion="marginal_error")
        start = (np.zeros(n), np.zeros(m))
        start_plan = np.asarray(ot.smooth.get_plan_from_dual(*start, C, regul), dtype=np.float64)
        counters, verdict, found, found_plan = {"fun": 0, "grad": 0}, None, None, None
        if run.begin(start) is None:
            stop_thr = self.tol / (n + m) if self.stop_thr is None else self.stop_thr
            with run.library():  # one call that cannot be interrupted: its result is the one iteration
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.filterwarnings("ignore", message=r".*`disp` and `iprint`", category=DeprecationWarning)
                    found_plan, log = ot.smooth.smooth_ot_dual(
                        a, b, C, reg, reg_type=reg_type, stopThr=stop_thr, numItermax=self.max_iter, log=True, **kwargs
                    )
                res = log["res"]
                counters = {"fun": int(res.nfev), "grad": int(getattr(res, "njev", res.nfev))}
                outcome = {0: Status.CONVERGED, 1: Status.MAX_ITER}.get(int(res.status), Status.FAILED)
                verdict = LibraryVerdict(outcome, int(res.status), f"POT / L-BFGS-B stopped ({res.message})")
                found_plan = np.asarray(found_plan, dtype=np.float64)
                found = (np.asarray(log["alpha"], dtype=np.float64), np.asarray(log["beta"], dtype=np.float64))
                finite = all(np.all(np.isfinite(x)) for x in (found_plan, *found))
                error = _marginal_error(found_plan, a, b) if finite else math.inf
                run.iteration(found, nit=int(res.nit), metrics={"marginal_error": error, "dual": -float(res.fun)})
        # the result is the last recorded iterate (POT's, or the start if the run ended there) and its plan
        alpha, beta = run.x
        G = found_plan if run.x is found else start_plan
        dual = run.metrics["dual"]
        with np.errstate(all="ignore"):
            cost = float(np.einsum("ij,ij->", G, C))
            objective = cost + 0.5 * reg * float(np.einsum("ij,ij->", G, G))
        dtype = problem.C.dtype
        if self.sparse_plan:
            from scipy.sparse import csr_array

            plan = csr_array(G).astype(dtype)
        else:
            plan = G.astype(dtype)
        result = run.finish(
            verdict=verdict,
            metrics={**run.metrics, "cost": cost, "objective": objective, "gap": objective - dual},
            fun=objective,
            counters=counters,
            extras={
                "potentials": (alpha.astype(dtype), beta.astype(dtype)),
                "regularization": "sparsity-constrained",
                "max_nz": k,
                "reg_type": reg_type,
            },
        )
        return replace(result, x=plan)


def _marginal_error(G: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(G.sum(axis=1) - a).sum() + np.abs(G.sum(axis=0) - b).sum())
