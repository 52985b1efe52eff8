"""The model's settings: one typed, validated object (``ModelConfig``), owned by this layer.

``config.json`` and checkpoints store these fields flat, next to the data and training
settings; :meth:`ModelConfig.from_dict` picks the model's keys out of such a dict (absent
keys take the defaults below) and validates them. The default sizes are SAFA's CVUSA input
sizes (:mod:`data.cvusa_layout`); each dataset's command line overrides them with its own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple, Union

from common.errors import UserError
from common.settings import as_plain, check_settings, pick, setting
from data import cvusa_layout
from geometry.polar import satellite_input_size
from models.backbones import BACKBONES
from models.heads import HEADS, WINDOW_HEADS
from models.pose import MIN_CELLS, POSES, cell_grid
from models.transforms import TRANSFORMS

STN_INITS = ("identity", "polar")



@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the two-branch SAFA model and its satellite transformation block."""

    transform: str = setting("polar", "satellite transformation block", choices=TRANSFORMS)
    backbone: str = setting("vgg16", "feature extractor of both branches (tiny = small CNN for CPU demos)",
                            choices=BACKBONES)
    pretrained: bool = setting(True, "ImageNet weights through torchvision (needs them downloaded or cached); "
                                     "also selects the default --lr and --hard_ratios")
    sate_size: Tuple[int, int] = setting(cvusa_layout.SATE_SIZE, "satellite input size H,W", minimum=32)
    pano_size: Tuple[int, int] = setting(cvusa_layout.PANO_SIZE, "panorama input size H,W (also the "
                                         "transformation block's output size)", minimum=32)
    polar_files: bool = setting(False, "read precomputed polar images (python -m data.convert_polar) instead of "
                                       "computing the polar transform on the fly; needs --transform polar")
    head: str = setting("safa", "descriptor head: SAFA's spatial-aware attention, a global average pool "
                                "(Sample4Geo), or dsm: feature maps compared over circular column shifts, "
                                "which also estimates the panorama's heading (Shi et al. 2020)", choices=HEADS)
    shared_backbone: bool = setting(False, "one backbone for both views (Sample4Geo); the heads stay separate")
    attention_maps: int = setting(8, "SAFA spatial-aware attention maps per branch (head safa)", minimum=1)
    stn_stages: int = setting(3, "composed_affine: number of affine stages", minimum=1)
    tps_grid: Tuple[int, int] = setting((6, 10), "tps: control points GH,GW", minimum=2)
    tps_span: float = setting(0.9, "tps: control points span [-span, span] of the output frame",
                              above=0.0, maximum=1.0)
    tps_bounded: bool = setting(False, "tps: bound the predicted source points with tanh")
    stn_init: str = setting("identity", "tps: start at the identity or at the polar mapping",
                            choices=lambda: STN_INITS)
    regress_offset: bool = setting(False, "an MLP on the street and satellite descriptors (hidden 512) "
                                          "regresses where inside the tile the panorama was taken (VIGOR's "
                                          "SAFA_delta); refines the metre-level localisation. VIGOR, and "
                                          "CVUSA-layout data with offset labels (--offsets_csv)")
    pose: str = setting("none", "in-tile pose head: dense = the panorama matched against a grid of cells over the raw "
                                "satellite tile (a position distribution, sub-cell estimate) and its heading read "
                                "at that point (models/pose.py); refines the metre-level localisation and scores "
                                "--rerank_score pose. Trains from offset labels (VIGOR; CVUSA: --offsets_csv)",
                        choices=lambda: POSES)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.stn_init == "polar" and self.transform != "tps":
            raise UserError(f"stn_init 'polar' is only for --transform tps (the polar mapping is not affine, so "
                            f"{self.transform!r} cannot start there); use stn_init 'identity'")
        if self.stn_init == "polar" and self.polar_files:
            raise UserError("stn_init 'polar' starts the TPS at the polar mapping of a raw satellite image, but "
                            "polar_files feeds images that are already polar; use stn_init 'identity' with "
                            "polar_files")
        if self.pose != "none":
            self._check_pose()

    def _check_pose(self) -> None:
        side = self.sate_size[0]
        if self.polar_files:
            raise UserError(f"--pose {self.pose} reads the raw satellite tile, but polar_files feeds polar images; "
                            f"drop one of them")
        if side != self.sate_size[1] or cell_grid(side) < MIN_CELLS:
            raise UserError(f"--pose {self.pose} needs a square --sate_size of at least {4 * MIN_CELLS - 3} pixels "
                            f"({MIN_CELLS} x {MIN_CELLS} cells), got {self.sate_size[0]},{self.sate_size[1]}")

    @property
    def satellite_input_size(self) -> Tuple[int, int]:
        """(H, W) of the satellite tensor the model takes: ``pano_size`` with polar files, else ``sate_size``."""
        return satellite_input_size(self.sate_size, self.pano_size, self.polar_files)

    @property
    def takes_windows(self) -> bool:
        """Whether the head takes street windows of a limited field of view (``dsm`` slides them over
        the satellite strip); the others need full-width street images."""
        return self.head in WINDOW_HEADS

    def inert(self) -> Dict[str, str]:
        """``{setting: the flag that would make it act}`` for the model settings this architecture ignores."""
        rules = {"attention_maps": ("--head safa", self.head != "safa"),
                 "stn_stages": ("--transform composed_affine", self.transform != "composed_affine"),
                 **{name: ("--transform tps", self.transform != "tps")
                    for name in ("tps_grid", "tps_span", "tps_bounded", "stn_init")}}
        return {name: flag for name, (flag, idle) in rules.items() if idle}

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "ModelConfig":
        """The model's keys of a flat config dict (others are ignored), validated."""
        if not isinstance(cfg, Mapping):
            raise UserError(f"model config must be a dict, got {type(cfg).__name__}")
        return cls(**pick(cls, cfg))

    @classmethod
    def coerce(cls, cfg: Union["ModelConfig", Mapping[str, Any]]) -> "ModelConfig":
        """``cfg`` itself, or the config read from a flat dict."""
        return cfg if isinstance(cfg, cls) else cls.from_dict(cfg)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a JSON-able dict."""
        return as_plain(self)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
