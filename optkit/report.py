"""Benchmark report: a markdown table, performance profiles, convergence plots, one HTML page.

:func:`make_report` reads the ``results.csv`` and ``summary.csv`` that
:func:`optkit.bench.run_benchmark` wrote and adds, in the same directory:

``report.md``
    The summary in markdown: one section per problem, headed by the problem and its
    anchor solver, with a table of the solvers that ran on it (status, main measure,
    iterations, time, ratio to the anchor, and the message of a run that did not
    converge); then the incompatible pairs as one count inside a collapsed
    ``<details>`` element listing them by reason; then the figures.
``profile_time.png``, ``profile_iter.png``
    Dolan–Moré performance profiles of the median time and of the iterations: for each
    solver the fraction of problems it solved within a factor ``tau`` of the best
    solver on that problem. A pair that did not converge (or was skipped, or failed)
    counts as failed, i.e. costs infinity.
``conv_<problem>_<metric>.png``
    For each problem and each metric that every solver on it records in its trace: the
    metric against time (left) and against iterations, or epochs where every run records
    them (right), one line per solver (every repetition drawn, in the solver's colour);
    log-scale y for residual-like metrics.
``index.html``
    Everything above in one self-contained page (images embedded as base64 data URIs).

The anchor and ``ratio`` are :func:`optkit.bench.summarize`'s: a solver's median time
over that of the first solver of the benchmark's list whose runs on the problem completed
(returned a result not stopped by the user); skipped, failed and stopped runs have none.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never
through pyplot, so no global backend is switched and no figure is left open.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ._records import RESULT_COLUMNS, read_csv
from ._summary import ProblemBlock, block_heading, problem_blocks, skip_reasons, skipped_line, summary_cells
from ._table import markdown_table

__all__ = ["make_report", "performance_profile", "performance_ratios", "profile_costs"]

_LOG_HINTS = ("residual", "res", "norm", "gap", "err", "kkt", "viol", "subopt", "infeas", "dist")


def performance_ratios(costs: np.ndarray) -> np.ndarray:
    """Dolan–Moré performance ratios ``r[p, s] = cost[p, s] / min_s' cost[p, s']``.

    Parameters
    ----------
    costs : array of shape (n_problems, n_solvers)
        Time or iterations; ``inf``, ``nan`` or a negative value marks a failure.

    Returns
    -------
    ndarray of shape (n_problems, n_solvers)
        ``1`` for the best solver(s) of each problem (also when the best cost is 0),
        ``inf`` for failures and for any non-zero cost where the best cost is 0.
    """
    costs = np.asarray(costs, dtype=float)
    if costs.ndim != 2:
        raise ValueError(f"costs must be a 2-D (n_problems, n_solvers) array, got shape {costs.shape}")
    ok = np.isfinite(costs) & (costs >= 0)
    costs = np.where(ok, costs, np.inf)
    best = costs.min(axis=1, keepdims=True) if costs.size else costs
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = costs / best
    ratios = np.where(ok & (costs == best), 1.0, ratios)
    return np.where(ok & np.isfinite(ratios), ratios, np.inf)


def performance_profile(costs: np.ndarray, taus: Sequence[float]) -> np.ndarray:
    """``rho[k, s]``: the fraction of problems on which solver ``s`` has ratio ``<= taus[k]``.

    Parameters
    ----------
    costs : array of shape (n_problems, n_solvers)
        As in :func:`performance_ratios`.
    taus : sequence of float
        Factors ``tau >= 1`` at which to evaluate the profiles.

    Returns
    -------
    ndarray of shape (len(taus), n_solvers)
    """
    ratios = performance_ratios(costs)
    taus = np.asarray(taus, dtype=float).reshape(-1)
    if ratios.shape[0] == 0:
        return np.zeros((taus.size, ratios.shape[1]))
    return (ratios[None, :, :] <= taus[:, None, None]).mean(axis=1)


def profile_costs(summary: Sequence[dict], key: str) -> tuple[list[str], list[str], np.ndarray]:
    """Problems, solvers (in order of appearance) and the cost matrix ``summary[key]`` with
    ``inf`` where the pair did not converge or did not run."""
    problems = list(dict.fromkeys(r["problem"] for r in summary))
    solvers = list(dict.fromkeys(r["solver"] for r in summary))
    costs = np.full((len(problems), len(solvers)), np.inf)
    for r in summary:
        value = r.get(key)
        if r["status"] == "converged" and isinstance(value, (int, float)):
            costs[problems.index(r["problem"]), solvers.index(r["solver"])] = float(value)
    return problems, solvers, costs


# ----------------------------------------------------------------------------- figures


def _figure(ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * ncols, 3.8))
    fig.subplots_adjust(left=0.16 / ncols, right=0.98, bottom=0.13, top=0.91, wspace=0.28)
    axes = [fig.add_subplot(1, ncols, k + 1) for k in range(ncols)]
    return fig, axes


def _plot_profile(summary: Sequence[dict], key: str, label: str, path: Path) -> None:
    from matplotlib.ticker import ScalarFormatter

    _, solvers, costs = profile_costs(summary, key)
    ratios = performance_ratios(costs)
    finite = ratios[np.isfinite(ratios)]
    top = max(2.0, float(finite.max()) * 1.25) if finite.size else 2.0
    taus = np.unique(np.concatenate([[1.0], finite, [top]]))
    rho = performance_profile(costs, taus)
    fig, (ax,) = _figure()
    for s, name in enumerate(solvers):
        ax.step(taus, rho[:, s], where="post", label=name)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlim(1.0, top)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"tau (within a factor tau of the best {label})")
    ax.set_ylabel("fraction of problems")
    ax.set_title(f"Performance profile: {label} ({costs.shape[0]} problems)")
    ax.grid(True, alpha=0.3)
    if solvers:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _legend_label(solver: str, width: int = 44) -> str:
    """A solver spec broken after commas into lines of at most about ``width`` characters."""
    lines = [""]
    for piece in solver.split(","):
        if lines[-1] and len(lines[-1]) + len(piece) + 1 > width:
            lines[-1] += ","
            lines.append(piece)
        else:
            lines[-1] += ("," if lines[-1] else "") + piece
    return "\n".join(lines)


def _plot_convergence(rows: Sequence[dict], problem: str, metric: str, path: Path) -> str:
    """Draw ``metric`` against time and against iterations, or against epochs when every row
    measuring it records ``epoch`` (passes over a finite-sum problem's data: the unit in which
    an L-BFGS iteration and a minibatch step compare). Returns the second axis's unit."""
    fig, axes = _figure(2)
    colours = {}
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if _is_number(r.get(metric)):
            runs.setdefault((r["solver"], r["rep"]), []).append(r)
    positive = any(r[metric] > 0 for group in runs.values() for r in group)
    second = "epoch" if runs and all(_is_number(r.get("epoch")) for g in runs.values() for r in g) else "iter"
    for (solver, _rep), group in runs.items():
        group.sort(key=lambda r: r["iter"])
        first = solver not in colours
        colours.setdefault(solver, f"C{len(colours) % 10}")
        for ax, xkey in zip(axes, ("time", second)):
            ax.plot(
                [r[xkey] for r in group], [r[metric] for r in group], color=colours[solver],
                label=_legend_label(solver) if first else None,
                alpha=1.0 if first else 0.4, marker="." if len(group) < 30 else None,
            )
    log = positive and any(h in metric.lower() for h in _LOG_HINTS)
    unit = {"iter": "iteration", "epoch": "epoch"}[second]
    for ax, xlabel in zip(axes, ("time (s)", unit)):
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    axes[0].set_title(f"{problem}: {metric} vs time", fontsize="medium")
    axes[1].set_title(f"{problem}: {metric} vs {unit}", fontsize="medium")
    if colours:
        axes[1].legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return unit


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


# ----------------------------------------------------------------------------- report


def make_report(out_dir: str | Path) -> Path:
    """Write ``report.md``, the profile and convergence PNGs and ``index.html`` into ``out_dir``.

    Returns
    -------
    Path
        The path of ``index.html``.

    Raises
    ------
    FileNotFoundError
        When ``out_dir`` holds no ``summary.csv`` / ``results.csv``.
    """
    out = Path(out_dir)
    for name in ("summary.csv", "results.csv"):
        if not (out / name).is_file():
            raise FileNotFoundError(f"no {name} in {str(out)!r}; run `optkit bench ... --out {out}` first")
    summary = read_csv(out / "summary.csv")
    results = [r for r in read_csv(out / "results.csv") if not r.get("final")]

    figures: list[tuple[str, str]] = []  # (file name, caption)
    for key, label, name in (("time_s", "time", "profile_time.png"), ("nit", "iterations", "profile_iter.png")):
        _plot_profile(summary, key, label, out / name)
        figures.append((name, f"Performance profile ({label}); a pair that did not converge counts as failed."))

    # epoch is an axis of the convergence plots, not a measure to draw
    metrics = [c for c in (results[0] if results else {}) if c not in RESULT_COLUMNS and c != "epoch"]
    used = set()
    for problem in dict.fromkeys(r["problem"] for r in summary):
        rows = [r for r in results if r["problem"] == problem]
        if not rows:  # every pair skipped or failed: nothing to draw
            continue
        solvers = {r["solver"] for r in rows}
        for metric in metrics:
            # a measure that not every solver records is some solver's internal state (a
            # penalty, a step length), not a comparison
            if {r["solver"] for r in rows if _is_number(r.get(metric))} != solvers:
                continue
            name = f"conv_{_slug(problem)}_{_slug(metric)}"
            k = 2
            while name in used:
                name, k = f"conv_{_slug(problem)}_{_slug(metric)}_{k}", k + 1
            used.add(name)
            unit = _plot_convergence(rows, problem, metric, out / f"{name}.png")
            figures.append((f"{name}.png", f"{problem}: {metric} against time and {unit}s"))

    blocks, skipped = problem_blocks(summary)
    reasons = skip_reasons(summary)
    (out / "report.md").write_text(_markdown(blocks, len(skipped), reasons, figures))
    index = out / "index.html"
    index.write_text(_html(blocks, len(skipped), reasons, [(out / n, c) for n, c in figures]))
    return index


def _intro(blocks: Sequence[ProblemBlock]) -> str:
    n_pairs = sum(len(block.rows) for block in blocks)
    return (
        f"{n_pairs} (problem, solver) pairs ran on {len(blocks)} problems. In each problem's table, `ratio` is "
        "the solver's median time over that of the problem's anchor: the first solver of the benchmark's list "
        "whose runs on the problem completed (returned a result not stopped by the user). Skipped, failed "
        "(`error`) and stopped (`user_stopped`) runs have no ratio."
    )


def _markdown(
    blocks: Sequence[ProblemBlock], n_skipped: int, reasons: dict[str, dict[str, list[str]]],
    figures: Sequence[tuple[str, str]],
) -> str:
    md = ["# optkit benchmark report", "", _intro(blocks), ""]
    for block in blocks:
        md += [f"## {block_heading(block)}", ""]
        if block.rows:
            md += [markdown_table(*summary_cells(block.rows, note_width=None)), ""]
    if n_skipped:
        md += ["<details>", f"<summary>{skipped_line(n_skipped)}</summary>", ""]
        md += [f"- {reason}: {_pairs_text(by_solver, '`')}" for reason, by_solver in reasons.items()]
        md += ["", "</details>", ""]
    md += ["## Figures", ""]
    md += [f"![{caption}]({name})\n" for name, caption in figures]
    return "\n".join(md)


def _pairs_text(by_solver: dict[str, list[str]], quote: str = "") -> str:
    """``"cg on p1, p2; pcg on p1"`` with each name inside ``quote``."""
    return "; ".join(
        f"{quote}{solver}{quote} on " + ", ".join(f"{quote}{p}{quote}" for p in problems)
        for solver, problems in by_solver.items()
    )


def _html_table(headers: Sequence[str], body: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    def cells(tag: str, items: Sequence[str]) -> str:
        return "".join(
            f'<{tag}{" class=num" if r else ""}>{html.escape(str(c))}</{tag}>' for c, r in zip(items, right)
        )

    rows = [f"<tr>{cells('th', headers)}</tr>", *(f"<tr>{cells('td', row)}</tr>" for row in body)]
    return "\n".join(["<table>", *rows, "</table>"])


def _html(
    blocks: Sequence[ProblemBlock], n_skipped: int, reasons: dict[str, dict[str, list[str]]],
    figures: Sequence[tuple[Path, str]],
) -> str:
    parts = [f"<p>{_code_spans(html.escape(_intro(blocks)))}</p>"]
    for block in blocks:
        parts.append(f"<h2>{html.escape(block_heading(block))}</h2>")
        if block.rows:
            parts.append(_html_table(*summary_cells(block.rows, note_width=None)))
    if n_skipped:
        items = "".join(
            f"<dt>{html.escape(reason)}</dt><dd>{html.escape(_pairs_text(by_solver))}</dd>"
            for reason, by_solver in reasons.items()
        )
        parts.append(f"<details><summary>{skipped_line(n_skipped)}</summary><dl>{items}</dl></details>")
    parts.append("<h2>Figures</h2>")
    for path, caption in figures:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "h2{font-size:120%;margin:1.4em 0 .4em}"
        "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "th{background:#f0f0f0}.num{text-align:right;font-variant-numeric:tabular-nums}"
        "details{margin:1.4em 0}summary{cursor:pointer}dt{margin-top:.5em}dd{color:#444}"
        "figure{display:inline-block;margin:1em}img{max-width:100%}"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>optkit benchmark report</title>"
        f"<style>{style}</style></head><body>\n<h1>optkit benchmark report</h1>\n" + "\n".join(parts)
        + "\n</body></html>\n"
    )


def _code_spans(text: str) -> str:
    """Markdown's `code` spans of the (already escaped) ``text`` as ``<code>`` elements."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
