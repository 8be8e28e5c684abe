"""Pre-train a LLaMA-style model with GaLore on N processes (DDP or FSDP2), resumably, under torchrun.

Each rank trains on its own slice of every global batch (the same seeded stream on every
rank, cut into ``world`` equal slices); DDP and FSDP2 average the gradients, so the run is
the single-process run of ``pretrain_llama_galore.py`` with ``--batch`` sequences per step.
Under ``--strategy fsdp2`` every decoder layer and then the whole model go through
``fully_shard``, and the GaLore optimizer steps on the row shards (see the "Distributed
training" section of docs/methods/galore.md). Every ``--save-every`` steps (and when the
invocation ends) the model, optimizer and scheduler state and the step go to a
``torch.distributed.checkpoint`` directory, each rank writing its own shards; rerunning the
same command resumes from it. gloo on the CPU, NCCL on CUDA (one GPU per rank).

Run::

    torchrun --nproc-per-node 2 examples/torchrun_pretrain_llama.py --strategy fsdp2 --size tiny --steps 300
    torchrun --nproc-per-node 2 examples/torchrun_pretrain_llama.py --strategy ddp --checkpoint run.dcp \\
        --save-every 50 --stop-after 100   # rerun the same line to go on from step 100
    torchrun --nproc-per-node 8 examples/torchrun_pretrain_llama.py --strategy fsdp2 --size 1b --device cuda \\
        --dtype bfloat16 --rank 512 --batch 64 --seq 256
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from pretrain_llama_galore import add_training_arguments, build
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from problems.llm import llama_task


def wrap(model: torch.nn.Module, strategy: str, device: torch.device) -> torch.nn.Module:
    """``model`` under DistributedDataParallel, or sharded in place by FSDP2 (layer by layer, then the rest)."""
    if strategy == "ddp":
        ids = [device] if device.type == "cuda" else None
        # gradients as views of the all-reduce buckets: no second copy of every gradient
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def save(path: str, model, optimizer, scheduler, step: int) -> None:
    """One DCP checkpoint of everything the next invocation needs (every rank calls it)."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "step": step}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(path, overwrite=True))


def load(path: str, model, optimizer, scheduler) -> int:
    """Restore the checkpoint at ``path`` in place; returns the step it was taken at."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "step": 0}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="fsdp2", choices=["ddp", "fsdp2"])
    add_training_arguments(parser)
    parser.add_argument("--batch", type=int, default=8, help="global batch: sequences per step over all ranks")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, the GPU of LOCAL_RANK)")
    parser.add_argument("--checkpoint", help="DCP directory: saved every --save-every steps, resumed from if present")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    # the single-process example's optimizer builder is reused: no layer-wise stepping, one micro-batch per step
    parser.set_defaults(layerwise=False, accumulation=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        if args.batch % world:
            raise ValueError(f"--batch must be a multiple of the number of processes ({world}), got {args.batch}")
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        task = llama_task(args.size, batch=args.batch, seq=args.seq).to("torch", str(device), args.dtype)
        model = wrap(task.make_model(), args.strategy, device)
        optimizer, scheduler = build(args, model.module if args.strategy == "ddp" else model)
        first = 0
        if args.checkpoint and os.path.exists(os.path.join(args.checkpoint, ".metadata")):
            first = load(args.checkpoint, model, optimizer, scheduler)
        batches = task.train_batches()
        for _ in range(first):
            next(batches)  # the stream is seeded: skip what the checkpointed run consumed

        history = {}
        last = args.steps if args.stop_after is None else min(args.steps, first + args.stop_after)
        for step in range(first, last):
            loss = task.loss(model, next(batches).chunk(world)[rank])
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            if done % args.eval_every == 0 or done == args.steps:
                history[done] = task.evaluate(model)["val_loss"]
                if rank == 0:
                    print(f"step {done}: validation loss {history[done]:.6f}", flush=True)
            if args.checkpoint and (done % args.save_every == 0 or done == last):
                save(args.checkpoint, model, optimizer, scheduler, done)
        # no rank tears the process group down while another still communicates
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return {"val_loss": history}


if __name__ == "__main__":
    main()
