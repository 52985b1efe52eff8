"""The dense pose head (``--pose dense``): where inside its satellite tile a panorama was taken, and which way.

Design (after CCVPE, Xia et al. 2023: matching, not regression from global descriptors)
--------------------------------------------------------------------------------------
* **Aerial path** (:class:`AerialEncoder`): a light encoder-decoder of its own on the **raw**
  satellite tile (so it works behind every transformation block, whatever the block hands the
  satellite backbone): four 3x3 stride-2 convolutions (32, 64, 96, 128 channels, GroupNorm,
  ReLU) and one 3x3 at stride 16; that map is upsampled to the stride-4 map and joined to it,
  giving a ``G x G`` grid of cells, ``G = ceil(ceil(S / 2) / 2)`` for a tile of side ``S`` (at
  least :data:`MIN_CELLS`). Each cell has a position descriptor (:data:`POSITION_DIM`,
  L2-normalised) and a heading feature (:data:`HEADING_DIM`).
* **Street path**: the street backbone's feature map (shared with retrieval). Position: a 1x1
  convolution, ReLU, the mean over the whole map (invariant to the panorama's heading), a linear
  layer -> :data:`POSITION_DIM`, L2-normalised. Heading: a 1x1 convolution to
  ``HEADING_DIM * len(RADII)`` channels averaged over rows: one feature per street column.
* **Position distribution**: the cosine of the street descriptor with every cell, times a learned
  scale, softmax over the ``G^2`` cells. The estimate is the soft-argmax of the cell centres in
  the 3x3 window around the peak (sub-cell).
* **Heading** (:mod:`geometry.heading`'s convention): around a point the heading features are
  sampled along ``w`` rays (``w`` = the street map's columns), ray ``c`` at azimuth ``360 (c +
  1/2) / w - 180`` degrees clockwise from north (the direction a north-aligned panorama's
  column ``c`` looks at), at the :data:`RADII`: an "aerial panorama" of that point. A
  panorama of heading ``h`` is its north-aligned strip rolled left by ``h w / 360`` columns, so
  its column ``c`` matches the aerial panorama's column ``c + k`` with ``k = h w / 360``: the
  scaled cosine of the two strips under each circular shift ``k`` gives logits over ``w``
  shifts; the estimate is the soft-argmax of the shifts in the window of 3 around the peak
  (sub-column), in degrees ``k 360 / w``.
* **Match anywhere**: a tile's pose score for a panorama is ``logsumexp(logits) / scale``, a
  smooth maximum of the cell cosines that does not assume the tile centre (``--rerank_score pose``).

Positions are normalised label deltas ``(d0, d1)`` (:mod:`models.offset`): the panorama sits at
index row ``S/2 (1 + d0)``, column ``S/2 (1 - d1)``. Cell ``(i, j)`` has its centre at row
``(i + 1/2) S / G``, column ``(j + 1/2) S / G``. Computed in float32 with autocast off.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from geometry.heading import FULL_CIRCLE
from models.registry import Registry

#: Channels of a cell's (and a panorama's) position descriptor.
POSITION_DIM = 64
#: Channels of the aerial heading features.
HEADING_DIM = 16
#: Radii of the aerial panorama's samples, in tile half-sides.
RADII = (0.1, 0.2, 0.35, 0.5)
#: The smallest cell grid side (tiles of at least 64 pixels).
MIN_CELLS = 16
#: Channels of the aerial encoder's stages (strides 2, 4, 8, 16).
ENCODER_CHANNELS = (32, 64, 96, 128)
#: Initial scale of the cell and shift logits (learned, in log space).
INITIAL_SCALE = 10.0
MAX_SCALE = 100.0


def cell_grid(side: int) -> int:
    """Cells per side ``G`` of a tile of ``side`` pixels (the stride-4 map of two stride-2 convolutions)."""
    return math.ceil(math.ceil(int(side) / 2) / 2)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(8, cout),
                         nn.ReLU(inplace=True))


class AerialEncoder(nn.Module):
    """Raw tile ``B x 3 x S x S`` -> ``(cells B x POSITION_DIM x G x G`` L2-normalised over channels,
    ``heading features B x HEADING_DIM x G x G)`` (module doc)."""

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3, c4 = ENCODER_CHANNELS
        self.fine = nn.Sequential(_block(3, c1, 2), _block(c1, c2, 2))
        self.coarse = nn.Sequential(_block(c2, c3, 2), _block(c3, c4, 2), _block(c4, c4, 1))
        self.join = _block(c2 + c4, c2, 1)
        self.position = nn.Conv2d(c2, POSITION_DIM, 1)
        self.heading = nn.Conv2d(c2, HEADING_DIM, 1)

    def forward(self, satellite: torch.Tensor):
        fine = self.fine(satellite)
        coarse = F.interpolate(self.coarse(fine), size=fine.shape[-2:], mode="bilinear", align_corners=False)
        joined = self.join(torch.cat([fine, coarse], dim=1))
        return F.normalize(self.position(joined).float(), dim=1), self.heading(joined).float()


class PoseEmbedding(NamedTuple):
    """What the head matches: ``street`` ``B x POSITION_DIM`` and ``columns`` ``B x E x w`` of the
    panoramas (``E = HEADING_DIM len(RADII)``), or ``cells`` ``B x POSITION_DIM x G x G`` and
    ``heading`` ``B x HEADING_DIM x G x G`` of the tiles (the other pair None)."""

    street: torch.Tensor = None
    columns: torch.Tensor = None
    cells: torch.Tensor = None
    heading: torch.Tensor = None


class PoseHead(nn.Module):
    """The dense pose head (module doc), built from the street backbone's channels and the tile side."""

    def __init__(self, street_channels: int, tile_side: int) -> None:
        super().__init__()
        self.cells = cell_grid(tile_side)
        if self.cells < MIN_CELLS:
            raise ValueError(f"a tile of {tile_side} pixels gives {self.cells} cells a side; the pose head needs at "
                             f"least {MIN_CELLS} (tiles of {4 * MIN_CELLS - 3}+ pixels)")
        self.aerial = AerialEncoder()
        self.street_position = nn.Sequential(nn.Conv2d(street_channels, 2 * POSITION_DIM, 1), nn.ReLU(inplace=True))
        self.street_project = nn.Linear(2 * POSITION_DIM, POSITION_DIM)
        self.street_heading = nn.Conv2d(street_channels, HEADING_DIM * len(RADII), 1)
        self.log_scale = nn.Parameter(torch.tensor(math.log(INITIAL_SCALE)))
        self.log_heading_scale = nn.Parameter(torch.tensor(math.log(INITIAL_SCALE)))
        centres = (torch.arange(self.cells, dtype=torch.float32) + 0.5) / self.cells
        self.register_buffer("centres", centres, persistent=False)

    # -- embeddings -----------------------------------------------------------------------------
    def embed_street(self, features: torch.Tensor) -> PoseEmbedding:
        """Street backbone features ``B x C x h x w`` -> the panoramas' :class:`PoseEmbedding`."""
        pooled = self.street_position(features).float().mean(dim=(2, 3))
        street = F.normalize(self.street_project(pooled), dim=1)
        columns = F.normalize(self.street_heading(features).float().mean(dim=2).flatten(1), dim=1)
        return PoseEmbedding(street=street, columns=columns.view(features.shape[0], -1, features.shape[-1]))

    def embed_satellite(self, satellite: torch.Tensor) -> PoseEmbedding:
        """Raw tiles ``B x 3 x S x S`` -> the tiles' :class:`PoseEmbedding`."""
        cells, heading = self.aerial(satellite)
        if cells.shape[-1] != self.cells or cells.shape[-2] != self.cells:
            raise ValueError(f"tiles must give {self.cells} x {self.cells} cells, got {tuple(cells.shape[-2:])}")
        return PoseEmbedding(cells=cells, heading=heading)

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=MAX_SCALE)

    # -- position --------------------------------------------------------------------------------
    def position_logits(self, street: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """``B x G^2`` logits of pairs (street ``B x D``, cells ``B x D x G x G``), row-major cells."""
        return self.scale() * torch.einsum("bd,bdn->bn", street.float(), cells.float().flatten(2))

    def tile_logits(self, street: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """``N x M``: ``logsumexp`` over the cells of the logits of every panorama (``N x D``) with
        every tile (``M x D x G x G``); a softmax over a row is the tile's share of a joint softmax
        over every cell of every tile. Divided by the scale: the centre-free score (module doc)."""
        logits = self.scale() * torch.einsum("nd,mdk->nmk", street.float(), cells.float().flatten(2))
        return torch.logsumexp(logits, dim=2)

    def position_target(self, delta: torch.Tensor) -> torch.Tensor:
        """``B x G^2`` soft target of normalised deltas ``B x 2``: the bilinear weights of the 4 cell
        centres around the point (clamped into the grid), so its soft-argmax is the point."""
        g = self.cells
        row = ((1.0 + delta[:, 0].float()) / 2 * g - 0.5).clamp(0, g - 1)
        col = ((1.0 - delta[:, 1].float()) / 2 * g - 0.5).clamp(0, g - 1)
        target = delta.new_zeros((delta.shape[0], g, g), dtype=torch.float32)
        r0, c0 = row.floor().long().clamp(max=g - 2), col.floor().long().clamp(max=g - 2)
        fr, fc = row - r0, col - c0
        batch = torch.arange(delta.shape[0], device=delta.device)
        for dr, wr in ((0, 1 - fr), (1, fr)):
            for dc, wc in ((0, 1 - fc), (1, fc)):
                target[batch, r0 + dr, c0 + dc] += wr * wc
        return target.flatten(1)

    def decode_position(self, logits: torch.Tensor) -> torch.Tensor:
        """Normalised deltas ``B x 2`` of cell logits ``B x G^2``: soft-argmax of the cell centres in
        the 3x3 window around the peak (first peak among exact ties)."""
        g = self.cells
        peak = logits.argmax(dim=1)
        r0 = (peak // g).clamp(1, g - 2)
        c0 = (peak % g).clamp(1, g - 2)
        offsets = torch.arange(-1, 2, device=logits.device)
        rows = (r0[:, None] + offsets)[:, :, None].expand(-1, 3, 3)
        cols = (c0[:, None] + offsets)[:, None, :].expand(-1, 3, 3)
        window = logits.view(-1, g, g)[torch.arange(logits.shape[0], device=logits.device)[:, None, None], rows, cols]
        weights = torch.softmax(window.flatten(1).float(), dim=1).view(-1, 3, 3)
        row = (weights * self.centres[rows]).sum(dim=(1, 2))
        col = (weights * self.centres[cols]).sum(dim=(1, 2))
        return torch.stack([2 * row - 1, 1 - 2 * col], dim=1)

    # -- heading ---------------------------------------------------------------------------------
    def aerial_panorama(self, heading: torch.Tensor, delta: torch.Tensor, width: int) -> torch.Tensor:
        """``B x E x width``: the heading features ``B x HEADING_DIM x G x G`` sampled along ``width``
        rays from the points of normalised deltas ``B x 2`` at :data:`RADII` (module doc), L2-normalised."""
        azimuth = torch.deg2rad((torch.arange(width, device=heading.device, dtype=torch.float32) + 0.5)
                                * (FULL_CIRCLE / width) - FULL_CIRCLE / 2)
        radii = torch.tensor(RADII, device=heading.device, dtype=torch.float32)
        # grid_sample's (x, y) in [-1, 1]: x = column (east), y = row (south); the point is (-d1, d0)
        x = -delta[:, 1].float()[:, None, None] + radii[None, :, None] * torch.sin(azimuth)[None, None]
        y = delta[:, 0].float()[:, None, None] - radii[None, :, None] * torch.cos(azimuth)[None, None]
        grid = torch.stack([x, y], dim=-1)  # B x R x width x 2
        with torch.autocast(device_type=heading.device.type, enabled=False):
            sampled = F.grid_sample(heading.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return F.normalize(sampled.flatten(1, 2).flatten(1), dim=1).view(heading.shape[0], -1, width)

    def heading_logits(self, columns: torch.Tensor, aerial: torch.Tensor) -> torch.Tensor:
        """``B x w`` logits of the circular shifts ``k``: the scaled cosine of street column ``c`` with
        aerial column ``(c + k) mod w`` summed over columns."""
        width = columns.shape[-1]
        index = (torch.arange(width, device=columns.device)[:, None]
                 + torch.arange(width, device=columns.device)[None]) % width  # k x c
        shifted = aerial[:, :, index]  # B x E x k x c
        scale = self.log_heading_scale.exp().clamp(max=MAX_SCALE)
        return scale * torch.einsum("bec,bekc->bk", columns.float(), shifted.float())

    @staticmethod
    def heading_target(heading_deg: torch.Tensor, width: int) -> torch.Tensor:
        """``B x w`` soft target of headings (degrees): the shift ``h w / 360`` split between its two
        neighbouring whole shifts (circularly)."""
        shift = torch.remainder(heading_deg.float() * width / FULL_CIRCLE, width)
        k0 = shift.floor().long() % width
        frac = shift - shift.floor()
        target = heading_deg.new_zeros((heading_deg.shape[0], width), dtype=torch.float32)
        batch = torch.arange(heading_deg.shape[0], device=heading_deg.device)
        target[batch, k0] += 1 - frac
        target[batch, (k0 + 1) % width] += frac
        return target

    @staticmethod
    def decode_heading(logits: torch.Tensor) -> torch.Tensor:
        """Headings in degrees ``[0, 360)`` (float64) of shift logits ``B x w``: soft-argmax of the
        shifts in the circular window of 3 around the peak."""
        width = logits.shape[1]
        peak = logits.argmax(dim=1)
        offsets = torch.arange(-1, 2, device=logits.device)
        window = logits.gather(1, (peak[:, None] + offsets) % width)
        weights = torch.softmax(window.double(), dim=1)
        shift = peak.double() + (weights * offsets.double()).sum(dim=1)
        return torch.remainder(shift * (FULL_CIRCLE / width), FULL_CIRCLE)

    # -- both ------------------------------------------------------------------------------------
    def predict(self, street: PoseEmbedding, tiles: PoseEmbedding):
        """``(delta B x 2 normalised, heading B degrees float64, score B)`` of the pairs (panorama i,
        tile i): the position estimate, the heading estimated there, the centre-free score."""
        logits = self.position_logits(street.street, tiles.cells)
        delta = self.decode_position(logits)
        aerial = self.aerial_panorama(tiles.heading, delta, street.columns.shape[-1])
        heading = self.decode_heading(self.heading_logits(street.columns, aerial))
        score = torch.logsumexp(logits, dim=1) / self.scale()
        return delta, heading, score


#: Pose heads ``head(street channels, tile side)`` by ``--pose`` name (``none``: no pose head).
POSE_HEADS = Registry("pose head")
POSE_HEADS.register("dense")(PoseHead)
#: ``--pose`` choices.
POSES = ("none", *POSE_HEADS)
