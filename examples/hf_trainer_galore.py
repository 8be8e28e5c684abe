"""A GaLore optimizer in Hugging Face's ``Trainer``: ``Trainer(optimizers=(optimizer, scheduler))``.

transformers' built-in ``optim="galore_adamw"`` needs the ``galore-torch`` package, refuses
gradient accumulation and DDP in its layer-wise mode, and offers only the exact-SVD
projector. Any optkit GaLore optimizer plugs into ``Trainer`` instead through its
``optimizers`` argument, with a scheduler from ``transformers.get_cosine_schedule_with_warmup``;
``Trainer`` then handles accumulation, logging and checkpoints as for any optimizer (the
optimizer's ``state_dict`` holds tensors and numbers only, so it loads with
``weights_only=True``). The model is built from a ``LlamaConfig`` and trained on the stdlib
corpus of :mod:`problems.llm`; nothing is downloaded.

Run::

    python examples/hf_trainer_galore.py --size tiny --steps 200 --proj dct
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from transformers import Trainer, TrainingArguments, get_cosine_schedule_with_warmup

from problems.llm import llama_task, load_corpus
from solvers.lowrank import GaLoreAdamW, galore_param_groups


class ByteWindows(torch.utils.data.Dataset):
    """Consecutive ``seq``-byte windows of a corpus split, as causal-LM examples.

    Each item is ``{"input_ids": LongTensor (seq,), "labels": the same}``: the model shifts
    the labels itself.
    """

    def __init__(self, ids: np.ndarray, seq: int) -> None:
        self.ids, self.seq = ids, seq

    def __len__(self) -> int:
        return len(self.ids) // self.seq

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        window = torch.from_numpy(self.ids[i * self.seq : (i + 1) * self.seq].astype(np.int64))
        return {"input_ids": window, "labels": window}


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--proj", default="randomized", choices=["svd", "randomized", "dct", "random"])
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--output-dir", default="hf-galore-run")
    args = parser.parse_args(argv)

    task = llama_task(args.size, batch=args.batch, seq=args.seq)
    model = task.make_model()
    optimizer = GaLoreAdamW(
        galore_param_groups(model, "attn-mlp", rank=args.rank, update_proj_gap=200, scale=0.25, proj=args.proj),
        lr=args.lr,
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, args.steps // 10), args.steps)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.accumulation,
        logging_steps=max(1, args.steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=ByteWindows(load_corpus().train, args.seq),
        optimizers=(optimizer, scheduler),
    )
    trainer.train()
    val_loss = task.evaluate(model)["val_loss"]
    print(f"validation loss after {args.steps} steps: {val_loss:.4f} (untrained: ln 256 = {np.log(256):.4f})")
    return val_loss


if __name__ == "__main__":
    main()
