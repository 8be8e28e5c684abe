"""L2-regularised linear classifiers as finite-sum problems: logistic and softmax regression.

Both are :class:`~optkit.finite_sum.FiniteSumProblem` subclasses (so also
:class:`~optkit.problem.SmoothProblem`: deterministic solvers run on them unchanged) over a
dense data matrix ``A`` of shape (N, d), numpy or torch (CPU or CUDA), written once against
the array namespace. Sparse data (LIBSVM's CSR) must be densified by the caller: the sets
optkit uses are small, and one dense code path serves numpy, torch and CUDA alike.

The objective is ``f(x) = (1/N) sum_i l_i(x) + lam/2 ||x_r||^2``, ``x_r`` the regularised
entries of ``x``. With ``bias=True`` a constant column of ones is appended to ``A`` (and to
``A_test``), so the last weight of each class is an intercept; intercepts are *not*
regularised, as in scikit-learn's ``LogisticRegression`` (``C = 1 / (N lam)`` there gives the
same minimiser).

:class:`LogisticRegression`
    Labels ``y_i = +-1``, ``l_i(x) = log(1 + exp(-y_i a_i^T x))`` (through ``logaddexp``);
    ``x`` of shape (d,) (``d`` counting the ones column). Derivatives: ``grad``, ``hvp`` and
    the dense ``hess`` (d, d).
:class:`SoftmaxRegression`
    Labels ``y_i`` in ``0 .. k-1``, ``l_i(W) = -log softmax(W a_i)[y_i]`` (a stable
    log-softmax); the variable is ``W`` of shape (k, d), ``x = W.reshape(-1)`` and
    ``x_shape = (k, d)``; the logits of the rows are ``A @ W.T`` (the ``torch.nn.Linear``
    convention). Derivatives: ``grad`` and the exact ``hvp`` through the Jacobian of the
    softmax, ``diag(p) - p p^T``. With ``bias=True`` the loss is unchanged when every
    intercept moves by the same amount, so the minimisers form a line along that direction
    (the Hessian is singular there); solvers started at ``x = 0`` stay on the centred one,
    since every gradient's intercepts sum to zero.

``evaluate(x)`` gives ``fun``, ``grad_norm``, ``train_accuracy``, ``test_accuracy`` (when a
test split is given) and ``f_gap`` (when ``metadata["f_opt"]`` is known). ``.to(backend,
device, dtype)`` moves the data; integer labels stay integers.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from optkit.backend import backend_name, convert, device_of, get_namespace, is_torch
from optkit.finite_sum import FiniteSumProblem
from optkit.validation import check_int, check_nonnegative

__all__ = ["LogisticRegression", "SoftmaxRegression"]


def _check_rows(name: str, A: Any, n_features: int | None = None) -> Any:
    """``A`` checked to be a dense, finite, 2-D floating array (numpy or torch)."""
    if hasattr(A, "toarray") or (is_torch(A) and str(A.layout) != "torch.strided"):
        raise ValueError(f"{name} must be a dense array (numpy or torch); densify sparse data first (.toarray())")
    if not (isinstance(A, np.ndarray) or is_torch(A)):
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(A).__name__}")
    xp = get_namespace(A)
    if A.ndim != 2 or A.shape[0] < 1 or A.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty 2-D array (samples, features), got shape {tuple(A.shape)}")
    if not xp.isdtype(A.dtype, "real floating"):
        raise ValueError(f"{name} must have a real floating dtype, got {A.dtype}")
    if n_features is not None and A.shape[1] != n_features:
        raise ValueError(f"{name} must have {n_features} columns (the features of A), got shape {tuple(A.shape)}")
    if not bool(xp.all(xp.isfinite(A))):
        raise ValueError(f"{name} contains NaN or inf; expected finite values")
    return A


def _check_labels_shape(name: str, y: Any, rows: Any, rows_name: str) -> None:
    if backend_name(y) != backend_name(rows) or device_of(y) != device_of(rows):
        raise ValueError(
            f"{name} must be on the backend and device of {rows_name} "
            f"({backend_name(rows)}, {device_of(rows)}), got {backend_name(y)}, {device_of(y)}"
        )
    if tuple(y.shape) != (rows.shape[0],):
        raise ValueError(
            f"{name} must have shape ({rows.shape[0]},), one label per row of {rows_name}, got {tuple(y.shape)}"
        )


def _with_ones(A: Any) -> Any:
    """``[A, 1]``: ``A`` with a column of ones appended (same backend, device, dtype)."""
    xp = get_namespace(A)
    ones = xp.ones((A.shape[0], 1), dtype=A.dtype, device=device_of(A))
    return xp.concat([A, ones], axis=1)


class _LinearClassifier(FiniteSumProblem):
    """What logistic and softmax regression share: data, split, regulariser, accuracy, moves.

    Subclasses implement ``_check_labels(A, y, y_test)`` (validated labels in the stored
    dtype), ``_x_shape(width)``, ``_objective(x, rows, labels, with_grad)`` and
    ``_predict(x, rows)``.
    """

    def __init__(
        self,
        A: Any,
        y: Any,
        lam: float,
        x0: Any,
        *,
        bias: bool,
        A_test: Any,
        y_test: Any,
        name: str,
        metadata: Mapping | None,
    ) -> None:
        A = _check_rows("A", A)
        lam = check_nonnegative("lam", lam)
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be True or False, got {bias!r}")
        if (A_test is None) != (y_test is None):
            raise ValueError("A_test and y_test must be given together (a test split) or not at all")
        _check_labels_shape("y", y, A, "A")
        if A_test is not None:
            A_test = _check_rows("A_test", A_test, A.shape[1])
            if backend_name(A_test) != backend_name(A) or device_of(A_test) != device_of(A):
                raise ValueError("A_test must be on the backend and device of A")
            _check_labels_shape("y_test", y_test, A_test, "A_test")
        y, y_test = self._check_labels(A, y, y_test)
        self.n_features = int(A.shape[1])
        self.bias = bias
        self.lam = lam
        self.A = _with_ones(A) if bias else A
        self.y = y
        self.A_test = None if A_test is None else (_with_ones(A_test) if bias else A_test)
        self.y_test = y_test
        x_shape = self._x_shape(int(self.A.shape[1]))
        mask = np.ones(x_shape)
        if bias:
            mask[..., -1] = 0.0
        xp = get_namespace(A)
        self._mask = xp.asarray(mask.reshape(-1), dtype=A.dtype, device=device_of(A))
        n = int(mask.size)
        if x0 is None:
            x0 = xp.zeros(n, dtype=A.dtype, device=device_of(A))
        elif getattr(x0, "shape", None) is None or tuple(x0.shape) != (n,):
            raise ValueError(f"x0 must have shape ({n},), got {getattr(x0, 'shape', None)}")
        elif backend_name(x0) != backend_name(A) or device_of(x0) != device_of(A):
            raise ValueError(f"x0 must be on the backend and device of A ({backend_name(A)}, {device_of(A)})")
        super().__init__(x0, int(A.shape[0]), x_shape=x_shape, name=name, metadata=metadata)

    # ------------------------------------------------------------------ subclass hooks

    @abc.abstractmethod
    def _check_labels(self, A: Any, y: Any, y_test: Any) -> tuple[Any, Any]:
        """The labels checked, in the stored dtype."""

    @abc.abstractmethod
    def _x_shape(self, width: int) -> tuple[int, ...]:
        """The variable's shape for rows of ``width`` columns."""

    @abc.abstractmethod
    def _objective(self, x: Any, rows: Any, labels: Any, with_grad: bool) -> tuple[Any, Any]:
        """Mean loss over ``rows`` plus the penalty, and its gradient when asked."""

    @abc.abstractmethod
    def _predict(self, x: Any, rows: Any) -> Any:
        """The predicted label of each row."""

    # ------------------------------------------------------------------ shared pieces

    def _penalty(self, x: Any) -> tuple[Any, Any]:
        """``lam/2 ||x_r||^2`` and its gradient ``lam x_r`` (zeros at the intercepts)."""
        xr = x * self._mask
        return 0.5 * self.lam * (xr @ xr), self.lam * xr

    def _batch_fg(self, x: Any, indices: Any) -> tuple[Any, Any]:
        xp = get_namespace(self.A)
        return self._objective(x, xp.take(self.A, indices, axis=0), xp.take(self.y, indices, axis=0), True)

    # the full objective uses A itself: gathering all N rows would copy the data at every call
    def _f(self, x: Any) -> Any:
        return self._objective(x, self.A, self.y, False)[0]

    def _g(self, x: Any) -> Any:
        return self._objective(x, self.A, self.y, True)[1]

    def fun_and_grad(self, x: Any) -> tuple[float, Any]:
        self.counters["fun"] += 1
        self.counters["grad"] += 1
        f, g = self._objective(x, self.A, self.y, True)
        return float(f), g

    def _accuracy(self, x: Any, rows: Any, labels: Any) -> float:
        xp = get_namespace(rows)
        return float(xp.mean(xp.astype(self._predict(x, rows) == labels, rows.dtype)))

    def evaluate(self, x: Any, extras: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Quality of ``x`` (not counted).

        Returns
        -------
        dict
            ``fun`` (the full objective), ``grad_norm`` (Euclidean), ``train_accuracy``
            (fraction of the N training rows classified right), ``test_accuracy`` (the same on
            the test split, when there is one), ``f_gap = fun - metadata["f_opt"]`` (when known).
        """
        f, g = self._objective(x, self.A, self.y, True)
        out = {"fun": float(f), "grad_norm": float((g * g).sum() ** 0.5)}
        out["train_accuracy"] = self._accuracy(x, self.A, self.y)
        if self.A_test is not None:
            out["test_accuracy"] = self._accuracy(x, self.A_test, self.y_test)
        if self.metadata.get("f_opt") is not None:
            out["f_gap"] = out["fun"] - float(self.metadata["f_opt"])
        return out

    def _converted_parts(self, conv: Callable[[Any], Any]) -> dict[str, Any]:
        """The constructor's arguments on the target of ``conv`` (features without the ones
        column; labels moved beside the data, their dtype left to the constructor)."""
        A = conv(self.A[:, : self.n_features])
        A_test = None if self.A_test is None else conv(self.A_test[:, : self.n_features])

        def beside(labels: Any) -> Any:
            return None if labels is None else convert(labels, backend_name(A), device_of(A))

        return {
            "A": A, "y": beside(self.y), "lam": self.lam, "x0": conv(self.x0), "bias": self.bias,
            "A_test": A_test, "y_test": beside(self.y_test), "name": self.name, "metadata": self.metadata,
        }  # fmt: skip


class LogisticRegression(_LinearClassifier):
    """Binary logistic regression ``f(x) = mean_i log(1 + exp(-y_i a_i^T x)) + lam/2 ||x_r||^2``.

    Parameters
    ----------
    A : array of shape (N, d), float
        Training rows ``a_i``, dense numpy or torch (CPU or CUDA); finite.
    y : array of shape (N,)
        Labels, each ``+1`` or ``-1``, on ``A``'s backend and device; stored in ``A``'s dtype.
    lam : float
        L2 weight ``>= 0`` (intercepts excluded).
    x0 : array of shape (n,), optional
        Start; zeros by default. ``n = d + bias``.
    bias : bool
        Append a ones column to ``A`` (and ``A_test``): ``x[-1]`` is an unregularised intercept.
    A_test, y_test : arrays of shape (M, d) and (M,), optional
        A test split, measured by ``evaluate`` as ``test_accuracy``.
    name, metadata :
        As in :class:`~optkit.problem.Problem`.

    Attributes
    ----------
    A : array (N, n)
        The rows as used (with the ones column when ``bias``).
    y : array (N,)
        The labels, +-1.

    Prediction is ``+1`` when ``a^T x > 0``, else ``-1`` (scikit-learn's rule). Capabilities:
    ``fun``, ``grad``, ``batch_grad``, ``hvp``, ``hess`` (dense (n, n)).

    Raises
    ------
    ValueError
        Non-dense, non-floating, non-finite or mis-shaped data; labels other than +-1;
        ``lam < 0``; a test split given by halves.
    """

    def __init__(
        self,
        A: Any,
        y: Any,
        lam: float = 1e-4,
        x0: Any = None,
        *,
        bias: bool = False,
        A_test: Any = None,
        y_test: Any = None,
        name: str = "logistic-regression",
        metadata: Mapping | None = None,
    ) -> None:
        super().__init__(A, y, lam, x0, bias=bias, A_test=A_test, y_test=y_test, name=name, metadata=metadata)

    def _check_labels(self, A: Any, y: Any, y_test: Any) -> tuple[Any, Any]:
        xp = get_namespace(A)
        out = []
        for label_name, labels in (("y", y), ("y_test", y_test)):
            if labels is not None:
                if not bool(xp.all((labels == 1) | (labels == -1))):
                    raise ValueError(f"{label_name} must hold the labels +1 and -1 only (binary classification)")
                labels = xp.astype(labels, A.dtype)
            out.append(labels)
        return out[0], out[1]

    def _x_shape(self, width: int) -> tuple[int, ...]:
        return (width,)

    def _objective(self, x: Any, rows: Any, labels: Any, with_grad: bool) -> tuple[Any, Any]:
        xp = get_namespace(rows, x)
        z = labels * (rows @ x)
        zeros = xp.zeros_like(z)
        penalty, penalty_grad = self._penalty(x)
        f = xp.mean(xp.logaddexp(zeros, -z)) + penalty
        if not with_grad:
            return f, None
        # sigma(-z) = exp(-log(1 + exp(z))): no overflow for large |z|
        s = xp.exp(-xp.logaddexp(zeros, z))
        return f, -(rows.T @ (labels * s)) / rows.shape[0] + penalty_grad

    def _weights(self, x: Any) -> Any:
        """``sigma(z) sigma(-z)`` at the margins ``z``: the diagonal of the loss Hessian."""
        xp = get_namespace(x)
        z = self.y * (self.A @ x)
        zeros = xp.zeros_like(z)
        return xp.exp(-xp.logaddexp(zeros, z) - xp.logaddexp(zeros, -z))

    def _hvp(self, x: Any, v: Any) -> Any:
        return self.A.T @ (self._weights(x) * (self.A @ v)) / self.A.shape[0] + self.lam * (self._mask * v)

    def _hess(self, x: Any) -> Any:
        xp = get_namespace(x)
        w = self._weights(x)
        eye = xp.eye(self.n, dtype=self.A.dtype, device=device_of(self.A))
        return self.A.T @ (w[:, None] * self.A) / self.A.shape[0] + self.lam * (eye * self._mask[None, :])

    def _predict(self, x: Any, rows: Any) -> Any:
        xp = get_namespace(rows)
        one = xp.ones(rows.shape[0], dtype=rows.dtype, device=device_of(rows))
        return xp.where(rows @ x > 0, one, -one)

    def _converted(self, conv: Callable[[Any], Any]) -> LogisticRegression:
        return type(self)(**self._converted_parts(conv))


class SoftmaxRegression(_LinearClassifier):
    """Multinomial logistic regression: mean cross-entropy of ``softmax(A W^T)`` + ``lam/2 ||W_r||_F^2``.

    Parameters
    ----------
    A : array of shape (N, d), float
        Training rows, dense numpy or torch (CPU or CUDA); finite.
    y : array of shape (N,)
        Class labels, integers (of any dtype) in ``0 .. n_classes-1``, on ``A``'s backend
        and device; stored as int64.
    lam : float
        L2 weight ``>= 0`` (intercepts excluded).
    x0 : array of shape (n_classes * n,), optional
        ``W.reshape(-1)`` of the start ``W`` (n_classes, n); zeros by default. ``n = d + bias``.
    n_classes : int, optional
        ``k``; default ``1 + max`` of the training and test labels.
    bias : bool
        Append a ones column to ``A`` (and ``A_test``): ``W[:, -1]`` are unregularised intercepts.
    A_test, y_test : arrays of shape (M, d) and (M,), optional
        A test split, measured by ``evaluate`` as ``test_accuracy``.
    name, metadata :
        As in :class:`~optkit.problem.Problem`.

    Attributes
    ----------
    A : array (N, n)
        The rows as used (with the ones column when ``bias``).
    y : int64 array (N,)
    n_classes : int
    x_shape : tuple
        ``(n_classes, n)``.

    Prediction is the class of the largest logit (the first on ties). Capabilities: ``fun``,
    ``grad``, ``batch_grad``, ``hvp`` (no dense Hessian: it has ``(k n)^2`` entries).

    Raises
    ------
    ValueError
        As :class:`LogisticRegression`, and for labels that are not integers in
        ``0 .. n_classes-1`` or ``n_classes < 2``.
    """

    def __init__(
        self,
        A: Any,
        y: Any,
        lam: float = 1e-4,
        x0: Any = None,
        *,
        n_classes: int | None = None,
        bias: bool = False,
        A_test: Any = None,
        y_test: Any = None,
        name: str = "softmax-regression",
        metadata: Mapping | None = None,
    ) -> None:
        self.n_classes = None if n_classes is None else check_int("n_classes", n_classes, 2)
        super().__init__(A, y, lam, x0, bias=bias, A_test=A_test, y_test=y_test, name=name, metadata=metadata)
        xp = get_namespace(self.A)
        self._classes = xp.arange(self.n_classes, dtype=xp.int64, device=device_of(self.A))

    def _check_labels(self, A: Any, y: Any, y_test: Any) -> tuple[Any, Any]:
        xp = get_namespace(A)
        given = [(name, labels) for name, labels in (("y", y), ("y_test", y_test)) if labels is not None]
        for label_name, labels in given:
            integral = xp.isdtype(labels.dtype, "integral") or bool(xp.all(labels == xp.round(labels)))
            if not integral or not bool(xp.all(labels >= 0)):
                raise ValueError(f"{label_name} must hold class labels 0, 1, ..., n_classes-1 (integers >= 0)")
        tops = {label_name: int(xp.max(labels)) for label_name, labels in given}
        if self.n_classes is None:
            self.n_classes = max(max(tops.values()) + 1, 2)
        for label_name, top in tops.items():
            if top >= self.n_classes:
                raise ValueError(f"{label_name} must hold labels < n_classes = {self.n_classes}, got the label {top}")
        out = [None if labels is None else xp.astype(labels, xp.int64) for labels in (y, y_test)]
        return out[0], out[1]

    def _x_shape(self, width: int) -> tuple[int, ...]:
        return (self.n_classes, width)

    def _onehot(self, labels: Any, dtype: Any) -> Any:
        xp = get_namespace(labels)
        return xp.astype(labels[:, None] == self._classes[None, :], dtype)

    def _log_softmax(self, x: Any, rows: Any) -> Any:
        """``log softmax(rows @ W^T)`` row by row, shape (rows, k), shifted by the row maximum."""
        xp = get_namespace(rows, x)
        Z = rows @ xp.reshape(x, self.x_shape).T
        Z = Z - xp.max(Z, axis=1, keepdims=True)
        return Z - xp.log(xp.sum(xp.exp(Z), axis=1, keepdims=True))

    def _objective(self, x: Any, rows: Any, labels: Any, with_grad: bool) -> tuple[Any, Any]:
        xp = get_namespace(rows, x)
        log_p = self._log_softmax(x, rows)
        onehot = self._onehot(labels, rows.dtype)
        penalty, penalty_grad = self._penalty(x)
        f = -xp.sum(log_p * onehot) / rows.shape[0] + penalty
        if not with_grad:
            return f, None
        G = (xp.exp(log_p) - onehot).T @ rows / rows.shape[0]
        return f, xp.reshape(G, (-1,)) + penalty_grad

    def _hvp(self, x: Any, v: Any) -> Any:
        xp = get_namespace(self.A, x, v)
        P = xp.exp(self._log_softmax(x, self.A))
        U = self.A @ xp.reshape(v, self.x_shape).T
        # the softmax Jacobian (diag(p) - p p^T) applied to each row's logit change
        R = P * U - P * xp.sum(P * U, axis=1, keepdims=True)
        return xp.reshape(R.T @ self.A, (-1,)) / self.A.shape[0] + self.lam * (self._mask * v)

    def _predict(self, x: Any, rows: Any) -> Any:
        xp = get_namespace(rows, x)
        return xp.argmax(rows @ xp.reshape(x, self.x_shape).T, axis=1)

    def _converted(self, conv: Callable[[Any], Any]) -> SoftmaxRegression:
        return type(self)(**self._converted_parts(conv), n_classes=self.n_classes)
