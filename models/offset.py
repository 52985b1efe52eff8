"""VIGOR's in-tile offset regression head (``SAFA_delta`` of the official code).

Convention: the head predicts the label delta ``(d0, d1)`` of a (street, satellite) pair divided
by half the tile side (``delta / 320`` on VIGOR's 640 tiles, ``delta / (S/2)`` on CVUSA aerials
of side ``S``; see :mod:`data.vigor` for the sign convention: the panorama sits at row ``320 + d0``,
column ``320 - d1`` of the tile).
"""
from __future__ import annotations

import torch
from torch import nn

#: Hidden width of the offset MLP (official: 512).
OFFSET_HIDDEN = 512


def normalise_delta(delta, tile_side: float):
    """Label deltas in pixels of a tile of side ``tile_side`` -> the head's normalised deltas
    (tensor or array, any shape)."""
    return delta / (tile_side / 2)


def delta_pixels(normalised, tile_side: float):
    """Normalised deltas -> label deltas in pixels of a tile of side ``tile_side`` (the inverse of
    :func:`normalise_delta`)."""
    return normalised * (tile_side / 2)


class OffsetHead(nn.Module):
    """MLP ``[street_desc, satellite_desc] (B x 2D) -> 512 -> ReLU -> 2``: the pair's normalised delta.

    Initialised as the official fully connected layers: weights truncated normal (std 0.005,
    cut at 2 std), biases 0.1. Computes in the input dtype; returns ``B x 2``.
    """

    def __init__(self, descriptor_dim: int, hidden: int = OFFSET_HIDDEN) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2 * descriptor_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        for layer in (self.layers[0], self.layers[2]):
            nn.init.trunc_normal_(layer.weight, mean=0.0, std=0.005, a=-0.01, b=0.01)
            nn.init.constant_(layer.bias, 0.1)

    def forward(self, street_desc: torch.Tensor, satellite_desc: torch.Tensor) -> torch.Tensor:
        if street_desc.shape != satellite_desc.shape:
            raise ValueError(f"street and satellite descriptors must both be B x D, got "
                             f"{tuple(street_desc.shape)} and {tuple(satellite_desc.shape)}")
        return self.layers(torch.cat([street_desc, satellite_desc], dim=1))
