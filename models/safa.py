"""SAFA: spatial-aware feature aggregation (Shi et al., NeurIPS 2019) and the two-branch model.

Street branch: backbone -> spatial-aware attention head. Satellite branch: transformation
block -> backbone -> head. The branches share no weights. Descriptors are
``channels * attention_maps`` long and L2-normalised in float32.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from models.backbones import build_backbone, feature_shape
from models.polar import PolarTransform
from models.transforms import build_transform


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


class SAFAModel(nn.Module):
    """Two-branch SAFA model with a satellite transformation block.

    Built by :func:`models.build_model` from a :class:`models.config.ModelConfig` (kept as
    ``self.cfg``). Submodules: ``transform`` (the block), ``street_backbone``,
    ``satellite_backbone``, ``street_attention``, ``satellite_attention`` and, for L1
    guidance (STN transform with ``lambda_l1 > 0``), ``polar_target`` (a fixed
    :class:`PolarTransform`, no parameters). ``descriptor_dim`` is the descriptor length.
    Both branches' backbones see ``pano_size`` images (every block outputs that size), so
    both heads are sized from the backbone's feature map at ``pano_size`` (found by a
    meta-device dummy forward at build time).

    ``forward(street, satellite, return_aux=False)``: ``street`` ``B x 3 x Hp x Wp``,
    ``satellite`` ``B x 3 x Hs x Ws`` (``Hp x Wp`` with ``polar_files``); either may be
    None. Returns ``(street_desc, sat_desc)`` (``B x D`` float32, L2-normalised, None
    for a None input), plus with ``return_aux`` a dict ``{"transformed": B x 3 x Hp x Wp
    block output or None, "polar_target": polar image of the same satellite batch
    (computed without grad) or None}``.
    """

    def __init__(self, cfg: "ModelConfig") -> None:
        super().__init__()
        self.cfg = cfg
        self.pano_size = cfg.pano_size
        self.sate_input_size = cfg.satellite_input_size
        self.transform = build_transform(cfg)
        self.street_backbone = build_backbone(cfg.backbone, cfg.pretrained)
        self.satellite_backbone = build_backbone(cfg.backbone, cfg.pretrained)
        channels, height, width = feature_shape(self.street_backbone, *self.pano_size)
        self.street_attention = SpatialAwareAttention((height, width), channels, cfg.attention_maps)
        self.satellite_attention = SpatialAwareAttention((height, width), channels, cfg.attention_maps)
        self.descriptor_dim = self.street_attention.out_dim
        self.polar_target = (
            PolarTransform(cfg.sate_size, cfg.pano_size, polar_files=cfg.polar_files) if cfg.l1_guidance else None
        )

    def _check(self, images: torch.Tensor, expected: Tuple[int, int], name: str) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != expected:
            raise UserError(
                f"{name} batch has shape {list(images.shape)} but the model was built for B x 3 x "
                f"{expected[0]} x {expected[1]}; make the data sizes match the config "
                f"(--pano_size / --sate_size, polar_files)"
            )

    def encode_street(self, street: torch.Tensor) -> torch.Tensor:
        """Street (query) descriptors ``B x D``."""
        self._check(street, self.pano_size, "street")
        return self.street_attention(self.street_backbone(street))

    def encode_satellite(self, satellite: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(satellite descriptors B x D, transformed satellite B x 3 x Hp x Wp)``."""
        self._check(satellite, self.sate_input_size, "satellite")
        transformed = self.transform(satellite)
        return self.satellite_attention(self.satellite_backbone(transformed)), transformed

    def forward(self, street: Optional[torch.Tensor], satellite: Optional[torch.Tensor], return_aux: bool = False):
        street_desc = None if street is None else self.encode_street(street)
        sat_desc = transformed = polar_target = None
        if satellite is not None:
            sat_desc, transformed = self.encode_satellite(satellite)
            if return_aux and self.polar_target is not None:
                with torch.no_grad():
                    polar_target = self.polar_target(satellite)
        if not return_aux:
            return street_desc, sat_desc
        aux: Dict[str, Optional[torch.Tensor]] = {"transformed": transformed, "polar_target": polar_target}
        return street_desc, sat_desc, aux
