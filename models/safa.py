"""The two-branch model of SAFA (Shi et al., NeurIPS 2019) with a satellite transformation block.

Street branch: backbone -> descriptor head. Satellite branch: transformation block ->
backbone -> head. By default the branches share no weights (``shared_backbone``: one
backbone, separate heads) and the head is SAFA's spatial-aware attention, whose descriptors
are ``channels * attention_maps`` long (:mod:`models.heads`), L2-normalised in float32.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from common.errors import UserError
from models.backbones import build_backbone, feature_shape
from models.heads import HEADS
from models.offset import OffsetHead
from models.pose import POSE_HEADS, PoseEmbedding, PoseHead
from models.transforms import build_transform


class SAFAModel(nn.Module):
    """Two-branch SAFA model with a satellite transformation block.

    Built by :func:`models.build_model` from a :class:`models.config.ModelConfig` (kept as
    ``self.cfg``). Submodules: ``transform`` (the block), ``street_backbone``,
    ``satellite_backbone`` (the same module with ``shared_backbone``), ``street_attention`` and
    ``satellite_attention`` (the descriptor heads of :data:`HEADS`: SAFA's, a global pool or DSM's) and,
    with ``regress_offset``, ``offset_head`` (a
    :class:`models.offset.OffsetHead`; else None), with a ``pose`` head ``pose_head`` (e.g. a
    :class:`models.pose.PoseHead`, its own encoders on the raw street and satellite inputs;
    else None). ``descriptor_dim`` is the descriptor length;
    ``similarity`` the head's pairwise similarity (a
    :class:`models.orientation.CircularCorrelation` for ``dsm``) or None (the dot product).
    Both branches' backbones see ``pano_size`` images (every block outputs that size), so
    both heads are sized from the backbone's feature map at ``pano_size`` (found by a
    meta-device dummy forward at build time).

    ``forward(street, satellite, return_aux=False, pose_tiles=None)``: ``street`` ``B x 3 x Hp x Wp``,
    ``satellite`` ``B x 3 x Hs x Ws`` (``Hp x Wp`` with ``polar_files``); either may be
    None. Returns ``(street_desc, sat_desc)`` (``B x D`` float32, L2-normalised, None
    for a None input), plus with ``return_aux`` a dict ``{"transformed": B x 3 x Hp x Wp
    block output or None}``, with an offset head also ``"offset"``: the ``B x 2``
    normalised delta of each pair (street i, satellite i), or None; with a pose head also
    ``"pose"``: ``(street PoseEmbedding, tile PoseEmbedding)`` of the street and of the first
    ``pose_tiles`` satellite inputs (None: all), or None. The satellite batch may be longer than the street batch (training appends
    semi-positives); its first B are the pairs.
    """

    def __init__(self, cfg: "ModelConfig") -> None:
        super().__init__()
        self.cfg = cfg
        self.pano_size = cfg.pano_size
        self.sate_input_size = cfg.satellite_input_size
        self.transform = build_transform(cfg)
        self.street_backbone = build_backbone(cfg.backbone, cfg.pretrained)
        self.satellite_backbone = (self.street_backbone if cfg.shared_backbone
                                   else build_backbone(cfg.backbone, cfg.pretrained))
        channels, height, width = feature_shape(self.street_backbone, *self.pano_size)
        head = HEADS.get(cfg.head)
        self.street_attention = head((height, width), channels, cfg.attention_maps)
        self.satellite_attention = head((height, width), channels, cfg.attention_maps)
        self.descriptor_dim = self.street_attention.out_dim
        #: The pairwise similarity of the head's descriptors, or None for the dot product.
        self.similarity = getattr(self.satellite_attention, "correlation", None)
        self.offset_head = OffsetHead(self.descriptor_dim) if cfg.regress_offset else None
        self.pose_head = None if cfg.pose == "none" else POSE_HEADS.get(cfg.pose)(cfg.sate_size[0])

    def _check(self, images: torch.Tensor, expected: Tuple[int, int], name: str) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != expected:
            raise UserError(
                f"{name} batch has shape {list(images.shape)} but the model was built for B x 3 x "
                f"{expected[0]} x {expected[1]}; make the data sizes match the config "
                f"(--pano_size / --sate_size, polar_files)"
            )

    def street_features(self, street: torch.Tensor) -> torch.Tensor:
        """The street backbone's feature map of a street batch (checked as :meth:`encode_street` says)."""
        height, width = self.pano_size
        if self.similarity is not None and street.ndim == 4 and 1 <= street.shape[-1] < width:
            width = street.shape[-1]
        self._check(street, (height, width), "street")
        return self.street_backbone(street)

    def encode_street(self, street: torch.Tensor) -> torch.Tensor:
        """Street (query) descriptors ``B x D``; a head with a similarity (``dsm``) also takes windows of
        a limited field of view, narrower than ``pano_size`` (``B x D'``; see :mod:`geometry.heading`)."""
        return self.street_attention(self.street_features(street))

    def pose_street(self, street: torch.Tensor) -> PoseEmbedding:
        """The pose head's embedding of a street batch (checked as :meth:`encode_street` says)."""
        self._check(street, self.pano_size, "street")
        return self._pose().embed_street(street)

    def _pose(self) -> PoseHead:
        if self.pose_head is None:
            raise ValueError("this model has no pose head (built with pose 'none')")
        return self.pose_head

    def encode_satellite(self, satellite: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(satellite descriptors B x D, transformed satellite B x 3 x Hp x Wp)``."""
        self._check(satellite, self.sate_input_size, "satellite")
        transformed = self.transform(satellite)
        return self.satellite_attention(self.satellite_backbone(transformed)), transformed

    def forward(self, street: Optional[torch.Tensor], satellite: Optional[torch.Tensor], return_aux: bool = False,
                pose_tiles: Optional[int] = None):
        features = None if street is None else self.street_features(street)
        street_desc = None if features is None else self.street_attention(features)
        sat_desc = transformed = None
        if satellite is not None:
            sat_desc, transformed = self.encode_satellite(satellite)
        if not return_aux:
            return street_desc, sat_desc
        aux: Dict[str, Optional[torch.Tensor]] = {"transformed": transformed}
        if self.offset_head is not None:
            both = street_desc is not None and sat_desc is not None
            aux["offset"] = self.predict_offset(street_desc, sat_desc[:street_desc.shape[0]]) if both else None
        if self.pose_head is not None:
            both = street is not None and satellite is not None
            aux["pose"] = (self.pose_head.embed_street(street),
                           self.pose_head.embed_satellite(satellite[:pose_tiles])) if both else None
        return street_desc, sat_desc, aux

    def predict_offset(self, street_desc: torch.Tensor, sat_desc: torch.Tensor) -> torch.Tensor:
        """The offset head on descriptor pairs (B x D each): ``B x 2`` normalised deltas."""
        if self.offset_head is None:
            raise ValueError("this model has no offset head (built without regress_offset)")
        return self.offset_head(street_desc, sat_desc)
