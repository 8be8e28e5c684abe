"""Hessian alignment on colored MNIST (Hemati et al., ICCV 2023): ERM against the HGP and Hutchinson penalties.

Data: ``problems.curvature.colored_mnist_environments`` on the MNIST test split (``t10k``, the one
optkit's shared data holds; Arjovsky et al.'s recipe): two training environments whose color agrees
with the (25 %-noisy) label except with probability 0.1 and 0.2, one test environment where it
disagrees with probability 0.9. A model that ignores the color can reach 75 % everywhere; one that
follows the color gets about 85 % in training and about 10 % on the test environment.

Model and training follow the IRM colored-MNIST recipe that Hemati et al.'s cmnist scripts reuse
(hyper-parameters tuned for IRM by Arjovsky et al., not by us, and not on the test environment):
an MLP 392-390-390-1 (ReLU, Xavier-uniform weights, zero biases), binary cross-entropy with logits,
full-batch Adam (lr 4.8985e-4) for 501 steps, an l2 term 1.10794568e-3 * sum ||w||^2 on all weights,
and a penalty weight of 1 for the first 190 steps and 91257.186 from then on (the whole loss is
then divided by that weight). The three methods:

- ``erm``: the mean of the two training environments' losses (plus the l2 term);
- ``hgp``: plus ``optkit.analysis.hgp_penalty`` on the classifier head (the last Linear layer);
- ``hutchinson``: plus ``optkit.analysis.hutchinson_alignment_penalty`` on the head (150 probes,
  fresh ones every step).

Hemati et al. sum the penalty over the two environments; optkit's penalties average over them, so
``alpha = beta = 2`` gives their penalty. Printed per method: the final training accuracy (mean of
the two training environments) and test-environment accuracy, mean +- standard deviation over
seeds (each seed reshuffles the data into environments and draws new colors, label noise and
initial weights), the head's gradient and Hessian-gradient gaps at the end (``hgp_penalty`` with
``alpha = 0, beta = 1`` and ``alpha = 1, beta = 0``, untimed) and the training time per seed.

Run: ``python examples/hessian_alignment.py [--out DIR]`` (``hessian_alignment.png``: test accuracy
over the steps; 3 seeds, about 40 minutes on a shared 2-core CPU, most of it the Hutchinson
penalty); ``--small`` for a smoke run (1500 images, a smaller MLP, 1 seed, 61 steps).
Without the MNIST files (``$OPTKIT_DATA/mnist`` or ``../shared/data/mnist``) it says so and exits 0.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from optkit.analysis import hgp_penalty, hutchinson_alignment_penalty
from optkit.data import data_dir
from problems.curvature import colored_mnist_environments
from problems.mnist import MNIST_IMAGES, MNIST_LABELS, find_mnist_files, load_mnist_images, load_mnist_labels

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
METHODS = ("erm", "hgp", "hutchinson")
IRM = {"lr": 4.898536566546834e-4, "l2": 0.00110794568, "weight": 91257.18613115903}
FULL = IRM | {"hidden": 390, "steps": 501, "anneal": 190, "seeds": 3, "images": 10_000, "probes": 150, "every": 10}
SMALL = IRM | {"hidden": 64, "steps": 61, "anneal": 30, "seeds": 1, "images": 1500, "probes": 10, "every": 10}
ORACLE = 0.75


def find_mnist() -> tuple[Path, Path] | None:
    """Paths of the t10k images and labels under ``$OPTKIT_DATA`` or ``../shared/data``, or ``None``."""
    return find_mnist_files(SHARED_DATA)


def make_mlp(hidden: int, seed: int) -> torch.nn.Sequential:
    """392-hidden-hidden-1 ReLU MLP, Xavier-uniform weights and zero biases (the IRM recipe)."""
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(2 * 14 * 14, hidden), torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, 1)]
    for layer in layers:
        torch.nn.init.xavier_uniform_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    return torch.nn.Sequential(torch.nn.Flatten(), layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2])


def env_loss(model, env):
    x, y = env
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)


@torch.no_grad()
def accuracy(model, env) -> float:
    x, y = env
    return ((model(x).squeeze(1) > 0).float() == y).float().mean().item()


def penalty(method: str, losses: list, head: list, probes: int, seed: int):
    """The method's penalty on the head, summed over environments as Hemati et al. do (``alpha = beta = 2``)."""
    if method == "hgp":
        return hgp_penalty(losses, head, alpha=2.0, beta=2.0)
    return hutchinson_alignment_penalty(losses, head, alpha=2.0, beta=2.0, probes=probes, seed=seed)


def train(method: str, envs: list, cfg: dict, seed: int) -> dict:
    """One run; the final accuracies, the head's gaps, the test accuracy every ``cfg['every']`` steps, the time."""
    model = make_mlp(cfg["hidden"], seed)
    head = list(model[-1].parameters())
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    train_envs, test_env = envs[:2], envs[2]
    curve, seconds = [], 0.0
    for step in range(cfg["steps"]):
        if step % cfg["every"] == 0:
            curve.append((step, accuracy(model, test_env)))
        start = time.perf_counter()
        losses = [env_loss(model, env) for env in train_envs]
        loss = torch.stack(losses).mean() + cfg["l2"] * sum((p * p).sum() for p in model.parameters())
        if method != "erm":
            weight = cfg["weight"] if step >= cfg["anneal"] else 1.0
            loss = loss + weight * penalty(method, losses, head, cfg["probes"], seed * cfg["steps"] + step)
            loss = loss / max(weight, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - start
    curve.append((cfg["steps"], accuracy(model, test_env)))
    losses = [env_loss(model, env) for env in train_envs]
    grad_gap = hgp_penalty(losses, head, alpha=0.0, beta=1.0).item()
    hg_gap = hgp_penalty(losses, head, alpha=1.0, beta=0.0).item()
    train_acc = float(np.mean([accuracy(model, env) for env in train_envs]))
    return {"train": train_acc, "test": curve[-1][1], "grad_gap": grad_gap, "hg_gap": hg_gap, "curve": curve} | {
        "seconds": seconds
    }


def run(cfg: dict, paths: tuple[Path, Path]) -> tuple[dict, list]:
    """Every method at every seed: the results per method, and the environments' sizes."""
    images, labels = load_mnist_images(paths[0]), load_mnist_labels(paths[1])
    images, labels = images[: cfg["images"]], labels[: cfg["images"]]
    results = {method: [] for method in METHODS}
    for seed in range(cfg["seeds"]):
        envs = colored_mnist_environments((0.1, 0.2, 0.9), label_noise=0.25, seed=seed, images=images, labels=labels)
        for method in METHODS:
            result = train(method, envs, cfg, seed)
            results[method].append(result)
            print(
                f"  {method} seed {seed}: train {result['train']:.4f}  test {result['test']:.4f}  "
                f"({result['seconds']:.1f} s)",
                flush=True,
            )
    return results, [len(y) for _, y in envs]


def report(results: dict, cfg: dict, sizes: list) -> None:
    print(
        f"Colored MNIST (t10k): environments of {'/'.join(map(str, sizes))} images, color flips 0.1, 0.2 (train) "
        f"and 0.9 (test), label noise 0.25; MLP 392-{cfg['hidden']}-{cfg['hidden']}-1, full-batch Adam lr "
        f"{cfg['lr']:.4g}, {cfg['steps']} steps, l2 {cfg['l2']:.4g}, penalty weight 1 then {cfg['weight']:.6g} "
        f"from step {cfg['anneal']}, Hutchinson {cfg['probes']} probes, {cfg['seeds']} seed(s); oracle {ORACLE}"
    )
    header = f"{'method':<10}  {'train acc':>15}  {'test acc':>15}  {'grad gap':>9}  {'Hg gap':>9}  {'s / seed':>8}"
    print(header)
    print("-" * len(header))
    for method, runs in results.items():
        cols = {key: np.array([r[key] for r in runs]) for key in ("train", "test", "grad_gap", "hg_gap", "seconds")}
        print(
            f"{method:<10}  {cols['train'].mean():>6.4f} +- {cols['train'].std():.4f}  "
            f"{cols['test'].mean():>6.4f} +- {cols['test'].std():.4f}  {cols['grad_gap'].mean():>9.2e}  "
            f"{cols['hg_gap'].mean():>9.2e}  {cols['seconds'].mean():>8.2f}"
        )


def plot(results: dict, cfg: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for color, (method, runs) in zip(("C0", "C1", "C2"), results.items()):
        steps = [s for s, _ in runs[0]["curve"]]
        accs = np.array([[a for _, a in r["curve"]] for r in runs])
        ax.plot(steps, accs.mean(0), color=color, label=f"{method} (mean of {len(runs)})")
        ax.fill_between(steps, accs.min(0), accs.max(0), color=color, alpha=0.2, lw=0)
    ax.axhline(ORACLE, color="k", ls="--", lw=0.8, label="ignores color (0.75)")
    ax.axhline(0.5, color="k", ls=":", lw=0.8, label="chance")
    ax.axvline(cfg["anneal"], color="0.5", lw=0.8)
    ax.set_xlabel("step (penalty weight raised at the grey line)")
    ax.set_ylabel("test-environment accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "hessian_alignment.png", dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a smoke run (under 30 s)")
    parser.add_argument("--seeds", type=int, help="number of seeds (default 3, 1 with --small)")
    parser.add_argument("--out", type=Path, help="write hessian_alignment.png here")
    args = parser.parse_args()
    cfg = dict(SMALL if args.small else FULL)
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds must be at least 1")
        cfg["seeds"] = args.seeds
    paths = find_mnist()
    if paths is None:
        print(
            f"skipped: the MNIST test split ({MNIST_IMAGES.files[0]}, {MNIST_LABELS.files[0]}) was found neither "
            f"under $OPTKIT_DATA ({data_dir()}) nor under {SHARED_DATA}"
        )
        return
    torch.set_num_threads(1)
    start = time.perf_counter()
    results, sizes = run(cfg, paths)
    report(results, cfg, sizes)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        plot(results, cfg, args.out)
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
