"""The trained model as a localisation tool: load it with its identity, embed tiles and panoramas.

A checkpoint's *identity* is the SHA-256 of its weights (:func:`weights_sha256`: every tensor
of ``state["model"]`` with its name, dtype and shape, in sorted key order), so the same weights
saved twice (other epoch counter, optimizer state) have the same identity and any change of
a weight gives another one. An index records it; a query refuses another checkpoint's model.

Inputs are prepared exactly like :mod:`data.vigor`'s evaluation datasets (``read_image`` at
the model's size, uint8 transport, :func:`data.tensors.normalise` on the device) and embedded
by :func:`helper.engine.extract_features`, so descriptors equal those of ``test_vigor.py``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from common.errors import UserError
from data.io import read_image
from data.tensors import to_uint8_tensor
from geometry.polar import polar_image_uint8
from helper import distributed
from helper.checkpoint import model_from_checkpoint
from helper.config import RunConfig
from helper.engine import extract_features
from localization.geo import GeoTileReader
from localization.tiles import Tile


def weights_sha256(state_dict: Dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state_dict's tensors: names, dtypes, shapes and bytes, keys sorted."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class LoadedModel:
    """A model rebuilt from its checkpoint's config with its weights loaded strictly."""

    path: str
    sha256: str
    run: RunConfig
    model: torch.nn.Module
    env: distributed.DistEnv

    @property
    def pano_size(self) -> Tuple[int, int]:
        return tuple(self.run.model.pano_size)

    @property
    def satellite_size(self) -> Tuple[int, int]:
        return tuple(self.run.model.satellite_input_size)

    @property
    def correlation(self):
        """The dsm head's :class:`models.orientation.CircularCorrelation`, or None (dot product)."""
        return distributed.unwrap(self.model).similarity

    def identity(self) -> dict:
        """What an index records about the checkpoint."""
        return {"path": os.path.abspath(self.path), "sha256": self.sha256, "config": self.run.to_dict()}


def load_model(path: str, device: str = "auto") -> LoadedModel:
    """Load ``path`` (strictly) onto ``device`` (auto/cpu/cuda), in eval mode."""
    run, model, state = model_from_checkpoint(path)
    env = distributed.DistEnv(0, 1, 0, distributed.resolve_device(device))
    model = distributed.wrap_model(model, env).eval()
    return LoadedModel(path, weights_sha256(state["model"]), run, model, env)


class TileImages(Dataset):
    """``{"satellite": 3 x H x W uint8, "index": i}`` for a list of tiles.

    With a ``polar_files`` model the satellite input is the SAFA polar image of the
    full-resolution tile (:func:`geometry.polar.polar_image_uint8` at the model's panorama
    size), which is what ``python -m data.convert_polar`` writes when run at that size.
    """

    def __init__(self, tiles: Sequence[Tile], size: Sequence[int], polar: bool = False) -> None:
        self.tiles = list(tiles)
        self.size = tuple(size)
        self.polar = bool(polar)
        self.read = GeoTileReader()

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> dict:
        tile = self.tiles[i]
        if self.polar:
            image = polar_image_uint8(self.read(tile), *self.size)
        else:
            image = self.read(tile, self.size)
        return {"satellite": to_uint8_tensor(image), "index": int(i)}


class PanoramaFiles(Dataset):
    """``{"street": 3 x H x W uint8, "index": i}`` for panorama files, each decoded when its batch is
    formed, at the model's size ``size`` (H, W) exactly as the evaluation datasets read it."""

    def __init__(self, paths: Sequence[str], size: Sequence[int]) -> None:
        self.paths = list(paths)
        self.size = tuple(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {"street": to_uint8_tensor(read_image(self.paths[i], self.size)), "index": int(i)}


def embed(loaded: LoadedModel, dataset: Dataset, key: str, batch_size: int, workers: int, desc: str) -> np.ndarray:
    """float32 descriptors (len(dataset) x D) of one branch (``"street"`` or ``"satellite"``)."""
    if len(dataset) == 0:
        raise UserError("nothing to embed")
    desc_tensor = extract_features(loaded.model, dataset, loaded.env, (key,), batch_size, workers, desc=desc)[key]
    out = np.ascontiguousarray(desc_tensor.numpy(), dtype=np.float32)
    if not np.isfinite(out).all():
        raise UserError(f"the model in {loaded.path} produced non-finite descriptors (a diverged or broken "
                        "checkpoint)")
    if loaded.correlation is not None:  # dsm feature maps: unit norm, so inner products are correlations
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out
