"""VIGOR datasets and the paired VIGOR augmentation (the layout and index: :mod:`data.vigor_layout`).

Position convention (:func:`panorama_pixel`): pixel *index* coordinates, as in the official
VIGOR/CCVPE code (``S/2 + delta`` used directly as a pixel position) and the SAFA polar
formula: pixel ``[r, c]`` sits at ``(row, col) = (r, c)`` and the tile centre (zero deltas,
the GPS of the tile) is index ``(S/2, S/2)``, the centre of the polar transform. With
``s = S / 640`` the panorama is at ``(row, col) = (S/2 + d0 * s, S/2 - d1 * s)`` in an
aerial of side ``S``. This is the frame of :func:`data.augment.aerial_point`.

Panorama columns (same layout as the polar images): column 0 looks South, W/4 West,
W/2 North, 3W/4 East (heading grows clockwise from left to right).

Paired augmentation: the images are augmented by :func:`data.augment.paired_augment`
(project-wide convention, exact commutation with the SAFA polar transform; decisions from
:func:`data.augment.sample_rng`). Its flip and rotations pivot on index ``(S/2, S/2)``, the
tile centre of this convention, so the deltas transform without any dependence on ``S``:

* flip (index column ``c -> S - c``): ``(d0, d1) -> (d0, -d1)`` (:func:`flip_deltas`);
* one counter-clockwise quarter turn (index ``(r, c) -> (S - c, r)``):
  ``(d0, d1) -> (d1, -d0)`` (:func:`rotate_deltas`); panorama rolled left by ``W/4``;
* the flip is applied before the rotation (:func:`augment_deltas`). The fixed point of every
  augmentation is the tile centre, deltas ``(0, 0)``.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from data.augment import augment_satellite, check_rotation_sizes, paired_augment, sample_rng
from data.io import MIN_IMAGE_SIDE, read_image, size_hw
from data.tensors import converter
from data.vigor_layout import PANO_SIZE, SATE_SIZE, TILE_SIDE, VigorIndex
from geometry.heading import turn_panorama
from geometry.polar import satellite_input_size


def panorama_pixel(delta: Sequence[float], side: float = TILE_SIDE) -> Tuple[float, float]:
    """Index ``(row, col)`` of the panorama in an aerial of side ``side`` from ``(d0, d1)``.

    ``(d0, d1)`` are in pixels of the 640 tile; the result is scaled to ``side``, in pixel
    index coordinates (pixel ``[r, c]`` at ``(r, c)``, tile centre = polar centre at
    ``(side/2, side/2)``): ``row = side/2 + d0 * side/640``, ``col = side/2 - d1 * side/640``.
    """
    return (side / 2.0 + float(delta[0]) * side / TILE_SIDE,
            side / 2.0 - float(delta[1]) * side / TILE_SIDE)


# ------------------------------------------------------------------- paired augmentation
def flip_deltas(delta) -> np.ndarray:
    """Deltas ``(..., 2)`` after :func:`data.augment.flip_aerial`: ``(d0, d1) -> (d0, -d1)``.

    The flip maps index column ``c -> S - c``, the mirror about the tile centre ``S/2``.
    """
    out = np.array(delta, dtype=np.float64, copy=True)
    out[..., 1] = -out[..., 1]
    return out


def rotate_deltas(delta, k: int) -> np.ndarray:
    """Deltas ``(..., 2)`` after :func:`data.augment.rotate_aerial` by ``90 deg * k`` counter-clockwise.

    One quarter turn maps index ``(r, c) -> (S - c, r)`` about the tile centre
    ``(S/2, S/2)``, hence ``(d0, d1) -> (d1, -d0)`` per step.
    """
    out = np.array(delta, dtype=np.float64, copy=True)
    for _ in range(int(k) % 4):
        out = np.stack([out[..., 1], -out[..., 0]], axis=-1)
    return out


def augment_deltas(delta, flip: bool, rotation: int) -> np.ndarray:
    """Deltas ``(..., 2)`` after :func:`data.augment.paired_augment` with ``{"flip", "rotation"}``.

    The flip comes first, then the rotation, as in :func:`data.augment.paired_augment`. The
    rules do not depend on the aerial's side (nor on whether it is a polar image).
    """
    out = flip_deltas(delta) if flip else np.array(delta, dtype=np.float64, copy=True)
    return rotate_deltas(out, rotation)


# ----------------------------------------------------------------------------- datasets
def _read_satellite(index: VigorIndex, j: int, size: Tuple[int, int], polar_files: bool):
    """Satellite ``j`` (its polar image with ``polar_files``) as RGB uint8 at ``size``."""
    return read_image(index.polar_file(j) if polar_files else index.satellite_file(j), size, square=not polar_files,
                      min_side=MIN_IMAGE_SIDE)


class VigorPairs(Dataset):
    """Training pairs: each panorama with its positive satellite.

    Sample: ``{"street": 3 x pano_H x pano_W, "satellite": 3 x sate_H x sate_W`` (or
    ``3 x pano_H x pano_W`` polar image when ``polar_files``), ``"index"``: panorama
    position in the split, ``"positive"``: global satellite index, ``"semi"``: (3,) long
    semi-positives, ``"delta"``: (2,) float64 ``(d0, d1)`` of the positive relative to the
    *augmented* tile (640-tile pixels, :func:`augment_deltas`; the panorama sits at index
    :func:`panorama_pixel` ``(delta, sate_H)`` of the augmented aerial), ``"flip"``: bool,
    ``"rotation"``: k quarter turns}. With ``semi_positive`` also ``"semi_satellite"`` (one of the
    three semi-positives, drawn uniformly from the sample's Generator after the augmentation
    draws, augmented like the positive) and ``"semi_delta"``: its (2,) deltas, augmented. With
    ``heading`` ``"random"`` the panorama is turned to a random heading after every other draw
    (:func:`geometry.heading.turn_panorama`) and ``"heading"`` is its heading in degrees (else 0).

    ``augment`` enables a random east-west flip (p = 0.5); ``rotate`` a random rotation
    by ``90 deg * k``, k uniform in {0, 1, 2, 3}; both by :func:`data.augment.paired_augment`
    on the resized uint8 images with the Generator :func:`data.augment.sample_rng`
    ``(seed, epoch, index)``. Call :meth:`set_epoch` before each epoch (with
    ``persistent_workers=True`` the workers keep the epoch they were started with).
    With ``polar_files`` the polar image is augmented like a panorama and the deltas
    refer to the 640 tile it was computed from. ``normalise``: see :func:`data.tensors.converter`.
    ``tile_side``: the side of the tiles the deltas are measured in (:data:`TILE_SIDE`).
    """

    tile_side = TILE_SIDE

    def __init__(self, index: VigorIndex, sate_size=SATE_SIZE, pano_size=PANO_SIZE, augment: bool = False,
                 rotate: bool = False, polar_files: bool = False, seed: int = 0, normalise: bool = True,
                 semi_positive: bool = False, heading: str = "none"):
        self.index = index
        self.turn = heading == "random"
        self.pano_size = size_hw(pano_size, "pano_size")
        self.polar_files = bool(polar_files)
        self.satellite_size = size_hw(satellite_input_size(sate_size, pano_size, polar_files), "sate_size")
        self.augment = bool(augment)
        self.rotate = bool(rotate)
        self.seed = int(seed)
        self.normalise = bool(normalise)
        self.convert = converter(self.normalise)
        self.semi_positive = bool(semi_positive)
        self.epoch = 0
        if self.rotate:
            check_rotation_sizes(self.pano_size, self.satellite_size, self.polar_files)
        if self.polar_files:
            used = np.concatenate([index.positive, index.semi.reshape(-1)]) if self.semi_positive else index.positive
            index.check_polar_files(np.unique(used), self.satellite_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.index.num_panoramas

    def __getitem__(self, i: int) -> dict:
        index = self.index
        i = int(i)
        if i < 0:
            i += len(self)
        positive = int(index.positive[i])
        pano = read_image(index.street_file(i), self.pano_size, min_side=MIN_IMAGE_SIDE)
        satellite = _read_satellite(index, positive, self.satellite_size, self.polar_files)
        flip, k, heading = False, 0, 0.0
        delta = np.array(index.deltas[i, 0], dtype=np.float64)
        rng = sample_rng(self.seed, self.epoch, i)
        if self.augment or self.rotate:
            pano, satellite, params = paired_augment(pano, satellite, rng, flip=self.augment, rotate=self.rotate,
                                                     satellite_is_polar=self.polar_files)
            flip, k = bool(params["flip"]), int(params["rotation"])
            delta = augment_deltas(delta, flip, k)
        sample = {"satellite": self.convert(satellite), "index": i,
                  "positive": positive, "semi": torch.from_numpy(index.semi[i].copy()),
                  "delta": torch.from_numpy(delta), "flip": flip, "rotation": k}
        if self.semi_positive:
            slot = 1 + int(rng.integers(3))
            semi = _read_satellite(index, int(index.semi[i, slot - 1]), self.satellite_size, self.polar_files)
            sample["semi_satellite"] = self.convert(augment_satellite(semi, flip, k, self.polar_files))
            sample["semi_delta"] = torch.from_numpy(augment_deltas(index.deltas[i, slot], flip, k))
        if self.turn:
            pano, heading = turn_panorama(pano, rng)
        sample.update(street=self.convert(pano), heading=heading)
        return sample


class VigorPanoramas(Dataset):
    """Queries: ``{"street": 3 x pano_H x pano_W, "index": panorama position in the split, "heading":
    degrees}``. With ``heading`` ``"random"`` each panorama is turned to a random heading
    (:func:`geometry.heading.turn_panorama`, the Generator :func:`data.augment.sample_rng` ``(seed, 0, i)``: the same
    turns every time); else its heading is 0.

    ``normalise``: see :func:`data.tensors.converter`.
    """

    def __init__(self, index: VigorIndex, pano_size=PANO_SIZE, normalise: bool = True, heading: str = "none",
                 seed: int = 0):
        self.index = index
        self.pano_size = size_hw(pano_size, "pano_size")
        self.normalise = bool(normalise)
        self.convert = converter(self.normalise)
        self.turn = heading == "random"
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.index.num_panoramas

    def __getitem__(self, i: int) -> dict:
        pano, heading = read_image(self.index.street_file(i), self.pano_size, min_side=MIN_IMAGE_SIDE), 0.0
        if self.turn:
            pano, heading = turn_panorama(pano, sample_rng(self.seed, 0, int(i)))
        return {"street": self.convert(pano), "index": int(i), "heading": heading}


class VigorSatellites(Dataset):
    """References: ``{"satellite": 3 x H x W, "index": global satellite index}``.

    ``H x W`` is ``sate_size``, or ``pano_size`` with ``polar_files`` (then the polar image
    ``<City>/polarmap/<satellite name>.png`` is read instead of the tile).
    ``normalise``: see :func:`data.tensors.converter`.
    """

    def __init__(self, index: VigorIndex, sate_size=SATE_SIZE, polar_files: bool = False, pano_size=PANO_SIZE,
                 normalise: bool = True):
        self.index = index
        self.polar_files = bool(polar_files)
        self.size = size_hw(satellite_input_size(sate_size, pano_size, polar_files), "sate_size")
        self.normalise = bool(normalise)
        self.convert = converter(self.normalise)
        if self.polar_files:
            index.check_polar_files(range(index.num_satellites), self.size)

    def __len__(self) -> int:
        return self.index.num_satellites

    def __getitem__(self, j: int) -> dict:
        image = _read_satellite(self.index, int(j), self.size, self.polar_files)
        return {"satellite": self.convert(image), "index": int(j)}
