"""The dense pose head (``--pose dense``): where inside its satellite tile a panorama was taken, and which way.

Design (after CCVPE, Xia et al. 2023, and HC-Net, Wang et al. 2023: matching, not regression from
global descriptors; the polar geometry of SAFA, applied at every cell instead of the tile centre)
------------------------------------------------------------------------------------------------
* **Its own two encoders** (:class:`Encoder`: four 3x3 stride-2 convolutions of 32, 64, 96, 128
  channels with GroupNorm and ReLU, a 3x3 at stride 16, upsampled and joined to the stride-4 map),
  one on the **raw** satellite tile and one on the raw panorama. The head shares nothing with the
  retrieval network, so it works behind every transformation block (whatever the block hands the
  satellite backbone) and its loss leaves the retrieval descriptors alone.
* **Tile**: a 1x1 convolution of the stride-4 map to :data:`CHANNELS` features per location,
  L2-normalised.
* **Panorama**: the stride-4 map averaged into :data:`BANDS` row bands, resampled to
  :data:`COLUMNS` columns (column ``c`` looks at azimuth ``360 (c + 1/2) / COLUMNS - 180``
  degrees from the panorama's centre column), a 1x1 convolution of each column's bands to
  ``CHANNELS x len(RADII)`` features: the *strip*, ``CHANNELS`` features per (radius, column),
  each L2-normalised.
* **The aerial panorama of a point**: the tile's features sampled (bilinearly; zeros outside the
  tile) along ``COLUMNS`` rays from the point, ray ``c`` at azimuth ``360 (c + 1/2) / COLUMNS -
  180`` degrees clockwise from north (the direction a north-aligned panorama's column ``c`` looks
  at, :mod:`geometry.heading`), at the :data:`RADII`: what a north-aligned panorama taken there
  should look like.
* **Matching, position and heading jointly**: a panorama of heading ``h`` is its north-aligned
  strip rolled left by ``k = h COLUMNS / 360`` columns, so its column ``c`` matches the aerial
  panorama's column ``c + k``. The logit of (cell ``p``, shift ``k``) is a learned scale times the
  mean over radii and columns of ``<strip[r, c], aerial_p[r, (c + k) mod COLUMNS]>`` (a circular
  cross-correlation: the strip rolled to every shift, one matrix product): a joint distribution
  over ``G x G`` cells and ``COLUMNS`` headings. Training puts its target at the labelled point and heading (0 for
  north-aligned panoramas); the position distribution is the heading marginal.
* **Estimates**: the position is the soft-argmax of the cell centres in the 3x3 window around the
  marginal's peak (sub-cell); the heading is read from the shift logits of the aerial panorama of
  that point, soft-argmax of the shifts in the circular window of 3 around the peak (sub-column),
  ``k 360 / COLUMNS`` degrees.
* **Match anywhere**: a tile's pose score for a panorama is, at its best heading, the ``logsumexp``
  of the logits over the cells divided by the scale: a smooth maximum that does not assume the
  tile centre (``--rerank_score pose``).

Positions are normalised label deltas ``(d0, d1)`` (:mod:`models.offset`): the panorama sits at
index row ``S/2 (1 + d0)``, column ``S/2 (1 - d1)``. The cell grid has ``G`` =
:func:`cell_grid` cells a side; cell ``(i, j)`` (row-major index ``i G + j``) has its centre at
row ``(i + 1/2) S / G``, column ``(j + 1/2) S / G``. Cost per pair: ``G^2 x COLUMNS x
len(RADII)`` bilinear samples of ``CHANNELS`` features (at ``G = 32``: 131,072 samples, 2.1 M
values) and ``G^2 x COLUMNS^2 x CHANNELS x len(RADII)`` multiply-adds of the correlation (67 M);
computed in float32 with autocast off.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from geometry.heading import FULL_CIRCLE
from models.registry import Registry

#: Features per location of the tile map, and per (radius, column) of the panorama strip.
CHANNELS = 16
#: Radii of the aerial panorama's samples, in tile half-sides.
RADII = (0.1, 0.25, 0.45, 0.7)
#: Row bands the panorama's feature map is averaged into.
BANDS = 4
#: Columns of the panorama strip and of the aerial panoramas (11.25 degrees each).
COLUMNS = 32
#: The smallest and the largest cell grid side.
MIN_CELLS, MAX_CELLS = 16, 32
#: Channels of the encoders' stages (strides 2, 4, 8, 16).
ENCODER_CHANNELS = (32, 64, 96, 128)
#: Initial scale of the joint logits (learned, in log space), and its ceiling.
INITIAL_SCALE = 10.0
MAX_SCALE = 100.0


def cell_grid(side: int) -> int:
    """Cells per side ``G`` of a tile of ``side`` pixels: its stride-4 map (``ceil(ceil(S / 2) / 2)``),
    at most :data:`MAX_CELLS`."""
    return min(MAX_CELLS, math.ceil(math.ceil(int(side) / 2) / 2))


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(8, cout),
                         nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """Image ``B x 3 x H x W`` -> ``B x ENCODER_CHANNELS[1] x ceil(H/4) x ceil(W/4)`` (module doc)."""

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3, c4 = ENCODER_CHANNELS
        self.fine = nn.Sequential(_block(3, c1, 2), _block(c1, c2, 2))
        self.coarse = nn.Sequential(_block(c2, c3, 2), _block(c3, c4, 2), _block(c4, c4, 1))
        self.join = _block(c2 + c4, c2, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fine = self.fine(images)
        coarse = F.interpolate(self.coarse(fine), size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.join(torch.cat([fine, coarse], dim=1))


class PoseEmbedding(NamedTuple):
    """What the head matches: the panoramas' ``strip`` ``B x CHANNELS x len(RADII) x COLUMNS``, or
    the tiles' feature maps ``tiles`` ``B x CHANNELS x h x w`` (the other None); both L2-normalised
    over channels."""

    strip: torch.Tensor = None
    tiles: torch.Tensor = None


class PoseHead(nn.Module):
    """The dense pose head (module doc) for square tiles of ``tile_side`` pixels."""

    def __init__(self, tile_side: int) -> None:
        super().__init__()
        self.cells = cell_grid(tile_side)
        if self.cells < MIN_CELLS:
            raise ValueError(f"a tile of {tile_side} pixels gives {self.cells} cells a side; the pose head needs at "
                             f"least {MIN_CELLS} (tiles of {4 * MIN_CELLS - 3}+ pixels)")
        self.street = Encoder()
        self.street_project = nn.Conv1d(ENCODER_CHANNELS[1] * BANDS, CHANNELS * len(RADII), 1)
        self.aerial = Encoder()
        self.aerial_project = nn.Conv2d(ENCODER_CHANNELS[1], CHANNELS, 1)
        self.log_scale = nn.Parameter(torch.tensor(math.log(INITIAL_SCALE)))
        centres = (torch.arange(self.cells, dtype=torch.float32) + 0.5) / self.cells
        self.register_buffer("centres", centres, persistent=False)
        # grid_sample's (x, y) in [-1, 1]: x = column (east), y = row (south); cells row-major
        y, x = torch.meshgrid(2 * centres - 1, 2 * centres - 1, indexing="ij")
        self.register_buffer("cell_points", torch.stack([x, y], dim=-1).view(-1, 2), persistent=False)
        azimuth = torch.deg2rad((torch.arange(COLUMNS, dtype=torch.float32) + 0.5) * (FULL_CIRCLE / COLUMNS)
                                - FULL_CIRCLE / 2)
        radii = torch.tensor(RADII, dtype=torch.float32)[:, None]
        rays = torch.stack([radii * torch.sin(azimuth), -radii * torch.cos(azimuth)], dim=-1)  # R x COLUMNS x 2
        self.register_buffer("rays", rays, persistent=False)
        column = torch.arange(COLUMNS)
        #: ``[k, c] = (c - k) mod COLUMNS``: a strip indexed by it is the strip rolled right by every shift k.
        self.register_buffer("shifts", (column[None, :] - column[:, None]) % COLUMNS, persistent=False)

    # -- embeddings -----------------------------------------------------------------------------
    def embed_street(self, panoramas: torch.Tensor) -> PoseEmbedding:
        """Panoramas ``B x 3 x H x W`` (as the street backbone gets them) -> their :class:`PoseEmbedding`."""
        features = F.adaptive_avg_pool2d(self.street(panoramas), (BANDS, None))
        features = F.interpolate(features, size=(BANDS, COLUMNS), mode="bilinear", align_corners=False)
        strip = self.street_project(features.flatten(1, 2)).float()
        return PoseEmbedding(strip=F.normalize(strip.view(-1, CHANNELS, len(RADII), COLUMNS), dim=1))

    def embed_satellite(self, satellite: torch.Tensor) -> PoseEmbedding:
        """Raw tiles ``B x 3 x S x S`` -> their :class:`PoseEmbedding`."""
        return PoseEmbedding(tiles=F.normalize(self.aerial_project(self.aerial(satellite)).float(), dim=1))

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=MAX_SCALE)

    # -- matching --------------------------------------------------------------------------------
    def aerial_panoramas(self, tiles: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``B x CHANNELS x len(RADII) x P x COLUMNS``: the aerial panoramas (module doc) of the tile maps
        ``B x CHANNELS x h x w`` at ``points`` ``B x P x 2`` (or ``P x 2``, every tile), grid_sample's
        ``(x, y)`` in ``[-1, 1]``."""
        if points.ndim == 2:
            points = points.expand(tiles.shape[0], -1, -1)
        grid = points[:, None, :, None, :] + self.rays[None, :, None, :, :]  # B x R x P x COLUMNS x 2
        with torch.autocast(device_type=tiles.device.type, enabled=False):
            sampled = F.grid_sample(tiles.float(), grid.flatten(2, 3), mode="bilinear", padding_mode="zeros",
                                    align_corners=False)
        return sampled.view(*sampled.shape[:3], points.shape[1], COLUMNS)

    def pair_logits(self, strip: torch.Tensor, aerial: torch.Tensor) -> torch.Tensor:
        """``B x P x COLUMNS`` joint logits of the pairs (strip i ``B x E x R x COLUMNS``, aerial panoramas
        i ``B x E x R x P x COLUMNS``): entry ``[b, p, k]`` scores point ``p`` at shift ``k`` (module doc)."""
        return self._scaled(torch.einsum("berkc,berpc->bpk", strip.float()[..., self.shifts], aerial.float()))

    def _scaled(self, correlation: torch.Tensor) -> torch.Tensor:
        """The scale times the mean over radii and columns of the summed cosines."""
        return self.scale() * correlation / (len(RADII) * COLUMNS)

    def cell_panoramas(self, tiles: PoseEmbedding) -> torch.Tensor:
        """``B x E x R x G^2 x COLUMNS``: the tiles' aerial panoramas at every cell centre."""
        return self.aerial_panoramas(tiles.tiles, self.cell_points)

    def cell_logits(self, street: PoseEmbedding, tiles: PoseEmbedding) -> torch.Tensor:
        """``B x G^2 x COLUMNS`` joint logits of the pairs (panorama i, tile i) over every cell and shift."""
        return self.pair_logits(street.strip, self.cell_panoramas(tiles))

    def rolled(self, strip: torch.Tensor, heading_deg: torch.Tensor) -> torch.Tensor:
        """Strips ``B x E x R x COLUMNS`` turned to north: each rolled right by its heading's shift
        ``h COLUMNS / 360`` (the weights of :meth:`heading_target`, linear between the two whole shifts),
        so that shift 0 scores it."""
        return torch.einsum("bk,berkc->berc", self.heading_target(heading_deg), strip.float()[..., self.shifts])

    def tile_logits(self, north: torch.Tensor, aerial: torch.Tensor) -> torch.Tensor:
        """``N x M``: ``logsumexp`` over the cells of the logits at shift 0 of every north-turned strip
        ``N x E x R x COLUMNS`` (:meth:`rolled`) with every tile's aerial panoramas at the cell centres
        ``M x E x R x G^2 x COLUMNS``; a softmax over a row is the tile's share of a joint softmax over
        every cell of every tile."""
        flat = aerial.permute(0, 3, 1, 2, 4).flatten(2)  # M x P x (E R COLUMNS)
        logits = self._scaled(torch.einsum("nd,mpd->nmp", north.float().flatten(1), flat.float()))
        return torch.logsumexp(logits, dim=2)

    # -- targets and decoding ------------------------------------------------------------------------
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

    @staticmethod
    def point(delta: torch.Tensor) -> torch.Tensor:
        """grid_sample's ``(x, y)`` ``B x 1 x 2`` of normalised deltas ``B x 2``."""
        return torch.stack([-delta[:, 1].float(), delta[:, 0].float()], dim=1)[:, None]

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

    @staticmethod
    def heading_target(heading_deg: torch.Tensor) -> torch.Tensor:
        """``B x COLUMNS`` soft target of headings (degrees): the shift ``h COLUMNS / 360`` split between
        its two neighbouring whole shifts (circularly)."""
        shift = torch.remainder(heading_deg.float() * COLUMNS / FULL_CIRCLE, COLUMNS)
        k0 = shift.floor().long() % COLUMNS
        frac = shift - shift.floor()
        target = heading_deg.new_zeros((heading_deg.shape[0], COLUMNS), dtype=torch.float32)
        batch = torch.arange(heading_deg.shape[0], device=heading_deg.device)
        target[batch, k0] += 1 - frac
        target[batch, (k0 + 1) % COLUMNS] += frac
        return target

    @staticmethod
    def decode_heading(logits: torch.Tensor) -> torch.Tensor:
        """Headings in degrees ``[0, 360)`` (float64) of shift logits ``B x COLUMNS``: soft-argmax of the
        shifts in the circular window of 3 around the peak."""
        peak = logits.argmax(dim=1)
        offsets = torch.arange(-1, 2, device=logits.device)
        window = logits.gather(1, (peak[:, None] + offsets) % COLUMNS)
        weights = torch.softmax(window.double(), dim=1)
        shift = peak.double() + (weights * offsets.double()).sum(dim=1)
        return torch.remainder(shift * (FULL_CIRCLE / COLUMNS), FULL_CIRCLE)

    # -- both ------------------------------------------------------------------------------------
    def point_logits(self, street: PoseEmbedding, tiles: PoseEmbedding, delta: torch.Tensor) -> torch.Tensor:
        """``B x COLUMNS`` shift logits of the pairs at the points of normalised deltas ``B x 2``."""
        return self.pair_logits(street.strip, self.aerial_panoramas(tiles.tiles, self.point(delta)))[:, 0]

    def predict(self, street: PoseEmbedding, tiles: PoseEmbedding):
        """``(delta B x 2 normalised, heading B degrees float64, score B)`` of the pairs (panorama i,
        tile i): the position estimate, the heading estimated there, the centre-free score."""
        logits = self.cell_logits(street, tiles)
        delta = self.decode_position(torch.logsumexp(logits, dim=2))
        heading = self.decode_heading(self.point_logits(street, tiles, delta))
        score = torch.logsumexp(logits, dim=1).amax(dim=1) / self.scale()
        return delta, heading, score


#: Pose heads ``head(tile side)`` by ``--pose`` name (``none``: no pose head).
POSE_HEADS = Registry("pose head")
POSE_HEADS.register("dense")(PoseHead)
#: ``--pose`` choices.
POSES = ("none", *POSE_HEADS)
