"""The search-direction network of ``dcdm`` and the map between unknowns and grid cells.

:class:`DirectionNetwork` is a fully convolutional 3-D U-net: a linear lift to ``filters``
channels, residual units ``x + relu(conv3x3x3(x))`` at each resolution, average pooling down,
nearest upsampling back with a skip connection added, and a per-voxel linear map to one channel,
added to the input. That last map starts at zero, so the untrained network is the identity.
With ``levels = 1`` and 4/6/4 units it is the network of Kaneda et al. (ICML 2023); more levels
reach further across the grid at a smaller cost per level.

No convolution has a bias, so the network is positively homogeneous, ``f(c r) = c f(r)`` for
``c > 0``: its output does not depend on how the residual was scaled, and a model trained on
unit vectors of a 32³ grid (entries near 32^-1.5) sees the same inputs, up to scale, on a 128³
grid. Being fully convolutional it runs on any grid; grids whose sides are not multiples of
``2**levels`` are zero-padded (zero residual outside the domain) and cropped back.

Weights travel as a plain dict of tensors and numbers (:func:`save_model`, :func:`load_model`),
loaded with ``torch.load(weights_only=True)``. torch is imported by this module: it is imported
only when a ``dcdm`` solve or a training run starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_WEIGHTS",
    "PRESETS",
    "DirectionNetwork",
    "GridMap",
    "coarse_direction",
    "load_model",
    "save_model",
    "training_grid_side",
]

#: The model shipped with the package (trained by the command recorded in its ``training`` entry).
DEFAULT_WEIGHTS = Path(__file__).with_name("dcdm_weights") / "dcdm-pressure32.pt"

#: Named architectures: ``paper`` is the 64³ network of the reference code.
PRESETS = {
    "paper": {"filters": 16, "levels": 1, "down": 4, "bottom": 6, "up": 4},
    "small": {"filters": 16, "levels": 4, "down": 2, "bottom": 2, "up": 2},
}


class DirectionNetwork(nn.Module):
    """Maps a residual on a 3-D grid to a search direction on the same grid.

    Parameters
    ----------
    filters : int
        Channels of every hidden layer.
    levels : int
        Pooling steps (``>= 0``); the coarsest grid is ``1 / 2**levels`` of the input's.
    down, bottom, up : int
        Residual units at each resolution on the way down, at the coarsest one, and at each
        resolution on the way up.

    Input and output: float tensors of shape ``(batch, 1, n0, n1, n2)``, any device.
    """

    def __init__(self, filters: int = 16, levels: int = 3, down: int = 2, bottom: int = 2, up: int = 2) -> None:
        super().__init__()
        for name, value, low in (("filters", filters, 1), ("levels", levels, 0), ("down", down, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, value in (("bottom", bottom), ("up", up)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.config = {"filters": filters, "levels": levels, "down": down, "bottom": bottom, "up": up}

        def units(count: int) -> nn.ModuleList:
            return nn.ModuleList(nn.Conv3d(filters, filters, 3, padding=1, bias=False) for _ in range(count))

        self.lift = nn.Conv3d(1, filters, 3, padding=1, bias=False)
        self.down = nn.ModuleList(units(down) for _ in range(levels))
        self.bottom = units(bottom)
        self.up = nn.ModuleList(units(up) for _ in range(levels))
        self.out = nn.Conv3d(filters, 1, 1, bias=False)
        # the untrained network is the identity, and dcdm with the identity is CG: training
        # starts from CG's directions instead of from random ones
        nn.init.zeros_(self.out.weight)

    @staticmethod
    def _residual_units(x: torch.Tensor, convs: nn.ModuleList) -> torch.Tensor:
        for conv in convs:
            x = x + F.relu(conv(x))
        return x

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r + self.correction(r)

    def correction(self, r: torch.Tensor) -> torch.Tensor:
        """``f(r) - r``: the learned part of the direction. ``dcdm`` adds ``r`` itself in the
        iterate's precision, because in float32 the smooth, amplified correction (about 1000
        times ``r`` at 32³) leaves ``r``'s own, high-frequency content only four digits."""
        if r.ndim != 5 or r.shape[1] != 1:
            raise ValueError(f"the network takes a (batch, 1, n0, n1, n2) tensor, got shape {tuple(r.shape)}")
        if r.shape[0] == 1 and r.device.type == "cpu":
            # torch's CPU conv3d leaves oneDNN for a batch of one: at 32³ a forward pass takes
            # 0.40 s for one grid and 0.08 s for two (torch 2.13), so one grid goes with a zero one
            return self.correction(torch.cat([r, torch.zeros_like(r)]))[:1]
        multiple = 2 ** self.config["levels"]
        shape = r.shape[2:]
        pad = [(-s) % multiple for s in shape]
        if any(pad):
            r = F.pad(r, (0, pad[2], 0, pad[1], 0, pad[0]))
        x = self.lift(r)
        skips = []
        for convs in self.down:
            x = self._residual_units(x, convs)
            skips.append(x)
            x = F.avg_pool3d(x, 2)
        x = self._residual_units(x, self.bottom)
        for convs in self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest") + skips.pop()
            x = self._residual_units(x, convs)
        return self.out(x)[:, :, : shape[0], : shape[1], : shape[2]]


class GridMap:
    """Scatters vectors of unknowns onto their grid cells and gathers them back.

    Parameters
    ----------
    grid : tuple of 3 ints
        The grid's shape.
    cells : array of int, shape (n,), optional
        C-order flat grid index of each unknown; default every cell in order (``n`` = cells).
    device : torch.device or str
        Where the grid tensors live.
    """

    def __init__(self, grid: tuple[int, ...], cells: Any = None, device: Any = "cpu") -> None:
        grid = tuple(int(s) for s in grid)
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"grid must be the shape of a 3-D grid, got {grid!r}")
        self.grid = grid
        size = int(np.prod(grid))
        if cells is None:
            self.cells = None
            self.n = size
        else:
            cells = np.asarray(cells)
            if cells.ndim != 1 or cells.size == 0 or cells.min() < 0 or cells.max() >= size:
                raise ValueError(f"cells must be flat indices into the {grid} grid")
            self.cells = torch.as_tensor(cells, dtype=torch.int64, device=device)
            self.n = cells.size

    def to_grid(self, v: torch.Tensor) -> torch.Tensor:
        """``(batch, n)`` or ``(n,)`` values of the unknowns -> ``(batch, 1, *grid)``, zeros elsewhere."""
        v = v.reshape(-1, self.n)
        if self.cells is None:
            return v.reshape(v.shape[0], 1, *self.grid)
        out = v.new_zeros(v.shape[0], int(np.prod(self.grid)))
        out[:, self.cells] = v
        return out.reshape(v.shape[0], 1, *self.grid)

    def from_grid(self, g: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, *grid)`` -> ``(batch, n)`` at the unknowns' cells."""
        flat = g.reshape(g.shape[0], -1)
        return flat if self.cells is None else flat[:, self.cells]


def coarse_direction(network: torch.nn.Module, r: torch.Tensor, level: int) -> torch.Tensor:
    """``network`` applied ``level`` grids coarser: ``r`` (``(batch, 1, *grid)``) averaged over
    blocks of ``2**level`` cells a side, mapped, and interpolated back trilinearly.

    A model trained on ``m³`` grids meets on ``(2**level m)³`` a Laplacian whose smooth modes
    have a quarter of the eigenvalue per level: on the coarse grid they look as in training.
    """
    factor = 2**level
    shape = r.shape[2:]
    pad = [(-s) % factor for s in shape]
    if any(pad):
        r = F.pad(r, (0, pad[2], 0, pad[1], 0, pad[0]))
    q = network(F.avg_pool3d(r, factor))
    q = F.interpolate(q, size=r.shape[2:], mode="trilinear", align_corners=False)
    return q[:, :, : shape[0], : shape[1], : shape[2]]


def training_grid_side(record: dict) -> int | None:
    """The side of the training grid of a model file's ``training`` record: the ``n`` of its
    first training problem spec, or None when the record does not say."""
    import json

    from optkit.registry import parse_spec

    try:
        problems = json.loads(record["config"])["problems"]
        n = parse_spec(problems[0])[1].get("n")
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return int(n) if isinstance(n, int) and n > 0 else None


def save_model(path: str | os.PathLike, model: DirectionNetwork, training: dict | None = None) -> None:
    """Write ``model`` (its config and float32 weights) and a ``training`` record to ``path``,
    atomically (a temporary file renamed into place)."""
    path = Path(path)
    payload = {
        "config": dict(model.config),
        "state_dict": {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()},
        "training": dict(training or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_model(path: str | os.PathLike = DEFAULT_WEIGHTS, device: Any = "cpu") -> tuple[DirectionNetwork, dict]:
    """Load a model written by :func:`save_model`: ``(model in eval mode on device, training record)``.

    The file is read with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and
    dicts only, never arbitrary objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dcdm model at {str(path)!r}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or not {"config", "state_dict"} <= payload.keys():
        raise ValueError(f"{str(path)!r} is not a dcdm model file (expected keys 'config' and 'state_dict')")
    model = DirectionNetwork(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), dict(payload.get("training", {}))
