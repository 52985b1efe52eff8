"""Models: backbones, the SAFA head, the satellite transformation blocks, ``build_model``.

``build_model(cfg)`` is the only constructor train and test scripts call; ``cfg`` is the
plain JSON-able dict stored as ``config.json`` and in checkpoints. Missing model keys
take the defaults in :data:`DEFAULT_CONFIG`; other (training) keys are ignored.
"""
from __future__ import annotations

import copy
import numbers
from typing import Any, Dict

from torch import nn

from helper.errors import UserError
from models.backbones import BACKBONES
from models.safa import SAFAModel
from models.transforms import STN_TRANSFORMS, TRANSFORMS

__all__ = ["BACKBONES", "TRANSFORMS", "DEFAULT_CONFIG", "resolve_config", "build_model", "count_parameters"]

DEFAULT_CONFIG: Dict[str, Any] = {
    "transform": "polar",
    "backbone": "vgg16",
    "pretrained": True,
    "sate_size": [256, 256],
    "pano_size": [112, 616],
    "polar_files": False,
    "attention_maps": 8,
    "stn_stages": 3,
    "tps_grid": [6, 10],
    "tps_span": 0.9,
    "tps_bounded": False,
    "stn_init": "identity",
    "lambda_l1": 0.0,
}
STN_INITS = ("identity", "polar")


def _size(cfg: dict, key: str, minimum: int) -> list:
    value = cfg[key]
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
        or min(value) < minimum
    ):
        raise UserError(f"config {key} must be [H, W] with integers >= {minimum}, got {value!r}")
    return [int(v) for v in value]


def _integer(cfg: dict, key: str, minimum: int) -> int:
    value = cfg[key]
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise UserError(f"config {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _flag(cfg: dict, key: str) -> bool:
    value = cfg[key]
    if not isinstance(value, bool):
        raise UserError(f"config {key} must be true or false, got {value!r}")
    return value


def resolve_config(cfg: dict) -> dict:
    """Copy of ``cfg`` with model defaults filled in and model keys checked.

    Unknown transform/backbone names raise a :class:`UserError` listing the valid ones
    (from the registries); so do bad sizes and settings that would be silently ignored:
    ``stn_init="polar"`` without ``tps``, ``tps_bounded`` without ``tps``, ``lambda_l1 > 0``
    without an STN transform (affine, composed_affine, tps).
    """
    if not isinstance(cfg, dict):
        raise UserError(f"model config must be a dict, got {type(cfg).__name__}")
    out = copy.deepcopy(cfg)
    for key, value in DEFAULT_CONFIG.items():
        out.setdefault(key, copy.deepcopy(value))
    TRANSFORMS.get(out["transform"])
    BACKBONES.get(out["backbone"])
    out["sate_size"] = _size(out, "sate_size", 32)
    out["pano_size"] = _size(out, "pano_size", 32)
    out["tps_grid"] = _size(out, "tps_grid", 2)
    out["attention_maps"] = _integer(out, "attention_maps", 1)
    out["stn_stages"] = _integer(out, "stn_stages", 1)
    for key in ("pretrained", "polar_files", "tps_bounded"):
        _flag(out, key)
    for key in ("tps_span", "lambda_l1"):
        if not isinstance(out[key], numbers.Real) or isinstance(out[key], bool):
            raise UserError(f"config {key} must be a number, got {out[key]!r}")
        out[key] = float(out[key])
    if not 0.0 < out["tps_span"] <= 1.0:
        raise UserError(f"config tps_span must be in (0, 1], got {out['tps_span']}")
    if out["lambda_l1"] < 0:
        raise UserError(f"config lambda_l1 must be >= 0, got {out['lambda_l1']}")
    if out["stn_init"] not in STN_INITS:
        raise UserError(f"unknown stn_init {out['stn_init']!r}; valid: {', '.join(STN_INITS)}")
    transform = out["transform"]
    if out["stn_init"] == "polar" and transform != "tps":
        raise UserError(
            f"stn_init 'polar' is only for --transform tps (the polar mapping is not affine, so "
            f"{transform!r} cannot start there); use stn_init 'identity'"
        )
    if out["tps_bounded"] and transform != "tps":
        raise UserError(f"tps_bounded only applies to --transform tps, not {transform!r}; unset it")
    if out["lambda_l1"] > 0 and transform not in STN_TRANSFORMS:
        raise UserError(
            f"lambda_l1 > 0 (L1 guidance towards the polar image) needs an STN transform "
            f"({', '.join(STN_TRANSFORMS)}), not {transform!r}; set --lambda_l1 0"
        )
    return out


def build_model(cfg: dict) -> nn.Module:
    """Build the two-branch SAFA model described by the plain dict ``cfg`` (see module doc)."""
    return SAFAModel(resolve_config(cfg))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
