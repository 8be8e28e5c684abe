"""Two curvature claims reproduced with ``optkit.analysis``: Sagun's outliers and Wu & Su's trace bound.

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

Run: ``python examples/hessian_analysis.py --out hessian-analysis`` (PNG files under ``--out``);
``--small`` for a smoke run (under 30 s).
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
from problems.curvature import DiagonalNetwork, diagonal_network_data, gaussian_mixture, mlp

FULL = {"classes": "2,3,5,7,10", "n": 1000, "hidden": 32, "train_steps": 200, "etas": "0.002,0.005,0.01,0.02,0.03,0.04"}
FULL |= {"seeds": 3, "sgd_steps": 200_000}
SMALL = {"classes": "2,5", "n": 1000, "hidden": 32, "train_steps": 200, "etas": "0.005,0.03,0.05", "seeds": 1}
SMALL |= {"sgd_steps": 40_000}
CONVERGED = 1e-20


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
    args = parser.parse_args()
    cfg = SMALL if args.small else FULL
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    classes = [int(k) for k in cfg["classes"].split(",")]
    sagun(classes, cfg["n"], cfg["hidden"], cfg["train_steps"], args.out)
    print()
    wu_su([float(e) for e in cfg["etas"].split(",")], cfg["seeds"], cfg["sgd_steps"], args.out)
    print(f"\nwall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
