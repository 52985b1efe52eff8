"""Descriptor heads behind the ``HEADS`` registry: SAFA's spatial-aware attention, a global pool, DSM.

A head maps backbone features ``B x C x h x w`` to ``B x D`` descriptors, L2-normalised in
float32; it is built as ``head(feature_size (h, w), channels, maps)``. A head whose
descriptors are compared by something else than the dot product has a ``correlation``
(``dsm``: :class:`models.orientation.CircularCorrelation`); the others have none.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from models.orientation import CircularCorrelation
from models.registry import Registry

#: Channels of the DSM head's feature maps (DSM reduces VGG16's 512 channels to 16).
DSM_CHANNELS = 16


class SpatialAwareAttention(nn.Module):
    """SAFA spatial-aware attention and aggregation for a fixed feature-map size.

    For features ``B x C x h x w`` (``N = h * w`` positions, ``d = maps``):
    ``m = max over channels`` (``B x N``; the seed and the VIGOR code take the max, SAFA's
    released TensorFlow code the mean of the channels); per map ``k``:
    ``a_k = W2_k^T (W1_k^T m + b1_k) + b2_k`` with ``W1_k`` ``N x N//2`` and ``W2_k``
    ``N//2 x N`` (no non-linearity in between, as in SAFA's ``spatial_aware``), giving
    the attention ``B x N x d``; descriptor ``= features (B x C x N) @ attention`` ->
    ``B x C x d`` -> flattened channel-major (``index = c * d + k``) -> L2-normalised in
    float32. Parameters use SAFA's layout (``weight1`` ``N x N//2 x d``, ``bias1``
    ``1 x N//2 x d``, ``weight2`` ``N//2 x N x d``, ``bias2`` ``1 x N x d``) and init
    (truncated normal, std 0.005, cut at 2 std; biases 0.1).
    """

    def __init__(self, feature_size: Sequence[int], channels: int, maps: int = 8) -> None:
        super().__init__()
        self.feature_size = tuple(int(v) for v in feature_size)
        positions = self.feature_size[0] * self.feature_size[1]
        hidden = positions // 2
        if hidden < 1:
            raise UserError(
                f"the backbone feature map is only {self.feature_size[0]} x {self.feature_size[1]}: too small for "
                f"the spatial-aware attention; use larger --pano_size (at least 32 px per side)"
            )
        if int(maps) < 1:
            raise UserError(f"attention_maps must be >= 1, got {maps}")
        self.channels, self.maps = int(channels), int(maps)
        self.out_dim = self.channels * self.maps
        self.weight1 = nn.Parameter(torch.empty(positions, hidden, self.maps))
        self.bias1 = nn.Parameter(torch.full((1, hidden, self.maps), 0.1))
        self.weight2 = nn.Parameter(torch.empty(hidden, positions, self.maps))
        self.bias2 = nn.Parameter(torch.full((1, positions, self.maps), 0.1))
        for weight in (self.weight1, self.weight2):
            nn.init.trunc_normal_(weight, mean=0.0, std=0.005, a=-0.01, b=0.01)

    def attention(self, features: torch.Tensor) -> torch.Tensor:
        """Spatial attention ``B x N x d`` of features ``B x C x h x w``."""
        mask = features.amax(dim=1).flatten(1)
        hidden = torch.einsum("bi,ijd->bjd", mask, self.weight1) + self.bias1
        return torch.einsum("bjd,jid->bid", hidden, self.weight2) + self.bias2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if tuple(features.shape[-2:]) != self.feature_size or features.shape[1] != self.channels:
            raise ValueError(
                f"features must be B x {self.channels} x {self.feature_size[0]} x {self.feature_size[1]}, "
                f"got {tuple(features.shape)}"
            )
        attention = self.attention(features)
        descriptor = torch.bmm(features.flatten(2), attention.to(features.dtype)).flatten(1)
        return F.normalize(descriptor.float(), p=2.0, dim=1)


class GlobalPoolHead(nn.Module):
    """``pool`` head (Sample4Geo's): the channel-wise mean of the feature map, L2-normalised in
    float32; descriptor length = channels. No parameters, any feature-map size."""

    def __init__(self, feature_size: Sequence[int], channels: int, maps: int = 1) -> None:
        super().__init__()
        self.channels = self.out_dim = int(channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 4 or features.shape[1] != self.channels:
            raise ValueError(f"features must be B x {self.channels} x h x w, got {tuple(features.shape)}")
        return F.normalize(features.float().mean(dim=(2, 3)), p=2.0, dim=1)


class DSMHead(nn.Module):
    """``dsm`` head (Shi et al. 2020): a 1x1 convolution to :data:`DSM_CHANNELS` channels; the
    descriptor is the whole ``DSM_CHANNELS x h x w'`` map flattened channel-major and
    L2-normalised in float32 (``w' <= w``: a street window of limited field of view).
    Descriptors are compared by :attr:`correlation` (max over circular column shifts), whose
    best shift is the heading estimate; ``out_dim`` is the full-width length."""

    def __init__(self, feature_size: Sequence[int], channels: int, maps: int = 1) -> None:
        super().__init__()
        self.channels = int(channels)
        height, width = (int(v) for v in feature_size)
        self.project = nn.Conv2d(self.channels, DSM_CHANNELS, kernel_size=1)
        self.correlation = CircularCorrelation(DSM_CHANNELS, height, width)
        self.out_dim = DSM_CHANNELS * height * width

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        c = self.correlation
        if (features.dim() != 4 or features.shape[1] != self.channels or features.shape[2] != c.height
                or not 1 <= features.shape[3] <= c.width):
            raise ValueError(f"features must be B x {self.channels} x {c.height} x (at most {c.width}), "
                             f"got {tuple(features.shape)}")
        return F.normalize(self.project(features).float().flatten(1), p=2.0, dim=1)


#: Descriptor heads ``head(feature_size (h, w), channels, maps) -> B x D`` (L2-normalised float32).
HEADS = Registry("head")
HEADS.register("safa")(SpatialAwareAttention)
HEADS.register("pool")(GlobalPoolHead)
HEADS.register("dsm")(DSMHead)
#: Heads whose street descriptors may come from windows of a limited field of view.
WINDOW_HEADS = ("dsm",)
