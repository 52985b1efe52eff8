"""The SAFA polar transform as a fixed differentiable sampling block.

Convention
----------
* Frames are ``F.grid_sample`` normalized coordinates with ``align_corners=False``:
  pixel column ``c`` of a width-``W`` image has its centre at ``x = (2c + 1) / W - 1``
  (likewise rows / ``y``); ``(-1, -1)`` is the top-left corner of the top-left pixel.
* Points and grids are ``(x, y)`` ordered (x = column axis, y = row axis).
* Sampling is output-to-input: for every output (panorama-frame) pixel the grid holds
  the satellite position it reads; bilinear, zeros outside the satellite.

The formula is the one of ``data.convert_polar`` (SAFA, datasets.md). For an
``Hs x Ws`` satellite and an ``Hp x Wp`` output, output pixel ``(i, j)`` reads::

    r_row = (Hs/2) / Hp * (Hp - 1 - i);  r_col = (Ws/2) / Hp * (Hp - 1 - i)
    row   = Hs/2 + r_row * cos(2*pi*j/Wp)
    col   = Ws/2 - r_col * sin(2*pi*j/Wp)

For a square satellite (``Hs == Ws == S``) this is exactly the SAFA formula. For a
non-square one, rows are scaled by ``Hs`` and columns by ``Ws`` (an ellipse inscribed in
the image), i.e. ``row`` comes from ``polar_source_coords(Hs, ...)`` and ``col`` from
``polar_source_coords(Ws, ...)``.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.convert_polar import polar_source_coords
from helper.errors import UserError


def _pair(size: Sequence[int]) -> Tuple[int, int]:
    height, width = (int(v) for v in size)
    return height, width


def polar_grid(sate_size: Sequence[int], pano_size: Sequence[int]) -> torch.Tensor:
    """Sampling grid ``1 x Hp x Wp x 2`` (float32, (x, y), align_corners=False) of the SAFA polar map.

    ``sate_size = (Hs, Ws)`` is the satellite (input) size, ``pano_size = (Hp, Wp)`` the
    output size. ``F.grid_sample(sat, grid, align_corners=False, padding_mode="zeros")``
    reproduces ``data.convert_polar.polar_transform`` for square satellites.
    """
    sate_h, sate_w = _pair(sate_size)
    pano_h, pano_w = _pair(pano_size)
    row, _ = polar_source_coords(sate_h, pano_h, pano_w)
    _, col = polar_source_coords(sate_w, pano_h, pano_w)
    x = (2.0 * col + 1.0) / sate_w - 1.0
    y = (2.0 * row + 1.0) / sate_h - 1.0
    grid = np.stack([x, y], axis=-1)[None]
    return torch.from_numpy(grid.astype(np.float32))


def polar_map_points(points: np.ndarray, sate_size: Sequence[int], pano_size: Sequence[int]) -> np.ndarray:
    """Map panorama-frame points to satellite-frame points with the SAFA polar formula.

    ``points``: ``... x 2`` array of (x, y) normalized output positions (continuous, not
    only pixel centres). Returns the ``... x 2`` float64 (x, y) normalized satellite
    positions they read. At pixel centres it equals :func:`polar_grid`.
    """
    sate_h, sate_w = _pair(sate_size)
    pano_h, pano_w = _pair(pano_size)
    points = np.asarray(points, dtype=np.float64)
    j = ((points[..., 0] + 1.0) * pano_w - 1.0) / 2.0  # continuous output column
    i = ((points[..., 1] + 1.0) * pano_h - 1.0) / 2.0  # continuous output row
    ring = (pano_h - 1.0 - i) / pano_h
    theta = 2.0 * np.pi * j / pano_w
    row = sate_h / 2.0 + (sate_h / 2.0) * ring * np.cos(theta)
    col = sate_w / 2.0 - (sate_w / 2.0) * ring * np.sin(theta)
    return np.stack([(2.0 * col + 1.0) / sate_w - 1.0, (2.0 * row + 1.0) / sate_h - 1.0], axis=-1)


class PolarTransform(nn.Module):
    """Fixed SAFA polar transform: satellite ``B x C x Hs x Ws`` -> ``B x C x Hp x Wp``.

    The grid is a non-persistent buffer (rebuilt from the sizes, never stored in a
    state_dict). With ``polar_files=True`` the input is already a polar image read from
    ``polarmap`` files and the block is the identity; its input must then be ``Hp x Wp``.
    Sampling runs in float32 even under autocast; the output has the input's dtype.
    """

    def __init__(self, sate_size: Sequence[int], pano_size: Sequence[int], polar_files: bool = False) -> None:
        super().__init__()
        self.sate_size = _pair(sate_size)
        self.pano_size = _pair(pano_size)
        self.polar_files = bool(polar_files)
        grid = torch.zeros(0) if self.polar_files else polar_grid(self.sate_size, self.pano_size)
        self.register_buffer("grid", grid, persistent=False)

    def forward(self, satellite: torch.Tensor) -> torch.Tensor:
        if self.polar_files:
            if tuple(satellite.shape[-2:]) != self.pano_size:
                raise UserError(
                    f"polar_files is set, so satellite inputs must already be polar images of "
                    f"pano_size {list(self.pano_size)}, but got {list(satellite.shape[-2:])}; "
                    f"regenerate the polarmap files with `python -m data.convert_polar --height "
                    f"{self.pano_size[0]} --width {self.pano_size[1]}` or unset polar_files"
                )
            return satellite
        with torch.autocast(device_type=satellite.device.type, enabled=False):
            grid = self.grid.expand(satellite.shape[0], -1, -1, -1)
            out = F.grid_sample(satellite.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.to(satellite.dtype)

    def extra_repr(self) -> str:
        return f"sate_size={list(self.sate_size)}, pano_size={list(self.pano_size)}, polar_files={self.polar_files}"
