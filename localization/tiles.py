"""Where the reference tiles of an index come from, each with the GPS of its centre (no torch).

Three sources, one record per tile (:class:`Tile`):

* :func:`tiles_from_folders`: VIGOR-style tiles ``satellite_<lat>_<lon>.<png|jpg>`` in one or
  more folders (the name carries the tile centre's GPS; other image names are an error,
  files that are not images and dot-files such as macOS ``._*`` are ignored);
* :func:`tiles_from_csv`: a CSV of ``path,lat,lon`` rows (an optional header row naming the
  three columns in any order; relative paths are resolved against the CSV's folder);
* :func:`tiles_from_mosaic`: a north-up orthophoto with known bounds ``N,W,S,E`` cut into
  square tiles of ``tile_m`` metres every ``stride_m`` metres (see :class:`MosaicGeometry`).

Every tile file is checked up front, before anything is written (:func:`check_tile_files`):
it exists, its header is a JPEG or PNG one giving a size of at least
:data:`data.io.MIN_IMAGE_SIDE` pixels a side, and it ends like a complete image; a full decode
happens while embedding, where a corrupt file is also a :class:`common.errors.UserError`. A
tile may appear once: a folder given twice, a CSV row repeated or two tiles with the same GPS
in their names are refused. Each tile records its file's size and modification time (its
*stamp*, :func:`stamped`), so a changed image is told apart from the one that was indexed.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from common.errors import UserError
from data.io import MIN_IMAGE_SIDE, find_missing, image_size, missing_files_error, png_complete, read_image, resize
from data.vigor_layout import parse_satellite_name
from geometry.earth import EARTH_RADIUS_M

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_MAGIC = (b"\xff\xd8", b"\x89PNG\r\n\x1a\n")
_HEADER_BYTES = 1 << 16  # a JPEG's size marker lies within its first 64 kB unless huge metadata precede it
PROJECTIONS = ("equirectangular", "webmercator")  # the first is the default
#: Web Mercator's latitude limit (degrees): the square world of web maps.
MERCATOR_MAX_LAT = 85.0511287798
#: A mosaic point may lie in at most this many tiles on average (about ``--stride_m`` >= ``--tile_m`` / 10).
MAX_TILES_PER_POINT = 100


@dataclass(frozen=True)
class Tile:
    """One reference tile: ``name`` (shown in results), ``path`` (absolute image file), centre GPS.

    ``box`` = ``(x0, y0, x1, y1)`` pixel bounds of a tile cut from a mosaic (``path`` is then
    the mosaic); ``None`` for a tile that is a whole file. ``size`` (bytes) and ``mtime_ns``:
    the file's stamp when it was listed (:func:`stamped`; None in indexes of earlier releases).
    """

    name: str
    path: str
    lat: float
    lon: float
    box: Optional[Tuple[int, int, int, int]] = None
    size: Optional[int] = None
    mtime_ns: Optional[int] = None

    def as_dict(self) -> dict:
        out = {key: value for key, value in asdict(self).items() if value is not None}
        if self.box is not None:
            out["box"] = list(self.box)
        return out

    @classmethod
    def from_dict(cls, row: dict) -> "Tile":
        box = row.get("box")
        return cls(row["name"], row["path"], float(row["lat"]), float(row["lon"]),
                   tuple(int(v) for v in box) if box is not None else None,
                   *(int(row[key]) if row.get(key) is not None else None for key in ("size", "mtime_ns")))

    @property
    def place(self) -> tuple:
        """What the tile is apart from its file's stamp: name, path, GPS, box."""
        return self.name, self.path, self.lat, self.lon, self.box

    def stamp_differs(self) -> Optional[str]:
        """Why the tile's file no longer is the one stamped (missing, resized or rewritten), or None."""
        try:
            info = os.stat(self.path)
        except OSError as exc:
            return "is missing" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc.strerror})"
        if self.size is not None and (info.st_size, info.st_mtime_ns) != (self.size, self.mtime_ns):
            return "changed since the index was built (other size or modification time)"
        return None


def stamped(tiles: Sequence[Tile]) -> List[Tile]:
    """``tiles`` with the size and modification time of their files (a mosaic's tiles share one)."""
    stamps = {}
    out = []
    for tile in tiles:
        if tile.path not in stamps:
            info = os.stat(tile.path)
            stamps[tile.path] = (info.st_size, info.st_mtime_ns)
        out.append(replace(tile, size=stamps[tile.path][0], mtime_ns=stamps[tile.path][1]))
    return out


def check_gps(lat: float, lon: float, where: str) -> None:
    if not (math.isfinite(lat) and math.isfinite(lon) and -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise UserError(f"{where}: GPS ({lat}, {lon}) is outside latitude [-90, 90] / longitude [-180, 180]")


def _jpeg_complete(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(handle.tell() - 64, 0))
        return b"\xff\xd9" in handle.read().rstrip(b"\x00\r\n ")


def check_image_file(path: str, what: str, fix: str) -> Tuple[int, int]:
    """``(height, width)`` of a JPEG/PNG file from its header, after checking (without decoding it)
    that it is one, at least :data:`data.io.MIN_IMAGE_SIDE` pixels a side, and not cut short; a
    UserError naming ``what`` and ``path`` and ending with ``fix`` otherwise."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_BYTES)
        complete = png_complete(path) if head.startswith(_MAGIC[1]) else _jpeg_complete(path)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}; {fix}") from None
    if not any(head.startswith(magic) for magic in _MAGIC):
        raise UserError(f"not a JPEG or PNG image: {path}; {fix}")
    size = image_size(head)
    if size is None:
        raise UserError(f"{what} {path} has no readable image header (a broken JPEG or PNG file); {fix}")
    if not complete:
        kind = "PNG (no IEND chunk)" if head.startswith(_MAGIC[1]) else "JPEG (no end-of-image marker)"
        raise UserError(f"truncated {kind}: {path}; {fix}")
    if min(size) < MIN_IMAGE_SIDE:
        raise UserError(f"{what} {path} is only {size[1]} x {size[0]} pixels (width x height); at least "
                        f"{MIN_IMAGE_SIDE} pixels a side are needed to describe a place; {fix}")
    return size


def check_tile_files(paths: Iterable[str]) -> None:
    """:func:`check_image_file` for every tile file (each once)."""
    for path in dict.fromkeys(paths):
        check_image_file(path, "tile", "replace it or remove it from the tile source")


def _check_nonempty(tiles: List[Tile], what: str) -> List[Tile]:
    if not tiles:
        raise UserError(f"no tiles found in {what}")
    return tiles


# ------------------------------------------------------------------------------- folders
def tiles_from_folders(folders: Sequence[str]) -> List[Tile]:
    """VIGOR-style tiles of each folder (sorted by name within a folder, folders in order)."""
    tiles: List[Tile] = []
    seen_folders, seen_places = {}, {}
    for folder in folders:
        if not os.path.isdir(folder):
            raise UserError(f"--satellites folder not found: {folder}")
        real = os.path.realpath(folder)
        if real in seen_folders:
            raise UserError(f"--satellites folder given twice: {seen_folders[real]} and {folder}; each tile may be "
                            f"indexed once: list each folder once")
        seen_folders[real] = folder
        names = image_names(folder)
        if not names:
            raise UserError(f"--satellites folder {folder} holds no tile images (expected VIGOR-style "
                            f"names satellite_<lat>_<lon>.png; for other names use --tiles CSV with path,lat,lon)")
        for name in names:
            path = os.path.abspath(os.path.join(folder, name))
            try:
                lat, lon = parse_satellite_name(name)
            except UserError:
                raise UserError(f"tile name without GPS: {path}; --satellites expects "
                                "satellite_<lat>_<lon>.png (for other names use --tiles CSV with path,lat,lon)") from None
            check_gps(lat, lon, path)
            if (lat, lon) in seen_places:
                raise UserError(f"two tiles with the same GPS ({lat}, {lon}) in their names: {seen_places[lat, lon]} "
                                f"and {path}; each place may be indexed once: remove one of them")
            seen_places[lat, lon] = path
            tiles.append(Tile(name, path, lat, lon))
    check_tile_files(t.path for t in tiles)
    return stamped(tiles)


def image_names(folder: str) -> List[str]:
    """The .jpg/.jpeg/.png file names of ``folder``, sorted; dot-files (macOS ``._*``) are not images."""
    return sorted(name for name in os.listdir(folder)
                  if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."))


# ----------------------------------------------------------------------------------- CSV
_COLUMNS = ("path", "lat", "lon")


def _header_columns(row: Sequence[str], where: str) -> Optional[Tuple[int, int, int]]:
    """The positions of path, lat and lon named by a header row (any order, any case), or None
    when ``row`` is data (its second and third fields are numbers)."""
    names = [field.lower() for field in row]
    if all(name in names for name in _COLUMNS):
        return tuple(names.index(name) for name in _COLUMNS)
    try:
        float(row[1]), float(row[2])
        return None
    except (IndexError, ValueError):
        if any(name in names for name in _COLUMNS):
            raise UserError(f"{where}: a header row must name the columns path, lat and lon (any order), got "
                            f"{','.join(row)!r}") from None
        return None


def tiles_from_csv(csv_path: str) -> List[Tile]:
    """Tiles of a ``path,lat,lon`` CSV (an optional header row may order the three columns otherwise;
    paths relative to the CSV's folder)."""
    if not os.path.isfile(csv_path):
        raise UserError(f"--tiles CSV not found: {csv_path}")
    base = os.path.dirname(os.path.abspath(csv_path))
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --tiles CSV {csv_path}: {exc}") from None
    tiles: List[Tile] = []
    columns, rows_of = None, {}
    for number, row in enumerate(rows, start=1):
        row = [field.strip() for field in row]
        if not any(row):
            continue
        where = f"{csv_path}:{number}"
        if columns is None:
            columns = _header_columns(row, where)
            if columns is not None:
                continue
            columns = (0, 1, 2)
        if len(row) <= max(columns):
            raise UserError(f"{where}: expected 'path,lat,lon', got {','.join(row)!r}")
        name, lat, lon = (row[c] for c in columns)
        try:
            lat, lon = float(lat), float(lon)
        except ValueError:
            raise UserError(f"{where}: lat and lon must be numbers (degrees), got {lat!r}, {lon!r}") from None
        check_gps(lat, lon, where)
        path = os.path.normpath(os.path.join(base, name))
        if path in rows_of:
            raise UserError(f"tile listed twice in --tiles CSV {csv_path} (rows {rows_of[path]} and {number}): "
                            f"{name}; each tile may be indexed once: delete the repeated row")
        rows_of[path] = number
        tiles.append(Tile(name, path, lat, lon))
    _check_nonempty(tiles, f"--tiles CSV {csv_path} (expected rows 'path,lat,lon')")
    missing = find_missing(base, [t.path for t in tiles])
    if missing:
        raise missing_files_error(base, missing, len(tiles), "tile", csv_path)
    check_tile_files(t.path for t in tiles)
    return stamped(tiles)


# -------------------------------------------------------------------------------- mosaic
def parse_bounds(text: str) -> Tuple[float, float, float, float]:
    """``'N,W,S,E'`` (degrees) -> floats; N > S and E > W (no antimeridian crossing)."""
    try:
        values = tuple(float(v) for v in text.split(","))
        if len(values) != 4:
            raise ValueError
    except ValueError:
        raise UserError(f"--bounds must be four numbers N,W,S,E in degrees, got {text!r}") from None
    north, west, south, east = values
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"--bounds must be finite numbers, got {text!r}")
    if not north > south:
        raise UserError(f"--bounds N,W,S,E needs N > S (north above south), got N={north:g}, S={south:g}")
    if not east > west:
        raise UserError(f"--bounds N,W,S,E needs E > W (an extent crossing the antimeridian is not supported), "
                        f"got W={west:g}, E={east:g}")
    if north > 90 or south < -90 or west < -180 or east > 180:
        raise UserError(f"--bounds {text!r} lie outside latitude [-90, 90] / longitude [-180, 180]")
    return north, west, south, east


def _mercator_y(lat: float) -> float:
    return math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


@dataclass(frozen=True)
class MosaicGeometry:
    """Pixel <-> GPS of a north-up mosaic of ``width x height`` pixels covering ``bounds``.

    Convention: continuous pixel coordinates ``(x, y)``, ``(0, 0)`` the north-west corner of
    the top-left pixel and ``(width, height)`` the south-east corner of the bottom-right one
    (so those corners are exactly ``(N, W)`` and ``(S, E)``). Columns are linear in longitude.
    Rows are linear in latitude for ``equirectangular`` (plate carree, EPSG:4326 exports) or
    in the Mercator ordinate ``ln tan(pi/4 + lat/2)`` for ``webmercator`` (EPSG:3857 web map
    exports). Metres per pixel are taken at the mosaic's centre latitude on a sphere of
    radius :data:`geometry.earth.EARTH_RADIUS_M`; over a city-sized extent the scale varies
    by well under 1%, which changes tile sizes, never tile centre GPS.
    """

    bounds: Tuple[float, float, float, float]
    width: int
    height: int
    projection: str = PROJECTIONS[0]

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise UserError(f"unknown --projection {self.projection!r}; valid: {', '.join(PROJECTIONS)}")
        north, _, south, _ = self.bounds
        if self.projection == "webmercator" and max(abs(north), abs(south)) > MERCATOR_MAX_LAT:
            raise UserError(f"--bounds N={north:g}, S={south:g} reach beyond latitude +-{MERCATOR_MAX_LAT:.4f}, the "
                            f"limit of --projection webmercator (web maps end there); check the bounds, or use "
                            f"--projection equirectangular for an EPSG:4326 export")

    def pixel_to_gps(self, x, y):
        """(lat, lon) of continuous pixel coordinates ``x``, ``y`` (floats or arrays)."""
        north, west, south, east = self.bounds
        lon = west + (np.asarray(x, dtype=np.float64) / self.width) * (east - west)
        t = np.asarray(y, dtype=np.float64) / self.height
        if self.projection == "equirectangular":
            lat = north + t * (south - north)
        else:
            merc = _mercator_y(north) + t * (_mercator_y(south) - _mercator_y(north))
            lat = np.degrees(2 * np.arctan(np.exp(merc)) - np.pi / 2)
        return lat, lon

    def metres_per_pixel(self) -> Tuple[float, float]:
        """Ground metres per pixel (along x, along y) at the centre latitude."""
        north, west, south, east = self.bounds
        centre = math.radians((north + south) / 2)
        width_m = EARTH_RADIUS_M * math.cos(centre) * math.radians(east - west)
        height_m = EARTH_RADIUS_M * math.radians(north - south)
        return width_m / self.width, height_m / self.height

    def tile_boxes(self, tile_m: float, stride_m: float) -> List[Tuple[int, int, int, int]]:
        """Boxes ``(x0, y0, x1, y1)`` of tiles of ``tile_m`` metres every ``stride_m`` metres,
        row by row from the north-west corner; only tiles that fit inside the mosaic."""
        mx, my = self.metres_per_pixel()
        tile_w, tile_h = tile_m / mx, tile_m / my
        step_x, step_y = stride_m / mx, stride_m / my
        if tile_w > self.width + 1e-6 or tile_h > self.height + 1e-6:
            raise UserError(f"--tile_m {tile_m:g} is larger than the mosaic ({self.width * mx:.1f} x "
                            f"{self.height * my:.1f} m from --bounds); use a smaller --tile_m")
        if min(tile_w, tile_h) < MIN_IMAGE_SIDE:
            raise UserError(f"--tile_m {tile_m:g} is only {min(tile_w, tile_h):.1f} pixels of the mosaic "
                            f"({mx:.2f} x {my:.2f} m per pixel); use a larger --tile_m")
        boxes = []
        rows = int(math.floor((self.height - tile_h) / step_y + 1e-9)) + 1
        cols = int(math.floor((self.width - tile_w) / step_x + 1e-9)) + 1
        coverage = rows * cols * tile_w * tile_h / (self.width * self.height)  # tiles over a point, on average
        if coverage > MAX_TILES_PER_POINT:
            raise UserError(f"--stride_m {stride_m:g} with --tile_m {tile_m:g} cuts {rows * cols} tiles, each point "
                            f"of the mosaic in about {coverage:.0f} of them (at most "
                            f"{MAX_TILES_PER_POINT}); use --stride_m {tile_m / math.sqrt(MAX_TILES_PER_POINT):g} or "
                            f"more (half the tile side, {tile_m / 2:g}, overlaps tiles like VIGOR)")
        for r in range(rows):
            for c in range(cols):
                x0, y0 = c * step_x, r * step_y
                boxes.append((int(round(x0)), int(round(y0)), int(round(x0 + tile_w)), int(round(y0 + tile_h))))
        return boxes


def tiles_from_mosaic(path: str, bounds: Tuple[float, float, float, float], tile_m: float, stride_m: float,
                      projection: str = PROJECTIONS[0]) -> List[Tile]:
    """Tiles cut from a north-up mosaic; each centre's GPS from the box centre (:class:`MosaicGeometry`)."""
    if not (tile_m and tile_m > 0 and stride_m and stride_m > 0):
        raise UserError("--mosaic needs --tile_m M and --stride_m M, both positive (metres)")
    height, width = check_image_file(path, "--mosaic", "pass a JPEG or PNG orthophoto")
    geometry = MosaicGeometry(bounds, width, height, projection)
    path = os.path.abspath(path)
    tiles = []
    for number, box in enumerate(geometry.tile_boxes(tile_m, stride_m)):
        lat, lon = geometry.pixel_to_gps((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        tiles.append(Tile(f"mosaic_{number:06d}", path, float(lat), float(lon), box))
    return stamped(_check_nonempty(tiles, f"--mosaic {path}"))


# ------------------------------------------------------------------------------ reading
class TileReader:
    """Reads tile images as RGB uint8, resized to ``size`` (H, W) when given; a mosaic is
    decoded once and cropped."""

    def __init__(self) -> None:
        self._mosaic_path: Optional[str] = None
        self._mosaic: Optional[np.ndarray] = None

    def __call__(self, tile: Tile, size: Optional[Sequence[int]] = None) -> np.ndarray:
        if tile.box is None:
            return read_image(tile.path, size)
        if self._mosaic_path != tile.path:
            self._mosaic, self._mosaic_path = read_image(tile.path), tile.path
        x0, y0, x1, y1 = tile.box
        crop = self._mosaic[y0:y1, x0:x1]
        return resize(crop, size) if size is not None else crop
