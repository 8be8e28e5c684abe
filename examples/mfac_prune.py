"""M-FAC on a small MLP: training with the M-FAC optimizer, then OBS pruning against magnitude pruning.

1. Trains an MLP (784-256-128-10 on MNIST) from one seeded initialisation twice, with SGD
   (momentum 0.9, lr 0.1) and with the ``MFAC`` optimizer (lr 3e-3, damping 3e-4, window of
   256), each with a cosine decay of the learning rate, on the same minibatches; reports the
   test accuracy of each.
2. Prunes the M-FAC-trained model one-shot to 50, 70, 90, 95 and 98 % sparsity (of all the
   Linear weights together; biases are kept) with M-FAC OBS (``mfac_prune`` with the
   reference's defaults: 64 gradients of batches of 32, blocks of 128, damping 1e-5, 16
   recomputations), layer-wise magnitude and global magnitude, and reports the test accuracy
   right after pruning and after the same short masked fine-tune for each (125 SGD steps,
   momentum 0.9, lr 0.01 on a cosine, pruned weights zeroed after each step).

Data: the MNIST test split (``t10k``, the one optkit's shared data holds) under
``$OPTKIT_DATA/mnist`` or ``../shared/data/mnist``, split seeded into 8000 training and 2000
test images; without it, scikit-learn's bundled 8x8 digits (64-256-128-10, 1437 / 360).
Nothing is downloaded. Seeded: on the CPU, runs with the same number of torch threads print
the same accuracies.

Run: ``python examples/mfac_prune.py [--out DIR]`` (about 3 minutes on 2 CPU cores, most of it
M-FAC training); ``--small`` is a smoke run (784-64-32-10 on 2000 / 500 images, fewer steps)
that finishes in seconds.
"""

import argparse
import copy
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from optkit._table import text_table
from problems.mnist import find_mnist_files, load_mnist_images, load_mnist_labels
from solvers.curvature import MFAC, apply_masks, global_magnitude_prune, magnitude_prune, mfac_prune, sparsity_of

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPARSITIES = (0.5, 0.7, 0.9, 0.95, 0.98)
METHODS = ("magnitude", "global-magnitude", "mfac-obs")


def find_mnist() -> tuple[Path, Path] | None:
    """Paths of the t10k images and labels under ``$OPTKIT_DATA`` or ``../shared/data``, or ``None``."""
    return find_mnist_files(SHARED_DATA)


def load_data(seed: int, small: bool):
    """``(name, X_train, y_train, X_test, y_test)``: float32 pixels in [0, 1], int64 labels, a seeded split."""
    found = find_mnist()
    if found is not None:
        X = load_mnist_images(found[0]).reshape(-1, 784).astype(np.float32) / 255
        y = load_mnist_labels(found[1]).astype(np.int64)
        name, n_train, n_test = "MNIST t10k", (2000 if small else 8000), (500 if small else 2000)
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        X, y = digits.data.astype(np.float32) / 16, digits.target.astype(np.int64)
        name, n_train, n_test = "digits", 1437, 360
    order = np.random.default_rng(seed).permutation(len(y))
    train, test = order[:n_train], order[n_train : n_train + n_test]
    tensors = [torch.from_numpy(a) for a in (X[train], y[train], X[test], y[test])]
    return (name, *tensors)


def make_mlp(n_in: int, hidden: tuple[int, ...], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    sizes = (n_in, *hidden, 10)
    layers = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(X).argmax(1) == y).float().mean())


def minibatches(X: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
    """Seeded minibatches without end: one permutation per epoch."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield X[idx], y[idx]


def train(model, optimizer, batches, steps: int, masks=None) -> None:
    """``steps`` optimizer steps on ``batches``, the learning rate decaying to 0 on a cosine; with ``masks``,
    pruned weights are zeroed after each step."""
    model.train()
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for batch in itertools.islice(batches, steps):
        optimizer.zero_grad()
        cross_entropy(model, batch).backward()
        optimizer.step()
        schedule.step()
        if masks is not None:
            apply_masks(model, masks)
    model.eval()


def prune(method: str, model: nn.Module, sparsity: float, X, y, args, seed: int):
    if method == "magnitude":
        return magnitude_prune(model, sparsity)
    if method == "global-magnitude":
        return global_magnitude_prune(model, sparsity)
    return mfac_prune(
        model,
        cross_entropy,
        minibatches(X, y, args.prune_batch, seed),
        sparsity,
        num_grads=args.prune_grads,
        block_size=args.block_size,
        damp=args.prune_damp,
        recomputations=args.recomputations,
    )


def main(args) -> None:
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    name, X_train, y_train, X_test, y_test = load_data(args.seed, args.small)
    hidden = (64, 32) if args.small else (256, 128)
    init = make_mlp(X_train.shape[1], hidden, args.seed)
    steps_per_epoch = len(y_train) // args.batch_size
    train_steps = round(args.epochs * steps_per_epoch)
    arch = "-".join(map(str, (X_train.shape[1], *hidden, 10)))
    print(
        f"{name}: {len(y_train)} train / {len(y_test)} test, MLP {arch}, {train_steps} training steps of "
        f"{args.batch_size}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    # torch's one-time set-up (thread pools, kernels) out of the first timed run
    cross_entropy(copy.deepcopy(init), (X_train[:2], y_train[:2])).backward()
    rows, curves = [], {}
    trained = {}
    optimizers = {
        "train:sgd-momentum": lambda p: torch.optim.SGD(p, lr=args.sgd_lr, momentum=0.9),
        "train:mfac": lambda p: MFAC(p, lr=args.mfac_lr, num_grads=args.mfac_grads, damp=args.mfac_damp),
    }
    for label, make in optimizers.items():
        model = copy.deepcopy(init)
        optimizer = make(model.parameters())  # the first optimizer built imports parts of torch: not timed
        tick = time.perf_counter()
        train(model, optimizer, minibatches(X_train, y_train, args.batch_size, args.seed + 1), train_steps)
        elapsed = time.perf_counter() - tick
        trained[label] = model
        rows.append([label, "0.00", f"{accuracy(model, X_test, y_test):.4f}", "", f"{elapsed:.1f}"])

    dense = trained["train:mfac"]
    for method in METHODS:
        for sparsity in SPARSITIES:
            model = copy.deepcopy(dense)
            tick = time.perf_counter()
            masks = prune(method, model, sparsity, X_train, y_train, args, args.seed + 2)
            elapsed = time.perf_counter() - tick
            one_shot = accuracy(model, X_test, y_test)
            finetune = torch.optim.SGD(model.parameters(), lr=args.finetune_lr, momentum=0.9)
            batches = minibatches(X_train, y_train, args.batch_size, args.seed + 3)
            train(model, finetune, batches, args.finetune_steps, masks)
            tuned = accuracy(model, X_test, y_test)
            rows.append([method, f"{sparsity_of(model):.2f}", f"{one_shot:.4f}", f"{tuned:.4f}", f"{elapsed:.1f}"])
            curves.setdefault(method, []).append((sparsity, one_shot, tuned))

    print(f"\n{name} MLP {arch}  (anchor: magnitude)")
    headers = ["method", "sparsity", "test acc", f"after {args.finetune_steps} masked SGD steps", "time s"]
    print(text_table(headers, rows, right=[False, True, True, True, True]))
    print(f"\ntotal {time.perf_counter() - start:.1f}s")
    if args.out:
        plot(curves, dense_accuracy=accuracy(dense, X_test, y_test), title=f"{name}, MLP {arch}", out=Path(args.out))


def plot(curves, dense_accuracy: float, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for (method, points), color in zip(curves.items(), ("C0", "C1", "C2")):
        sparsity, one_shot, tuned = zip(*points)
        ax.plot(sparsity, one_shot, "--o", color=color, label=f"{method}, one-shot")
        ax.plot(sparsity, tuned, "-s", color=color, label=f"{method}, fine-tuned")
    ax.axhline(dense_accuracy, color="gray", lw=0.8, label="dense (M-FAC trained)")
    ax.set_xlabel("sparsity of the Linear weights")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = out / "mfac_prune.png"
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="smoke run: small model and data, few steps")
    parser.add_argument("--out", default=None, help="directory for mfac_prune.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=None, help="training epochs (default 10, --small 4)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sgd-lr", type=float, default=0.1)
    parser.add_argument("--mfac-lr", type=float, default=3e-3)
    parser.add_argument("--mfac-grads", type=int, default=None, help="M-FAC window (default 256, --small 128)")
    parser.add_argument("--mfac-damp", type=float, default=3e-4)
    parser.add_argument("--prune-grads", type=int, default=None, help="OBS gradients (default 64, --small 16)")
    parser.add_argument("--prune-batch", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--prune-damp", type=float, default=1e-5)
    parser.add_argument("--recomputations", type=int, default=None, help="OBS sub-steps (default 16, --small 4)")
    parser.add_argument("--finetune-steps", type=int, default=None, help="masked SGD steps (default 125, --small 20)")
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    args = parser.parse_args()
    small_or_full = {
        "epochs": (4.0, 10.0),
        "mfac_grads": (128, 256),
        "prune_grads": (16, 64),
        "recomputations": (4, 16),
        "finetune_steps": (20, 125),
    }
    for key, (small, full) in small_or_full.items():
        if getattr(args, key) is None:
            setattr(args, key, small if args.small else full)
    main(args)
