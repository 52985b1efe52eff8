"""Pictures of what the transformation block does, and recall curves.

A transform grid has one row per sample: aerial | transformed (block output) | polar
target (the SAFA polar image of the same aerial) | panorama, all at panorama height.
"""
from __future__ import annotations

import io
import json
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from common.fileio import write_bytes_atomic
from data.io import write_image_atomic
from data.tensors import IMAGENET_MEAN, IMAGENET_STD, normalise

SEPARATOR = 4


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised ``B x 3 x H x W`` -> [0, 1] float."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() * std + mean).clamp(0, 1)


def _to_height(images: torch.Tensor, height: int) -> torch.Tensor:
    width = max(1, round(images.shape[-1] * height / images.shape[-2]))
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def transform_grid(model, sample: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The ``3 x H x W`` [0, 1] picture of ``sample`` (dict of street/satellite batches) for the
    bare (unwrapped) model, whose ``cfg`` is its :class:`models.config.ModelConfig`."""
    from models.polar import PolarTransform

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    satellite, street = (sample[key].to(device) for key in ("satellite", "street"))
    satellite, street = (normalise(x) if x.dtype == torch.uint8 else x for x in (satellite, street))
    _, _, aux = model(None, satellite, return_aux=True)
    polar = PolarTransform(satellite.shape[-2:], model.cfg.pano_size, model.cfg.polar_files).to(device)
    columns = [satellite, aux["transformed"], polar(satellite), street]
    model.train(was_training)
    height = street.shape[-2]
    columns = [_to_height(denormalize(c), height).cpu() for c in columns]
    rows = []
    for b in range(street.shape[0]):
        parts = []
        for column in columns:
            parts += [column[b], torch.ones(3, height, SEPARATOR)]
        rows += [torch.cat(parts[:-1], dim=2)]
        rows += [torch.ones(3, SEPARATOR, rows[-1].shape[2])]
    return torch.cat(rows[:-1], dim=1)


def save_transform_grid(model, sample: Dict[str, torch.Tensor], path: str) -> torch.Tensor:
    """Write the transform grid as a PNG (atomically); returns it for TensorBoard."""
    grid = transform_grid(model, sample)
    image = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    write_image_atomic(path, image)
    return grid


def plot_recall_curves(runs: Dict[str, str], path: str, metric: str = "R@1") -> None:
    """Plot street->satellite ``metric`` per epoch for each ``{label: metrics.jsonl path}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, metrics_path in runs.items():
        with open(metrics_path, encoding="utf-8") as handle:
            rows: List[dict] = [json.loads(line) for line in handle if line.strip()]
        points = [(r["epoch"], r["street_to_satellite"][metric]) for r in rows if "street_to_satellite" in r]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"street -> satellite {metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
