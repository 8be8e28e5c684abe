"""Curvature analysis of torch models: Hessian spectra, the SGD stability check, alignment penalties.

These are tools, not solvers: they read the Hessian of a model's loss through
:class:`optkit.hessian.HessianOperator` and the estimators of :mod:`optkit.spectral`, and need no
problem registry, so they live in the core.

- :func:`hessian_spectrum` (Sagun et al.): top eigenvalues by Lanczos, Hutchinson trace and the
  stochastic Lanczos quadrature (SLQ) density, with the outliers counted above the bulk;
- :func:`stability_check` (Wu & Su): ``eta * tr(H) / 2`` (SGD's linear stability needs
  ``tr(H) <= 2 / eta``) and ``eta * lambda_max / 2`` (GD's needs ``lambda_max <= 2 / eta``);
- :func:`hgp_penalty` and :func:`hutchinson_alignment_penalty` (Hemati et al.): differentiable
  Hessian-alignment penalties across training environments, for ``loss.backward()``.

torch is imported on first use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import optional_import, to_numpy
from .validation import check_int, check_nonnegative, check_positive

__all__ = [
    "HessianSpectrum",
    "hessian_diagonal_estimate",
    "hessian_spectrum",
    "hgp_penalty",
    "hutchinson_alignment_penalty",
    "stability_check",
]


def _torch() -> Any:
    return optional_import("torch", "optkit.analysis")


def _check_batches(batches: Any) -> list:
    if not isinstance(batches, Sequence) or isinstance(batches, str | bytes) or not batches:
        raise TypeError(f"batches must be a non-empty sequence of batches, got {type(batches).__name__}")
    return list(batches)


@dataclass(frozen=True)
class HessianSpectrum:
    """What :func:`hessian_spectrum` measured.

    Attributes
    ----------
    eigenvalues : ndarray (top_k,), float64
        The largest eigenvalues (Lanczos Ritz values), descending.
    residuals : ndarray (top_k,), float64
        Their Ritz residuals ``||H v - theta v||`` (the error measure of each eigenvalue).
    trace, trace_stderr : float
        Hutchinson's trace estimate and its standard error across probes.
    density : optkit.spectral.SpectralDensity
        The SLQ quadrature (``nodes``, ``weights``: ``(probes, steps)``).
    n : int
        The number of parameters (the Hessian's size).
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    trace: float
    trace_stderr: float
    density: Any
    n: int

    def bulk_edge(self, gap: float = 2.0) -> float:
        """The edge between the outliers and the bulk: the geometric mean of the two eigenvalues
        on either side of the widest gap (see :meth:`outliers`); the largest eigenvalue's absolute
        value times ``1 + 1e-12`` when no gap reaches ``gap``."""
        count = self._gap_count(gap)
        lam = self.eigenvalues
        if count == 0:
            return float(abs(lam[0]) * (1 + 1e-12))
        return float(math.sqrt(lam[count - 1] * lam[count]))

    def _gap_count(self, gap: float) -> int:
        check_positive("gap", gap)
        lam = self.eigenvalues
        positive = int(np.sum(lam > 0))
        if positive < 2:
            return 0
        ratios = lam[: positive - 1] / lam[1:positive]
        j = int(np.argmax(ratios))
        return j + 1 if ratios[j] >= gap else 0

    def outliers(self, threshold: float | None = None, *, gap: float = 2.0) -> int:
        """The number of eigenvalues separated from the bulk.

        Parameters
        ----------
        threshold : float, optional
            Given: the number of top eigenvalues above it.
        gap : float, default 2
            Without ``threshold``, the rule: with ``lambda_1 >= ... >= lambda_m > 0`` the positive
            top eigenvalues, the widest ratio ``lambda_j / lambda_(j+1)`` (``j < m``) picks ``j``;
            the outliers are ``lambda_1 .. lambda_j`` when that ratio is at least ``gap``, none
            otherwise. Away from the edge consecutive top eigenvalues differ by less than a factor 2
            (at most 1.46, against 2.13 to 2.90 across the edge, on the Gaussian-mixture MLPs of
            ``examples/hessian_analysis.py``); the bulk holds the rest. ``top_k`` must exceed the count for the gap to be seen (a count of
            ``top_k - 1`` means: raise ``top_k``). :meth:`count_above` gives the density's own
            count above :meth:`bulk_edge`, a cross-check.

        Returns
        -------
        int
        """
        if threshold is not None:
            return int(np.sum(self.eigenvalues > float(threshold)))
        return self._gap_count(gap)

    def count_above(self, x: float) -> float:
        """The SLQ density's estimate of the number of eigenvalues above ``x``: ``n`` times the
        probe-averaged quadrature weight of the nodes above ``x``. When the quadrature separates the
        eigenvalues above ``x`` from the rest (Lanczos resolves the extreme ones first), each
        probe's weight above ``x`` is the squared norm of its unit probe's projection on their
        eigenvectors, so the estimate is unbiased, with a relative standard error of about
        ``sqrt(2 / (probes * count))`` (Gaussian probes; Rademacher ones: at most that)."""
        nodes = np.asarray(to_numpy(self.density.nodes), dtype=float)
        weights = np.asarray(to_numpy(self.density.weights), dtype=float)
        return float(self.n * np.sum(weights * (nodes > x)) / nodes.shape[0])

    def plot(self, ax: Any = None, *, sigma: float | None = None, gap: float = 2.0) -> Any:
        """Draw the SLQ density on a log scale with the top eigenvalues marked.

        The density is smoothed by a Gaussian of width ``sigma`` (default: 1 % of the spectrum's
        width) on a grid over the support; the top eigenvalues are vertical lines, the outliers in
        red, the bulk's in grey. Returns the axes.
        """
        plt = optional_import("matplotlib.pyplot", "HessianSpectrum.plot")
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        low, high = self.density.support
        high = max(high, float(self.eigenvalues[0]))
        width = max(high - low, 1e-12)
        sigma = 0.01 * width if sigma is None else check_positive("sigma", sigma)
        grid = np.linspace(low - 5 * sigma, high + 5 * sigma, 2000)
        dens = np.asarray(to_numpy(self.density.density(grid, sigma)), dtype=float)
        ax.semilogy(grid, np.maximum(dens, 1e-12), color="C0", label="SLQ density")
        count = self.outliers(gap=gap)
        for i, lam in enumerate(self.eigenvalues):
            ax.axvline(lam, color="C3" if i < count else "0.6", lw=0.8, alpha=0.8)
        ax.set_ylim(bottom=max(1e-8, 1e-3 * dens.max() / max(self.n, 1)))
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        ax.set_title(f"{count} outliers (red) of the top {len(self.eigenvalues)}, n = {self.n}")
        return ax


def hessian_spectrum(
    model: Any,
    loss_fn: Any,
    batches: Any,
    *,
    top_k: int = 20,
    probes: int = 10,
    steps: int = 80,
    seed: int = 0,
    kind: str = "hessian",
    outputs_fn: Any = None,
    loss_on_outputs: Any = None,
    method: str = "double-backward",
) -> HessianSpectrum:
    """The Hessian (or Gauss-Newton) spectrum of a model's loss: top eigenvalues, trace and SLQ density.

    Parameters
    ----------
    model : torch.nn.Module
    loss_fn : callable
        ``loss_fn(model, batch) -> scalar tensor``; the Hessian is that of its mean over ``batches``
        with respect to all trainable parameters (flattened), on the model's device and dtype.
    batches : sequence
        The batches (one batch: ``[batch]``).
    top_k : int, default 20
        Eigenvalues computed by Lanczos (with reorthogonalisation).
    probes, steps : int
        Rademacher probes of the SLQ density and of the trace, Lanczos steps per SLQ probe.
    seed : int
    kind : {"hessian", "ggn"}
        ``"ggn"``: the spectrum of the generalised Gauss-Newton matrix (the Fisher for the
        cross-entropy of logits) instead, from ``outputs_fn(model, batch)`` and
        ``loss_on_outputs(outputs, batch)`` (``loss_fn`` may then be None); Sagun et al. trace
        the outliers to this part of the Hessian.
    outputs_fn, loss_on_outputs : callable, optional
        For ``kind="ggn"``; see :meth:`optkit.hessian.HessianOperator.from_model`.
    method : {"double-backward", "forward-over-reverse"}
        How Hessian-vector products are taken (``from_model``'s ``method``).

    Returns
    -------
    HessianSpectrum
    """
    top_k = check_int("top_k", top_k, minimum=1)
    probes = check_int("probes", probes, minimum=1)
    steps = check_int("steps", steps, minimum=1)
    batches = _check_batches(batches)
    from .hessian import HessianOperator
    from .spectral import hutchinson_trace, spectral_density, top_eigenpairs

    H = HessianOperator.from_model(
        model, loss_fn, batches, kind=kind, method=method, outputs_fn=outputs_fn, loss_on_outputs=loss_on_outputs
    )
    n = H.shape[0]
    if top_k > n:
        raise ValueError(f"top_k must be at most the number of parameters {n}, got {top_k}")
    pairs = top_eigenpairs(H, k=top_k, seed=seed)
    trace = hutchinson_trace(H, probes, seed=seed)
    density = spectral_density(H, probes, min(steps, n), seed=seed)
    return HessianSpectrum(
        eigenvalues=np.asarray(to_numpy(pairs.values), dtype=float),
        residuals=np.asarray(to_numpy(pairs.residuals), dtype=float),
        trace=float(trace.value),
        trace_stderr=float(trace.stderr),
        density=density,
        n=n,
    )


def stability_check(
    model: Any,
    loss_fn: Any,
    batch: Any,
    eta: float,
    *,
    probes: int = 100,
    seed: int = 0,
    method: str = "double-backward",
) -> dict:
    """Linear-stability numbers of (S)GD with learning rate ``eta`` at the model's current point.

    Wu & Su: a minimum is linearly stable for SGD only if ``tr(H) <= 2 / eta``; for GD only if
    ``lambda_max(H) <= 2 / eta``. The two ratios below are therefore at most 1 at a stable
    minimum (the SGD one for any batch size; the trace bound is the batch-1 bound, the loosest).

    Parameters
    ----------
    model : torch.nn.Module
    loss_fn : callable
        ``loss_fn(model, batch) -> scalar tensor`` (the mean loss over the batch).
    batch : Any
        The data the Hessian is taken on (the full training set for the paper's statement).
    eta : float
        The learning rate, ``> 0``.
    probes : int, default 100
        Hutchinson probes for the trace.
    seed : int
    method : {"double-backward", "forward-over-reverse"}
        How Hessian-vector products are taken (``HessianOperator.from_model``'s ``method``).

    Returns
    -------
    dict
        ``trace``, ``trace_stderr`` (standard error across probes), ``lambda_max`` (Lanczos),
        ``lambda_max_residual`` (its Ritz residual), ``eta_trace_over_2`` (``eta * tr(H) / 2``),
        ``eta_lambda_max_over_2`` (``eta * lambda_max / 2``); floats.
    """
    eta = check_positive("eta", eta)
    probes = check_int("probes", probes, minimum=1)
    from .hessian import HessianOperator
    from .spectral import hutchinson_trace, top_eigenpairs

    H = HessianOperator.from_model(model, loss_fn, [batch], method=method)
    trace = hutchinson_trace(H, probes, seed=seed)
    top = top_eigenpairs(H, k=1, seed=seed)
    lam = float(np.asarray(to_numpy(top.values), dtype=float)[0])
    return {
        "trace": float(trace.value),
        "trace_stderr": float(trace.stderr),
        "lambda_max": lam,
        "lambda_max_residual": float(np.asarray(to_numpy(top.residuals), dtype=float)[0]),
        "eta_trace_over_2": eta * float(trace.value) / 2,
        "eta_lambda_max_over_2": eta * lam / 2,
    }


def _check_penalty_args(env_losses: Any, params: Any, alpha: float, beta: float) -> tuple[list, list]:
    torch = _torch()
    if not isinstance(env_losses, Sequence) or len(env_losses) < 2:
        raise ValueError("env_losses must be a sequence of at least two scalar loss tensors (one per environment)")
    for i, loss in enumerate(env_losses):
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"env_losses[{i}] must be a scalar tensor")
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise TypeError("params must be a non-empty sequence of tensors that require grad")
    check_nonnegative("alpha", alpha)
    check_nonnegative("beta", beta)
    return list(env_losses), params


def _flat_grad(loss: Any, params: list) -> Any:
    """The gradient of ``loss`` as one flat tensor with its graph (zero where ``loss`` does not
    depend on a parameter, or is constant: the Hessian of a linear loss is zero)."""
    torch = _torch()
    if not loss.requires_grad:
        return torch.cat([torch.zeros_like(p).reshape(-1) for p in params])
    grads = torch.autograd.grad(loss.reshape(()), params, create_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def _spread(vectors: list, reference: Any = None) -> Any:
    """``mean_e ||v_e - reference||^2`` of a list of flat tensors; ``reference`` defaults to ``mean_e v_e``."""
    stacked = _torch().stack(vectors)
    reference = stacked.mean(0) if reference is None else reference
    return ((stacked - reference) ** 2).sum(1).mean()


def hgp_penalty(env_losses: Sequence, params: Any, alpha: float, beta: float) -> Any:
    """The Hessian-gradient-product alignment penalty (HGP, Hemati et al. 2023).

    ``alpha * mean_e ||H_e g_e - H g||^2 + beta * mean_e ||g_e - g||^2``, with ``g_e``, ``H_e`` the
    gradient and Hessian of environment ``e``'s loss with respect to ``params``, and ``g``, ``H``
    those of the mean loss over environments (``g = mean_e g_e``; ``H g`` is not ``mean_e H_e g_e``).
    Every ``H g`` is ``||g|| * grad ||g|| = grad (||g||^2 / 2)``: one double backward, no explicit
    Hessian-vector product. The whole expression is differentiated, the reference terms ``H g``
    and ``g`` included (as Hemati et al.'s colored-MNIST scripts do; their DomainBed ``HGP`` class
    detaches them, which changes the gradient, not the value).

    Parameters
    ----------
    env_losses : sequence of scalar tensors
        One loss per environment (at least two), built with autograd on ``params``.
    params : tensor or sequence of tensors
        The parameters the alignment is measured on (Hemati et al.: the classifier head).
    alpha, beta : float
        Weights of the Hessian-gradient and the gradient terms, ``>= 0``.

    Returns
    -------
    torch.Tensor
        A differentiable scalar: add it to the training loss and call ``backward()``.
    """
    env_losses, params = _check_penalty_args(env_losses, params, alpha, beta)
    grads = [_flat_grad(loss, params) for loss in env_losses]
    hgps = [_flat_grad(0.5 * (g * g).sum(), params) for g in grads]
    mean_grad = _torch().stack(grads).mean(0)
    mean_hgp = _flat_grad(0.5 * (mean_grad * mean_grad).sum(), params)
    return alpha * _spread(hgps, mean_hgp) + beta * _spread(grads, mean_grad)


def hessian_diagonal_estimate(
    loss: Any, params: Any, *, probes: int = 100, seed: int = 0, create_graph: bool = True
) -> Any:
    """Hutchinson's estimate of the Hessian diagonal of ``loss``: ``mean_p z_p * (H z_p)``.

    Parameters
    ----------
    loss : scalar tensor
    params : tensor or sequence of tensors
    probes : int, default 100
        Rademacher probes ``z_p`` (the same ``seed`` gives the same probes).
    seed : int
    create_graph : bool, default True
        Keep the graph, so the estimate is differentiable (for a penalty).

    Returns
    -------
    torch.Tensor (n,)
        The flattened diagonal estimate, in the parameters' dtype and device; its error falls as
        ``1 / sqrt(probes)`` (entry ``i``'s variance is ``sum_(j != i) H_ij^2 / probes``).
    """
    torch = _torch()
    probes = check_int("probes", probes, minimum=1)
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("loss must be a scalar tensor")
    estimate = _diagonal_from_grad(_flat_grad(loss, params), params, probes, seed)
    return estimate if create_graph else estimate.detach()


def _diagonal_from_grad(g: Any, params: list, probes: int, seed: int) -> Any:
    torch = _torch()
    gen = torch.Generator(device=g.device).manual_seed(int(seed))
    total = torch.zeros_like(g)
    for _ in range(probes):
        z = torch.randint(0, 2, g.shape, generator=gen, device=g.device).to(g.dtype) * 2 - 1
        total = total + z * _flat_grad((g * z).sum(), params)
    return total / probes


def hutchinson_alignment_penalty(
    env_losses: Sequence, params: Any, alpha: float, beta: float, probes: int = 100, seed: int = 0
) -> Any:
    """The Hutchinson Hessian-alignment penalty (Hemati et al. 2023).

    ``alpha * mean_e ||D_e - mean_e' D_e'||^2 + beta * mean_e ||g_e - mean_e' g_e'||^2`` with
    ``D_e`` Hutchinson's estimate of ``diag(H_e)`` (:func:`hessian_diagonal_estimate`, the same
    ``probes`` Rademacher vectors for every environment, so their noise partly cancels in the
    differences). Arguments and result as in :func:`hgp_penalty`; ``probes >= 1``. The probes
    are drawn from ``seed``: in a training loop pass a new seed each step (e.g. the step number),
    or every step reuses the same probes. The probes run one at a time: batching them with
    ``is_grads_batched`` measured 15x slower on a 391-weight head (150 probes).
    """
    env_losses, params = _check_penalty_args(env_losses, params, alpha, beta)
    probes = check_int("probes", probes, minimum=1)
    grads = [_flat_grad(loss, params) for loss in env_losses]
    diags = [_diagonal_from_grad(g, params, probes, seed) for g in grads]
    return alpha * _spread(diags) + beta * _spread(grads)
