"""Time the optimizer step that builds the projector: galore-torch's exact SVD against optkit's sources.

The first GaLore step factorises the gradient before it can project it; with an exact SVD
that step costs hundreds of times an ordinary one (GaLore#14, the "long delay before the
first backward"). This script times that step on one weight matrix, a fresh optimizer per
repetition, and prints one table with each source's median and its speed-up over
galore-torch measured in the same run. ``optkit randomized`` is the range finder with its
default one power iteration, ``randomized q=0`` without it.

Run::

    python examples/galore_first_step.py                    # 1024 x 2816, rank 256, CPU
    python examples/galore_first_step.py --device cuda --dtype bfloat16 --shape 2048 5461 --rank 512
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from solvers.lowrank import GaLoreAdamW


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_first_step(make_optimizer, grad: torch.Tensor, repeats: int) -> float:
    """Median seconds of the first ``step()`` of a fresh optimizer over one parameter with gradient ``grad``."""
    times = []
    for _ in range(repeats + 1):
        p = torch.nn.Parameter(torch.zeros_like(grad))
        p.grad = grad.clone()
        opt = make_optimizer(p)
        _sync(str(grad.device))
        start = time.perf_counter()
        opt.step()
        _sync(str(grad.device))
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first repetition pays one-time library set-up


def candidates(rank: int, gap: int) -> dict:
    """Name -> optimizer factory; galore-torch first, the anchor of the ratios."""
    out = {}
    try:
        import galore_torch
    except ImportError:
        galore_torch = None
    if galore_torch is not None:
        out["galore-torch (svd)"] = lambda p: galore_torch.GaLoreAdamW(
            [{"params": [p], "rank": rank, "update_proj_gap": gap, "scale": 0.25, "proj_type": "std"}],
            lr=1e-3,
            no_deprecation_warning=True,
        )
    sources = {"svd": {}, "randomized": {"power_iters": 1}, "randomized q=0": {"power_iters": 0}, "dct": {}}
    for name, options in sources.items():
        out[f"optkit {name}"] = lambda p, name=name, options=options: GaLoreAdamW(
            [p], lr=1e-3, rank=rank, update_proj_gap=gap, scale=0.25, proj=name.split()[0], **options
        )
    return out


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(1024, 2816), metavar=("M", "N"))
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    grad = torch.randn(*args.shape, generator=torch.Generator().manual_seed(0)).to(
        device=args.device, dtype=getattr(torch, args.dtype)
    )
    rows, anchor = [], None
    for name, make in candidates(args.rank, gap=200).items():
        first = time_first_step(make, grad, args.repeats)
        anchor = anchor or first
        rows.append({"optimizer": name, "first_step_s": first, "speedup": anchor / first})
    print(f"first optimizer step, {args.shape[0]}x{args.shape[1]} {args.dtype} on {args.device}, rank {args.rank}")
    print(f"{'optimizer':<20} {'first step (ms)':>16} {'speed-up':>9}")
    for row in rows:
        print(f"{row['optimizer']:<20} {1e3 * row['first_step_s']:>16.1f} {row['speedup']:>8.1f}x")
    return rows


if __name__ == "__main__":
    main()
