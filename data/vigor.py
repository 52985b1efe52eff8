"""VIGOR: index of the on-disk dataset, the paired VIGOR augmentation and the datasets.

Layout (datasets.md)::

    <root>/<City>/panorama/<id>,<lat>,<lon>,.jpg        2048 x 1024, north at column W/2
    <root>/<City>/satellite/satellite_<lat>_<lon>.png   640 x 640, north up
    <root>/<City>/polarmap/satellite_<lat>_<lon>.png    optional: polar image of the tile
    <root>/splits/<City>/satellite_list.txt
    <root>/splits/<City>/same_area_balanced_{train,test}.txt
    <root>/splits/<City>/pano_label_balanced.txt        cross-area: every panorama of the city

Indexing: a satellite's *global index* is its position in the concatenation of the
cities' ``satellite_list.txt`` in the order the cities are given (official order:
:data:`SAME_AREA_CITIES`, :data:`CROSS_TRAIN`, :data:`CROSS_TEST`).

Label lines have 13 space-separated fields
``pano sat_pos d0 d1 sat_semi1 d0 d1 sat_semi2 d0 d1 sat_semi3 d0 d1``.
``(d0, d1)`` is the satellite centre minus the panorama in pixels of the 640 tile:
the panorama sits at **row 320 + d0, column 320 - d1** (d0 > 0: south of the centre,
d1 > 0: west of it).

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

import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from data.augment import paired_augment, sample_rng
from data.io import find_missing, read_image, size_hw, to_tensor, to_uint8_tensor
from helper.errors import UserError

SAME_AREA_CITIES = ("NewYork", "Seattle", "SanFrancisco", "Chicago")
CROSS_TRAIN = ("NewYork", "Seattle")
CROSS_TEST = ("SanFrancisco", "Chicago")

TILE_SIDE = 640
"""Side in pixels of the original satellite tiles; the label deltas are in these pixels."""

SPLITS = ("train", "test")
MODES = ("same", "cross")
_MAX_LISTED = 5


# ----------------------------------------------------------------------------- parsing
def parse_panorama_name(name: str) -> Tuple[str, float, float]:
    """``'<id>,<lat>,<lon>,.jpg'`` (a path is reduced to its basename) -> ``(id, lat, lon)``.

    The id may start with ``-`` or contain ``_``; the name is split on ``,``.
    Raises :class:`UserError` when the name does not have that form.
    """
    base = os.path.basename(name.strip())
    fields = base.split(",")
    try:
        if len(fields) < 4 or not fields[0] or not fields[-1].startswith("."):
            raise ValueError
        return ",".join(fields[:-3]), float(fields[-3]), float(fields[-2])
    except ValueError:
        raise UserError(f"cannot parse VIGOR panorama name {base!r}: expected '<id>,<lat>,<lon>,.jpg'") from None


def parse_satellite_name(name: str) -> Tuple[float, float]:
    """``'satellite_<lat>_<lon>.png'`` (or a path to it) -> ``(lat, lon)`` of the tile centre.

    Uses the last two ``_``-separated fields of the file stem.
    Raises :class:`UserError` when the name does not have that form.
    """
    stem = os.path.splitext(os.path.basename(name.strip()))[0]
    fields = stem.split("_")
    try:
        if len(fields) < 3:
            raise ValueError
        return float(fields[-2]), float(fields[-1])
    except ValueError:
        raise UserError(f"cannot parse VIGOR satellite name {name!r}: expected 'satellite_<lat>_<lon>.png'") from None


def read_list(path: str) -> List[Tuple[int, str]]:
    """Non-blank lines of a text file as ``(line_number, stripped_text)``, 1-based.

    Tolerates CRLF/CR line endings, a UTF-8 BOM and a missing final newline.
    """
    try:
        with open(path, "r", encoding="utf-8-sig", newline=None) as handle:
            text = handle.read()
    except FileNotFoundError:
        raise UserError(f"VIGOR list file not found: {path}; check --data_root and that the splits/ folder "
                        "was extracted completely") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read VIGOR list file {path}: {exc}") from None
    out = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if line:
            out.append((number, line))
    return out


def polar_relpath(satellite_relpath: str) -> str:
    """Polar-image path for a satellite path, both relative to the data root.

    ``<City>/satellite/satellite_<lat>_<lon>.png`` -> ``<City>/polarmap/satellite_<lat>_<lon>.png``:
    the SAFA polar transform of the tile with the tile's own side as S (written by
    ``python -m data.convert_polar --dataset vigor``).
    """
    city_dir, _, name = satellite_relpath.replace("\\", "/").rpartition("/satellite/")
    if not city_dir:
        raise ValueError(f"not a VIGOR satellite path: {satellite_relpath!r}")
    return f"{city_dir}/polarmap/{os.path.splitext(name)[0]}.png"


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


# ------------------------------------------------------------------------------- index
def _city_hint(data_root: str) -> str:
    """Which city folders exist under data_root (a folder with panorama/ or satellite/)."""
    try:
        found = sorted(name for name in os.listdir(data_root)
                       if os.path.isdir(os.path.join(data_root, name, "panorama"))
                       or os.path.isdir(os.path.join(data_root, name, "satellite")))
    except OSError:
        found = []
    return ", ".join(found) if found else "none"


class VigorIndex:
    """Parsed VIGOR split: panorama and satellite paths, GPS and labels (no image is read).

    Args:
        data_root: folder holding ``<City>/`` and ``splits/``.
        cities: city names in indexing order (official: :data:`SAME_AREA_CITIES`
            for ``mode="same"``; :data:`CROSS_TRAIN` / :data:`CROSS_TEST` for ``mode="cross"``).
        split: ``"train"`` or ``"test"``. Same-area reads ``same_area_balanced_<split>.txt``;
            cross-area reads ``pano_label_balanced.txt`` of the given cities for either split
            (the caller passes the training cities for train and the test cities for test).
        mode: ``"same"`` or ``"cross"``.
        check_files: verify up front that every panorama and satellite file exists.

    Attributes (N panoramas, M satellites; paths relative to ``data_root``):
        pano_paths (N,) str ``<City>/panorama/<name>``; pano_gps (N, 2) float64 (lat, lon);
        pano_city (N,) int index into ``cities``;
        sat_paths (M,) str ``<City>/satellite/<name>``; sat_gps (M, 2) float64 (lat, lon);
        sat_city (M,) int; sat_ranges: city -> (start, stop) global satellite indices;
        positive (N,) int64 global satellite index; semi (N, 3) int64 semi-positives;
        deltas (N, 4, 2) float64 ``(d0, d1)`` for the positive then the three semi-positives;
        label_files: the label files read, in order.
    """

    def __init__(self, data_root: str, cities: Sequence[str], split: str, mode: str, check_files: bool = True):
        if split not in SPLITS:
            raise UserError(f"unknown VIGOR split {split!r}; valid: {', '.join(SPLITS)}")
        if mode not in MODES:
            raise UserError(f"unknown VIGOR mode {mode!r}; valid: {', '.join(MODES)} (--mode)")
        cities = tuple(str(c).strip() for c in cities)
        if not cities or any(not c for c in cities):
            raise UserError("no VIGOR city given; pass e.g. --cities NewYork,Seattle,SanFrancisco,Chicago")
        duplicates = sorted({c for c in cities if cities.count(c) > 1})
        if duplicates:
            raise UserError(f"VIGOR city listed twice: {', '.join(duplicates)}; each city may appear once")
        self.data_root = str(data_root)
        self.cities = cities
        self.split = split
        self.mode = mode
        self._check_layout()

        sat_paths: List[str] = []
        sat_gps: List[Tuple[float, float]] = []
        sat_city: List[int] = []
        self.sat_ranges: Dict[str, Tuple[int, int]] = {}
        city_lookup: List[Dict[str, int]] = []
        global_lookup: Dict[str, int] = {}
        for c, city in enumerate(cities):
            list_file = os.path.join(self.data_root, "splits", city, "satellite_list.txt")
            start = len(sat_paths)
            lookup: Dict[str, int] = {}
            for number, name in read_list(list_file):
                if name in lookup:
                    raise UserError(f"{list_file}:{number}: satellite {name!r} listed twice "
                                    f"(first at global index {lookup[name]}); fix the list file")
                try:
                    sat_gps.append(parse_satellite_name(name))
                except UserError as exc:
                    raise UserError(f"{list_file}:{number}: {exc}") from None
                lookup[name] = len(sat_paths)
                global_lookup.setdefault(name, len(sat_paths))
                sat_paths.append(f"{city}/satellite/{name}")
                sat_city.append(c)
            if len(sat_paths) == start:
                raise UserError(f"VIGOR satellite list is empty: {list_file}")
            self.sat_ranges[city] = (start, len(sat_paths))
            city_lookup.append(lookup)

        pano_paths: List[str] = []
        pano_gps: List[Tuple[float, float]] = []
        pano_city: List[int] = []
        sats: List[List[int]] = []
        deltas: List[List[float]] = []
        self.label_files: List[str] = []
        label_name = f"same_area_balanced_{split}.txt" if mode == "same" else "pano_label_balanced.txt"
        for c, city in enumerate(cities):
            label_file = os.path.join(self.data_root, "splits", city, label_name)
            self.label_files.append(label_file)
            for number, line in read_list(label_file):
                fields = line.split()
                where = f"{label_file}:{number}"
                if len(fields) != 13:
                    raise UserError(f"{where}: malformed VIGOR label line with {len(fields)} fields, expected 13 "
                                    "('pano sat_pos d0 d1 sat_semi1 d0 d1 sat_semi2 d0 d1 sat_semi3 d0 d1')")
                try:
                    pano_gps.append(parse_panorama_name(fields[0])[1:])
                except UserError as exc:
                    raise UserError(f"{where}: {exc}") from None
                row = []
                for field in (1, 4, 7, 10):
                    name = fields[field]
                    index = city_lookup[c].get(name, global_lookup.get(name))
                    if index is None:
                        raise UserError(f"{where}: satellite {name!r} is not in the satellite lists of "
                                        f"{', '.join(cities)}; the label and list files do not match")
                    row.append(index)
                try:
                    values = [float(fields[i]) for i in (2, 3, 5, 6, 8, 9, 11, 12)]
                except ValueError:
                    raise UserError(f"{where}: malformed VIGOR label line: the pixel offsets "
                                    "(fields 3-4, 6-7, 9-10, 12-13) must be numbers") from None
                sats.append(row)
                deltas.append(values)
                pano_paths.append(f"{city}/panorama/{os.path.basename(fields[0])}")
                pano_city.append(c)
            if not pano_paths or pano_city[-1] != c:
                raise UserError(f"VIGOR label file has no panorama: {label_file}")

        self.pano_paths = np.array(pano_paths)
        self.pano_gps = np.array(pano_gps, dtype=np.float64).reshape(-1, 2)
        self.pano_city = np.array(pano_city, dtype=np.int64)
        self.sat_paths = np.array(sat_paths)
        self.sat_gps = np.array(sat_gps, dtype=np.float64).reshape(-1, 2)
        self.sat_city = np.array(sat_city, dtype=np.int64)
        sats_array = np.array(sats, dtype=np.int64).reshape(-1, 4)
        self.positive = np.ascontiguousarray(sats_array[:, 0])
        self.semi = np.ascontiguousarray(sats_array[:, 1:])
        self.deltas = np.array(deltas, dtype=np.float64).reshape(-1, 4, 2)
        if check_files:
            self.check_files()

    # -- checks
    def _check_layout(self) -> None:
        root = self.data_root
        if not os.path.isdir(root):
            raise UserError(f"VIGOR data root not found: {root}; pass --data_root pointing at the folder that "
                            "holds the city folders (NewYork/, Seattle/, ...) and splits/")
        for city in self.cities:
            expected = (os.path.join(root, city), os.path.join(root, "splits", city))
            missing = [path for path in expected if not os.path.isdir(path)]
            if missing:
                hint = ""
                nested = os.path.join(root, "VIGOR")
                if os.path.isdir(os.path.join(nested, city)):
                    hint = f" (the archive seems nested: try --data_root {nested})"
                raise UserError(
                    f"VIGOR city {city!r} not found: missing {' and '.join(missing)}{hint}; cities found under "
                    f"{root}: {_city_hint(root)}. Pass the cities you have with --cities A,B (same-area) or "
                    "--train_cities A,B --test_cities C,D (cross-area)")

    def check_files(self) -> None:
        """Raise a :class:`UserError` (count + first few) when panorama or satellite files are missing."""
        for kind, paths in (("panorama", self.pano_paths), ("satellite", self.sat_paths)):
            _check_exist(self.data_root, paths, kind, "re-extract the VIGOR archive or check --data_root")

    # -- accessors
    @property
    def num_panoramas(self) -> int:
        return len(self.pano_paths)

    @property
    def num_satellites(self) -> int:
        return len(self.sat_paths)

    def __len__(self) -> int:
        return self.num_panoramas

    def pano_file(self, i: int) -> str:
        return os.path.join(self.data_root, str(self.pano_paths[i]))

    def sat_file(self, j: int) -> str:
        return os.path.join(self.data_root, str(self.sat_paths[j]))

    def polar_file(self, j: int) -> str:
        return os.path.join(self.data_root, polar_relpath(str(self.sat_paths[j])))

    def __repr__(self) -> str:
        return (f"VigorIndex(mode={self.mode!r}, split={self.split!r}, cities={list(self.cities)}, "
                f"panoramas={self.num_panoramas}, satellites={self.num_satellites})")


def _check_exist(root: str, relpaths: Iterable[str], kind: str, fix: str) -> None:
    """Raise a UserError naming the first missing files (each folder is listed once)."""
    relpaths = [str(rel) for rel in relpaths]
    missing = [os.path.join(root, rel) for rel in find_missing(root, relpaths)]
    if missing:
        first = ", ".join(missing[:_MAX_LISTED])
        raise UserError(f"{len(missing)} of {len(relpaths)} VIGOR {kind} files are missing (first: {first}); {fix}")


def vigor_indices(data_root: str, mode: str, cities: Optional[Sequence[str]] = None,
                  train_cities: Optional[Sequence[str]] = None, test_cities: Optional[Sequence[str]] = None,
                  check_files: bool = True) -> Tuple[VigorIndex, VigorIndex]:
    """``(train_index, test_index)`` for a mode, with the official city orders as defaults.

    Same-area: both splits over ``cities`` (default :data:`SAME_AREA_CITIES`).
    Cross-area: ``train_cities`` (default :data:`CROSS_TRAIN`) and ``test_cities``
    (default :data:`CROSS_TEST`).
    """
    if mode == "same":
        cities = tuple(cities) if cities else SAME_AREA_CITIES
        return (VigorIndex(data_root, cities, "train", "same", check_files),
                VigorIndex(data_root, cities, "test", "same", check_files))
    if mode == "cross":
        train = tuple(train_cities) if train_cities else CROSS_TRAIN
        test = tuple(test_cities) if test_cities else CROSS_TEST
        overlap = sorted(set(train) & set(test))
        if overlap:
            raise UserError(f"cross-area training and test cities overlap: {', '.join(overlap)}; "
                            "--train_cities and --test_cities must be disjoint")
        return (VigorIndex(data_root, train, "train", "cross", check_files),
                VigorIndex(data_root, test, "test", "cross", check_files))
    raise UserError(f"unknown VIGOR mode {mode!r}; valid: {', '.join(MODES)} (--mode)")


# ----------------------------------------------------------------------------- datasets
def _check_polar_files(index: VigorIndex, sat_indices: Iterable[int]) -> None:
    _check_exist(index.data_root, (polar_relpath(str(index.sat_paths[j])) for j in sat_indices), "polar",
                 f"create them with `python -m data.convert_polar --dataset vigor --data_root {index.data_root}` "
                 "or train without --polar_files")


def _converter(normalise: bool):
    """:func:`data.io.to_tensor` (normalised float32) or :func:`data.io.to_uint8_tensor`."""
    return to_tensor if normalise else to_uint8_tensor


class VigorPairs(Dataset):
    """Training pairs: each panorama with its positive satellite.

    Sample: ``{"street": 3 x pano_H x pano_W, "satellite": 3 x sate_H x sate_W`` (or
    ``3 x pano_H x pano_W`` polar image when ``polar_files``), ``"index"``: panorama
    position in the split, ``"positive"``: global satellite index, ``"semi"``: (3,) long
    semi-positives, ``"delta"``: (2,) float64 ``(d0, d1)`` of the positive relative to the
    *augmented* tile (640-tile pixels, :func:`augment_deltas`; the panorama sits at index
    :func:`panorama_pixel` ``(delta, sate_H)`` of the augmented aerial), ``"flip"``: bool,
    ``"rotation"``: k quarter turns}.

    ``augment`` enables a random east-west flip (p = 0.5); ``rotate`` a random rotation
    by ``90 deg * k``, k uniform in {0, 1, 2, 3}; both by :func:`data.augment.paired_augment`
    on the resized uint8 images with the Generator :func:`data.augment.sample_rng`
    ``(seed, epoch, index)``. Call :meth:`set_epoch` before each epoch (with
    ``persistent_workers=True`` the workers keep the epoch they were started with).
    With ``polar_files`` the polar image is augmented like a panorama and the deltas
    refer to the 640 tile it was computed from.

    ``normalise``: True (default): float32 ImageNet-normalised tensors (:func:`data.io.to_tensor`).
    False: uint8 ``3 x H x W`` tensors (:func:`data.io.to_uint8_tensor`), a quarter of the bytes
    through DataLoader workers; :func:`data.io.normalise` on the device gives the same values.
    """

    def __init__(self, index: VigorIndex, sate_size=(320, 320), pano_size=(320, 640), augment: bool = False,
                 rotate: bool = False, polar_files: bool = False, seed: int = 0, normalise: bool = True):
        self.index = index
        self.sate_size = size_hw(sate_size, "sate_size")
        self.pano_size = size_hw(pano_size, "pano_size")
        self.augment = bool(augment)
        self.rotate = bool(rotate)
        self.polar_files = bool(polar_files)
        self.seed = int(seed)
        self.normalise = bool(normalise)
        self.epoch = 0
        if self.rotate and self.pano_size[1] % 4:
            raise UserError(f"pano_size width {self.pano_size[1]} must be a multiple of 4 for rotation augmentation")
        if self.rotate and not self.polar_files and self.sate_size[0] != self.sate_size[1]:
            raise UserError(f"rotation augmentation needs a square sate_size, got {self.sate_size}")
        if self.polar_files:
            _check_polar_files(index, np.unique(index.positive))

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
        pano = read_image(index.pano_file(i), self.pano_size)
        if self.polar_files:
            satellite = read_image(index.polar_file(positive), self.pano_size)
        else:
            satellite = read_image(index.sat_file(positive), self.sate_size)
        flip, k = False, 0
        delta = np.array(index.deltas[i, 0], dtype=np.float64)
        if self.augment or self.rotate:
            pano, satellite, params = paired_augment(pano, satellite, sample_rng(self.seed, self.epoch, i),
                                                     flip=self.augment, rotate=self.rotate,
                                                     satellite_is_polar=self.polar_files)
            flip, k = bool(params["flip"]), int(params["rotation"])
            delta = augment_deltas(delta, flip, k)
        convert = _converter(self.normalise)
        return {"street": convert(pano), "satellite": convert(satellite), "index": i,
                "positive": positive, "semi": torch.from_numpy(index.semi[i].copy()),
                "delta": torch.from_numpy(delta), "flip": flip, "rotation": k}


class VigorPanoramas(Dataset):
    """Queries: ``{"street": 3 x pano_H x pano_W, "index": panorama position in the split}``.

    ``normalise``: True (default): float32 ImageNet-normalised tensors (:func:`data.io.to_tensor`).
    False: uint8 ``3 x H x W`` tensors (:func:`data.io.to_uint8_tensor`), a quarter of the bytes
    through DataLoader workers; :func:`data.io.normalise` on the device gives the same values.
    """

    def __init__(self, index: VigorIndex, pano_size=(320, 640), normalise: bool = True):
        self.index = index
        self.pano_size = size_hw(pano_size, "pano_size")
        self.normalise = bool(normalise)

    def __len__(self) -> int:
        return self.index.num_panoramas

    def __getitem__(self, i: int) -> dict:
        image = read_image(self.index.pano_file(i), self.pano_size)
        return {"street": _converter(self.normalise)(image), "index": int(i)}


class VigorSatellites(Dataset):
    """References: ``{"satellite": 3 x H x W, "index": global satellite index}``.

    ``H x W`` is ``sate_size``, or ``pano_size`` with ``polar_files`` (then the polar image
    ``<City>/polarmap/<satellite name>.png`` is read instead of the tile).

    ``normalise``: True (default): float32 ImageNet-normalised tensors (:func:`data.io.to_tensor`).
    False: uint8 ``3 x H x W`` tensors (:func:`data.io.to_uint8_tensor`), a quarter of the bytes
    through DataLoader workers; :func:`data.io.normalise` on the device gives the same values.
    """

    def __init__(self, index: VigorIndex, sate_size=(320, 320), polar_files: bool = False, pano_size=None,
                 normalise: bool = True):
        self.index = index
        self.polar_files = bool(polar_files)
        self.normalise = bool(normalise)
        if self.polar_files:
            self.size = size_hw(pano_size, "pano_size (needed with polar_files)")
            _check_polar_files(index, range(index.num_satellites))
        else:
            self.size = size_hw(sate_size, "sate_size")

    def __len__(self) -> int:
        return self.index.num_satellites

    def __getitem__(self, j: int) -> dict:
        path = self.index.polar_file(j) if self.polar_files else self.index.sat_file(j)
        return {"satellite": _converter(self.normalise)(read_image(path, self.size)), "index": int(j)}
