"""Training memory of the GaLore paper's LLaMA sizes, by category, from shapes alone (no weights allocated).

Each model is built on PyTorch's ``meta`` device in bf16 with the paper's 32000-token
vocabulary, and :func:`solvers.lowrank.memory.estimate_memory` splits the memory of
AdamW, 8-bit AdamW and GaLore (the paper's ranks, attention and MLP weights projected)
into weights, weight gradients, optimizer states, projector storage and the workspace of
one projector refresh. The estimate equals the bytes a trained model and optimizer hold
(``tests/solvers/test_galore_memory.py``). Activations are not included: they depend on
batch size, sequence length and checkpointing, not on the optimizer.

Run::

    python examples/galore_memory.py                 # 60m 130m 350m 1b 7b
    python examples/galore_memory.py --sizes 1b --proj randomized
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


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(PAPER_RANKS), choices=list(PAPER_RANKS))
    parser.add_argument("--proj", default="svd", choices=["svd", "randomized", "dct", "random"])
    args = parser.parse_args(argv)
    rows = [row for size in args.sizes for row in breakdown(size, args.proj)]
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
