"""The VIGOR layout: names, split and label files, the parsed index, its settings (no torch).

Layout (docs/datasets.md)::

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
d1 > 0: west of it), in pixel index coordinates: the tile centre (its GPS) is index
``(320, 320)``, the centre of the polar transform (see :func:`data.vigor.panorama_pixel`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from common.errors import UserError
from common.settings import check_settings, setting
from data.io import check_polar_size, find_missing, missing_files_error

SAME_AREA_CITIES = ("NewYork", "Seattle", "SanFrancisco", "Chicago")
CROSS_TRAIN = ("NewYork", "Seattle")
CROSS_TEST = ("SanFrancisco", "Chicago")

TILE_SIDE = 640
"""Side in pixels of the original satellite tiles; the label deltas are in these pixels."""
NOMINAL_METRES_PER_PIXEL = 0.114
"""VIGOR's nominal ground resolution of those tiles (per city: 0.1008-0.1181, SliceMatch)."""
TILE_SIDE_M = TILE_SIDE * NOMINAL_METRES_PER_PIXEL
"""A tile's side in metres at the nominal resolution (72.96 m)."""

SPLITS = ("train", "test")
MODES = ("same", "cross")
#: ``--semi_positive``: none, or VIGOR's IOU loss on one semi-positive satellite per panorama.
SEMI_POSITIVE_LOSSES = ("none", "iou")


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


def polar_path(satellite_relpath: str) -> str:
    """Polar-image path for a satellite path, both relative to the data root.

    ``<City>/satellite/satellite_<lat>_<lon>.png`` -> ``<City>/polarmap/satellite_<lat>_<lon>.png``:
    the SAFA polar transform of the tile with the tile's own side as S (written by
    ``python -m data.convert_polar --dataset vigor``).
    """
    city_dir, _, name = satellite_relpath.replace("\\", "/").rpartition("/satellite/")
    if not city_dir:
        raise ValueError(f"not a VIGOR satellite path: {satellite_relpath!r}")
    return f"{city_dir}/polarmap/{os.path.splitext(name)[0]}.png"


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


def _check_cities(cities: Sequence[str]) -> Tuple[str, ...]:
    cities = tuple(str(c).strip() for c in cities)
    if not cities or any(not c for c in cities):
        raise UserError("no VIGOR city given; pass e.g. --cities NewYork,Seattle,SanFrancisco,Chicago")
    duplicates = sorted({c for c in cities if cities.count(c) > 1})
    if duplicates:
        raise UserError(f"VIGOR city listed twice: {', '.join(duplicates)}; each city may appear once")
    return cities


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
        street_paths (N,) str ``<City>/panorama/<name>``; street_gps (N, 2) float64 (lat, lon);
        street_city (N,) int index into ``cities``;
        satellite_paths (M,) str ``<City>/satellite/<name>``; satellite_gps (M, 2) float64 (lat, lon);
        satellite_city (M,) int; satellite_ranges: city -> (start, stop) global satellite indices;
        positive (N,) int64 global satellite index; semi (N, 3) int64 semi-positives;
        deltas (N, 4, 2) float64 ``(d0, d1)`` for the positive then the three semi-positives;
        label_files: the label files read, in order.
    """

    def __init__(self, data_root: str, cities: Sequence[str], split: str, mode: str, check_files: bool = True):
        if split not in SPLITS:
            raise UserError(f"unknown VIGOR split {split!r}; valid: {', '.join(SPLITS)}")
        if mode not in MODES:
            raise UserError(f"unknown VIGOR mode {mode!r}; valid: {', '.join(MODES)} (--mode)")
        self.data_root = str(data_root)
        self.cities = _check_cities(cities)
        self.split = split
        self.mode = mode
        self._check_layout()
        lookups = self._read_satellite_lists()
        self._read_labels(lookups)
        if check_files:
            self.check_files()

    def _read_satellite_lists(self) -> List[Dict[str, int]]:
        """Set the satellite attributes from the cities' lists; per city ``{name: global index}``."""
        paths: List[str] = []
        gps: List[Tuple[float, float]] = []
        city_of: List[int] = []
        self.satellite_ranges: Dict[str, Tuple[int, int]] = {}
        lookups: List[Dict[str, int]] = []
        for c, city in enumerate(self.cities):
            list_file = os.path.join(self.data_root, "splits", city, "satellite_list.txt")
            start = len(paths)
            lookup: Dict[str, int] = {}
            for number, name in read_list(list_file):
                if name in lookup:
                    raise UserError(f"{list_file}:{number}: satellite {name!r} listed twice "
                                    f"(first at global index {lookup[name]}); fix the list file")
                try:
                    gps.append(parse_satellite_name(name))
                except UserError as exc:
                    raise UserError(f"{list_file}:{number}: {exc}") from None
                lookup[name] = len(paths)
                paths.append(f"{city}/satellite/{name}")
                city_of.append(c)
            if len(paths) == start:
                raise UserError(f"VIGOR satellite list is empty: {list_file}")
            self.satellite_ranges[city] = (start, len(paths))
            lookups.append(lookup)
        self.satellite_paths = np.array(paths)
        self.polar_paths = np.array([polar_path(path) for path in paths])
        self.satellite_gps = np.array(gps, dtype=np.float64).reshape(-1, 2)
        self.satellite_city = np.array(city_of, dtype=np.int64)
        return lookups

    def _read_labels(self, lookups: List[Dict[str, int]]) -> None:
        """Set the panorama attributes, positives, semi-positives and deltas from the label files."""
        everywhere: Dict[str, int] = {}
        for lookup in lookups:
            for name, index in lookup.items():
                everywhere.setdefault(name, index)
        paths, gps, city_of, sats, deltas = [], [], [], [], []
        self.label_files: List[str] = []
        label_name = f"same_area_balanced_{self.split}.txt" if self.mode == "same" else "pano_label_balanced.txt"
        for c, city in enumerate(self.cities):
            label_file = os.path.join(self.data_root, "splits", city, label_name)
            self.label_files.append(label_file)
            for number, line in read_list(label_file):
                name, position, row, values = self._parse_label(line, f"{label_file}:{number}", lookups[c],
                                                                everywhere)
                gps.append(position)
                sats.append(row)
                deltas.append(values)
                paths.append(f"{city}/panorama/{name}")
                city_of.append(c)
            if not paths or city_of[-1] != c:
                raise UserError(f"VIGOR label file has no panorama: {label_file}")
        self.street_paths = np.array(paths)
        self.street_gps = np.array(gps, dtype=np.float64).reshape(-1, 2)
        self.street_city = np.array(city_of, dtype=np.int64)
        sats_array = np.array(sats, dtype=np.int64).reshape(-1, 4)
        self.positive = np.ascontiguousarray(sats_array[:, 0])
        self.semi = np.ascontiguousarray(sats_array[:, 1:])
        self.deltas = np.array(deltas, dtype=np.float64).reshape(-1, 4, 2)

    def _parse_label(self, line: str, where: str, lookup: Dict[str, int], everywhere: Dict[str, int]):
        """One label line -> (panorama file name, (lat, lon), 4 global satellite indices, 8 deltas)."""
        fields = line.split()
        if len(fields) != 13:
            raise UserError(f"{where}: malformed VIGOR label line with {len(fields)} fields, expected 13 "
                            "('pano sat_pos d0 d1 sat_semi1 d0 d1 sat_semi2 d0 d1 sat_semi3 d0 d1')")
        try:
            position = parse_panorama_name(fields[0])[1:]
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        row = []
        for name in (fields[i] for i in (1, 4, 7, 10)):
            index = lookup.get(name, everywhere.get(name))
            if index is None:
                raise UserError(f"{where}: satellite {name!r} is not in the satellite lists of "
                                f"{', '.join(self.cities)}; the label and list files do not match")
            row.append(index)
        try:
            values = [float(fields[i]) for i in (2, 3, 5, 6, 8, 9, 11, 12)]
        except ValueError:
            raise UserError(f"{where}: malformed VIGOR label line: the pixel offsets "
                            "(fields 3-4, 6-7, 9-10, 12-13) must be numbers") from None
        return os.path.basename(fields[0]), position, row, values

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
        for kind, paths, source in (("panorama", self.street_paths, "the label files"),
                                    ("satellite", self.satellite_paths, "the satellite lists")):
            _check_exist(self.data_root, paths, kind, source, "re-extract the VIGOR archive or check --data_root")

    def check_polar_files(self, satellites: Iterable[int], pano_size: Optional[Sequence[int]] = None) -> None:
        """Raise a :class:`UserError` when a polar image of one of ``satellites`` is missing (or,
        given ``pano_size``, when they do not fit it: :func:`data.io.check_polar_size`)."""
        satellites = list(satellites)
        command = f"python -m data.convert_polar --dataset vigor --data_root {self.data_root}"
        _check_exist(self.data_root, (self.polar_paths[j] for j in satellites), "polar", "the satellite lists",
                     f"create them with `{command}` or train without --polar_files")
        if pano_size is not None and satellites:
            check_polar_size(self.polar_file(satellites[0]), pano_size, command)

    # -- accessors
    @property
    def num_panoramas(self) -> int:
        return len(self.street_paths)

    @property
    def num_satellites(self) -> int:
        return len(self.satellite_paths)

    def __len__(self) -> int:
        return self.num_panoramas

    def street_file(self, i: int) -> str:
        return os.path.join(self.data_root, str(self.street_paths[i]))

    def satellite_file(self, j: int) -> str:
        return os.path.join(self.data_root, str(self.satellite_paths[j]))

    def polar_file(self, j: int) -> str:
        return os.path.join(self.data_root, str(self.polar_paths[j]))

    def __repr__(self) -> str:
        return (f"VigorIndex(mode={self.mode!r}, split={self.split!r}, cities={list(self.cities)}, "
                f"panoramas={self.num_panoramas}, satellites={self.num_satellites})")


def _check_exist(root: str, relpaths: Iterable[str], kind: str, source: str, fix: str) -> None:
    """Raise :func:`data.io.missing_files_error` when any of ``relpaths`` is missing."""
    relpaths = [str(rel) for rel in relpaths]
    missing = find_missing(root, relpaths)
    if missing:
        raise missing_files_error(root, missing, len(relpaths), f"VIGOR {kind}", source, [fix])


#: Model input sizes (H, W) on VIGOR: the official ones (satellite 320 x 320, panorama 320 x 640).
SATE_SIZE = (320, 320)
PANO_SIZE = (320, 640)


@dataclass(frozen=True)
class VigorConfig:
    """Where VIGOR is, which protocol and cities a run uses, and the mining sampler's settings."""

    data_root: str = setting(os.environ.get("VIGOR_ROOT", "/data/VIGOR"),
                             "VIGOR folder (holds the city folders and splits/); or set VIGOR_ROOT", evaluation=True)
    mode: str = setting("same", "VIGOR protocol: same-area or cross-area", choices=lambda: MODES, evaluation=True)
    cities: Tuple[str, ...] = setting(SAME_AREA_CITIES, "same-area cities, in official order", evaluation=True)
    train_cities: Tuple[str, ...] = setting(CROSS_TRAIN, "cross-area training cities", evaluation=True)
    test_cities: Tuple[str, ...] = setting(CROSS_TEST, "cross-area evaluation cities", evaluation=True)
    mining: bool = setting(False, "fill part of each batch with panoramas of similar satellites "
                                  "(mined after each epoch)")
    mining_k: int = setting(16, "mining: neighbours kept per satellite", minimum=1)
    mining_fraction: float = setting(0.5, "mining: fraction of each batch drawn from neighbours",
                                     minimum=0.0, maximum=1.0)
    semi_positive: str = setting("none", "iou: each panorama also brings one of its semi-positive satellites, "
                                         "whose similarity is pulled towards the IOU ratio of the two tiles "
                                         "(VIGOR's loss)", choices=lambda: SEMI_POSITIVE_LOSSES)

    def __post_init__(self) -> None:
        check_settings(self)
        common = set(self.train_cities) & set(self.test_cities)
        if self.mode == "cross" and common:
            raise UserError(f"cross-area VIGOR trains and tests on different cities, but "
                            f"{', '.join(sorted(common))} is in both --train_cities and --test_cities")

    def check_sampling(self, sampling: str) -> None:
        """``--mining`` and ``--sampling gps|similarity`` both group each batch around neighbours: one at a time."""
        if self.mining and sampling != "random":
            raise UserError(f"--mining and --sampling {sampling} both fill batches with neighbours; pass one: "
                            f"--mining (part of each batch from mined similar satellites) or --sampling {sampling}")

    def inert(self, offset_labels: bool) -> Dict[str, str]:
        """``{setting: the flag that would make it act}`` for the settings this protocol and sampler ignore."""
        rules = {"mining_k": ("--mining", not self.mining), "mining_fraction": ("--mining", not self.mining),
                 "cities": ("--mode same", self.mode != "same"),
                 "train_cities": ("--mode cross", self.mode != "cross"),
                 "test_cities": ("--mode cross", self.mode != "cross")}
        return {name: flag for name, (flag, idle) in rules.items() if idle}

    def split_cities(self, split: str) -> Tuple[str, ...]:
        """The cities of ``split`` ("train" or "test") in indexing order."""
        if self.mode == "same":
            return self.cities
        return self.train_cities if split == "train" else self.test_cities

    def index(self, split: str, check_files: bool = True) -> "VigorIndex":
        """The parsed ``split`` of this protocol."""
        return VigorIndex(self.data_root, self.split_cities(split), split, self.mode, check_files)
