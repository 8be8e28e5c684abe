"""Curvature claims reproduced with ``optkit.analysis``: Sagun's outliers and Wu & Su's trace bound.

(a) Sagun et al.: the Hessian of a trained network's loss is a bulk near zero plus outliers, and the
number of outliers follows the number of classes. A ReLU MLP (``problems.curvature.mlp``) is trained
briefly (full-batch Adam) on a ``k``-class Gaussian mixture for each ``k`` of ``--classes``; then
``hessian_spectrum`` gives the top eigenvalues (Lanczos), the trace (Hutchinson) and the SLQ density,
and the outliers are counted by the gap rule of ``HessianSpectrum.outliers`` (cross-checked by the
density's count above the bulk edge). Prints one row per ``k``.

(b) Wu & Su: a minimum is linearly stable for batch-1 SGD only if ``tr(H) <= 2 / eta``. The diagonal
linear network ``beta = u*u - v*v`` (n = 20, d = 40, 3-sparse truth, ``u = v = 0.5`` at the start) is
trained by batch-1 SGD at each learning rate of ``--etas``, for ``--seeds`` seeds; at the end ``tr(H)``
is the exact Gauss-Newton trace (the Hessian at an interpolating point) and ``stability_check``'s
Hutchinson estimate of the Hessian's trace. Prints one row per (eta, seed): converged (final loss
below 1e-20) or diverged, ``tr(H)``, ``2 / eta`` and ``eta tr(H) / 2``.

(c) Sagun on real data: the same measurement on scikit-learn's digits
(``problems.curvature.digits``, 1797 images of 8 x 8 pixels, 10 classes): an MLP 64-h-h-10 trained
by full-batch Adam (lr 3e-3) until its training loss reaches 0.03, for each width ``h`` = 16, 32, 64
(Sagun's second claim: with the data fixed, more parameters grow the bulk and leave the outliers);
the same on the digits 0-4 (5 classes, the smallest width), once more at width 32 at a ten times
lower loss (0.003), and on a seeded subsample of 2000 MNIST test images (784-32-32-10)
(``problems.curvature.mnist_classification``; skipped with a message when the data are absent from
``$OPTKIT_DATA`` and ``../shared/data``). Prints one row per network: the outliers (gap rule and SLQ
count), ``lambda_1``, the largest bulk eigenvalue, the widest gap ratio ``lambda_j / lambda_(j+1)``
and the next widest ("next", the rule's margin), the trace (Hutchinson), the bulk's trace (SLQ,
below the bulk edge), the SLQ fraction of the eigenvalues within ``1e-3 lambda_1`` of zero ("near
0") and the largest Ritz residual relative to ``lambda_1``. ``--small`` runs width 32 and the digits
0-4 only, with 2 SLQ probes.

Run: ``python examples/hessian_analysis.py --out hessian-analysis`` (PNG files under ``--out``);
``--small`` for a smoke run (under 30 s); ``--part a``, ``b`` or ``c`` runs one part.
"""

import argparse
import time
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from optkit.analysis import hessian_spectrum, stability_check
from problems.curvature import (
    DiagonalNetwork,
    diagonal_network_data,
    digits,
    gaussian_mixture,
    mlp,
    mnist_classification,
)
from problems.mnist import find_mnist_files, load_mnist_images, load_mnist_labels

FULL = {"classes": "2,3,5,7,10", "n": 1000, "hidden": 32, "train_steps": 200, "etas": "0.002,0.005,0.01,0.02,0.03,0.04"}
FULL |= {"seeds": 3, "sgd_steps": 200_000, "widths": "16,32,64", "subset": 5, "low_loss_width": 32, "mnist": 2000}
FULL |= {"probes": 6, "slq_steps": 60, "target_loss": 0.03}
SMALL = {"classes": "2,5", "n": 1000, "hidden": 32, "train_steps": 200, "etas": "0.005,0.03,0.05", "seeds": 1}
SMALL |= {"sgd_steps": 40_000, "widths": "32", "subset": 5, "low_loss_width": 0, "mnist": 0, "probes": 2}
SMALL |= {"slq_steps": 20, "target_loss": 0.03}
CONVERGED = 1e-20
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NEAR_ZERO = 1e-3  # |lambda| below this fraction of lambda_1 counts as "near zero"


def cross_entropy(model, batch):
    X, y = batch
    return torch.nn.functional.cross_entropy(model(X), y)


def sagun(classes, n, hidden, train_steps, out):
    """Train an MLP per class count, measure its spectrum; rows and the figure."""
    rows, spectra = [], []
    for k in classes:
        X, y = gaussian_mixture(k, 20, n, separation=1.5, seed=0)
        batch = (torch.from_numpy(X), torch.from_numpy(y))
        model = mlp(20, k, hidden=hidden, depth=2, seed=0, dtype=torch.float64)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(train_steps):
            opt.zero_grad()
            loss = cross_entropy(model, batch)
            loss.backward()
            opt.step()
        start = time.perf_counter()
        spec = hessian_spectrum(model, cross_entropy, [batch], top_k=20, probes=10, steps=80, seed=0)
        seconds = time.perf_counter() - start
        count = spec.outliers()
        lam = spec.eigenvalues
        rows.append((k, spec.n, loss.item(), count, spec.count_above(spec.bulk_edge()), lam[0], lam[count], seconds))
        spectra.append((k, spec))
    print(f"(a) Sagun: MLP 20-{hidden}-{hidden}-k on a k-class Gaussian mixture (n = {n}), Adam {train_steps} steps")
    print(
        f"{'k':>3}  {'params':>6}  {'loss':>7}  {'outliers':>8}  {'SLQ count':>9}  {'lambda_1':>9}  "
        f"{'bulk top':>9}  {'time s':>6}"
    )
    print("-" * 72)
    for k, size, loss, count, slq, top, bulk, seconds in rows:
        print(f"{k:>3}  {size:>6}  {loss:>7.4f}  {count:>8}  {slq:>9.2f}  {top:>9.4f}  {bulk:>9.4f}  {seconds:>6.1f}")
    if out is not None:
        fig, axes = plt.subplots(1, len(spectra) + 1, figsize=(4 * (len(spectra) + 1), 3.5))
        for ax, (k, spec) in zip(axes, spectra):
            spec.plot(ax)
            ax.set_title(f"k = {k}: {spec.outliers()} outliers")
        axes[-1].plot([r[0] for r in rows], [r[3] for r in rows], "o-", label="outliers (gap rule)")
        axes[-1].plot(classes, classes, "k--", lw=0.8, label="k")
        axes[-1].plot(classes, [k - 1 for k in classes], "k:", lw=0.8, label="k - 1")
        axes[-1].set_xlabel("classes k")
        axes[-1].legend()
        fig.tight_layout()
        fig.savefig(out / "sagun_outliers.png", dpi=120)
        plt.close(fig)
    return rows


def train_to(model, batch, target, max_steps=5000):
    """Full-batch Adam (lr 3e-3) until the training loss is at most ``target``; the final loss."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(max_steps):
        opt.zero_grad()
        loss = cross_entropy(model, batch)
        if loss.item() <= target:
            break
        loss.backward()
        opt.step()
    return loss.item()


def mnist_or_none(n):
    """``mnist_classification(n)`` (float32: twice the speed of float64 at 26,506 weights) from
    ``$OPTKIT_DATA`` or ``../shared/data``; None when absent."""
    found = find_mnist_files(SHARED_DATA)
    if found is None:
        return None
    pixels, labels = load_mnist_images(found[0]), load_mnist_labels(found[1])
    return mnist_classification(n, seed=0, dtype=torch.float32, images=pixels, labels=labels)


def bulk_trace(spec):
    """The SLQ estimate of the sum of the eigenvalues below the bulk edge: ``n`` times the
    probe-averaged quadrature sum of ``weight * node`` over the nodes below it."""
    nodes, weights = spec.density.nodes, spec.density.weights
    return float(spec.n * np.sum(weights * nodes * (nodes < spec.bulk_edge())) / nodes.shape[0])


def spectrum_row(name, batch, k, hidden, target, probes, slq_steps):
    """Train ``dim-hidden-hidden-k`` to ``target`` on ``batch``, measure its Hessian; a row and the spectrum."""
    X = batch[0]
    model = mlp(X.shape[1], k, hidden=hidden, depth=2, seed=0, dtype=X.dtype)
    loss = train_to(model, batch, target)
    start = time.perf_counter()
    spec = hessian_spectrum(model, cross_entropy, [batch], top_k=20, probes=probes, steps=slq_steps, seed=0)
    seconds = time.perf_counter() - start
    lam, count = spec.eigenvalues, spec.outliers()
    ratios = lam[:-1] / lam[1:]
    ratios = ratios[: int(np.sum(lam > 0)) - 1]
    gap = ratios[count - 1] if count else float("nan")
    runner_up = np.max(np.delete(ratios, count - 1)) if count else float("nan")
    near_zero = spec.count_above(-NEAR_ZERO * lam[0]) - spec.count_above(NEAR_ZERO * lam[0])
    row = {
        "data": name,
        "k": k,
        "mlp": f"{X.shape[1]}-{hidden}-{hidden}-{k}",
        "params": spec.n,
        "loss": loss,
        "outliers": count,
        "slq": spec.count_above(spec.bulk_edge()),
        "lambda_1": lam[0],
        "bulk_top": lam[count],
        "gap": gap,
        "runner_up": runner_up,
        "trace": f"{spec.trace:.1f}+-{spec.trace_stderr:.1f}",
        "bulk_trace": bulk_trace(spec),
        "near_zero": near_zero / spec.n,
        "residual": float(np.max(spec.residuals) / lam[0]),
        "seconds": seconds,
    }
    return row, spec


def sagun_real(widths, subset, low_loss_width, mnist, probes, slq_steps, target, out):
    """Part (c): the outliers of MLPs trained on the digits (and MNIST); rows and the figure."""
    X, y = digits(seed=0, dtype=torch.float64)
    runs = [("digits", (X, y), 10, h, target) for h in widths]
    if subset:
        keep = y < subset
        runs.append((f"digits0-{subset - 1}", (X[keep], y[keep]), subset, widths[0], target))
    if low_loss_width:
        runs.append(("digits", (X, y), 10, low_loss_width, target / 10))
    skipped = None
    if mnist:
        data = mnist_or_none(mnist)
        if data is None:
            skipped = f"MNIST row skipped: the MNIST test images are in neither $OPTKIT_DATA nor {SHARED_DATA}"
        else:
            runs.append((f"mnist{mnist}", data, 10, 32, target))
    rows, spectra = [], []
    for name, batch, k, hidden, goal in runs:
        row, spec = spectrum_row(name, batch, k, hidden, goal, probes, slq_steps)
        rows.append(row)
        spectra.append(spec)
    lower = f" (one row: {target / 10:g})" if low_loss_width else ""
    print(
        f"(c) Sagun on real data: MLP d-h-h-k trained by full-batch Adam to a training loss <= {target:g}{lower}; "
        f"float64 (MNIST: float32); top 20 by Lanczos, SLQ {probes} x {slq_steps}"
    )
    header = (
        f"{'data':<11} {'k':>2}  {'MLP':>13}  {'params':>6}  {'loss':>6}  {'outliers':>8}  {'SLQ count':>9}  "
        f"{'lambda_1':>8}  {'bulk top':>8}  {'gap':>5}  {'next':>5}  {'trace +- s.e.':>13}  {'bulk trace':>10}  "
        f"{'near 0':>6}  {'residual':>8}  {'time s':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['data']:<11} {r['k']:>2}  {r['mlp']:>13}  {r['params']:>6}  {r['loss']:>6.4f}  "
            f"{r['outliers']:>8}  {r['slq']:>9.2f}  {r['lambda_1']:>8.3f}  {r['bulk_top']:>8.4f}  "
            f"{r['gap']:>5.2f}  {r['runner_up']:>5.2f}  {r['trace']:>13}  {r['bulk_trace']:>10.2f}  "
            f"{r['near_zero']:>6.3f}  {r['residual']:>8.1e}  {r['seconds']:>6.1f}"
        )
    if skipped:
        print(skipped)
    if out is not None:
        cols = min(4, len(spectra) + 1)
        nrows = -(-(len(spectra) + 1) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.5 * nrows), squeeze=False)
        axes = axes.ravel()
        for ax in axes[len(spectra) + 1 :]:
            ax.axis("off")
        for ax, r, spec in zip(axes, rows, spectra):
            spec.plot(ax)
            ax.set_title(f"{r['data']} {r['mlp']}, loss {r['loss']:.3f}: {r['outliers']} outliers", fontsize=9)
        last = axes[len(spectra)]
        for r, spec in zip(rows, spectra):
            label = f"{r['data']} {r['mlp']}, loss {r['loss']:.3f}"
            last.semilogy(np.arange(1, len(spec.eigenvalues) + 1), spec.eigenvalues, ".-", label=label)
        for k in sorted({r["k"] for r in rows}):
            last.axvline(k - 0.5, color="k", ls=":", lw=0.8)
        last.set_xlabel("index i")
        last.set_ylabel("lambda_i (top 20)")
        last.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "sagun_real_data.png", dpi=120)
        plt.close(fig)
    return rows


class DiagonalModule(torch.nn.Module):
    """The torch twin of ``DiagonalNetwork`` at a point, for ``stability_check``."""

    def __init__(self, w):
        super().__init__()
        d = len(w) // 2
        self.u = torch.nn.Parameter(torch.from_numpy(w[:d].copy()))
        self.v = torch.nn.Parameter(torch.from_numpy(w[d:].copy()))

    def forward(self, X):
        return X @ (self.u * self.u - self.v * self.v)


def half_mse(model, batch):
    X, y = batch
    r = model(X) - y
    return 0.5 * (r * r).mean()


def wu_su(etas, seeds, steps, out):
    """Batch-1 SGD on the diagonal network at each eta and seed; rows and the figure."""
    rows = []
    for eta in etas:
        for seed in range(seeds):
            X, y, _ = diagonal_network_data(20, 40, 3, seed=seed)
            net = DiagonalNetwork(X, y)
            w = net.sgd(net.init(0.5), eta, steps, seed=seed)
            loss = net.loss(w)
            if not loss <= CONVERGED:
                rows.append((eta, seed, loss, None, None))
                continue
            check = stability_check(DiagonalModule(w), half_mse, (torch.from_numpy(X), torch.from_numpy(y)), eta)
            rows.append((eta, seed, loss, net.gauss_newton_trace(w), check))
    print(f"(b) Wu & Su: diagonal linear network (n = 20, d = 40), batch-1 SGD, {steps} steps")
    print(
        f"{'eta':>6}  {'seed':>4}  {'final loss':>10}  {'tr(H)':>7}  {'Hutchinson':>15}  {'2/eta':>7}  "
        f"{'eta tr/2':>8}  {'eta lmax/2':>10}"
    )
    print("-" * 82)
    for eta, seed, loss, trace, check in rows:
        if trace is None:
            print(f"{eta:>6}  {seed:>4}  {loss:>10.1e}  diverged")
            continue
        hutch = f"{check['trace']:.1f} +- {check['trace_stderr']:.1f}"
        print(
            f"{eta:>6}  {seed:>4}  {loss:>10.1e}  {trace:>7.2f}  {hutch:>15}  {2 / eta:>7.1f}  "
            f"{eta * trace / 2:>8.3f}  {check['eta_lambda_max_over_2']:>10.3f}"
        )
    if out is not None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        done = [(eta, trace) for eta, _, _, trace, _ in rows if trace is not None]
        ax.plot([e for e, _ in done], [t for _, t in done], "o", label="tr(H) at convergence")
        grid = np.geomspace(min(etas), max(etas), 100)
        ax.plot(grid, 2 / grid, "k--", label="2 / eta")
        diverged = [eta for eta, _, _, trace, _ in rows if trace is None]
        if diverged:
            ax.plot(diverged, [2 / eta for eta in diverged], "x", color="C3", ms=9, label="diverged (one per seed)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("learning rate eta")
        ax.set_ylabel("tr(H)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "wu_su_trace.png", dpi=120)
        plt.close(fig)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a smoke run (under 30 s)")
    parser.add_argument("--out", type=Path, help="write the PNG figures here")
    parser.add_argument("--part", choices=("a", "b", "c"), action="append", help="run only these parts (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small products: threads only contend on a shared machine
    parts = args.part or ["a", "b", "c"]
    cfg = SMALL if args.small else FULL
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if "a" in parts:
        sagun([int(k) for k in cfg["classes"].split(",")], cfg["n"], cfg["hidden"], cfg["train_steps"], args.out)
        print()
    if "b" in parts:
        wu_su([float(e) for e in cfg["etas"].split(",")], cfg["seeds"], cfg["sgd_steps"], args.out)
        print()
    if "c" in parts:
        widths = [int(h) for h in cfg["widths"].split(",")]
        sagun_real(
            widths,
            cfg["subset"],
            cfg["low_loss_width"],
            cfg["mnist"],
            cfg["probes"],
            cfg["slq_steps"],
            cfg["target_loss"],
            args.out,
        )
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
