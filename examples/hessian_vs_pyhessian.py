"""Top eigenvalue, trace and spectral density of a small MLP's Hessian: optkit against PyHessian, both
against the exact values of the dense Hessian.

The model: a 64-h-10 tanh MLP on scikit-learn's digits (pixels / 16), trained briefly with SGD
(momentum 0.9, seeded), in float32. The Hessian is that of the mean cross-entropy over one batch
of ``--batch`` digits (a seeded subset of the training data), with respect to all the weights
(64 h + h + 10 h + 10 of them: 2410 at h = 32). Both libraries see the SAME float32 model and the
SAME batch; the exact reference is the dense Hessian of a float64 copy (``torch.func``: one
forward-over-reverse HVP per unit vector), and its ``eigvalsh``.

Budgets (Hessian-vector products, HVPs), matched per repeat:

- ``lambda_max``: PyHessian's power iteration with its defaults (``maxIter=100, tol=1e-3``: it
  stops when two consecutive Rayleigh quotients agree to 1e-3 relatively); optkit's Lanczos
  (``top_eigenpairs``, full reorthogonalisation, ``tol=1e-8``) gets ``max_steps`` = the HVPs
  PyHessian used (one product per step; the Ritz residual is computed from the kept products).
- ``lambda_max (own stop)``: each library's own stop rule at 1e-3: PyHessian's power iteration
  as above (the same runs), optkit's Lanczos with ``tol=1e-3`` on the relative Ritz residual
  estimate (no step budget).
- ``trace (stop rule)``: PyHessian's Hutchinson with its defaults (``maxIter=100, tol=1e-3``: it
  stops when the running mean moves by < 1e-3 relatively); optkit's Hutchinson the same number
  of Rademacher probes.
- ``trace (N probes)``: PyHessian forced to ``N`` probes (``tol=0``) against optkit's Hutch++ with
  ``N`` matvecs.
- ``density W1``: SLQ with ``--slq-probes`` probes of ``--slq-steps`` Lanczos steps each for both
  (PyHessian's ``density(iter, n_v)``); the value is the Wasserstein-1 distance of the weighted
  Ritz nodes to the exact eigenvalues (uniform weights), the error column that distance over the
  spectral width.

Each quantity is computed ``--repeats`` times with seeds 0, 1, ... (PyHessian draws from torch's
global generator, seeded before each call); every time includes building the Hessian (PyHessian's
constructor: forward and backward with ``create_graph``; optkit's ``from_model``). The table gives
the median value, the median relative error, the median HVPs and the median time; ``ratio`` is
optkit's time over PyHessian's (the anchor). optkit's products are taken by ``--method``
(``HessianOperator.from_model``'s: the retained double-backward graph by default, as PyHessian's).

Two shims keep PyHessian 0.1 running and correct on torch 2.x: its ``density`` calls ``torch.eig``
(a stub that raises since torch 2.0), supplied here as ``torch.linalg.eigh`` on its symmetric tridiagonal
matrix; and its constructor accumulates ``loss.backward`` into ``.grad``, so the gradients are
cleared before each construction (otherwise a second construction on the same model measures
twice the Hessian: see the checks printed after the table).

Run::

    python examples/hessian_vs_pyhessian.py            # h = 32 (2410 weights), batch 1000, 5 repeats
    python examples/hessian_vs_pyhessian.py --small    # smoke run: h = 16, batch 300, 2 repeats
    python examples/hessian_vs_pyhessian.py --method forward-over-reverse   # optkit's other product
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import statistics
import time

import numpy as np
import pyhessian
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance
from sklearn.datasets import load_digits

from optkit._table import fmt_float, fmt_time, text_table
from optkit.hessian import HessianOperator
from optkit.spectral import hutchinson_trace, spectral_density, top_eigenpairs

_PYH = importlib.import_module("pyhessian.hessian")  # the module (the package re-exports the class)
FULL = {"hidden": 32, "batch": 1000, "epochs": 20, "repeats": 5, "slq_probes": 5, "slq_steps": 80, "probes": 100}
SMALL = {"hidden": 16, "batch": 300, "epochs": 5, "repeats": 2, "slq_probes": 2, "slq_steps": 40, "probes": 30}


def _eig_shim(matrix: torch.Tensor, eigenvectors: bool = True):
    """``torch.eig`` (a stub raising RuntimeError since torch 2.0) for PyHessian's symmetric tridiagonal matrix."""
    values, vectors = torch.linalg.eigh(matrix)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


class _HVPCounter:
    """Counts PyHessian's single-batch Hessian-vector products (its ``hessian_vector_product``)."""

    def __init__(self):
        self.calls = 0
        self._hvp = _PYH.hessian_vector_product

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._hvp(*args, **kwargs)


def digits_data(batch: int, seed: int):
    """All digits as float32 ``(x, y)`` for training, and a seeded subset of ``batch`` of them."""
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    if not 1 <= batch <= len(y):
        raise ValueError(f"batch must be in [1, {len(y)}], got {batch}")
    subset = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:batch]
    return (x, y), (x[subset], y[subset])


def trained_mlp(data, hidden: int, epochs: int, seed: int) -> torch.nn.Module:
    """A 64-hidden-10 tanh MLP trained by SGD (lr 0.05, momentum 0.9, minibatches of 32)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = data
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(32):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model


def exact_eigenvalues(model: torch.nn.Module, batch) -> np.ndarray:
    """Ascending eigenvalues of the dense float64 Hessian of the batch's mean cross-entropy."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = [p.detach().double() for p in model.parameters() if p.requires_grad]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])
    x, y = batch[0].double(), batch[1]

    def loss(w):
        pieces = dict(zip(names, (piece.view(shape) for piece, shape in zip(w.split(sizes), shapes))))
        return F.cross_entropy(torch.func.functional_call(model, pieces, (x,)), y)

    def hvp(v):
        return torch.func.jvp(torch.func.grad(loss), (flat,), (v,))[1]

    dense = torch.func.vmap(hvp, chunk_size=128)(torch.eye(flat.numel(), dtype=torch.float64))
    asymmetry = (dense - dense.T).abs().max() / dense.abs().max()
    if asymmetry > 1e-10:
        raise RuntimeError(f"the dense Hessian is not symmetric: relative asymmetry {float(asymmetry):.1e}")
    return torch.linalg.eigvalsh((dense + dense.T) / 2).numpy()


def _clear_grads(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def pyhessian_runs(model, batch, seed: int, sizes: dict, cuda: bool = False) -> dict:
    """PyHessian's estimates on ``batch``: ``{quantity: (value, hvps, seconds, extra)}``; ``cuda``
    is PyHessian's flag (the model must already be on the GPU; it moves the batch itself)."""
    counter = _HVPCounter()
    _PYH.hessian_vector_product = counter
    torch_eig, torch.eig = torch.eig, _eig_shim
    out = {}

    def timed(call):
        _clear_grads(model)
        torch.manual_seed(seed)
        counter.calls = 0
        start = time.perf_counter()
        result = call(pyhessian.hessian(model, F.cross_entropy, data=batch, cuda=cuda))
        if cuda:
            torch.cuda.synchronize()
        return result, counter.calls, time.perf_counter() - start

    try:
        (values, _), hvps, seconds = timed(lambda h: h.eigenvalues(top_n=1))
        out["lambda_max"] = (values[0], hvps, seconds, None)
        out["lambda_max (own stop)"] = out["lambda_max"]  # its default stop rule is tol=1e-3
        samples, hvps, seconds = timed(lambda h: h.trace())
        stderr = float(np.std(samples, ddof=1) / np.sqrt(len(samples)))
        out["trace (stop rule)"] = (float(np.mean(samples)), hvps, seconds, stderr)
        samples, hvps, seconds = timed(lambda h: h.trace(maxIter=sizes["probes"], tol=0.0))
        out[f"trace ({sizes['probes']} probes)"] = (float(np.mean(samples)), hvps, seconds, None)
        (nodes, weights), hvps, seconds = timed(lambda h: h.density(iter=sizes["slq_steps"], n_v=sizes["slq_probes"]))
        out["density W1"] = (None, hvps, seconds, (np.asarray(nodes), np.asarray(weights)))
    finally:
        _PYH.hessian_vector_product = counter._hvp
        torch.eig = torch_eig
        _clear_grads(model)
    return out


def optkit_runs(model, batch, seed: int, sizes: dict, budgets: dict, method: str) -> dict:
    """optkit's estimates on ``batch`` with PyHessian's budgets: ``{quantity: (value, hvps, seconds, extra)}``."""

    def loss_fn(net, data):
        return F.cross_entropy(net(data[0]), data[1])

    def timed(call):
        start = time.perf_counter()
        result = call(HessianOperator.from_model(model, loss_fn, [batch], method=method))
        if batch[0].is_cuda:
            torch.cuda.synchronize()
        return result, time.perf_counter() - start

    out = {}
    # one product per Lanczos step (the Ritz residual reuses them): PyHessian's HVPs in all
    steps = budgets["lambda_max"]
    pairs, seconds = timed(lambda op: top_eigenpairs(op, k=1, max_steps=steps, seed=seed))
    out["lambda_max"] = (float(pairs.values[0]), pairs.steps, seconds, None)
    pairs, seconds = timed(lambda op: top_eigenpairs(op, k=1, tol=1e-3, seed=seed))
    out["lambda_max (own stop)"] = (float(pairs.values[0]), pairs.steps, seconds, None)
    estimate, seconds = timed(lambda op: hutchinson_trace(op, probes=budgets["trace (stop rule)"], seed=seed))
    out["trace (stop rule)"] = (estimate.value, estimate.probes, seconds, None)
    many = f"trace ({sizes['probes']} probes)"
    estimate, seconds = timed(lambda op: hutchinson_trace(op, probes=sizes["probes"], method="hutch++", seed=seed))
    out[many] = (estimate.value, estimate.probes, seconds, None)
    probes, steps = sizes["slq_probes"], sizes["slq_steps"]
    density, seconds = timed(lambda op: spectral_density(op, probes=probes, steps=steps, seed=seed))
    out["density W1"] = (None, probes * steps, seconds, (np.asarray(density.nodes), np.asarray(density.weights)))
    return out


def wasserstein_to_exact(nodes: np.ndarray, weights: np.ndarray, exact: np.ndarray) -> float:
    """W1 between the SLQ measure (each probe's weights sum to 1; probes averaged) and the exact spectrum."""
    weights = np.clip(weights, 0.0, None)
    return wasserstein_distance(nodes.ravel(), exact, u_weights=weights.ravel() / weights.sum())


def ritz_copies(nodes: np.ndarray, top: float, rel: float = 1e-3) -> list[int]:
    """Per SLQ probe, the Ritz values within ``rel`` (relative) of the exact top eigenvalue."""
    return [int(np.sum(np.abs(row - top) <= rel * abs(top))) for row in nodes]


def summarise(runs: list[dict], exact: dict, width: float) -> dict:
    """Median value, relative error (W1 / width for the density), HVPs and seconds per quantity."""
    table = {}
    for quantity in runs[0]:
        values, errors = [], []
        for run in runs:
            value, _, _, extra = run[quantity]
            if isinstance(extra, tuple):
                value = wasserstein_to_exact(*extra, exact["eigenvalues"])
                errors.append(value / width)
            else:
                errors.append(abs(value - exact[quantity]) / abs(exact[quantity]))
            values.append(value)
        table[quantity] = (
            statistics.median(values),
            statistics.median(errors),
            statistics.median(run[quantity][1] for run in runs),
            statistics.median(run[quantity][2] for run in runs),
        )
    return table


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="smoke run: " + str(SMALL))
    parser.add_argument("--hidden", type=int, help="hidden width h")
    parser.add_argument("--batch", type=int, help="digits in the Hessian's batch (of 1797)")
    parser.add_argument("--epochs", type=int, help="SGD epochs before the analysis")
    parser.add_argument("--repeats", type=int, help="seeds per quantity (medians)")
    parser.add_argument("--slq-probes", type=int, help="SLQ probes (both libraries)")
    parser.add_argument("--slq-steps", type=int, help="Lanczos steps per SLQ probe (both libraries)")
    parser.add_argument("--probes", type=int, help="probes of the fixed-budget trace row")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data subset and the training")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both libraries)")
    parser.add_argument(
        "--method",
        choices=["double-backward", "forward-over-reverse"],
        default="double-backward",
        help="optkit's Hessian-vector products (HessianOperator.from_model's method)",
    )
    args = parser.parse_args(argv)
    sizes = dict(SMALL if args.small else FULL)
    sizes.update({key: value for key in sizes if (value := getattr(args, key)) is not None})
    if min(sizes.values()) < 1 or args.threads < 1:
        parser.error("sizes, --repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()

    train, batch = digits_data(sizes["batch"], args.seed)
    model = trained_mlp(train, sizes["hidden"], sizes["epochs"], args.seed)
    with torch.no_grad():
        loss = float(F.cross_entropy(model(batch[0]), batch[1]))
        accuracy = float((model(train[0]).argmax(1) == train[1]).float().mean())
    start = time.perf_counter()
    eigenvalues = exact_eigenvalues(model, batch)
    exact_seconds = time.perf_counter() - start
    probes_row = f"trace ({sizes['probes']} probes)"
    exact = {
        "lambda_max": float(eigenvalues[-1]),
        "lambda_max (own stop)": float(eigenvalues[-1]),
        "trace (stop rule)": float(eigenvalues.sum()),
        probes_row: float(eigenvalues.sum()),
        "eigenvalues": eigenvalues,
    }
    width = float(eigenvalues[-1] - eigenvalues[0])

    ours, theirs = [], []
    for seed in range(sizes["repeats"]):
        theirs.append(pyhessian_runs(model, batch, seed, sizes))
        budgets = {quantity: run[1] for quantity, run in theirs[-1].items()}
        ours.append(optkit_runs(model, batch, seed, sizes, budgets, args.method))
    pyh, opt = summarise(theirs, exact, width), summarise(ours, exact, width)

    n = eigenvalues.size
    heading = (
        f"digits MLP 64-{sizes['hidden']}-10 ({n} weights), batch {sizes['batch']}, float32, "
        f"threads={args.threads}, median of {sizes['repeats']}, optkit method={args.method}  (anchor: pyhessian)"
    )
    headers = [
        "quantity",
        "exact",
        "pyhessian",
        "rel err",
        "HVPs",
        "time",
        "optkit",
        "rel err",
        "HVPs",
        "time",
        "ratio",
    ]
    rows = []
    for quantity in pyh:
        reference = "0" if quantity == "density W1" else fmt_float(exact[quantity], 6)
        (pv, pe, ph, pt), (ov, oe, oh, ot) = pyh[quantity], opt[quantity]
        rows.append(
            [
                quantity,
                reference,
                fmt_float(pv, 6),
                fmt_float(pe, 2),
                fmt_float(ph),
                fmt_time(pt),
                fmt_float(ov, 6),
                fmt_float(oe, 2),
                fmt_float(oh),
                fmt_time(ot),
                f"{ot / pt:.2f}",
            ]
        )
    print(heading)
    print(text_table(headers, rows, right=[False] + [True] * 10))
    print(
        f"density: {sizes['slq_probes']} probes x {sizes['slq_steps']} steps; rel err = W1 / spectral width "
        f"({width:.4g}); exact spectrum [{eigenvalues[0]:.4g}, {eigenvalues[-1]:.4g}], dense Hessian in "
        f"{exact_seconds:.1f} s"
    )
    print(f"model: batch loss {loss:.4f}, training accuracy {accuracy:.3f}")

    # PyHessian's defects, measured
    top_gap = float(eigenvalues[-1] - eigenvalues[-2]) / float(eigenvalues[-1])
    print(f"relative gap (lambda_1 - lambda_2) / lambda_1 = {top_gap:.3g}")
    stop = [run["trace (stop rule)"] for run in theirs]
    print(
        "pyhessian trace stop rule (tol=1e-3 on the running mean): probes "
        f"{[hvps for _, hvps, _, _ in stop]}, relative error "
        f"{[round(abs(v - exact['trace (stop rule)']) / exact['trace (stop rule)'], 4) for v, _, _, _ in stop]}, "
        f"relative standard error of its samples {[round(se / abs(v), 4) for v, _, _, se in stop]}"
    )
    exact_copies = ritz_copies(eigenvalues[None, :], exact["lambda_max"])[0]
    pyh_copies = ritz_copies(theirs[0]["density W1"][3][0], exact["lambda_max"])
    opt_copies = ritz_copies(ours[0]["density W1"][3][0], exact["lambda_max"])
    print(
        f"Ritz values within 1e-3 of lambda_max per SLQ probe (exact multiplicity {exact_copies}): "
        f"pyhessian {pyh_copies}, optkit {opt_copies}"
    )
    _clear_grads(model)
    first = pyhessian.hessian(model, F.cross_entropy, data=batch, cuda=False)
    second = pyhessian.hessian(model, F.cross_entropy, data=batch, cuda=False)  # .grad not cleared in between
    torch.manual_seed(0)
    doubled = second.eigenvalues(maxIter=300, tol=1e-6)[0][0] / exact["lambda_max"]
    del first
    _clear_grads(model)
    print(f"a second pyhessian.hessian on the same model without zero_grad: lambda_max / exact = {doubled:.3f}")
    version = importlib.metadata.version("pyhessian")
    print(
        f"pyhessian {version}, torch {torch.__version__}, {len(os.sched_getaffinity(0))} cores; "
        f"wall time {time.perf_counter() - wall:.1f} s"
    )
    return {"exact": exact, "pyhessian": pyh, "optkit": opt}


if __name__ == "__main__":
    main()
