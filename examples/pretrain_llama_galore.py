"""Pre-train a LLaMA-style model with GaLore on the Python standard library's source, resumably.

A plain PyTorch loop: any of optkit's GaLore optimizers, any projector source, optional
layer-wise stepping (weight gradients freed during backward) and gradient accumulation,
GaLore's schedule (linear warm-up, cosine decay to 10%), a checkpoint every
``--save-every`` steps that loads with ``torch.load(weights_only=True)``, and a final
memory breakdown. Nothing is downloaded: the model is built from a ``LlamaConfig`` and
the corpus is the stdlib's own ``*.py`` files, read byte by byte.

Run::

    python examples/pretrain_llama_galore.py --size tiny --steps 300 --proj randomized
    python examples/pretrain_llama_galore.py --size tiny --steps 300 --layerwise --accumulation 2 \\
        --optimizer galore-adamw8bit --checkpoint run.pt --stop-after 100   # rerun the same line to go on
    python examples/pretrain_llama_galore.py --size 1b --device cuda --dtype bfloat16 --rank 512 --layerwise
"""

from __future__ import annotations

import argparse
import functools
import math
import os

import torch
from tqdm.auto import tqdm

from problems.llm import llama_task
from solvers.lowrank import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit, LayerwiseOptimizer, galore_param_groups
from solvers.lowrank.memory import measure_memory

OPTIMIZERS = {"galore-adamw": GaLoreAdamW, "galore-adamw8bit": GaLoreAdamW8bit, "galore-adafactor": GaLoreAdafactor}


def cosine_with_warmup(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """GaLore's schedule: linear warm-up over ``warmup`` steps, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build(args, model):
    """The optimizer (layer-wise or not) and its scheduler."""
    groups = galore_param_groups(
        model, args.target, rank=args.rank, update_proj_gap=args.gap, scale=args.scale, proj=args.proj
    )
    factory = functools.partial(OPTIMIZERS[args.optimizer], lr=args.lr)
    if args.layerwise:
        optimizer = LayerwiseOptimizer(groups, factory, accumulation_steps=args.accumulation)
    else:
        optimizer = factory(groups)
    warmup = max(1, args.steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: cosine_with_warmup(t, args.steps, warmup))
    return optimizer, scheduler


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the model, the optimizer and the schedule that every pre-training script shares."""
    parser.add_argument("--size", default="tiny", help="micro, tiny, 60m, 130m, 350m, 1b, 7b")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--optimizer", default="galore-adamw", choices=sorted(OPTIMIZERS))
    parser.add_argument("--proj", default="randomized", choices=["svd", "randomized", "dct", "random"])
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--gap", type=int, default=200, help="steps between projector refreshes")
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--target", default="attn-mlp", help="'all-linear', 'attn-mlp' or a regex")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--stop-after", type=int, help="end this invocation after so many steps (a job's time slot)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--layerwise", action="store_true", help="step each layer during backward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", help="save here every --save-every steps, and resume from it if it exists")
    parser.add_argument("--eval-every", type=int, default=100)
    args = parser.parse_args(argv)

    task = llama_task(args.size, batch=args.batch, seq=args.seq).to("torch", args.device, args.dtype)
    model = task.make_model()
    optimizer, scheduler = build(args, model)
    step = 0
    if args.checkpoint and os.path.exists(args.checkpoint):
        saved = torch.load(args.checkpoint, weights_only=True, map_location=args.device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step = saved["step"]
    batches = task.train_batches()
    for _ in range(step * args.accumulation):
        next(batches)  # the stream is seeded: skip what the checkpointed run consumed

    history = {}
    last = args.steps if args.stop_after is None else min(args.steps, step + args.stop_after)
    progress = tqdm(range(step, last), initial=step, total=args.steps, desc=f"{args.size} {args.optimizer}")
    for step in progress:
        for _ in range(args.accumulation):
            loss = task.loss(model, next(batches))
            (loss / args.accumulation).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if done % args.eval_every == 0 or done == args.steps:
            history[done] = task.evaluate(model)["val_loss"]
            progress.write(f"step {done}: validation loss {history[done]:.4f}")
        if args.checkpoint and (done % args.save_every == 0 or done == last):
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            torch.save({**state, "scheduler": scheduler.state_dict(), "step": done}, args.checkpoint)

    memory = measure_memory(model, optimizer, layerwise=args.layerwise)
    print("memory (MiB): " + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in memory.items()))
    return {"val_loss": history, "memory": memory}


if __name__ == "__main__":
    main()
