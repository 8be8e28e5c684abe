"""GaLore on FSDP2-sharded parameters: row shards, exact projections, whole-tensor reductions.

``torch.distributed.fsdp.fully_shard`` turns each parameter into a ``DTensor`` placed
``(Shard(0),)`` on a 1-D device mesh: rank ``i`` holds rows ``[i·c, min((i+1)·c, m))`` of an
``(m, n)`` weight, ``c = ⌈m / world⌉`` (``torch.chunk``'s split; a rank may hold no row), and
after backward ``p.grad`` is a ``DTensor`` of the same placement. The GaLore optimizers step
on the local rows and communicate only what makes the result equal the unsharded one:

* at a basis refresh, the full gradient is all-gathered and the basis built by the unchanged
  :class:`optkit.projection.Projector` on it (the same on every rank), then the basis, the
  projected gradient and the rotation are broadcast from rank 0, so ranks never drift;
* right side (basis ``B`` of shape ``(n, r)``): ``G_i B`` and the update ``N_i Bᵀ`` are local,
  the moments ``(m_i, r)`` are sharded like the weight: no communication between refreshes;
* left side (``B`` of shape ``(m, r)``): ``Bᵀ G = Σ_i B[rows_i]ᵀ G_i`` is one all-reduce of
  ``r·n`` values per step, the moments ``(r, n)`` are replicated, the update ``B[rows_i] N``
  is local;
* statistics over a whole row-sharded tensor (means over rows, RMS) are all-reduced sums.

The projector itself knows nothing of sharding: it only ever sees full matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from optkit.projection import LEFT, RIGHT, AdaptiveGap, Projected, Projector

__all__ = ["RowShard", "is_dtensor", "lift_rows", "project_rows", "row_shard_of"]


def is_dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor`` (without importing it when unused)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


@dataclass(frozen=True)
class RowShard:
    """Which rows of a ``(Shard(0),)`` DTensor this rank holds, and how to reach the other ranks.

    Attributes
    ----------
    mesh : DeviceMesh
        The 1-D mesh of the parameter.
    placements : tuple
        ``(Shard(0),)``.
    global_shape : tuple of int
        The unsharded shape.
    start, stop : int
        This rank's rows ``[start, stop)`` of dimension 0.
    """

    mesh: Any
    placements: tuple
    global_shape: tuple[int, ...]
    start: int
    stop: int

    @property
    def group(self) -> dist.ProcessGroup:
        """The process group of the mesh."""
        return self.mesh.get_group()

    def wrap(self, local: torch.Tensor) -> torch.Tensor:
        """``local`` (this rank's rows of a tensor whose dimension 0 is the weight's) as a DTensor."""
        from torch.distributed.tensor import DTensor

        shape = (self.global_shape[0],) + tuple(local.shape[1:])
        stride = torch.empty(shape, device="meta").stride()
        return DTensor.from_local(local, self.mesh, self.placements, run_check=False, shape=shape, stride=stride)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The full tensor whose rows ``[start, stop)`` are ``local`` (an all-gather)."""
        return self.wrap(local).full_tensor()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place; returned for chaining."""
        dist.all_reduce(tensor, group=self.group)
        return tensor

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Overwrite ``tensor`` with rank 0's (of the mesh) in place."""
        dist.broadcast(tensor, group=self.group, group_src=0)

    def sum_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over dimension -2 of the row-sharded ``tensor`` (all ranks' rows)."""
        return self.all_reduce(tensor.sum(dim=-2))

    def mean_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over dimension -2 of the row-sharded ``tensor``."""
        return self.sum_rows(tensor) / self.global_shape[0]

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of all entries of the row-sharded ``tensor``."""
        rows_and_rest = tensor.shape[1:].numel() * self.global_shape[0]
        return self.all_reduce(tensor.sum()) / rows_and_rest

    def rms(self, tensor: torch.Tensor) -> torch.Tensor:
        """Root mean square of all entries of the row-sharded ``tensor``."""
        squares = self.all_reduce(tensor.square().sum())
        return squares.sqrt() / math.sqrt(tensor.shape[1:].numel() * self.global_shape[0])


def row_shard_of(p: torch.Tensor) -> RowShard | None:
    """The :class:`RowShard` of an FSDP2 parameter, ``None`` for a plain tensor.

    Raises
    ------
    ValueError
        For a DTensor that is not ``(Shard(0),)`` on a 1-D mesh (HSDP, 2-D meshes, ``Shard(1)``,
        ``Replicate()``), naming the placement.
    """
    if not is_dtensor(p):
        return None
    from torch.distributed.tensor import Shard

    placements = tuple(p.placements)
    if p.device_mesh.ndim != 1 or placements != (Shard(0),):
        raise ValueError(
            f"GaLore optimizers support DTensor parameters placed (Shard(0),) on a 1-D device mesh "
            f"(torch.distributed.fsdp.fully_shard); got placements {placements} on a {p.device_mesh.ndim}-D mesh "
            f"of shape {tuple(p.device_mesh.shape)} (HSDP, 2-D meshes and other shardings are not supported)"
        )
    rows, world = p.shape[0], p.device_mesh.size()
    chunk = -(-rows // world) if rows else 0
    start = min(rows, chunk * p.device_mesh.get_local_rank())
    stop = min(rows, start + chunk)
    local_rows = p.to_local().shape[0]
    if stop - start != local_rows:
        raise ValueError(
            f"a DTensor parameter of shape {tuple(p.shape)} holds {local_rows} rows on this rank where "
            f"torch.chunk's split over {world} ranks gives {stop - start}"
        )
    return RowShard(p.device_mesh, placements, tuple(p.shape), start, stop)


def project_rows(
    projector: Projector, state: dict[str, Any], shard: RowShard, grad: torch.Tensor, step: int
) -> Projected:
    """:meth:`Projector.project` of the full gradient, from this rank's rows ``grad`` of it.

    Returns the projected gradient as this rank uses it: its rows ``(m_i, r)`` on the right
    side (and for the identity), the whole ``(r, n)`` on the left side.
    """
    side = state["side"]
    if side not in (LEFT, RIGHT):
        return projector.project(state, grad, step)
    if step >= state["next_refresh"]:
        projected = projector.project(state, shard.gather(grad), step)
        # rank 0's basis is the one every rank uses: nondeterministic kernels cannot make ranks drift
        for key in ("indices", "basis", "basis_codes", "basis_scale", "basis_offset"):
            if key in state:
                state[key] = state[key].contiguous()
                shard.broadcast(state[key])
        low = projected.low.contiguous()
        shard.broadcast(low)
        if projected.rotation is not None:
            shard.broadcast(projected.rotation)
        if isinstance(projector.refresh, AdaptiveGap):
            # the gap grows by a threshold test on each rank's similarities: ranks must agree on the next refresh
            gap = torch.tensor([state["gap"]], device=low.device)
            shard.broadcast(gap)
            state["gap"], state["next_refresh"] = int(gap), step + int(gap)
        if side == RIGHT:
            low = low[shard.start : shard.stop]
        return projected._replace(low=low)
    basis = projector.basis(state).to(grad.dtype)
    if side == RIGHT:
        return Projected(grad @ basis, False, None, 0.0)
    return Projected(shard.all_reduce(basis[shard.start : shard.stop].mT @ grad), False, None, 0.0)


def lift_rows(projector: Projector, state: dict[str, Any], shard: RowShard, low: torch.Tensor) -> torch.Tensor:
    """This rank's rows of :meth:`Projector.lift` ``(low)`` (``low`` as :func:`project_rows` returns it)."""
    if state["side"] != LEFT:
        return projector.lift(state, low)
    return projector.basis(state)[shard.start : shard.stop].to(low.dtype) @ low
