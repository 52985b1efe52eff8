"""Tiny datasets in the real on-disk layouts, for end-to-end tests.

The CVUSA-layout world is a known function: each panorama is the SAFA polar transform
of its aerial (plus noise), so a model with the polar block can learn it in seconds.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from geometry.polar import polar_transform


def smooth_aerial(rng: np.random.Generator, side: int) -> np.ndarray:
    """A random aerial-like RGB image: smooth colour field plus a few bright blobs."""
    coarse = rng.uniform(0, 255, size=(5, 5, 3)).astype(np.float32)
    image = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    for _ in range(4):
        centre = tuple(int(v) for v in rng.integers(0, side, size=2))
        colour = tuple(float(v) for v in rng.uniform(0, 255, size=3))
        cv2.circle(image, centre, int(rng.integers(side // 16, side // 6)), colour, -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def _write(path: str, rgb: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def make_cvusa(root: str, n_train: int, n_val: int, seed: int = 0, side: int = 96,
               pano_hw=(56, 308)) -> str:
    """Write a CVUSA-layout folder (splits, bingmap/19, streetview/panos|annotations)."""
    rng = np.random.default_rng(seed)
    rows = {"train": [], "val": []}
    for i in range(n_train + n_val):
        ident = f"{i + 1:07d}"
        aerial = smooth_aerial(rng, side)
        pano = polar_transform(aerial, *pano_hw) + rng.normal(0, 8, size=(*pano_hw, 3))
        _write(os.path.join(root, "bingmap", "19", f"{ident}.jpg"), aerial)
        _write(os.path.join(root, "streetview", "panos", f"{ident}.jpg"), np.clip(pano, 0, 255).astype(np.uint8))
        _write(os.path.join(root, "streetview", "annotations", f"{ident}.png"), np.zeros((*pano_hw, 3), np.uint8))
        rows["train" if i < n_train else "val"].append(
            f"bingmap/19/{ident}.jpg,streetview/panos/{ident}.jpg,streetview/annotations/{ident}.png")
    os.makedirs(os.path.join(root, "splits"), exist_ok=True)
    for split, lines in rows.items():
        with open(os.path.join(root, "splits", f"{split}-19zl.csv"), "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return root


TINY_FLAGS = ["--backbone", "tiny", "--no-pretrained", "--sate_size", "64,64", "--pano_size", "32,176",
              "--device", "cpu", "--workers", "0"]
