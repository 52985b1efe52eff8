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


def make_vigor(root: str, cells, seed: int = 0, grid: int = 4, side: int = 64, pano_hw=(32, 64)) -> str:
    """Write a VIGOR-layout folder of random images: per city (``cells``: city -> list of tile-grid
    cells ``(row, col)``, one panorama each) a ``grid`` x ``grid`` tile grid and a panorama at a
    random point of each given cell, i.e. covered by tiles ``row..row+1`` x ``col..col+1``.
    Every panorama is in ``pano_label_balanced.txt`` and in ``same_area_balanced_train.txt``."""
    from data.synth.layouts import _label_line, city_origin, metres_to_gps, tile_centre

    rng = np.random.default_rng(seed)
    for city, city_cells in cells.items():
        origin = city_origin(city)
        tiles = []
        for row in range(grid):
            for col in range(grid):
                x, y = tile_centre(row, col)
                name = "satellite_%r_%r.png" % metres_to_gps(x, y, origin)
                _write(os.path.join(root, city, "satellite", name), smooth_aerial(rng, side))
                tiles.append((name, x, y))
        labels = []
        for k, (row, col) in enumerate(city_cells):
            (x0, y0), (x1, y1) = tile_centre(row, col), tile_centre(row + 1, col + 1)
            x, y = rng.uniform(x0 + 0.5, x1 - 0.5), rng.uniform(y0 + 0.5, y1 - 0.5)
            name = "%s%05d,%r,%r,.jpg" % (city[:1] * 17, k, *metres_to_gps(x, y, origin))
            pano = rng.integers(0, 256, size=(*pano_hw, 3), dtype=np.uint8)
            _write(os.path.join(root, city, "panorama", name), pano)
            labels.append(_label_line(name, x, y, tiles, grid))
        splits = os.path.join(root, "splits", city)
        os.makedirs(splits, exist_ok=True)
        for file_name, lines in (("satellite_list.txt", [t[0] for t in tiles]), ("pano_label_balanced.txt", labels),
                                 ("same_area_balanced_train.txt", labels), ("same_area_balanced_test.txt", labels)):
            with open(os.path.join(splits, file_name), "w") as handle:
                handle.write("\n".join(lines) + "\n")
    return root
