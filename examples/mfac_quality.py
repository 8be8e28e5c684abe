"""M-FAC against Adam, SGD and Shampoo on linear classifiers, each at its best learning rate of one grid.

Every method trains every problem from the same start with the same minibatches (one
``batch_size``, one number of ``epochs``, one ``seed``: equal gradient evaluations), through
``optkit.bench.run_benchmark``, once per learning rate of the grid; the best learning rate of
a method is the one with the smallest final training loss (the exact full objective). Methods:
``sgd`` (momentum 0.9), ``adam``, ``shampoo`` (pytorch_optimizer's, no momentum; its inverse
roots recomputed at every step, or every ``--shampoo-update-freq`` steps on problems whose
variable has a dimension over 256, where one SVD per step would dominate the run: MNIST's
785 x 785 statistic) and ``mfac`` with a window of ``--num-grads`` gradients, once per damping
of ``--damps``. The learning-rate schedule is the
adapter's default for all (10 % linear warm-up, then cosine decay to a tenth).

Prints, per problem, each method's best learning rate, final training loss, final test
accuracy, steps and training time (measuring excluded), and the final training loss at every
learning rate; writes ``table.md`` (the same tables), one PNG per problem (training loss and
test accuracy against epochs at each method's best learning rate) and the benchmark records
(``runs/<problem>/results.csv``) under ``--out``.

Run: ``OPTKIT_DATA=../shared/data python examples/mfac_quality.py --out mfac-quality`` (a9a,
mushrooms and splice logistic, MNIST softmax); ``--small`` for a smoke run on scikit-learn's
digits (no data files).
"""

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import optkit
from optkit.bench import run_benchmark

FULL = {
    "problems": "ml/logistic/a9a,ml/logistic/mushrooms,ml/logistic/splice_scale,ml/softmax/mnist",
    "epochs": 5.0,
    "lrs": "1e-3,3e-3,1e-2,3e-2,0.1,0.3,1,3",
    "damps": "1e-3,1e-2,1e-1",
}
SMALL = {"problems": "ml/logistic/digits,ml/softmax/digits", "epochs": 2.0, "lrs": "1e-2,0.1", "damps": "1e-2"}
ANCHOR = "adam"
# the largest statistic Shampoo refreshes at every step (an SVD of a (256, 256) matrix: about 10 ms)
SHAMPOO_EVERY_STEP_DIM = 256


def methods(num_grads: int, damps: list[float], shampoo_update_freq: int) -> dict[str, str]:
    """Each method's name and its solver spec without the run's options (lr, batches, epochs)."""
    out = {"sgd": "sgd:momentum=0.9", "adam": "adam", "shampoo": f"shampoo:update_freq={shampoo_update_freq}"}
    for damp in damps:
        out[f"mfac damp={damp:g}"] = f"mfac:num_grads={num_grads},damp={damp:g}"
    return out


def spec(base: str, **options) -> str:
    name, _, own = base.partition(":")
    return f"{name}:" + ",".join([*filter(None, own.split(",")), *(f"{k}={v}" for k, v in options.items())])


def final_loss(run) -> float:
    """The run's final exact training objective; ``inf`` for a run that failed or diverged (its loss
    became NaN or inf: status ``nonfinite``)."""
    value = run.fun if run.status in ("max_iter", "converged") else None
    return float(value) if value is not None and math.isfinite(value) else math.inf


def compare(problem: str, lrs: list[float], damps: list[float], args, out: Path) -> list[dict]:
    """Run every method at every learning rate on ``problem``; the best run of each method."""
    instance = optkit.get_problem(problem)
    steps_per_epoch = math.ceil(instance.n_samples / args.batch_size)
    update_freq = 1 if max(instance.x_shape) <= SHAMPOO_EVERY_STEP_DIM else args.shampoo_update_freq
    names = methods(args.num_grads, damps, update_freq)
    if args.methods:
        names = {name: base for name, base in names.items() if name.split()[0] in args.methods.split(",")}
    common = {
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "max_iter": 10**9,  # the epochs end each run
        "eval_every": max(1, steps_per_epoch // args.evals_per_epoch),
        "seed": args.seed,
    }
    specs = {(name, lr): spec(base, lr=f"{lr:g}", **common) for name, base in names.items() for lr in lrs}
    bench = run_benchmark(
        [problem], list(specs.values()), progress=False, out_dir=out / "runs" / problem.replace("/", "_")
    )
    by_label = {run.solver: run for run in bench.runs}
    rows = []
    for name in names:
        runs = {lr: by_label[specs[name, lr]] for lr in lrs}
        best_lr = min(lrs, key=lambda lr: final_loss(runs[lr]))
        edge = best_lr in (lrs[0], lrs[-1]) and math.isfinite(final_loss(runs[best_lr]))
        rows.append({
            "problem": problem, "method": name, "spec": names[name], "lr": best_lr, "edge": edge,
            "run": runs[best_lr], "sweep": runs,
        })  # fmt: skip
    return rows


def fmt(value, digits: int) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def text_tables(problem: str, rows: list[dict], lrs: list[float]) -> str:
    """The problem's best-lr table (heading ``<problem>  (anchor: adam)``) and its learning-rate sweep."""
    anchor = next((row["run"] for row in rows if row["method"] == ANCHOR and row["run"].completed), None)
    header = ["method", "status", "best lr", "train loss", "test acc", "steps", "time (s)", "time ratio"]
    body = []
    for row in rows:
        run = row["run"]
        ratio = run.time_s / anchor.time_s if anchor is not None and run.completed and anchor.time_s else None
        body.append([
            row["method"], run.status, f"{row['lr']:g}" + (" (edge)" if row["edge"] else ""), fmt(final_loss(run), 5),
            fmt(run.metrics.get("test_accuracy", math.nan), 4), str(run.nit), fmt(run.time_s, 2), fmt(ratio, 2),
        ])  # fmt: skip
    sweep_header = ["final train loss", *(f"lr={lr:g}" for lr in lrs)]
    sweep = [[row["method"], *(fmt(final_loss(row["sweep"][lr]), 4) for lr in lrs)] for row in rows]
    anchor_name = ANCHOR if anchor is not None else "none"
    specs = "\n".join(f"  {row['method']}: {row['spec']}" for row in rows)
    return (
        f"{problem}  (anchor: {anchor_name})\n{aligned(header, body)}\n\n{aligned(sweep_header, sweep)}\n\n"
        f"solver specs (plus lr, batch_size, epochs, eval_every, max_iter, seed):\n{specs}"
    )


def aligned(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[j]) for r in [header, *body]) for j in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *body]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def markdown(rows: list[dict]) -> str:
    lines = [
        "| problem | method | best lr | train loss | test acc. | steps | time |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        run = row["run"]
        lines.append(
            f"| {row['problem']} | `{row['method']}` | {row['lr']:g}{' (edge)' if row['edge'] else ''} | "
            f"{fmt(final_loss(run), 5)} | "
            f"{fmt(run.metrics.get('test_accuracy', math.nan), 4)} | {run.nit} | {fmt(run.time_s, 2)} s |"
        )
    return "\n".join(lines)


def plot(problem: str, rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        measured = [r for r in row["run"].trace if r.get("fun") is not None]
        label = f"{row['method']} (lr {row['lr']:g})"
        axes[0].semilogy([r["epoch"] for r in measured], [r["fun"] for r in measured], label=label)
        axes[1].plot([r["epoch"] for r in measured], [r.get("test_accuracy") for r in measured], label=label)
    for ax, name in zip(axes, ("training loss (exact objective)", "test accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(problem, fontsize="medium")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    defaults = SMALL if args.small else FULL
    problems = (args.problems or defaults["problems"]).split(",")
    args.epochs = args.epochs or defaults["epochs"]
    lrs = [float(v) for v in (args.lrs or defaults["lrs"]).split(",")]
    damps = [float(v) for v in (args.damps or defaults["damps"]).split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    every, texts = [], []
    for problem in problems:
        rows = compare(problem, lrs, damps, args, out)
        every += rows
        texts.append(text_tables(problem, rows, lrs))
        print(texts[-1], end="\n\n", flush=True)
        png = out / f"{problem.replace('/', '_')}.png"
        plot(problem, rows, png)
        print(f"plot: {png}", end="\n\n", flush=True)
    (out / "table.md").write_text(markdown(every) + "\n\n```\n" + "\n\n".join(texts) + "\n```\n")
    print(f"wall time {time.perf_counter() - start:.1f} s; tables: {out / 'table.md'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a smoke run on the digits (about 30 s)")
    parser.add_argument("--problems", help=f"comma-separated problem specs (default: {FULL['problems']})")
    parser.add_argument("--epochs", type=float, help=f"passes over the training rows (default {FULL['epochs']:g})")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lrs", help=f"the learning-rate grid (default {FULL['lrs']})")
    parser.add_argument("--num-grads", type=int, default=64, help="M-FAC's window m")
    parser.add_argument("--damps", help=f"M-FAC's dampings, one method each (default {FULL['damps']})")
    parser.add_argument(
        "--shampoo-update-freq", type=int, default=10,
        help=f"Shampoo's steps between inverse roots when a dimension exceeds {SHAMPOO_EVERY_STEP_DIM} (else 1)",
    )  # fmt: skip
    parser.add_argument("--methods", help="keep only these (comma-separated: sgd, adam, shampoo, mfac)")
    parser.add_argument("--evals-per-epoch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="mfac-quality")
    main(parser.parse_args())
