"""The Lasso and L1-regularised logistic regression, on every LIBSVM set and on synthetic data.

Both are :class:`~optkit.composite_problem.CompositeProblem` instances (no intercept)::

    ml/lasso/<name>        min_x ||A x - b||^2 / (2 m) + lam ||x||_1
    ml/l1-logistic/<name>  min_x (1/m) sum_i log(1 + exp(-y_i a_i^T x)) + lam ||x||_1

``<name>`` is a key of :data:`problems.libsvm.DATASETS` (``A`` the set's sparse feature
matrix, read from ``$OPTKIT_DATA/libsvm`` and never downloaded; ``y`` its labels as +-1, and
the Lasso's target ``b = y`` as in celer's and skglm's benchmarks) or ``synthetic``.
``lam = lam_ratio * lam_max`` (``lam_ratio`` default 0.1), ``lam_max`` the smallest ``lam``
with ``x = 0`` optimal (:meth:`~optkit.composite_problem.CompositeProblem.lambda_max`).
``metadata``: ``source``, ``dataset``, ``lam``, ``lam_ratio``, ``lam_max``.

``synthetic`` (parameters ``m=50``, ``n=100``, ``density=0.1``, ``seed=0``): with
``rng = numpy.random.default_rng(seed)``, ``A`` standard Gaussian (m, n) (drawn first), then
``x_true`` with ``max(1, round(density n))`` standard Gaussian entries at random positions,
then the noise ``e`` standard Gaussian (m,); the Lasso's target is ``b = A x_true + 0.1 e``,
the logistic labels ``y = sign(A x_true + e)`` (``+1`` where that is 0).

Suites ``lasso-libsvm`` and ``l1-logistic-libsvm``: the Lasso (the L1-logistic regression) on
ionosphere_scale, sonar_scale, splice_scale, mushrooms and a9a, each at ``lam_ratio`` 0.1 and
0.01 (a9a.t, the test half of a9a, is left out as in the ``constrained-logreg`` suite).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import numpy as np

from optkit.composite_problem import L1, CompositeProblem, Datafit, LogisticDatafit, QuadraticDatafit
from optkit.registry import register_problem_family, register_suite
from optkit.validation import check_choice, check_int, check_positive
from problems.libsvm import DATASETS, load_libsvm

__all__ = ["SUITE_DATASETS", "composite_problem", "synthetic_data"]

#: The LIBSVM sets of the ``lasso-libsvm`` suite.
SUITE_DATASETS = ("ionosphere_scale", "sonar_scale", "splice_scale", "mushrooms", "a9a")
SUITE_LAM_RATIOS = (0.1, 0.01)

_KINDS: dict[str, Callable[[Any], Datafit]] = {"lasso": QuadraticDatafit, "l1-logistic": LogisticDatafit}


def synthetic_data(
    kind: str, m: int = 50, n: int = 100, density: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The seeded synthetic ``(A, target)`` of ``ml/<kind>/synthetic`` (see the module docstring).

    Returns
    -------
    A : ndarray of float64, shape (m, n)
    target : ndarray of float64, shape (m,)
        ``b`` for ``kind="lasso"``, labels +-1 for ``kind="l1-logistic"``.
    """
    check_choice("kind", kind, tuple(_KINDS))
    m, n, seed = check_int("m", m, 1), check_int("n", n, 1), check_int("seed", seed, 0)
    density = check_positive("density", density)
    if density > 1:
        raise ValueError(f"density must be in (0, 1] (the fraction of non-zeros of x_true), got {density!r}")
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    x_true = np.zeros(n)
    support = rng.choice(n, size=max(1, round(density * n)), replace=False)
    x_true[support] = rng.standard_normal(support.size)
    noise = rng.standard_normal(m)
    if kind == "lasso":
        return A, A @ x_true + 0.1 * noise
    return A, np.where(A @ x_true + noise >= 0, 1.0, -1.0)


def composite_problem(
    kind: str, A: Any, target: Any, lam_ratio: float, *, name: str, metadata: dict
) -> CompositeProblem:
    """The ``kind`` problem (``"lasso"`` or ``"l1-logistic"``) on ``(A, target)`` at ``lam = lam_ratio * lam_max``.

    ``metadata`` is completed with ``lam``, ``lam_ratio`` and ``lam_max``.
    """
    check_choice("kind", kind, tuple(_KINDS))
    lam_ratio = check_positive("lam_ratio", lam_ratio)
    datafit = _KINDS[kind](target)
    probe = CompositeProblem(A, datafit, L1(0.0), name=name)
    lam_max = probe.lambda_max()
    lam = lam_ratio * lam_max
    metadata = {**metadata, "lam": lam, "lam_ratio": lam_ratio, "lam_max": lam_max}
    return CompositeProblem(probe.matrix, probe.datafit, L1(lam), name=name, metadata=metadata)


def _libsvm_problem(kind: str, dataset: str, lam_ratio: float) -> CompositeProblem:
    X, labels = load_libsvm(dataset)
    metadata = {"source": f"LIBSVM {dataset}", "dataset": dataset}
    return composite_problem(kind, X, labels, lam_ratio, name=f"ml/{kind}/{dataset}", metadata=metadata)


_TITLES = {"lasso": "Lasso", "l1-logistic": "L1-logistic regression"}


def _dataset_factory(kind: str, dataset: str) -> Callable[..., CompositeProblem]:
    spec = DATASETS[dataset]

    def factory(lam_ratio: float = 0.1) -> CompositeProblem:
        return _libsvm_problem(kind, dataset, lam_ratio)

    factory.__name__ = factory.__qualname__ = f"{kind.replace('-', '_')}_{dataset.replace('.', '_')}"
    factory.__doc__ = (
        f"{_TITLES[kind]} on LIBSVM {dataset} ({spec.rows} x {spec.features}), lam = lam_ratio * lam_max "
        "(see problems.composite)."
    )
    return factory


def _synthetic_factory(kind: str) -> Callable[..., CompositeProblem]:
    def factory(
        m: int = 50, n: int = 100, density: float = 0.1, seed: int = 0, lam_ratio: float = 0.1
    ) -> CompositeProblem:
        A, target = synthetic_data(kind, m, n, density, seed)
        metadata = {"source": "synthetic", "dataset": "synthetic", "m": m, "n": n, "density": density, "seed": seed}
        return composite_problem(kind, A, target, lam_ratio, name=f"ml/{kind}/synthetic", metadata=metadata)

    factory.__name__ = factory.__qualname__ = f"{kind.replace('-', '_')}_synthetic"
    factory.__doc__ = (
        f"{_TITLES[kind]} on seeded Gaussian data (m x n, density of the true x), lam = lam_ratio * lam_max "
        "(see problems.composite)."
    )
    return factory


def _resolver(kind: str) -> Callable[[str], Callable[..., CompositeProblem]]:
    members = {"synthetic": _synthetic_factory(kind)} | {d: _dataset_factory(kind, d) for d in DATASETS}

    def resolve(member: str) -> Callable[..., CompositeProblem]:
        key = member.lower()
        if key not in members:
            close = difflib.get_close_matches(key, members, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(f'ml/{kind}/{c}' for c in close)}?" if close else ""
            raise KeyError(f"unknown problem 'ml/{kind}/{member}'{hint} (members: {', '.join(members)})")
        return members[key]

    resolve.__name__ = resolve.__qualname__ = f"resolve_{kind.replace('-', '_')}"
    resolve.__doc__ = (
        f"{_TITLES[kind]} on any LIBSVM set of problems.libsvm.DATASETS, or synthetic; lam = lam_ratio * lam_max."
    )
    return resolve


for _kind in _KINDS:
    register_problem_family(f"ml/{_kind}", _resolver(_kind))

for _kind in _KINDS:
    register_suite(
        f"{_kind}-libsvm",
        [f"ml/{_kind}/{name}:lam_ratio={ratio}" for name in SUITE_DATASETS for ratio in SUITE_LAM_RATIOS],
    )
