"""Affine maps as pure functions: warps, homogeneous composition, re-centring translations (torch).

Convention
----------
* Normalized ``[-1, 1]`` coordinates of ``F.grid_sample`` / ``F.affine_grid`` with
  ``align_corners=False``; points are ``(x, y)``; bilinear; zeros outside the input.
* Output-to-input: a 2x3 ``theta`` maps an output point ``(x_o, y_o, 1)`` to the input
  point it reads.
* Geometry runs in float32 (float64 stays float64) with autocast off.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from geometry import hw

IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def sample_fp32(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear, zero-padded, align_corners=False ``grid_sample`` in float32 (autocast off)."""
    with torch.autocast(device_type=image.device.type, enabled=False):
        out = F.grid_sample(image.float(), grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(image.dtype)


def affine_warp(image: torch.Tensor, theta: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
    """Resample ``image`` (``B x C x H x W``) with 2x3 ``theta`` (``B x 2 x 3``) to ``out_size``.

    Output-to-input: output point ``(x, y)`` reads input point ``theta @ (x, y, 1)``.
    """
    out_h, out_w = hw(out_size)
    with torch.autocast(device_type=image.device.type, enabled=False):
        grid = F.affine_grid(theta.float(), [image.shape[0], image.shape[1], out_h, out_w], align_corners=False)
    return sample_fp32(image, grid)


def to_homogeneous(theta: torch.Tensor) -> torch.Tensor:
    """``B x 2 x 3`` affine matrices -> ``B x 3 x 3`` with last row ``(0, 0, 1)``."""
    last = theta.new_tensor([0.0, 0.0, 1.0]).expand(theta.shape[0], 1, 3)
    return torch.cat([theta, last], dim=1)


def compose_affine(stage_thetas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Compose output-to-input 2x3 matrices of successive warps: ``A_1 @ A_2 @ ... @ A_K``.

    Stage ``k`` warps the image already warped by stages ``1..k-1``; reading through
    ``A_k`` then through the earlier composition gives the product in this order. Each
    entry is ``B x 2 x 3``; the result is ``B x 2 x 3`` (float32 or float64).
    """
    dtype = torch.float64 if stage_thetas[0].dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=stage_thetas[0].device.type, enabled=False):
        composed = to_homogeneous(stage_thetas[0].to(dtype))
        for theta in stage_thetas[1:]:
            composed = composed @ to_homogeneous(theta.to(dtype))
    return composed[:, :2, :]


def recentre(image: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Translate satellite images ``B x C x H x W`` so the point named by ``offset`` comes to the centre.

    Convention: ``offset`` (``B x 2``) is a normalised label delta ``(d0, d1)`` (the delta over half
    the side, :mod:`models.offset`): the point sits at index row ``H/2 + d0 H/2``, column
    ``W/2 - d1 W/2`` (``d0 > 0`` south, ``d1 > 0`` west of the centre). Output pixel ``(r, c)``
    reads input ``(r + d0 H/2, c - d1 W/2)``, i.e. ``theta = [[1, 0, -d1], [0, 1, d0]]`` in the
    ``align_corners=False`` frame of :func:`affine_warp`: bilinear, ``padding_mode="zeros"`` (what
    moves in from beyond the image is 0 in the input's value space, as outside the polar
    transform). A row whose offset is exactly ``(0, 0)`` is returned bit for bit.
    """
    theta = torch.zeros(image.shape[0], 2, 3, dtype=torch.float32, device=image.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -offset[:, 1].float()
    theta[:, 1, 2] = offset[:, 0].float()
    moved = affine_warp(image, theta, image.shape[-2:])
    still = (offset == 0).all(dim=1).view(-1, 1, 1, 1)
    return torch.where(still, image, moved)
