"""Paired geometric augmentation of (panorama, aerial) pairs: pure functions on numpy arrays.

Convention
----------
Images are ``H x W x C`` (or ``H x W``) numpy arrays in index coordinates: pixel ``[r, c]``
sits at (row, col) = (r, c). The centre of an aerial of side ``S`` is (S/2, S/2), the centre
of the SAFA polar transform (docs/datasets.md, :mod:`geometry.polar`); panoramas and polar
images are north-aligned with column ``c`` looking at heading ``h = 360 * c / W - 180``
degrees clockwise from north (South at column 0, West at W/4, North at W/2, East at 3W/4).

* **Horizontal flip** = the east-west mirror of the world. Headings map h -> -h, i.e. column
  c -> (W - c) mod W of a panorama or polar image; for the aerial, column c -> (S - c) mod S
  (the mirror about column S/2). Both are ``np.roll(np.flip(x, 1), 1, 1)``: column 0 stays
  in place (South stays South; for the aerial it is the one column that would map outside
  the image, and the polar transform never samples it).
* **Rotation** by ``90 * k`` degrees counter-clockwise of the aerial about (S/2, S/2):
  ``new[r, c] = old[c, (S - r) mod S]`` for k = 1 (``np.rot90`` then a roll of one row).
  The matching panorama / polar image is rolled **left** by ``k * W / 4`` columns
  (``new[:, c] = old[:, (c + k W / 4) mod W]``): north moves to the old east.

With these definitions the augmentations commute exactly with the polar transform:
``polar(flip_aerial(a)) == flip_panorama(polar(a))`` and
``polar(rotate_aerial(a, k)) == roll_panorama(polar(a), k)`` (tested in
tests/data/test_augment.py). Random decisions come from :func:`sample_rng`, a numpy
Generator seeded by (seed, epoch, index): the same sample gets the same augmentation in
every run and DataLoader worker layout.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

from common.errors import UserError


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The per-sample Generator: a pure function of (seed, epoch, index) (taken modulo 2**64)."""
    entropy = [int(value) % 2**64 for value in (seed, epoch, index)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def _mirror_columns(image: np.ndarray) -> np.ndarray:
    """``new[:, c] = old[:, (W - c) mod W]`` (contiguous copy)."""
    return np.ascontiguousarray(np.roll(image[:, ::-1], 1, axis=1))


def flip_panorama(image: np.ndarray) -> np.ndarray:
    """East-west mirror of a north-aligned panorama or polar image: column c -> (W - c) mod W."""
    return _mirror_columns(image)


def flip_aerial(image: np.ndarray) -> np.ndarray:
    """East-west mirror of an aerial about column S/2: column c -> (S - c) mod S."""
    return _mirror_columns(image)


def rotate_aerial(image: np.ndarray, k: int) -> np.ndarray:
    """Rotate a square aerial by ``90 * k`` degrees counter-clockwise about (S/2, S/2).

    k = 1: ``new[r, c] = old[c, (S - r) mod S]`` (what was east is now north).
    """
    if image.shape[0] != image.shape[1]:
        raise ValueError(f"rotate_aerial expects a square image, got shape {image.shape}")
    out = image
    for _ in range(int(k) % 4):
        out = np.roll(np.rot90(out, 1, axes=(0, 1)), 1, axis=0)
    return np.ascontiguousarray(out)


def roll_panorama(image: np.ndarray, k: int) -> np.ndarray:
    """Roll a panorama or polar image left by ``k * W / 4`` columns (pairs with :func:`rotate_aerial`).

    ``new[:, c] = old[:, (c + k * W / 4) mod W]``; W must be divisible by 4.
    """
    width = image.shape[1]
    if width % 4:
        raise ValueError(f"roll_panorama needs a width divisible by 4 to match 90-degree rotations, got {width}")
    return np.ascontiguousarray(np.roll(image, -(int(k) % 4) * (width // 4), axis=1))


def aerial_point(row, col, side: int, flip: bool, rotation: int) -> Tuple:
    """Where the aerial pixel (row, col) lands after :func:`paired_augment` (flip, then rotation).

    Index coordinates, continuous (no wrap-around): flip maps col -> S - col; one
    counter-clockwise quarter turn maps (row, col) -> (S - col, row). Works on scalars or arrays.
    (VIGOR: the in-tile offset of the panorama moves with the tile.)
    """
    if flip:
        col = side - col
    for _ in range(int(rotation) % 4):
        row, col = side - col, row
    return row, col


def paired_augment(street: np.ndarray, satellite: np.ndarray, rng: np.random.Generator,
                   flip: bool = True, rotate: bool = False,
                   satellite_is_polar: bool = False) -> Tuple[np.ndarray, np.ndarray, Dict[str, int]]:
    """Randomly flip (p = 0.5, if ``flip``) and rotate (k uniform in 0..3, if ``rotate``) a pair.

    ``street`` is the panorama; ``satellite`` the square aerial, or a polar image
    (``satellite_is_polar=True``) which is then augmented like a panorama. The flip is applied
    first, then the rotation, to both views. Returns ``(street, satellite, params)`` with
    ``params = {"flip": 0 or 1, "rotation": k}`` (see :func:`aerial_point` for labels).
    Exactly two draws are taken from ``rng`` whatever the flags, so enabling one
    augmentation does not change the other's decisions.
    """
    flip_draw, rotation_draw = rng.random(), int(rng.integers(4))
    do_flip = flip and flip_draw < 0.5
    k = rotation_draw if rotate else 0
    if do_flip:
        street = flip_panorama(street)
    if k:
        street = roll_panorama(street, k)
    return street, augment_satellite(satellite, do_flip, k, satellite_is_polar), {"flip": int(do_flip), "rotation": k}


def augment_satellite(satellite: np.ndarray, flip: bool, rotation: int, is_polar: bool = False) -> np.ndarray:
    """The satellite side of :func:`paired_augment` with known decisions: the flip, then
    ``rotation`` counter-clockwise quarter turns (a polar image is flipped and rolled like a panorama)."""
    if flip:
        satellite = flip_panorama(satellite) if is_polar else flip_aerial(satellite)
    if rotation:
        satellite = roll_panorama(satellite, rotation) if is_polar else rotate_aerial(satellite, rotation)
    return satellite


def check_rotation_sizes(pano_size: Sequence[int], satellite_size: Sequence[int], satellite_is_polar: bool) -> None:
    """Raise a :class:`UserError` when rotation augmentation cannot apply to these (H, W) sizes:
    rolls by W/4 need panorama (and polar) widths divisible by 4; a raw aerial must be square."""
    widths = [int(pano_size[1])] + ([int(satellite_size[1])] if satellite_is_polar else [])
    if any(width % 4 for width in widths):
        raise UserError(f"rotation augmentation rolls panoramas by W/4: panorama/polar widths "
                        f"must be divisible by 4, got {widths}")
    if not satellite_is_polar and satellite_size[0] != satellite_size[1]:
        raise UserError(f"rotation augmentation needs a square sate_size, got {list(satellite_size)}")
