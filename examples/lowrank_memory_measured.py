"""Training memory by category, read from the live tensors of the low-rank family after a few steps.

Each recipe trains the task for ``--steps`` steps (the same weights and batches for all), then
:func:`solvers.lowrank.memory.measure_memory` splits what the model and optimizer hold into
weights (INT8 codes with their group scales for Q-GaLore), gradients (with layer-wise stepping:
the largest one), optimizer states, projector storage and the workspace of one refresh.
Activations are not included. ``weights + states`` is the figure Q-GaLore's memory claim is
about; for OwLore and LISA only the γ active blocks hold gradients and states.

Run::

    python examples/lowrank_memory_measured.py                       # llm/llama-tiny, rank 128
    python examples/lowrank_memory_measured.py --task llm/llama-micro --rank 16 --steps 2
"""

from __future__ import annotations

import argparse

import optkit
from solvers.lowrank.memory import CATEGORIES, measure_memory


def recipes(rank: int) -> dict[str, dict]:
    """Label -> solver spec and options; every GaLore-family recipe at ``rank``, the randomized source."""
    galore = {"rank": rank, "proj": "randomized", "power_iters": 0}
    return {
        "adamw": ("adamw", {}),
        "galore-adamw": ("galore-adamw", galore),
        "galore-adamw8bit": ("galore-adamw8bit", galore),
        "q-galore": ("q-galore", galore),
        "q-galore layer-wise": ("q-galore", {**galore, "layerwise": True}),
        "owlore (2 blocks)": ("owlore", {**galore, "active_layers": 2, "interval": 1000}),
        "lisa (2 blocks)": ("lisa", {"active_layers": 2, "interval": 1000}),
        "gradnorm-lorp": ("gradnorm-lorp", galore),
        "gradnorm-lorp8bit": ("gradnorm-lorp8bit", galore),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="llm/llama-tiny")
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--recipes", help="comma-separated labels (default all)")
    args = parser.parse_args(argv)
    table = recipes(args.rank)
    labels = args.recipes.split(",") if args.recipes else list(table)
    unknown = sorted(set(labels) - table.keys())
    if unknown:
        parser.error(f"--recipes: unknown {', '.join(unknown)}; choose from {', '.join(table)}")
    task = optkit.get_problem(args.task)
    rows = []
    for label in labels:
        name, options = table[label]
        result = optkit.solve(task, name, max_iter=args.steps, eval_every=args.steps, lr=1e-3, **options)
        memory = measure_memory(result.x, result.extras["optimizer"], layerwise=options.get("layerwise", False))
        mib = {key: value / 2**20 for key, value in memory.items()}
        rows.append({"recipe": label, **mib, "weights + states": mib["weights"] + mib["optimizer_states"]})
    header = ["recipe", *CATEGORIES, "weights + states"]
    print(f"MiB on {args.task} after {args.steps} steps (live tensors; activations excluded)")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join([row["recipe"]] + [f"{row[key]:.2f}" for key in header[1:]]) + " |")
    return rows


if __name__ == "__main__":
    main()
