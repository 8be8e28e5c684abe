"""Problem kinds with declared capabilities and evaluation counters.

A problem is what a solver is given. Each kind declares its ``capabilities`` (the
things a solver may ask of it, such as ``"grad"``, ``"hvp"`` or ``"matrix"``), so
that a solver's ``requires`` can be checked, and a benchmark skips the pairs that
do not fit, before any work is done.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Iterator, Mapping

import numpy as np

from .backend import backend_name, convert, device_of, to_numpy

__all__ = ["LinearSystemProblem", "Problem", "SmoothProblem"]


def _check_finite(name: str, x: Any) -> None:
    if x is not None and not np.all(np.isfinite(to_numpy(x))):
        raise ValueError(f"{name} contains NaN or inf; expected finite values")


class Problem:
    """Base class of every problem kind.

    Parameters
    ----------
    name : str
        Registry-style name, e.g. ``"linear/poisson-2d"``.
    x0 : array of shape (n,)
        Starting point (numpy or torch; sets the problem's backend and device).
    metadata : mapping, optional
        Free-form facts such as the source, the known optimum ``f_opt`` or parameters.

    Attributes
    ----------
    counters : collections.Counter
        Evaluation counts by kind (``"fun"``, ``"grad"``, ``"hvp"``, ``"matvec"`` ...),
        incremented by the problem's own evaluation methods. Evaluations that are not the
        solver's work (measuring a trace row, checking a library's iterate) are made inside
        :meth:`uncounted` and leave them alone.
    """

    kind: ClassVar[str] = "problem"

    def __init__(self, name: str, x0: Any, metadata: Mapping[str, Any] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.x0 = x0
        self.metadata = dict(metadata or {})
        self.counters: Counter = Counter()

    @property
    def capabilities(self) -> frozenset[str]:
        """What a solver may ask of this problem."""
        return frozenset()

    @property
    def n(self) -> int:
        """Number of unknowns."""
        return int(self.x0.shape[0])

    @property
    def backend(self) -> str:
        """``"numpy"`` or ``"torch"``: the backend of the problem's arrays."""
        return backend_name(self.x0)

    @property
    def device(self) -> str:
        """The device of the problem's arrays (``"cpu"`` for numpy)."""
        return device_of(self.x0)

    @property
    def dtype(self):
        """The floating dtype of the problem's arrays."""
        return self.x0.dtype

    def evaluate(self, x: Any, extras: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Quality measures of a candidate solution ``x``, computed the same way whatever
        solver produced it (the benchmark records them). Not counted in ``counters``.

        ``extras`` are the other parts of a solution that some kinds measure too (for
        example the dual potentials of an OT solver: ``Result.extras``)."""
        return {}

    def reset_counters(self) -> None:
        """Set every evaluation counter back to zero."""
        self.counters.clear()

    @contextmanager
    def uncounted(self) -> Iterator["Problem"]:
        """Evaluate without counting: inside the block the problem's evaluation methods
        (``fun``, ``grad``, ``cons``, ``jac`` ...) count into a scratch counter that is
        thrown away, so ``counters`` holds only the solver's own evaluations.

        Examples
        --------
        >>> with problem.uncounted():          # doctest: +SKIP
        ...     row = {"fun": problem.fun(x), "grad": problem.grad(x)}
        """
        kept = self.counters
        self.counters = Counter()
        try:
            yield self
        finally:
            self.counters = kept

    def to(self, backend: str = "numpy", device: str | None = None, dtype: Any = None) -> "Problem":
        """A copy of this problem on another backend, device or dtype.

        Parameters
        ----------
        backend : {"numpy", "torch"}
        device : str, optional
            e.g. ``"cpu"``, ``"cuda"``; torch only.
        dtype : str or dtype, optional
            e.g. ``"float32"``; ``None`` keeps the current precision.
        """
        return self._converted(lambda a: convert(a, backend, device, dtype))

    def _converted(self, conv: Callable[[Any], Any]) -> "Problem":
        raise ValueError(
            f"problem {self.name!r} ({type(self).__name__}) is defined by callables and cannot change backend"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={self.n}, backend={self.backend!r})"


class SmoothProblem(Problem):
    """Unconstrained minimisation of a smooth function ``f: R^n -> R``.

    Parameters
    ----------
    fun : callable ``f(x) -> float``
    grad : callable ``g(x) -> array of shape (n,)``
    x0 : array of shape (n,)
    hvp : callable ``hvp(x, v) -> array of shape (n,)``, optional
        Hessian-vector product.
    hess : callable ``hess(x) -> array (n, n) or sparse``, optional
    name, metadata :
        As in :class:`Problem`. ``metadata["f_opt"]``, when known, is the optimal value.

    Capabilities are ``{"fun", "grad"}`` plus ``"hvp"`` and ``"hess"`` when given.
    Subclasses that hold data arrays may override ``_f``, ``_g``, ``_hvp`` instead of
    passing callables, and ``_converted`` to support :meth:`Problem.to`.
    """

    kind: ClassVar[str] = "smooth"

    def __init__(
        self,
        fun: Callable | None,
        grad: Callable | None,
        x0: Any,
        *,
        hvp: Callable | None = None,
        hess: Callable | None = None,
        name: str = "smooth",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if x0 is None or getattr(x0, "ndim", None) != 1:
            raise ValueError(f"x0 must be a 1-D array, got {type(x0).__name__} of shape {getattr(x0, 'shape', None)}")
        _check_finite("x0", x0)
        super().__init__(name, x0, metadata)
        self._fun, self._grad, self._hvp_fn, self._hess_fn = fun, grad, hvp, hess

    @property
    def capabilities(self) -> frozenset[str]:
        caps = {"fun", "grad"}
        if self._hvp_fn is not None or type(self)._hvp is not SmoothProblem._hvp:
            caps.add("hvp")
        if self._hess_fn is not None or type(self)._hess is not SmoothProblem._hess:
            caps.add("hess")
        return frozenset(caps)

    def fun(self, x: Any) -> float:
        """Objective value at ``x`` (counted under ``"fun"``)."""
        self.counters["fun"] += 1
        return float(self._f(x))

    def grad(self, x: Any) -> Any:
        """Gradient at ``x``, shape (n,) (counted under ``"grad"``)."""
        self.counters["grad"] += 1
        return self._g(x)

    def fun_and_grad(self, x: Any) -> tuple[float, Any]:
        """``(fun(x), grad(x))``; subclasses may share work between the two."""
        return self.fun(x), self.grad(x)

    def hvp(self, x: Any, v: Any) -> Any:
        """Hessian at ``x`` times ``v``, shape (n,) (counted under ``"hvp"``)."""
        if "hvp" not in self.capabilities:
            raise ValueError(f"problem {self.name!r} provides no Hessian-vector product")
        self.counters["hvp"] += 1
        return self._hvp(x, v)

    def hess(self, x: Any) -> Any:
        """Hessian at ``x``: dense (n, n) array or sparse matrix (counted under ``"hess"``)."""
        if "hess" not in self.capabilities:
            raise ValueError(f"problem {self.name!r} provides no Hessian")
        self.counters["hess"] += 1
        return self._hess(x)

    def evaluate(self, x: Any, extras: Mapping[str, Any] | None = None) -> dict[str, float]:
        """``fun``, ``grad_norm`` (Euclidean) and, when ``metadata["f_opt"]`` is known, ``f_gap``."""
        f = float(self._f(x))
        g = self._g(x)
        out = {"fun": f, "grad_norm": float((g * g).sum() ** 0.5)}
        if self.metadata.get("f_opt") is not None:
            out["f_gap"] = f - float(self.metadata["f_opt"])
        return out

    def _f(self, x: Any) -> Any:
        return self._fun(x)

    def _g(self, x: Any) -> Any:
        return self._grad(x)

    def _hvp(self, x: Any, v: Any) -> Any:
        return self._hvp_fn(x, v)

    def _hess(self, x: Any) -> Any:
        return self._hess_fn(x)


class LinearSystemProblem(Problem):
    """Solve ``A x = b`` for a square operator ``A``.

    Parameters
    ----------
    A : LinearOperator, array of shape (n, n), scipy/torch sparse matrix
        The system operator. When a matrix is given (dense or sparse) it is also kept as
        ``matrix``, for solvers that need entries (incomplete factorizations, AMG).
    b : array of shape (n,)
        Right-hand side, numpy or torch; sets the backend.
    x0 : array of shape (n,), optional
        Starting guess, zeros by default.
    tags : iterable of str, optional
        Structure of ``A`` (``"symmetric"``, ``"psd"`` ...), added to the operator's tags.
    name, metadata :
        As in :class:`Problem`. ``metadata["x_true"]`` may hold the exact solution.

    Capabilities: ``"matvec"`` always, ``"matrix"`` when entries are available, plus the
    operator's tags (``"symmetric"``, ``"psd"`` ...).
    """

    kind: ClassVar[str] = "linear-system"

    def __init__(
        self,
        A: Any,
        b: Any,
        x0: Any = None,
        *,
        tags: Any = (),
        name: str = "linear-system",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        from .linop import LinearOperator, aslinearoperator

        self.matrix = None if isinstance(A, LinearOperator) else A
        self.A = aslinearoperator(A, tags=frozenset(tags))
        m, n = self.A.shape
        if m != n:
            raise ValueError(f"A must be square, got shape {self.A.shape}")
        if getattr(b, "ndim", None) != 1 or b.shape[0] != n:
            raise ValueError(f"b must have shape ({n},) to match A {self.A.shape}, got {getattr(b, 'shape', None)}")
        _check_finite("b", b)
        if x0 is None:
            x0 = b * 0
        elif getattr(x0, "ndim", None) != 1 or x0.shape[0] != n:
            raise ValueError(f"x0 must have shape ({n},) to match A {self.A.shape}, got {getattr(x0, 'shape', None)}")
        _check_finite("x0", x0)
        if backend_name(b) != backend_name(x0) or device_of(b) != device_of(x0):
            raise TypeError("b and x0 must share one backend and device")
        super().__init__(name, x0, metadata)
        self.b = b

    @property
    def capabilities(self) -> frozenset[str]:
        caps = {"matvec"} | set(self.A.tags)
        if self.matrix is not None:
            caps.add("matrix")
        return frozenset(caps)

    def evaluate(self, x: Any, extras: Mapping[str, Any] | None = None) -> dict[str, float]:
        """``residual``: the relative residual ``||b - A x|| / ||b||``; ``error``:
        ``||x - x_true|| / ||x_true||`` when ``metadata["x_true"]`` is known.

        When ``metadata["f_opt"]`` is known (``A`` symmetric positive definite, ``f_opt`` the
        minimum of the energy), also ``energy``: ``x^T A x / 2 - b^T x``, and ``f_gap``:
        ``energy - f_opt``. With ``x_true`` known too, ``f_gap`` is computed as
        ``e^T A e / 2``, ``e = x - x_true``: equal in exact arithmetic, and free of the
        cancellation of subtracting two large numbers (``|f_opt|`` near 1e9 would otherwise
        hide any gap below about 1e-7)."""
        Ax = self.A @ x
        r = self.b - Ax
        bnorm = float((self.b * self.b).sum() ** 0.5) or 1.0
        out = {"residual": float((r * r).sum() ** 0.5) / bnorm}
        x_true = self.metadata.get("x_true")
        e = None
        if x_true is not None:
            x_true = convert(x_true, self.backend, self.device)
            e = x - x_true
            out["error"] = float((e * e).sum() ** 0.5) / (float((x_true * x_true).sum() ** 0.5) or 1.0)
        f_opt = self.metadata.get("f_opt")
        if f_opt is not None:
            out["energy"] = float((x * (0.5 * Ax - self.b)).sum())
            if e is None:
                out["f_gap"] = out["energy"] - float(f_opt)
            else:
                out["f_gap"] = 0.5 * float((e * (self.A @ e)).sum())
        return out

    def _converted(self, conv: Callable[[Any], Any]) -> "LinearSystemProblem":
        b = conv(self.b)
        A = self.A.to(backend_name(b), device_of(b), b.dtype)
        out = LinearSystemProblem(
            A, b, conv(self.x0), name=self.name, metadata=self.metadata
        )
        if self.matrix is not None and backend_name(b) == "numpy":
            out.matrix = self.matrix.astype(b.dtype, copy=False)
        return out
