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
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from optkit.backend import optional_import, to_numpy
from optkit.ot_problem import OTProblem
from optkit.problem import Problem
from optkit.registry import register_solver
from optkit.result import Result, Status
from optkit.solver import Callback, Recorder, Solver
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
        told to test it: the wrapper measures it on the returned plan, and the status is
        ``CONVERGED`` only if it is ``<= tol``.
    stop_thr : float or None
        POT's ``stopThr``, which SciPy uses as both ``gtol`` and ``ftol`` of L-BFGS-B.
        Default ``tol / (n + m)``: ``max |grad_i| <= gtol`` then implies an L1 error ``<=
        tol`` (the dual's gradient is the marginal residual). But the ``ftol`` test,
        ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= stopThr``, usually stops POT first,
        well above ``tol`` (dual values are O(cost) while their late decreases are tiny);
        a smaller ``stop_thr`` (e.g. 1e-16) lets it run until L-BFGS-B stalls.
    max_iter : int
        L-BFGS-B iterations (POT's ``numItermax``; default 10000).
    time_limit : float or None
        POT cannot be interrupted: a run that took longer ends ``TIME_LIMIT`` unless it
        converged.
    sparse_plan : bool
        Return the plan as a ``scipy.sparse.csr_array`` instead of POT's dense ndarray.

    Statuses: ``CONVERGED`` (measured error ``<= tol``), ``MAX_ITER`` (SciPy's iteration or
    evaluation limit), ``NONFINITE`` (NaN/inf in POT's plan or potentials), ``FAILED``
    (L-BFGS-B stopped above ``tol``, with SciPy's message: for ``k`` small the dual's
    maximum is often a kink where no k-sparse plan meets the marginals, see ``sparse-ot``).

    Result: ``x`` = POT's plan; ``extras["potentials"] = (alpha, beta)``,
    ``extras["max_nz"]`` (after clamping), ``extras["reg_type"]``, ``extras["pot_message"]``.
    Metrics: ``marginal_error``, ``dual`` (POT's final dual value), ``cost`` ``<T, C>``,
    ``objective`` ``<T, C> + reg/2 ||T||_F^2``, ``gap`` = ``objective - dual``. The trace has two rows: the start (zero
    potentials, measured with POT's ``dual_obj_grad``, clock paused) and POT's result.
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

        recorder = Recorder(time_limit=self.time_limit, callback=callback, device="cpu")
        alpha, beta = np.zeros(n), np.zeros(m)
        with np.errstate(all="ignore"):  # the start, measured with POT's own dual (clock paused)
            dual, grad_a, grad_b = ot.smooth.dual_obj_grad(alpha, beta, a, b, C, regul)
        G = np.asarray(ot.smooth.get_plan_from_dual(alpha, beta, C, regul), dtype=np.float64)
        error = float(np.abs(grad_a).sum() + np.abs(grad_b).sum())
        status = recorder.record(0, {"marginal_error": error, "dual": float(dual)}, (alpha, beta))
        nit, counters, message, pot_message = 0, {"fun": 0, "grad": 0}, "", ""
        if status is None:
            stop_thr = self.tol / (n + m) if self.stop_thr is None else self.stop_thr
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.filterwarnings("ignore", message=r".*`disp` and `iprint`", category=DeprecationWarning)
                G, log = ot.smooth.smooth_ot_dual(
                    a, b, C, reg, reg_type=reg_type, stopThr=stop_thr, numItermax=self.max_iter, log=True, **kwargs
                )
            recorder.pause()
            res = log["res"]
            nit, pot_message = int(res.nit), str(res.message)
            counters = {"fun": int(res.nfev), "grad": int(getattr(res, "njev", res.nfev))}
            G = np.asarray(G, dtype=np.float64)
            alpha = np.asarray(log["alpha"], dtype=np.float64)
            beta = np.asarray(log["beta"], dtype=np.float64)
            dual = -float(res.fun)
            finite = all(bool(np.all(np.isfinite(x))) for x in (G, alpha, beta))
            error = _marginal_error(G, a, b) if finite else math.inf
            stop = recorder.record(nit, {"marginal_error": error, "dual": dual}, (alpha, beta))
            if not finite:
                status = Status.NONFINITE
            elif error <= self.tol:
                status = Status.CONVERGED
            elif stop is not None:
                status = stop
            elif res.status == 1:
                status = Status.MAX_ITER
            else:
                status = Status.FAILED
                message = f"POT / L-BFGS-B stopped ({res.message}) at marginal error {error:.3g} > tol {self.tol:.3g}"
        recorder.pause()
        with np.errstate(all="ignore"):
            cost = float(np.einsum("ij,ij->", G, C))
            objective = cost + 0.5 * reg * float(np.einsum("ij,ij->", G, G))
        dtype = problem.C.dtype
        if self.sparse_plan:
            from scipy.sparse import csr_array

            plan = csr_array(G).astype(dtype)
        else:
            plan = G.astype(dtype)
        return Result(
            x=plan,
            fun=objective,
            status=status,
            message=message,
            nit=nit,
            counters=counters,
            time_s=recorder.elapsed,
            metrics={
                "marginal_error": error,
                "dual": float(dual),
                "cost": cost,
                "objective": objective,
                "gap": objective - float(dual),
            },
            trace=recorder.rows,
            solver=self.name,
            problem=problem.name,
            extras={
                "potentials": (alpha.astype(dtype), beta.astype(dtype)),
                "regularization": "sparsity-constrained",
                "max_nz": k,
                "reg_type": reg_type,
                "pot_message": pot_message,
            },
        )


def _marginal_error(G: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(G.sum(axis=1) - a).sum() + np.abs(G.sum(axis=0) - b).sum())
