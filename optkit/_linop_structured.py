"""Structured operators built from other operators: :class:`Block` and :class:`Kronecker`.

Re-exported from :mod:`optkit.linop`.
"""

from __future__ import annotations

import numpy as np

from ._linop_base import LinearOperator, _common_backend, _rmm, _rmv, _unify
from ._linop_support import _dummy, _result_dtype
from ._linop_concrete import aslinearoperator
from ._linop_queries import _probe_diagonal, diagonal, materialize

__all__ = ["Block", "Kronecker"]


# ----------------------------------------------------------------------------- Block
class Block(LinearOperator):
    """A block operator from a 2-D list of operators (or arrays); ``None`` is a zero block.

    Every block row needs at least one operator (its height) and so does every block column
    (its width); all sizes are checked. Block-diagonal grids of symmetric/psd/diagonal square
    blocks carry those tags.

    Parameters
    ----------
    blocks : list of lists
        ``blocks[i][j]`` is an operator, anything :func:`aslinearoperator` accepts, or ``None``.
        All of one backend and device.
    tags : iterable of str, optional
        Extra tags.
    """

    def __init__(self, blocks, *, tags=None) -> None:
        grid = [[None if b is None else aslinearoperator(b) for b in row] for row in blocks]
        if not grid or not grid[0] or any(len(row) != len(grid[0]) for row in grid):
            raise ValueError("Block needs a non-empty rectangular 2-D list of blocks")
        nr, nc = len(grid), len(grid[0])
        heights, widths = [None] * nr, [None] * nc
        for i, row in enumerate(grid):
            for j, b in enumerate(row):
                if b is None:
                    continue
                for sizes, k, s, what in ((heights, i, b.shape[0], "row"), (widths, j, b.shape[1], "column")):
                    if sizes[k] is None:
                        sizes[k] = s
                    elif sizes[k] != s:
                        raise ValueError(
                            f"block ({i}, {j}) has shape {b.shape}, but block {what} {k} has size {sizes[k]}"
                        )
        for sizes, what in ((heights, "row"), (widths, "column")):
            if None in sizes:
                raise ValueError(f"block {what} {sizes.index(None)} has only None blocks; its size is unknown")
        ops = [b for row in grid for b in row if b is not None]
        backend, device = _common_backend(ops)
        auto = set()
        if nr == nc and all(grid[i][j] is None for i in range(nr) for j in range(nc) if i != j) and heights == widths:
            auto = {"symmetric", "psd", "diagonal"}
            for i in range(nr):
                auto &= grid[i][i].tags
        super().__init__(
            (sum(heights), sum(widths)),
            _result_dtype(backend, [b.dtype for b in ops]),
            tags=auto | set(tags or ()),
            backend=backend,
            device=device,
        )
        grid = [[None if b is None else _unify([b], self.dtype)[0] for b in row] for row in grid]
        self._grid, self._heights, self._widths = grid, heights, widths
        self._roff = np.concatenate([[0], np.cumsum(heights)]).tolist()
        self._coff = np.concatenate([[0], np.cumsum(widths)]).tolist()

    def _apply(self, X, mat: bool):
        xs = [X[a:b] for a, b in zip(self._coff[:-1], self._coff[1:])]
        out = []
        for row in self._grid:
            acc = None
            for b, xj in zip(row, xs):
                if b is not None:
                    y = b._matmat(xj) if mat else b._matvec(xj)
                    acc = y if acc is None else acc + y
            out.append(acc)
        return self.xp.concat(out, axis=0)

    def _apply_adjoint(self, Y, mat: bool):
        """``A^H Y``: block column ``j`` of the result is ``sum_i blocks[i][j]^H Y_i``."""
        ys = [Y[a:b] for a, b in zip(self._roff[:-1], self._roff[1:])]
        out = []
        for j in range(len(self._widths)):
            acc = None
            for row, yi in zip(self._grid, ys):
                b = row[j]
                if b is not None:
                    x = _rmm(b, yi) if mat else _rmv(b, yi)
                    acc = x if acc is None else acc + x
            out.append(acc)
        return self.xp.concat(out, axis=0)

    def _matvec(self, x):
        return self._apply(x, False)

    def _matmat(self, X):
        return self._apply(X, True)

    def _rmatvec(self, y):
        return self._apply_adjoint(y, False)

    def _rmatmat(self, Y):
        return self._apply_adjoint(Y, True)

    def _to(self, backend, device, dtype):
        return Block(
            [[None if b is None else b.to(backend, device, dtype) for b in row] for row in self._grid], tags=self.tags
        )


@materialize.register
def _(op: Block):
    xp = op.xp
    dev = _dummy(op.backend, op.device).device
    rows = []
    for i, row in enumerate(op._grid):
        rows.append(
            xp.concat(
                [
                    xp.zeros((op._heights[i], op._widths[j]), dtype=op.dtype, device=dev)
                    if b is None
                    else xp.astype(materialize(b), op.dtype)
                    for j, b in enumerate(row)
                ],
                axis=1,
            )
        )
    return xp.concat(rows, axis=0)


@diagonal.register
def _(op: Block):
    if op._heights != op._widths:
        return _probe_diagonal(op)
    xp = op.xp
    dev = _dummy(op.backend, op.device).device
    return xp.concat(
        [
            xp.zeros(op._heights[i], dtype=op.dtype, device=dev)
            if row[i] is None
            else xp.astype(diagonal(row[i]), op.dtype)
            for i, row in enumerate(op._grid)
        ]
    )


# ----------------------------------------------------------------------------- Kronecker
class Kronecker(LinearOperator):
    """``A ⊗ B`` (row-major ``vec``), applied as ``A X B^T`` with reshapes, never formed.

    For ``A`` of shape ``(p, q)`` and ``B`` of shape ``(r, s)`` the operator has shape
    ``(p r, q s)``; one matvec costs one ``B.matmat`` with ``q`` columns and one
    ``A.matmat`` with ``r`` columns.

    Parameters
    ----------
    A, B : LinearOperator or anything :func:`aslinearoperator` accepts
        Of one backend and device.
    tags : iterable of str, optional
        Extra tags (tags both factors share are propagated).
    """

    def __init__(self, A, B, *, tags=None) -> None:
        A, B = aslinearoperator(A), aslinearoperator(B)
        backend, device = _common_backend([A, B])
        auto = {"symmetric", "psd", "diagonal", "orthonormal"} & A.tags & B.tags
        if "low_rank" in A.tags | B.tags:
            auto.add("low_rank")
        (p, q), (r, s) = A.shape, B.shape
        super().__init__(
            (p * r, q * s),
            _result_dtype(backend, [A.dtype, B.dtype]),
            tags=auto | set(tags or ()),
            backend=backend,
            device=device,
        )
        self._A, self._B = _unify([A, B], self.dtype)

    @staticmethod
    def _kron_apply(xp, X, A_apply, B_apply, shape_A, shape_B):
        """``(A ⊗ B) X`` for ``X`` (q s, k) as ``A (X_k B^T)`` with reshapes; ``A_apply`` and
        ``B_apply`` apply the factors (of shapes ``(p, q)``, ``(r, s)``) to matrices."""
        (p, q), (r, s) = shape_A, shape_B
        k = X.shape[1]
        Z = xp.reshape(xp.permute_dims(xp.reshape(X, (q, s, k)), (1, 0, 2)), (s, q * k))
        Z = B_apply(Z)  # (r, q k)
        Z = xp.reshape(xp.permute_dims(xp.reshape(Z, (r, q, k)), (1, 0, 2)), (q, r * k))
        return xp.reshape(A_apply(Z), (p * r, k))

    def _matmat(self, X):
        A, B = self._A, self._B
        return self._kron_apply(self.xp, X, A._matmat, B._matmat, A.shape, B.shape)

    def _rmatmat(self, Y):
        # (A ⊗ B)^H = A^H ⊗ B^H
        A, B = self._A, self._B
        return self._kron_apply(
            self.xp, Y, lambda Z: _rmm(A, Z), lambda Z: _rmm(B, Z), A.shape[::-1], B.shape[::-1]
        )

    def _to(self, backend, device, dtype):
        return Kronecker(self._A.to(backend, device, dtype), self._B.to(backend, device, dtype), tags=self.tags)


@materialize.register
def _(op: Kronecker):
    xp = op.xp
    A, B = materialize(op._A), materialize(op._B)
    (p, q), (r, s) = A.shape, B.shape
    return xp.reshape(A[:, None, :, None] * B[None, :, None, :], (p * r, q * s))


@diagonal.register
def _(op: Kronecker):
    A, B = op._A, op._B
    if A.shape[0] != A.shape[1] or B.shape[0] != B.shape[1]:
        return _probe_diagonal(op)
    return op.xp.reshape(diagonal(A)[:, None] * diagonal(B)[None, :], (-1,))
