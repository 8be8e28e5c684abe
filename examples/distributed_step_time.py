"""GaLoreAdamW's training step time and per-rank memory: one process, 2-process DDP, 2-process FSDP2.

Every configuration trains the same model on the same global batch per step (``--batch``
sequences, split evenly over the processes) with gloo on the CPU, one torch thread per
process. For each it prints the median step time (forward, backward and optimizer step)
over the steps after ``--warmup``, its ratio to the 1-process run, the median optimizer
step alone, and per rank the bytes of the tensors the rank holds at the end of a backward
(parameters, gradients, optimizer state: local shards under FSDP2) and the process's peak
RSS (the maximum over ranks). Each configuration runs in fresh processes, one after the other.

Run::

    python examples/distributed_step_time.py --size tiny --steps 12 --warmup 3
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from pretrain_llama_galore import build
from torch.distributed.tensor import DTensor
from torchrun_pretrain_llama import wrap

from problems.llm import llama_task

CONFIGURATIONS = (("1 process", None, 1), ("DDP", "ddp", 2), ("FSDP2", "fsdp2", 2))
MiB = 2**20


def local_nbytes(tensors) -> int:
    """Bytes of the tensors as this rank stores them (a DTensor's local shard)."""
    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def worker(rank: int, world: int, strategy: str | None, port: int, args: argparse.Namespace, out: Path) -> None:
    """Train ``args.steps`` steps on this rank's slice of each batch; write timings and memory to ``out``."""
    torch.set_num_threads(1)
    if strategy is not None:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        task = llama_task(args.size, batch=args.batch, seq=args.seq).to("torch", "cpu", "float32")
        model = task.make_model()
        if strategy is not None:
            model = wrap(model, strategy, torch.device("cpu"))
        optimizer, _ = build(args, model.module if strategy == "ddp" else model)
        batches = task.train_batches()
        step_seconds, optimizer_seconds = [], []
        for _ in range(args.steps):
            batch = next(batches).chunk(world)[rank]
            start = time.perf_counter()
            task.loss(model, batch).backward()
            gradient_bytes = local_nbytes(p.grad for p in model.parameters() if p.grad is not None)
            before_step = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            end = time.perf_counter()
            step_seconds.append(end - start)
            optimizer_seconds.append(end - before_step)
        state = optimizer.state_nbytes()
        result = {
            "step_s": statistics.median(step_seconds[args.warmup :]),
            "optimizer_s": statistics.median(optimizer_seconds[args.warmup :]),
            "parameters": local_nbytes(model.parameters()),
            "gradients": gradient_bytes,
            "optimizer_state": state["moments"] + state["projector"],
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        torch.save(result, out / f"rank{rank}.pt")
        if strategy is not None:
            dist.barrier()
    finally:
        if strategy is not None:
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(strategy: str | None, world: int, args: argparse.Namespace) -> list[dict]:
    """One configuration in ``world`` fresh processes; the per-rank results."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory)
        torch.multiprocessing.spawn(worker, args=(world, strategy, free_port(), args, out), nprocs=world, join=True)
        return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", help="micro, tiny, 60m, ...")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the medians")
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--gap", type=int, default=200, help="steps between projector refreshes")
    parser.add_argument("--proj", default="randomized", choices=["svd", "randomized", "dct", "random"])
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        raise ValueError(f"--warmup must be in [0, --steps), got {args.warmup} with --steps {args.steps}")
    if args.batch % 2:
        raise ValueError(f"--batch must be even (split over 2 processes), got {args.batch}")
    # what pretrain_llama_galore.build reads besides the options above
    args.optimizer, args.lr, args.scale, args.target, args.layerwise = "galore-adamw", 0.01, 0.25, "attn-mlp", False

    rows = []
    for label, strategy, world in CONFIGURATIONS:
        ranks = run(strategy, world, args)
        rows.append({"configuration": label, "processes": world, **{k: max(r[k] for r in ranks) for k in ranks[0]}})
    anchor = rows[0]["step_s"]
    print(f"llama-{args.size}, GaLoreAdamW rank {args.rank} ({args.proj}), global batch {args.batch}x{args.seq}, gloo")
    header = ["configuration", "procs", "step s", "ratio", "optim s", "params", "grads", "optim state", "peak RSS"]
    print("| " + " | ".join(header) + " |  (MiB per rank)")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row["configuration"], str(row["processes"]), f"{row['step_s']:.3f}", f"{row['step_s'] / anchor:.2f}"]
        cells.append(f"{row['optimizer_s']:.3f}")
        cells += [f"{row[k] / MiB:.1f}" for k in ("parameters", "gradients", "optimizer_state", "peak_rss")]
        print("| " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    main()
