"""Time one M-FAC optimizer step against the memory floor of the algorithm, and against the reference.

An M-FAC step with a full window of m gradients of d weights must read the (m, d) buffer at
least twice: once for ``G g`` (the Gram row of the new gradient and the projections of the
right-hand side) and once for ``Gᵀ y`` (the result). The floor is those two products, timed
on an (m, d) buffer of the same dtype and device; the target is an optkit step within 3x the
floor. The table also times the reference algorithm's step (``examples/mfac_reference.py``:
``update_mul``, whose ``setup`` repeats an O(m³) unpivoted LU and rebuilds the coefficient
matrix from the replaced row on, every step).

One parameter of d elements; before each timed step its ``.grad`` is set to fresh Gaussian
noise (untimed). optkit's window is filled first by m untimed steps; the reference starts
from a full random window, its ``last`` row at 0, so the timed steps rebuild nearly all of the
coefficient matrix (its costliest case). The median of ``--steps`` timed steps is reported;
on CUDA the device is synchronised before each clock reading.

Run::

    python examples/mfac_step_cost.py                    # CPU, d = 10^6, m = 512, float32
    python examples/mfac_step_cost.py --small            # d = 10^5, m = 64 (smoke run)
    python examples/mfac_step_cost.py --device cuda      # d = 10^7, m = 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from mfac_reference import ReferenceMFAC
from solvers.curvature.mfac_optimizer import MFAC

# (d, m) by device; --small for either
SIZES = {"cpu": (10**6, 512), "cuda": (10**7, 1024)}
SMALL = (10**5, 64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(prepare: Callable[[], None], work: Callable[[], object], steps: int, device) -> float:
    """Median wall time of ``work()`` over ``steps`` calls, each after an untimed ``prepare()``."""
    times = []
    for _ in range(steps):
        prepare()
        _sync(device)
        start = time.perf_counter()
        work()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _noise_setter(param: torch.nn.Parameter, generator: torch.Generator) -> Callable[[], None]:
    def set_grad() -> None:
        param.grad = torch.randn(param.shape, generator=generator, dtype=param.dtype, device=param.device)

    return set_grad


def measure(d: int, m: int, steps: int, device: torch.device, dtype: torch.dtype, damp: float):
    """``[(name, median seconds)]`` of the floor, optkit's step and the reference's step, and the
    seconds the m steps filling optkit's window took."""
    generator = torch.Generator(device=device).manual_seed(0)

    param = torch.nn.Parameter(torch.zeros(d, dtype=dtype, device=device))
    optimizer = MFAC([param], lr=1e-6, num_grads=m, damp=damp)
    set_grad = _noise_setter(param, generator)
    warm_start = time.perf_counter()
    for _ in range(m):  # fill the window
        set_grad()
        optimizer.step()
    _sync(device)
    warm_up = time.perf_counter() - warm_start
    optkit_step = median_seconds(set_grad, optimizer.step, steps, device)

    ref_param = torch.nn.Parameter(torch.zeros(d, dtype=dtype, device=device))
    window = torch.randn((m, d), generator=generator, dtype=dtype, device=device)
    reference = ReferenceMFAC([ref_param], lr=1e-6, num_grads=m, damp=damp, dtype=dtype, grads=window)
    reference_step = median_seconds(_noise_setter(ref_param, generator), reference.step, steps, device)

    # the floor on the reference's (full) buffer: one G x and one Gᵀ y
    buffer = reference.hinv.grads
    vectors = {}

    def draw() -> None:
        vectors["x"] = torch.randn(d, generator=generator, dtype=dtype, device=device)
        vectors["y"] = torch.randn(m, generator=generator, dtype=dtype, device=device)

    def two_passes() -> torch.Tensor:
        buffer @ vectors["x"]
        return vectors["y"] @ buffer

    floor = median_seconds(draw, two_passes, steps, device)
    rows = [("floor (G x + G^T y)", floor), ("optkit MFAC step", optkit_step), ("reference step", reference_step)]
    return rows, warm_up


def format_table(rows: list[tuple], heading: str) -> str:
    floor = rows[0][1]
    lines = [f"{heading}  (anchor: floor)", f"{'':22s}  {'median s':>10s}  {'x floor':>8s}", "-" * 44]
    lines += [f"{name:22s}  {seconds:10.4f}  {seconds / floor:8.2f}" for name, seconds in rows]
    return "\n".join(lines)


def main(argv=None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--small", action="store_true", help=f"d = {SMALL[0]}, m = {SMALL[1]}")
    parser.add_argument("--d", type=int, help="number of weights (default: by device)")
    parser.add_argument("--m", type=int, help="window size num_grads (default: by device)")
    parser.add_argument("--steps", type=int, default=7, help="timed steps per row (median)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--damp", type=float, default=1e-5)
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch CPU threads (default: all cores)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.threads < 1 or args.steps < 1:
        parser.error("--threads and --steps must be >= 1")
    torch.set_num_threads(args.threads)
    d, m = SMALL if args.small else SIZES[device.type]
    d, m = args.d or d, args.m or m
    dtype = getattr(torch, args.dtype)

    start = time.perf_counter()
    rows, warm_up = measure(d, m, args.steps, device, dtype, args.damp)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, threads={args.threads}"
    print(format_table(rows, f"M-FAC step: d={d}, m={m}, {args.dtype}, {where}, median of {args.steps}"))
    ratio = rows[1][1] / rows[0][1]
    print(f"optkit step / floor = {ratio:.2f} (target <= 3: {'met' if ratio <= 3 else 'missed'})")
    print(f"window filled by {m} optkit steps in {warm_up:.1f} s; wall time {time.perf_counter() - start:.1f} s")
    return rows


if __name__ == "__main__":
    main()
