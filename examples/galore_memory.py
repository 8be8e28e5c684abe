"""Training memory of the GaLore paper's LLaMA sizes, by category, from shapes alone (no weights allocated).

Each model is built on PyTorch's ``meta`` device in bf16 with the paper's 32000-token
vocabulary, and :func:`solvers.lowrank.memory.estimate_memory` splits the memory of
AdamW, 8-bit AdamW and GaLore (the paper's ranks, attention and MLP weights projected)
into weights, weight gradients, optimizer states, projector storage and the workspace of
one projector refresh. The estimate equals the bytes a trained model and optimizer hold
(``tests/solvers/test_galore_memory.py``). Activations are not included: they depend on
batch size, sequence length and checkpointing, not on the optimizer.

``--family`` adds the low-rank family at the papers' own settings: Q-GaLore (INT8 projected
weights, INT4 bases, 8-bit moments, layer-wise), OwLore (γ = 5 of the 32 blocks of LLaMA-7B
trained at a time, GaLore rank 256 on them, the rest frozen: the blocks outside the active set
hold weights only) and 8-bit GradNormLoRP (8-bit GaLore plus four vectors of one value per row
of each projected weight), beside 8-bit GaLore. The memory of γ active blocks does not depend on
which γ are drawn.

Run::

    python examples/galore_memory.py                 # 60m 130m 350m 1b 7b
    python examples/galore_memory.py --sizes 1b --proj randomized
    python examples/galore_memory.py --sizes 7b --family
"""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaForCausalLM

from problems.llm import PAPER_VOCAB_SIZE, llama_config
from solvers.lowrank import galore_param_groups
from solvers.lowrank.memory import CATEGORIES, estimate_memory

# the ranks of the GaLore paper's Table 2 (and 1024 for 7B, its Table 3)
PAPER_RANKS = {"60m": 128, "130m": 256, "350m": 256, "1b": 512, "7b": 1024}
RECIPES = [
    ("adamw", "adamw", False),
    ("adamw8bit", "adamw8bit", False),
    ("galore-adamw", "galore-adamw", False),
    ("galore-adamw8bit", "galore-adamw8bit", False),
    ("galore-adamw8bit layer-wise", "galore-adamw8bit", True),
]


def breakdown(size: str, proj: str) -> list[dict]:
    """One row per recipe: GiB by category and in total, for the ``size`` model in bf16."""
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(size, vocab_size=PAPER_VOCAB_SIZE)).to(torch.bfloat16)
    groups = galore_param_groups(model, "attn-mlp", rank=PAPER_RANKS[size], proj=proj)
    rows = []
    for label, optimizer, layerwise in RECIPES:
        gib = {k: v / 2**30 for k, v in estimate_memory(groups, optimizer=optimizer, layerwise=layerwise).items()}
        rows.append({"size": size, "recipe": label, **gib, "total": sum(gib.values())})
    return rows


# OwLore's code settings (owlore_scripts/run_owlore_low_rank.sh): 5 blocks at a time, GaLore rank 256
OWLORE_ACTIVE, OWLORE_RANK = 5, 256


def family_breakdown(size: str, proj: str) -> list[dict]:
    """Q-GaLore, OwLore and 8-bit GradNormLoRP rows (see the module docstring), GiB by category."""
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(size, vocab_size=PAPER_VOCAB_SIZE)).to(torch.bfloat16)
    rank = PAPER_RANKS[size]
    groups = galore_param_groups(model, "attn-mlp", rank=rank, proj=proj)
    quantised = galore_param_groups(model, "attn-mlp", rank=rank, proj=proj, proj_bits=4)
    owlore = galore_param_groups(model, "attn-mlp", rank=OWLORE_RANK, proj=proj)
    blocks = model.model.layers
    frozen = [p for block in blocks[OWLORE_ACTIVE:] for p in block.parameters()]
    recipes = [
        ("galore-adamw8bit layer-wise", groups, {"optimizer": "galore-adamw8bit", "layerwise": True}),
        ("q-galore layer-wise", quantised, {"optimizer": "galore-adamw8bit", "layerwise": True, "weight_bits": 8}),
        (
            f"owlore ({OWLORE_ACTIVE} of {len(blocks)} blocks, rank {OWLORE_RANK})",
            owlore,
            {"optimizer": "galore-adamw", "frozen": frozen},
        ),
        (
            "gradnorm-lorp8bit layer-wise",
            groups,
            {"optimizer": "galore-adamw8bit", "layerwise": True, "magnitudes": True},
        ),
    ]
    rows = []
    for label, recipe_groups, options in recipes:
        gib = {k: v / 2**30 for k, v in estimate_memory(recipe_groups, **options).items()}
        rows.append({"size": size, "recipe": label, **gib, "total": sum(gib.values())})
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(PAPER_RANKS), choices=list(PAPER_RANKS))
    parser.add_argument("--proj", default="svd", choices=["svd", "randomized", "dct", "random"])
    parser.add_argument("--family", action="store_true", help="add Q-GaLore, OwLore and GradNormLoRP rows")
    args = parser.parse_args(argv)
    rows = [row for size in args.sizes for row in breakdown(size, args.proj)]
    if args.family:
        rows += [row for size in args.sizes for row in family_breakdown(size, args.proj)]
    header = ["size", "recipe", *CATEGORIES, "total"]
    print(f"GiB, bf16 weights, vocabulary {PAPER_VOCAB_SIZE}, projector source {args.proj}; activations excluded")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row["size"], row["recipe"]] + [f"{row[k]:.3f}" for k in (*CATEGORIES, "total")]
        print("| " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    main()
