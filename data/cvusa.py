"""CVUSA: the paired street/satellite dataset of one split CSV (layout: :mod:`data.cvusa_layout`).

Samples are dicts ``{"street": 3 x Hp x Wp, "satellite": 3 x H x W, "index": i, "heading": h}``
of ImageNet-normalised RGB float32 tensors, or uint8 ones with ``normalise=False``; ``index``
is the position of the pair in the CSV (so street ``i`` matches satellite ``i``); ``heading``
the street image's heading in degrees (:mod:`geometry.heading`: 0 for north-aligned), the
one recorded in ``headings.csv`` plus the turn applied here. With ``offsets_csv`` also
``"delta"``: (2,) float64 label delta of the camera in VIGOR's convention (:mod:`data.vigor`),
in pixels of the aerial file (side :attr:`CVUSA.tile_side`), moved with the paired flip and
rotation (:func:`data.vigor.augment_deltas`): the camera sits at index (row ``S/2 + d0``, column
``S/2 - d1``) of the augmented aerial file of side ``S``. With a field of view below 360
degrees the street image is ``Wp * fov / 360`` columns wide. The
satellite is the raw aerial at ``sate_size``, or with ``polar_files`` its polar image at
``pano_size`` (:func:`geometry.polar.satellite_input_size`).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from common.errors import UserError
from data.augment import check_rotation_sizes, paired_augment, sample_rng
from data.cvusa_layout import (HEADINGS_FILE, OFFSET_TERMS, check_column_order, missing_files_error, pair_deltas,
                               polar_path, read_headings, read_split_csv, resolve_csv)
from data.io import MIN_IMAGE_SIDE, check_polar_size, file_image_size, find_missing, read_image, size_hw
from data.tensors import IMAGENET_MEAN, converter
from data.vigor import augment_deltas
from geometry.heading import FULL_CIRCLE, crop_columns, fov_width, pad_columns, turn_panorama
from geometry.polar import satellite_input_size

#: The uint8 RGB colour that pads a limited field of view (normalises to about 0).
MEAN_COLOUR = tuple(int(round(255 * value)) for value in IMAGENET_MEAN)


class CVUSA(Dataset):
    """CVUSA pairs from one split CSV.

    Args:
        data_root: the CVUSA folder (holds ``splits/``, ``bingmap/``, ``streetview/``).
        csv: split CSV, relative to ``data_root`` or absolute (e.g. ``splits/val-19zl.csv``).
        sate_size: (H, W) of the raw aerial tensor (e.g. 256 x 256).
        pano_size: (H, W) of the panorama tensor (e.g. 112 x 616), also that of polar images.
        augment: paired random horizontal flip (p = 0.5) of panorama and satellite.
        rotate: paired random rotation by 90 * k degrees (aerial counter-clockwise, panorama
            rolled left by k * W / 4); needs widths divisible by 4 and a square aerial.
        polar_files: read the satellite from ``polarmap/19/<id>.png`` (created by
            ``python -m data.convert_polar``) instead of the raw aerial.
        seed: augmentation seed; decisions are a function of (seed, epoch, index)
            (:func:`data.augment.sample_rng`), the epoch set by :meth:`set_epoch`.
        normalise: float32 normalised (default) or uint8 tensors, see :func:`data.tensors.converter`.
        heading: ``"random"`` turns each panorama to a random heading (a left roll by a whole
            number of columns uniform in [0, Wp), after the paired augmentation; a draw of the
            same per-sample generator), ``"none"`` keeps it.
        fov: field of view in degrees: the centred window of ``fov_width(Wp, fov)`` columns
            is kept (after the turn). Panoramas recorded as crops in ``headings.csv`` are read
            at ``fov_width(Wp, recorded fov)`` columns and cannot be turned.
        pad_fov: pad such a window back to ``Wp`` columns with the ImageNet mean colour, in
            place (for heads that need full-width street images: safa, pool).
        offsets_csv: an offsets CSV (``id,dx_px,dy_px``, :func:`data.cvusa_layout.pair_deltas`),
            relative to ``data_root`` or absolute: samples carry ``"delta"``; None: they do not.
            Its pixels are those of the aerial files, which share one side (the first one's).

    Attributes ``street_paths``, ``satellite_paths`` (raw aerials) and ``polar_paths`` are
    relative to ``data_root``; ``tile_side`` is the side in pixels of the aerial files (that of
    the first; None when its header cannot be read), ``deltas`` the (N, 2) label deltas or None.
    Every file the dataset reads is checked up front (a :class:`UserError` lists the first few
    missing paths, how many are missing, and layout hints). Augmentation runs on the resized uint8 arrays (:mod:`data.augment`).
    """

    def __init__(self, data_root: str, csv: str, sate_size: Sequence[int], pano_size: Sequence[int],
                 augment: bool = False, rotate: bool = False, polar_files: bool = False, seed: int = 0,
                 normalise: bool = True, heading: str = "none", fov: float = FULL_CIRCLE,
                 pad_fov: bool = False, offsets_csv: Optional[str] = None) -> None:
        if not os.path.isdir(data_root):
            raise UserError(f"CVUSA data root not found: {data_root}; pass --data_root pointing at the "
                            f"folder that holds splits/, bingmap/ and streetview/")
        self.data_root = data_root
        self.csv = resolve_csv(data_root, csv)
        self.pairs = read_split_csv(self.csv)
        if not self.pairs:
            raise UserError(f"split CSV has no pairs: {self.csv}")
        self.pano_size = size_hw(pano_size, "pano_size")
        self.polar_files = bool(polar_files)
        self.satellite_size = size_hw(satellite_input_size(sate_size, pano_size, polar_files), "sate_size")
        self.augment, self.rotate = bool(augment), bool(rotate)
        self.seed, self.epoch = int(seed), 0
        self.normalise = bool(normalise)
        self.convert = converter(self.normalise)
        if self.rotate:
            check_rotation_sizes(self.pano_size, self.satellite_size, self.polar_files)
        self.street_paths = [pano for _, pano, _ in self.pairs]
        self.satellite_paths = [aerial for aerial, _, _ in self.pairs]
        self.polar_paths = [polar_path(aerial) for aerial in self.satellite_paths]
        paths = (self.polar_paths if self.polar_files else self.satellite_paths) + self.street_paths
        missing = find_missing(data_root, paths)
        if missing:
            raise missing_files_error(data_root, missing, len(paths), self.csv)
        aerial, panorama = file_image_size(self.satellite_file(0)), file_image_size(self.street_file(0))
        if aerial and panorama:
            check_column_order(self.csv, aerial, panorama)
        self.tile_side = aerial[0] if aerial else None
        self.deltas = None if offsets_csv is None else self._read_deltas(offsets_csv, aerial)
        if self.polar_files:
            check_polar_size(self.polar_file(0), self.pano_size,
                             f"python -m data.convert_polar --data_root {data_root}")
        self.recorded = self._recorded_headings(read_headings(data_root))
        recorded_fov = self.recorded[0][1]
        if heading == "random" and recorded_fov < FULL_CIRCLE:
            raise UserError(f"the panoramas of {data_root} are {recorded_fov:g}-degree crops ({HEADINGS_FILE}): a "
                            f"random heading needs full panoramas; drop the heading setting or use a 360-degree world")
        self.turn = heading == "random"
        self.read_width = fov_width(self.pano_size[1], recorded_fov)
        self.street_width = fov_width(self.pano_size[1], min(float(fov), recorded_fov))
        self.pad_fov = bool(pad_fov)

    def _read_deltas(self, offsets_csv: str, aerial: Optional[tuple]):
        """The pairs' label deltas from ``offsets_csv``; refused without a square aerial file to measure them in."""
        if aerial is None or aerial[0] != aerial[1]:
            shape = "unreadable" if aerial is None else f"{aerial[0]} x {aerial[1]}"
            raise UserError(f"offset labels are in pixels of square aerial files, but {self.satellite_file(0)} is "
                            f"{shape}; {OFFSET_TERMS} need the raw aerials of {self.data_root}")
        return pair_deltas(os.path.join(self.data_root, offsets_csv), self.satellite_paths, self.csv, aerial[0])

    def _recorded_headings(self, recorded: dict) -> list:
        """``(heading, fov)`` of every pair from ``headings.csv`` (``(0, 360)`` without one); one fov."""
        if not recorded:
            return [(0.0, FULL_CIRCLE)] * len(self.pairs)
        ids = [os.path.splitext(os.path.basename(path))[0] for path in self.street_paths]
        missing = [ident for ident in ids if ident not in recorded]
        if missing:
            raise UserError(f"{os.path.join(self.data_root, HEADINGS_FILE)} lacks panorama {missing[0]} "
                            f"({len(missing)} of {len(ids)} missing); rewrite it or remove it")
        values = [recorded[ident] for ident in ids]
        if len({fov for _, fov in values}) > 1:
            raise UserError(f"{os.path.join(self.data_root, HEADINGS_FILE)} records several fields of view; "
                            f"a split needs one (images of one width per batch)")
        return values

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation decisions :meth:`__getitem__` uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def street_file(self, i: int) -> str:
        return os.path.join(self.data_root, self.street_paths[i])

    def satellite_file(self, i: int) -> str:
        return os.path.join(self.data_root, self.satellite_paths[i])

    def polar_file(self, i: int) -> str:
        return os.path.join(self.data_root, self.polar_paths[i])

    def read_satellite(self, index: int):
        """The satellite input of pair ``index`` (the aerial or its polar image), H x W x 3 uint8."""
        source = self.polar_file(index) if self.polar_files else self.satellite_file(index)
        return read_image(source, self.satellite_size, square=not self.polar_files, min_side=MIN_IMAGE_SIDE)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self.pairs)
        street = read_image(self.street_file(index), (self.pano_size[0], self.read_width), min_side=MIN_IMAGE_SIDE)
        satellite = self.read_satellite(index)
        heading = self.recorded[index][0]
        delta = None if self.deltas is None else self.deltas[index]
        if self.augment or self.rotate or self.turn:
            rng = sample_rng(self.seed, self.epoch, index)
            if self.augment or self.rotate:
                street, satellite, params = paired_augment(street, satellite, rng, flip=self.augment,
                                                           rotate=self.rotate, satellite_is_polar=self.polar_files)
                heading = -heading if params["flip"] else heading
                if delta is not None:
                    delta = augment_deltas(delta, bool(params["flip"]), params["rotation"])
            if self.turn:
                street, heading = turn_panorama(street, rng, heading)
        if self.street_width < street.shape[1]:
            street = crop_columns(street, self.street_width)
        if self.pad_fov and street.shape[1] < self.pano_size[1]:
            street = pad_columns(street, self.pano_size[1], MEAN_COLOUR)
        sample = {"street": self.convert(street), "satellite": self.convert(satellite), "index": index,
                  "heading": heading % FULL_CIRCLE}
        if delta is not None:
            sample["delta"] = torch.from_numpy(np.array(delta, dtype=np.float64))
        return sample


class CVUSASatellites(Dataset):
    """The satellites of a :class:`CVUSA` split alone, never augmented: ``{"satellite", "index"}``
    (for embedding the training satellites without reading their panoramas)."""

    def __init__(self, pairs: CVUSA) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        return {"satellite": self.pairs.convert(self.pairs.read_satellite(int(index))), "index": int(index)}
