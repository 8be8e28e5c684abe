"""What the multi-process tests share: a free TCP port for a gloo rendezvous on this machine, and
spawning ranks that each save their results."""

import socket


def free_port() -> int:
    """A port nobody listens on now, for ``init_method=f"tcp://127.0.0.1:{port}"``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_rank(results, out_dir, rank: int) -> None:
    """Save this rank's ``results`` to ``out_dir/rank{rank}.pt``, then wait for every rank: one that tore
    gloo down while its peer's threads still communicated aborted at teardown (see test_layerwise)."""
    import torch

    torch.save(results, out_dir / f"rank{rank}.pt")
    torch.distributed.barrier()


def run_ranks(worker, out_dir, world: int) -> list:
    """Run ``worker(rank, port, out_dir)`` on ``world`` spawned processes; each rank's saved results."""
    import torch

    torch.multiprocessing.spawn(worker, args=(free_port(), out_dir), nprocs=world, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(world)]
