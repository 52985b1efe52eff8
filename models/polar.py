"""The SAFA polar transform as a fixed differentiable sampling block over :mod:`geometry.polar`.

The formula and its conventions ((x, y) order, ``align_corners=False`` frame,
output-to-input sampling, bilinear with zeros outside) are documented in
:mod:`geometry.polar`; :func:`geometry.polar.polar_grid` is the grid this block samples.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from geometry import hw
from geometry.polar import polar_grid


class PolarTransform(nn.Module):
    """Fixed SAFA polar transform: satellite ``B x C x Hs x Ws`` -> ``B x C x Hp x Wp``.

    The grid is a non-persistent buffer (rebuilt from the sizes, never stored in a
    state_dict). With ``polar_files=True`` the input is already a polar image read from
    ``polarmap`` files and the block is the identity; its input must then be ``Hp x Wp``.
    Sampling runs in float32 even under autocast; the output has the input's dtype.
    """

    def __init__(self, sate_size: Sequence[int], pano_size: Sequence[int], polar_files: bool = False) -> None:
        super().__init__()
        self.sate_size = hw(sate_size)
        self.pano_size = hw(pano_size)
        self.polar_files = bool(polar_files)
        grid = torch.zeros(0) if self.polar_files else torch.from_numpy(polar_grid(self.sate_size, self.pano_size))
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
