"""Models: backbones, the SAFA head, the satellite transformation blocks, ``build_model``.

``build_model(cfg)`` is the only constructor train and test scripts call; ``cfg`` is a
:class:`models.config.ModelConfig` or the plain JSON-able dict stored as ``config.json``
and in checkpoints (its model keys are read, missing ones take the defaults, other
(training) keys are ignored).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Union

from torch import nn

from models.backbones import BACKBONES
from models.config import ModelConfig
from models.safa import SAFAModel
from models.transforms import TRANSFORMS

__all__ = ["BACKBONES", "TRANSFORMS", "DEFAULT_CONFIG", "ModelConfig", "resolve_config", "build_model",
           "count_parameters"]

#: The model's default settings as a plain dict (from :class:`ModelConfig`).
DEFAULT_CONFIG: Dict[str, Any] = ModelConfig().to_dict()


def resolve_config(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """Copy of the flat dict ``cfg`` with its model keys validated and the missing ones filled in.

    Unknown transform/backbone names raise a :class:`common.errors.UserError` listing the
    valid ones; so do bad sizes and settings :class:`ModelConfig` refuses. Other keys are kept.
    """
    return {**cfg, **ModelConfig.from_dict(cfg).to_dict()}


def build_model(cfg: Union[ModelConfig, Mapping[str, Any]]) -> nn.Module:
    """Build the two-branch SAFA model described by ``cfg`` (see module doc)."""
    return SAFAModel(ModelConfig.coerce(cfg))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
