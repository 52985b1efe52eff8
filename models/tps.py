"""``TPSGridGen``: the TPS sampling grid as a module over :mod:`geometry.tps` (conventions there).

The grid is a linear map of the source points, ``grid = M @ source``, with ``M`` (``HW x K``)
precomputed in float64 by :func:`geometry.tps.tps_coefficients`; the product runs in float32
(float64 for float64 inputs), never in half precision, even under autocast.
"""
from __future__ import annotations

import torch
from torch import nn

from geometry.tps import pixel_centres, tps_coefficients


class TPSGridGen(nn.Module):
    """TPS sampling grid generator (interface fixed by architecture.md).

    ``TPSGridGen(out_h, out_w, target_points)``: ``target_points`` ``K x 2`` (x, y) in
    ``[-1, 1]`` (output frame). ``forward(source_points: B x K x 2) -> B x out_h x out_w x 2``,
    a grid for ``F.grid_sample(..., align_corners=False)``. With ``source == target`` it is
    the identity grid (pixel centres); at each target point it returns the matching
    source point exactly. The ``HW x K`` coefficient matrix is a non-persistent buffer.
    """

    def __init__(self, out_h: int, out_w: int, target_points: torch.Tensor) -> None:
        super().__init__()
        self.out_h, self.out_w = int(out_h), int(out_w)
        target = torch.as_tensor(target_points, dtype=torch.float64)
        self.num_points = int(target.shape[0])
        coeff = tps_coefficients(pixel_centres(self.out_h, self.out_w), target)
        self.register_buffer("target_points", target.float(), persistent=False)
        self.register_buffer("coefficients", coeff.float(), persistent=False)

    def forward(self, source_points: torch.Tensor) -> torch.Tensor:
        if source_points.ndim != 3 or source_points.shape[1:] != (self.num_points, 2):
            raise ValueError(f"source_points must be B x {self.num_points} x 2, got {tuple(source_points.shape)}")
        dtype = torch.float64 if source_points.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=source_points.device.type, enabled=False):
            grid = torch.matmul(self.coefficients.to(dtype), source_points.to(dtype))
        return grid.view(source_points.shape[0], self.out_h, self.out_w, 2)

    def extra_repr(self) -> str:
        return f"out_h={self.out_h}, out_w={self.out_w}, num_points={self.num_points}"
