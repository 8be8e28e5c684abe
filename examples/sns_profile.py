"""Where ``sns`` spends its time: a per-phase profile on the OT problems of the SNS paper.

Each phase is the time spent inside the functions of :mod:`solvers.ot.sns` that make it up,
measured by wrapping them (``time.perf_counter`` around each call, about a microsecond per call
of overhead); ``other`` is the rest of the run (the driver, the trace, the dual value, the stop
tests). Phases:

- ``sinkhorn``: the log-domain half-sweeps of the warm-up (``update_f``, ``update_g``);
- ``sparsify``: choosing the kept entries of the plan (``select_entries``);
- ``newton system``: the Schur-complement CG solve of the sparsified system (``_newton_direction``);
- ``line search``: forming each trial plan, its sums and the Armijo test;
- ``measure``: forming the plan at the start of the Newton stage.

The same wrappers work on earlier versions of the solver (the line search's function names
changed: both are wrapped where they exist), so the script measures the profile before and
after a change by running it in two checkouts.

Run::

    python examples/sns_profile.py                    # ot-paper (MNIST needs $OPTKIT_DATA), 7 repeats
    python examples/sns_profile.py --small            # random assignment n = 200, 2 repeats
"""

from __future__ import annotations

import argparse
import os
import time

import optkit
import problems  # noqa: F401  (registers the OT problems)
import solvers.ot.sns as sns_module
from optkit._table import text_table
from optkit.data import find_dataset
from problems.ot import MNIST_IMAGES

PHASES = {
    "sinkhorn": ("update_f", "update_g"),
    "sparsify": ("select_entries",),
    "newton system": ("_newton_direction",),
    "line search": ("_trial_plan", "log_plan", "_exp_", "_curvature_term", "marginal_violation"),
    "measure": ("_plan_and_sums",),
}
FULL = ["ot/random-assignment:n=500,eta=1200", "ot/mnist:cost=l1,eta=1200", "ot/mnist:cost=l2,eta=1200"]
FULL += ["ot/random-assignment:n=2000,eta=1200"]
SMALL = ["ot/random-assignment:n=200,eta=1200"]


def instrument(seconds: dict) -> None:
    """Wrap the phase functions of the sns module so that each adds its time to ``seconds``."""
    for phase, names in PHASES.items():
        for name in names:
            fn = getattr(sns_module, name, None)
            if fn is None:
                continue

            def timed(*args, _fn=fn, _phase=phase, **kwargs):
                start = time.perf_counter()
                try:
                    return _fn(*args, **kwargs)
                finally:
                    seconds[_phase] += time.perf_counter() - start

            setattr(sns_module, name, timed)


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="smoke run: " + ", ".join(SMALL))
    parser.add_argument("--problems", help="comma-separated problem specs (default: ot-paper)")
    parser.add_argument("--repeats", type=int, help="runs per problem; the median run is shown (default 7)")
    parser.add_argument("--tol", type=float, default=1e-9, help="L1 marginal error to reach")
    args = parser.parse_args(argv)
    specs = args.problems.split(",") if args.problems else (SMALL if args.small else FULL)
    repeats = args.repeats or (2 if args.small else 7)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    seconds = dict.fromkeys(PHASES, 0.0)
    instrument(seconds)
    rows = []
    for spec in specs:
        if spec.startswith("ot/mnist"):
            try:
                find_dataset(MNIST_IMAGES.name)
            except FileNotFoundError:
                print(f"skipping {spec}: the MNIST test images are not under $OPTKIT_DATA")
                continue
        problem = optkit.get_problem(spec)
        optkit.solve(problem, "sns", tol=args.tol)  # compile and warm the caches
        runs = []
        for _ in range(repeats):
            for phase in seconds:
                seconds[phase] = 0.0
            start = time.perf_counter()
            result = optkit.solve(problem, "sns", tol=args.tol)
            total = time.perf_counter() - start
            runs.append((total, dict(seconds), result))
        total, phases, result = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
        other = total - sum(phases.values())
        c = result.counters
        rows.append(
            [spec, f"{total * 1e3:.1f}"]
            + [f"{phases[p] * 1e3:.1f}" for p in PHASES]
            + [f"{other * 1e3:.1f}", f"{c['sinkhorn_sweeps']} + {c['newton_steps']}", str(c["cg_matvecs"])]
            + [f"{result.metrics['marginal_error']:.1e}"]
        )
    headers = ["problem", "total ms", *(f"{p} ms" for p in PHASES), "other ms", "sweeps + Newton", "CG", "error"]
    print(f"sns to an L1 marginal error of {args.tol:g}; median of {repeats} runs; {os.cpu_count()} cores")
    print(text_table(headers, rows, right=[False] + [True] * (len(headers) - 1)))
    return rows


if __name__ == "__main__":
    main()
