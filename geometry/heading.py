"""Panorama heading and field of view: the one home of the convention (numpy only; no torch).

Convention
----------
* A panorama's **heading** ``h`` is the direction its centre column looks at, in degrees
  clockwise from north, in ``[0, 360)``. A north-aligned panorama (CVUSA, VIGOR, polar
  images) has ``h = 0``: column ``c`` of a width-``W`` strip looks at ``360 c / W - 180 + h``
  (docs/datasets.md: South at column 0, North at W/2).
* Turning the camera to heading ``h`` rolls the strip **left** by ``h W / 360`` columns:
  ``new[:, c] = old[:, (c + h W / 360) mod W]``, i.e. ``np.roll(old, -h W / 360, axis=1)``
  (for ``h = 90 k`` this is :func:`data.augment.roll_panorama`; north moves to the old east).
* A **field of view** of ``fov`` degrees keeps the ``round(W fov / 360)`` columns centred on
  the centre column (start ``(W - width) // 2``): the crop still looks at heading ``h``.
* Heading errors are circular: ``|((a - b + 180) mod 360) - 180|``, in ``[0, 180]``.
"""
from __future__ import annotations

import numpy as np

FULL_CIRCLE = 360.0


def heading_columns(heading_deg: float, width: int) -> int:
    """The whole number of columns a width-``width`` strip is rolled left by for ``heading_deg``."""
    return int(round(float(heading_deg) * width / FULL_CIRCLE)) % int(width)


def columns_heading(columns: int, width: int) -> float:
    """The heading (degrees, ``[0, 360)``) of a roll left by ``columns`` of ``width``."""
    return (float(columns) * FULL_CIRCLE / width) % FULL_CIRCLE


def roll_to_heading(image: np.ndarray, columns: int) -> np.ndarray:
    """A north-aligned ``H x W [x C]`` strip turned to the heading of a left roll by ``columns``."""
    return np.ascontiguousarray(np.roll(image, -int(columns), axis=1))


def turn_panorama(image: np.ndarray, rng: np.random.Generator, heading: float = 0.0):
    """``(image, heading)``: a ``H x W [x C]`` strip of heading ``heading`` turned by a left roll of a
    whole number of columns drawn from ``rng`` (uniform), and its new heading in ``[0, 360)``."""
    columns = int(rng.integers(image.shape[1]))
    return roll_to_heading(image, columns), (heading + columns_heading(columns, image.shape[1])) % FULL_CIRCLE


def fov_width(width: int, fov_deg: float) -> int:
    """Columns kept of a width-``width`` strip for a field of view of ``fov_deg`` (at least 1)."""
    return max(1, min(int(width), int(round(int(width) * float(fov_deg) / FULL_CIRCLE))))


def crop_columns(image: np.ndarray, keep: int) -> np.ndarray:
    """The centred ``keep`` columns (start ``(W - keep) // 2``) of an ``H x W [x C]`` strip."""
    start = (image.shape[1] - int(keep)) // 2
    return np.ascontiguousarray(image[:, start:start + int(keep)])


def pad_columns(image: np.ndarray, width: int, fill) -> np.ndarray:
    """A ``width``-column strip filled with ``fill`` holding ``image`` where :func:`crop_columns`
    took it from (its inverse for the kept columns)."""
    out = np.empty((image.shape[0], int(width)) + image.shape[2:], dtype=image.dtype)
    out[...] = fill
    start = (int(width) - image.shape[1]) // 2
    out[:, start:start + image.shape[1]] = image
    return out


def crop_fov(image: np.ndarray, fov_deg: float) -> np.ndarray:
    """The centred ``fov_deg`` window of a full ``H x W [x C]`` strip (the whole strip at 360)."""
    return crop_columns(image, fov_width(image.shape[1], fov_deg))


def heading_error(estimate, truth) -> np.ndarray:
    """Circular absolute difference in degrees (``[0, 180]``) of two heading arrays."""
    diff = np.asarray(estimate, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return np.abs(np.mod(diff + 180.0, FULL_CIRCLE) - 180.0)
