"""Georeferenced tile sources: GeoTIFF / COG rasters in any CRS, slippy-map tiles (``z/x/y``
folders and MBTiles), cut into north-up square tiles on a metric grid (no torch).

Convention
----------
* **Grid.** Tile centres lie on a square grid of ``stride_m`` metres in a *local frame*: the
  azimuthal equidistant projection (WGS 84, metres, x east, y north) centred on the middle of
  the source's valid data. The grid is centred on the valid data's extent in that frame (equal
  margins on both sides; the outer tiles may overhang it by up to a quarter of ``stride_m``, so
  a source of exactly ``tile_m + n stride_m`` metres, in whatever CRS or ellipsoid it was measured,
  gets ``n + 1`` tiles a side), rows run north to south, columns west to east. A tile whose sampled
  footprint is less than :data:`MIN_VALID` valid (nodata, transparent, missing slippy tiles, or
  outside the source) is skipped and counted.
* **Tile image.** A tile of side ``tile_m`` is rendered in the azimuthal equidistant frame
  centred on its own centre (north up at that point), pixel ``(0, 0)`` the north-west corner,
  at the source's ground resolution (at most :data:`MAX_TILE_PX` pixels a side), bilinear;
  :func:`data.io.resize` then brings it to the model's input, as for tile files. Pixels without
  data are black.
* **Reads are windowed:** a tile reads only the source pixels under it (a raster window, or the
  slippy tiles it touches), and the validity map is a decimated read of the dataset mask, so
  memory does not grow with the source's size. GDAL's block cache is capped at
  :data:`GDAL_CACHE_MB`.
* Web Mercator ground resolution: ``156543.03392 cos(lat) / 2^zoom`` metres per pixel of a
  256-pixel tile (:func:`slippy_metres_per_pixel`); MBTiles rows are TMS (row 0 in the south),
  ``y_tms = 2^zoom - 1 - y``.

The default tile side is the side in metres of the tiles the model was trained on
(:func:`training_tile_m`: VIGOR ``TILE_SIDE x NOMINAL_METRES_PER_PIXEL`` = 72.96 m, CVUSA
750 px at 0.22 m = 165 m), read from the checkpoint's ``dataset``; the default stride is half
of it (VIGOR's half overlap).
"""
from __future__ import annotations

import functools
import math
import os
import re
import sqlite3
import warnings
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from common.errors import UserError
from data.io import resize
from localization.tiles import Tile, TileReader, stamped

#: A tile is kept when at least this fraction of its footprint has data.
MIN_VALID = 0.5
#: Footprint samples per tile side for the validity fraction.
FOOTPRINT_SAMPLES = 8
#: The validity map is read with at most this many cells a side.
VALIDITY_CELLS = 2048
#: Largest side in pixels a tile is rendered at before resizing to the model input.
MAX_TILE_PX = 1024
#: GDAL block cache (MB) while reading: bounded memory whatever the raster's size.
GDAL_CACHE_MB = 64
#: Web Mercator metres per pixel of a 256-pixel tile at zoom 0 on the equator.
WEB_MERCATOR_M_PER_PX = 156543.03392
SLIPPY_TILE_PX = 256
SLIPPY_EXTENSIONS = (".png", ".jpg", ".jpeg")
GEO_KINDS = ("raster", "xyz", "mbtiles")


def _rasterio():
    try:
        import rasterio
    except ImportError:  # pragma: no cover - rasterio is in requirements.txt
        raise UserError("the rasterio library is missing: pip install -r requirements.txt") from None
    return rasterio


def _transformer(src, dst):
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def local_frame(lat: float, lon: float) -> str:
    """PROJ string of the azimuthal equidistant frame (metres, x east, y north) centred on (lat, lon)."""
    return f"+proj=aeqd +lat_0={lat!r} +lon_0={lon!r} +ellps=WGS84 +units=m +no_defs"


def training_tile_m(run) -> float:
    """Side in metres of the satellite tiles the checkpoint's dataset trains on."""
    from data.cvusa_layout import AERIAL_SIDE_M
    from data.vigor_layout import TILE_SIDE_M

    return {"vigor": TILE_SIDE_M, "cvusa": AERIAL_SIDE_M}[run.dataset]


def slippy_metres_per_pixel(lat: float, zoom: int) -> float:
    return WEB_MERCATOR_M_PER_PX * math.cos(math.radians(lat)) / 2 ** zoom


# --------------------------------------------------------------------------- sources
class GeoSource:
    """A georeferenced image: ``crs``, a coarse validity map, windowed reads into any grid."""

    kind = ""
    path = ""
    zoom: Optional[int] = None

    def validity(self) -> Tuple[np.ndarray, object, object]:
        """``(bool map, affine transform, crs)``: where the source has data, coarsely."""
        raise NotImplementedError

    def metres_per_pixel(self, lat: float) -> float:
        raise NotImplementedError

    def read_into(self, dst_crs: str, dst_transform, side: int) -> np.ndarray:
        """``side x side x 3`` uint8 of the source resampled (bilinear) onto the given grid."""
        raise NotImplementedError

    def describe(self) -> dict:
        out = {"kind": self.kind, "path": self.path}
        if self.zoom is not None:
            out["zoom"] = self.zoom
        return out


def _to_rgb(bands: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(3 x H x W colour, H x W alpha or None)`` of 1 (grey), 2 (grey+alpha), 3 or 4-band data."""
    count = bands.shape[0]
    alpha = bands[-1] if count in (2, 4) else None
    colour = bands[:3] if count >= 3 else np.repeat(bands[:1], 3, axis=0)
    return colour, alpha


def _warp(colour: np.ndarray, valid: np.ndarray, src_transform, src_crs, dst_crs, dst_transform,
          side: int) -> np.ndarray:
    """Bilinear reprojection of ``3 x h x w`` uint8 with a validity mask; invalid -> black."""
    from rasterio.warp import Resampling, reproject

    source = np.where(valid[None], colour, 0).astype(np.uint8)
    mask = valid.astype(np.uint8) * 255
    out = np.zeros((3, side, side), np.uint8)
    out_mask = np.zeros((side, side), np.uint8)
    common = dict(src_transform=src_transform, src_crs=src_crs, dst_transform=dst_transform, dst_crs=dst_crs,
                  resampling=Resampling.bilinear)
    reproject(source, out, **common)
    reproject(mask, out_mask, **common)
    out[:, out_mask < 128] = 0
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def _dst_bounds_in(dst_crs: str, dst_transform, side: int, crs) -> Tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    left, top = dst_transform @ (0, 0)
    right, bottom = dst_transform @ (side, side)
    return transform_bounds(dst_crs, crs, left, bottom, right, top, densify_pts=21)


class RasterSource(GeoSource):
    """A GeoTIFF / COG (anything GDAL reads with a CRS); bands: grey, grey+alpha, RGB or RGBA."""

    kind = "raster"

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._dataset = None
        with self._env():
            dataset = self._open()
            if dataset.crs is None:
                raise UserError(f"--raster {path} has no coordinate reference system (CRS); georeference it (e.g. "
                                f"gdal_translate -a_srs EPSG:XXXX -a_ullr ...) or use --mosaic with --bounds")
            if dataset.transform.is_identity:
                raise UserError(f"--raster {path} has a CRS but no geotransform (pixel size and position); "
                                f"georeference it (e.g. gdal_translate -a_ullr ...) or use --mosaic with --bounds")
            try:
                _transformer(dataset.crs, "EPSG:4326")
            except Exception as exc:  # pyproj raises several kinds for CRSs it cannot convert
                raise UserError(f"--raster {path}: its CRS cannot be converted to GPS ({exc})") from None
            if dataset.count not in (1, 2, 3, 4) or dataset.dtypes[0] != "uint8":
                raise UserError(f"--raster {path} has {dataset.count} band(s) of {dataset.dtypes[0]}; expected 8-bit "
                                f"grey, grey+alpha, RGB or RGBA (convert with gdal_translate -ot Byte -scale)")
            self.crs, self.transform = dataset.crs, dataset.transform
            self.width, self.height = dataset.width, dataset.height

    def __getstate__(self):  # worker processes open their own handle
        return {**self.__dict__, "_dataset": None}

    @staticmethod
    def _env():
        return _rasterio().Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2 ** 20)  # bytes

    def _open(self):
        if self._dataset is None:
            rasterio = _rasterio()
            if not os.path.isfile(self.path):
                raise UserError(f"--raster file not found: {self.path}")
            try:
                with warnings.catch_warnings():  # no geotransform: refused with one clear error below
                    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                    self._dataset = rasterio.open(self.path)
            except rasterio.errors.RasterioIOError as exc:
                raise UserError(f"cannot read --raster {self.path}: {exc}") from None
        return self._dataset

    def validity(self):
        from rasterio.transform import Affine

        scale = max(1, math.ceil(max(self.width, self.height) / VALIDITY_CELLS))
        shape = (max(1, self.height // scale), max(1, self.width // scale))
        with self._env():
            mask = self._open().dataset_mask(out_shape=shape) > 0
        transform = self.transform @ Affine.scale(self.width / shape[1], self.height / shape[0])
        return mask, transform, self.crs

    def metres_per_pixel(self, lat: float) -> float:
        return self._centre_metres_per_pixel

    @functools.cached_property
    def _centre_metres_per_pixel(self) -> float:
        """The raster's pixel size in metres at its centre (measured once; every tile reads it)."""
        lon_lat = _transformer(self.crs, "EPSG:4326")
        x0, y0 = self.transform @ (self.width / 2, self.height / 2)
        x1, y1 = self.transform @ (self.width / 2 + 1, self.height / 2)
        (lon_a, lon_b), (lat_a, lat_b) = lon_lat.transform([x0, x1], [y0, y1])
        from pyproj import Geod

        return float(Geod(ellps="WGS84").inv(lon_a, lat_a, lon_b, lat_b)[2])

    def read_into(self, dst_crs, dst_transform, side):
        from rasterio.windows import Window, from_bounds
        from rasterio.windows import transform as window_transform

        with self._env():
            dataset = self._open()
            left, bottom, right, top = _dst_bounds_in(dst_crs, dst_transform, side, self.crs)
            window = from_bounds(left, bottom, right, top, self.transform)
            col0, row0 = max(0, math.floor(window.col_off) - 2), max(0, math.floor(window.row_off) - 2)
            col1 = min(self.width, math.ceil(window.col_off + window.width) + 2)
            row1 = min(self.height, math.ceil(window.row_off + window.height) + 2)
            if col1 <= col0 or row1 <= row0:
                return np.zeros((side, side, 3), np.uint8)
            window = Window(col0, row0, col1 - col0, row1 - row0)
            # never more than twice the output's pixels a side: decimated (overview) reads
            scale = max(1.0, max(window.width, window.height) / (2 * side))
            shape = (max(1, round(window.height / scale)), max(1, round(window.width / scale)))
            bands = dataset.read(window=window, out_shape=(dataset.count, *shape))
            valid = dataset.dataset_mask(window=window, out_shape=shape) > 0
        from rasterio.transform import Affine

        src_transform = window_transform(window, self.transform) @ Affine.scale(window.width / shape[1],
                                                                                window.height / shape[0])
        colour, alpha = _to_rgb(bands)
        if alpha is not None:
            valid &= alpha > 0
        return _warp(colour, valid, src_transform, self.crs, dst_crs, dst_transform, side)


class SlippySource(GeoSource):
    """Web Mercator tiles of one zoom: a ``z/x/y.png|jpg`` folder or an MBTiles file (TMS rows)."""

    crs = "EPSG:3857"

    def __init__(self, path: str, zoom: Optional[int], kind: str) -> None:
        self.path, self.kind = os.path.abspath(path), kind
        self._db = None
        zooms = self._zooms()
        if not zooms:
            raise UserError(f"--{kind} {path} holds no tiles (expected {self._layout()})")
        if zoom is None:
            if kind == "xyz":
                raise UserError(f"--xyz needs --zoom Z; {path} has zoom levels {_listing(zooms)}")
            zoom = max(zooms)
        if zoom not in zooms:
            raise UserError(f"--{kind} {path} has no tiles at --zoom {zoom}; it has zoom levels {_listing(zooms)}")
        self.zoom = int(zoom)
        self.keys = self._keys()
        xs, ys = zip(*self.keys)
        self.x0, self.y0, self.x1, self.y1 = min(xs), min(ys), max(xs) + 1, max(ys) + 1

    def __getstate__(self):
        return {**self.__dict__, "_db": None}

    def _layout(self) -> str:
        return "z/x/y.png or .jpg tiles" if self.kind == "xyz" else "an MBTiles 'tiles' table"

    def _connect(self):
        if self._db is None:
            if not os.path.isfile(self.path):
                raise UserError(f"--mbtiles file not found: {self.path}")
            try:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                self._db.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles LIMIT 1").fetchall()
            except sqlite3.Error as exc:
                raise UserError(f"--mbtiles {self.path} is not a readable MBTiles file ({exc})") from None
        return self._db

    def _zooms(self) -> List[int]:
        if self.kind == "mbtiles":
            return sorted(z for (z,) in self._connect().execute("SELECT DISTINCT zoom_level FROM tiles"))
        if not os.path.isdir(self.path):
            raise UserError(f"--xyz folder not found: {self.path}")
        return sorted(int(name) for name in os.listdir(self.path) if name.isdigit())

    def _keys(self) -> set:
        if self.kind == "mbtiles":
            top = 2 ** self.zoom - 1
            rows = self._connect().execute("SELECT tile_column, tile_row FROM tiles WHERE zoom_level = ?",
                                           (self.zoom,))
            return {(int(x), top - int(y)) for x, y in rows}
        keys, self._files = set(), {}
        folder = os.path.join(self.path, str(self.zoom))
        pattern = re.compile(r"^(\d+)\.(png|jpe?g)$", re.IGNORECASE)
        for column in os.listdir(folder):
            if not column.isdigit() or not os.path.isdir(os.path.join(folder, column)):
                continue
            for name in os.listdir(os.path.join(folder, column)):
                match = pattern.match(name)
                if match:
                    key = (int(column), int(match.group(1)))
                    keys.add(key)
                    self._files[key] = os.path.join(folder, column, name)
        if not keys:
            raise UserError(f"--xyz {folder} holds no tiles (expected {self._layout()})")
        return keys

    def _tile(self, x: int, y: int) -> Optional[np.ndarray]:
        """RGBA uint8 of tile (x, y), or None when absent."""
        if (x, y) not in self.keys:
            return None
        if self.kind == "mbtiles":
            row = self._connect().execute("SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ? AND "
                                          "tile_row = ?", (self.zoom, x, 2 ** self.zoom - 1 - y)).fetchone()
            data, where = bytes(row[0]), f"{self.path} tile {self.zoom}/{x}/{y}"
        else:
            where = self._files[(x, y)]
            with open(where, "rb") as handle:
                data = handle.read()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.shape[0] != image.shape[1]:
            raise UserError(f"not a square PNG or JPEG slippy-map tile: {where}")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGRA)
        elif image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)

    def _tile_transform(self, x: int, y: int, pixels: int):
        import mercantile
        from rasterio.transform import from_bounds

        bounds = mercantile.xy_bounds(x, y, self.zoom)
        return from_bounds(bounds.left, bounds.bottom, bounds.right, bounds.top, pixels, pixels)

    def validity(self):
        cells = max(1, min(64, VALIDITY_CELLS // max(self.x1 - self.x0, self.y1 - self.y0)))
        mask = np.zeros(((self.y1 - self.y0) * cells, (self.x1 - self.x0) * cells), bool)
        for x, y in self.keys:
            alpha = self._tile(x, y)[..., 3]
            block = cv2.resize(alpha, (cells, cells), interpolation=cv2.INTER_AREA) >= 128
            mask[(y - self.y0) * cells:(y - self.y0 + 1) * cells, (x - self.x0) * cells:(x - self.x0 + 1) * cells] = block
        return mask, self._tile_transform(self.x0, self.y0, cells), self.crs

    def metres_per_pixel(self, lat: float) -> float:
        return slippy_metres_per_pixel(lat, self.zoom)

    def read_into(self, dst_crs, dst_transform, side):
        import mercantile

        left, bottom, right, top = _dst_bounds_in(dst_crs, dst_transform, side, self.crs)
        lon0, lat0 = mercantile.lnglat(left, top)
        lon1, lat1 = mercantile.lnglat(right, bottom)
        wanted = list(mercantile.tiles(lon0, lat1, lon1, lat0, self.zoom))
        xs, ys = [t.x for t in wanted], [t.y for t in wanted]
        images = {(x, y): self._tile(x, y) for x, y in zip(xs, ys)}
        present = [image for image in images.values() if image is not None]
        if not present:
            return np.zeros((side, side, 3), np.uint8)
        pixels = present[0].shape[0]
        stitched = np.zeros(((max(ys) - min(ys) + 1) * pixels, (max(xs) - min(xs) + 1) * pixels, 4), np.uint8)
        for (x, y), image in images.items():
            if image is not None:
                if image.shape[0] != pixels:
                    image = cv2.resize(image, (pixels, pixels), interpolation=cv2.INTER_AREA)
                r, c = (y - min(ys)) * pixels, (x - min(xs)) * pixels
                stitched[r:r + pixels, c:c + pixels] = image
        colour = stitched[..., :3].transpose(2, 0, 1)
        return _warp(colour, stitched[..., 3] > 0, self._tile_transform(min(xs), min(ys), pixels), self.crs,
                     dst_crs, dst_transform, side)


def _listing(values: Sequence[int]) -> str:
    return ", ".join(map(str, values))


def open_source(kind: str, path: str, zoom: Optional[int] = None) -> GeoSource:
    if kind == "raster":
        return RasterSource(path)
    return SlippySource(path, zoom, kind)


# ------------------------------------------------------------------------------ tiling
@dataclass(frozen=True)
class GeoTile(Tile):
    """A tile rendered from a georeferenced source: a :class:`localization.tiles.Tile` (``box`` always
    None; ``path`` the raster / z/x/y folder / MBTiles file, stamped like a tile file) plus ``kind``
    (one of :data:`GEO_KINDS`), ``side_m`` (tile side in metres) and ``zoom`` (slippy tiles).
    :func:`tile_from_dict` returns one for a row with ``kind``."""

    kind: str = "raster"
    side_m: float = 0.0
    zoom: Optional[int] = None

    @classmethod
    def from_dict(cls, row: dict) -> "GeoTile":
        zoom = row.get("zoom")
        stamp = (int(row[key]) if row.get(key) is not None else None for key in ("size", "mtime_ns"))
        return cls(row["name"], row["path"], float(row["lat"]), float(row["lon"]), None, *stamp, row["kind"],
                   float(row["side_m"]), int(zoom) if zoom is not None else None)

    @property
    def place(self) -> tuple:
        return (*super().place, self.kind, self.side_m, self.zoom)


def tile_from_dict(row: dict) -> Tile:
    """A ``tiles.json`` row as a :class:`GeoTile` (a row with ``kind``) or a :class:`Tile`."""
    return GeoTile.from_dict(row) if "kind" in row else Tile.from_dict(row)


@dataclass
class Tiling:
    tiles: List[GeoTile]
    skipped: int
    frame: str
    rows: int
    columns: int


def _boundary_corners(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(col, row) pixel corners of the valid cells on the edge of the valid region."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    rows, cols = np.nonzero(mask & ~inner)
    corner_cols = np.concatenate([cols, cols + 1, cols, cols + 1]).astype(np.float64)
    corner_rows = np.concatenate([rows, rows, rows + 1, rows + 1]).astype(np.float64)
    return corner_cols, corner_rows


def _valid_fraction(mask: np.ndarray, transform, crs, frame: str, xs: np.ndarray, ys: np.ndarray,
                    tile_m: float) -> np.ndarray:
    """Fraction of each tile (centres ``xs, ys`` in ``frame``) whose footprint samples have data."""
    offsets = (np.arange(FOOTPRINT_SAMPLES) + 0.5) / FOOTPRINT_SAMPLES * tile_m - tile_m / 2
    dx, dy = np.meshgrid(offsets, offsets)
    px = (xs[:, None] + dx.reshape(1, -1)).reshape(-1)
    py = (ys[:, None] + dy.reshape(1, -1)).reshape(-1)
    sx, sy = _transformer(frame, crs).transform(px, py)
    cols, rows = ~transform @ (np.asarray(sx), np.asarray(sy))
    cols, rows = np.floor(cols), np.floor(rows)
    inside = np.isfinite(cols) & np.isfinite(rows) & (cols >= 0) & (rows >= 0) & (cols < mask.shape[1]) & \
        (rows < mask.shape[0])
    valid = np.zeros(len(px), bool)
    valid[inside] = mask[rows[inside].astype(np.int64), cols[inside].astype(np.int64)]
    return valid.reshape(len(xs), -1).mean(axis=1)


def cut_tiles(source: GeoSource, tile_m: float, stride_m: float, name: str) -> Tiling:
    """Tiles of ``tile_m`` metres every ``stride_m`` metres over ``source`` (module convention)."""
    mask, transform, crs = source.validity()
    if not mask.any():
        raise UserError(f"{source.path} has no pixel with data (all nodata or transparent)")
    corner_cols, corner_rows = _boundary_corners(mask)
    cx, cy = transform @ (corner_cols, corner_rows)
    lon, lat = _transformer(crs, "EPSG:4326").transform(cx, cy)
    lon, lat = np.asarray(lon), np.asarray(lat)
    frame = local_frame(float((lat.min() + lat.max()) / 2), float((lon.min() + lon.max()) / 2))
    fx, fy = _transformer("EPSG:4326", frame).transform(lon, lat)
    fx, fy = np.asarray(fx), np.asarray(fy)
    width, height = fx.max() - fx.min(), fy.max() - fy.min()
    if min(width, height) < tile_m - 1e-6:
        raise UserError(f"{source.path} covers {width:.1f} x {height:.1f} m with data, less than one --tile_m "
                        f"{tile_m:g} m tile; use a smaller --tile_m")
    columns = int(math.floor((width - tile_m) / stride_m + 0.5)) + 1
    rows = int(math.floor((height - tile_m) / stride_m + 0.5)) + 1
    mid_x, mid_y = (fx.max() + fx.min()) / 2, (fy.max() + fy.min()) / 2
    grid_x = mid_x + (np.arange(columns) - (columns - 1) / 2) * stride_m
    grid_y = mid_y - (np.arange(rows) - (rows - 1) / 2) * stride_m  # north to south
    xs, ys = (a.reshape(-1) for a in np.meshgrid(grid_x, grid_y))
    keep = _valid_fraction(mask, transform, crs, frame, xs, ys, tile_m) >= MIN_VALID
    lons, lats = _transformer(frame, "EPSG:4326").transform(xs, ys)
    tiles = []
    for number in np.nonzero(keep)[0]:
        r, c = divmod(int(number), columns)
        tiles.append(GeoTile(f"{name}_r{r:04d}_c{c:04d}", source.path, float(lats[number]), float(lons[number]),
                             kind=source.kind, side_m=float(tile_m), zoom=source.zoom))
    return Tiling(tiles, int((~keep).sum()), frame, rows, columns)


# ------------------------------------------------------------------------------ reading
class GeoTileReader(TileReader):
    """Reads every tile kind: renders a :class:`GeoTile` from its source (module convention; sources
    opened once per process), reads the others as :class:`localization.tiles.TileReader` does."""

    def __init__(self) -> None:
        super().__init__()
        self._sources: Dict[Tuple[str, str, Optional[int]], GeoSource] = {}

    def __call__(self, tile: Tile, size: Optional[Sequence[int]] = None) -> np.ndarray:
        from rasterio.transform import from_origin

        if not isinstance(tile, GeoTile):
            return super().__call__(tile, size)

        key = (tile.kind, tile.path, tile.zoom)
        if key not in self._sources:
            self._sources[key] = open_source(*key)
        source = self._sources[key]
        side = int(min(MAX_TILE_PX, max(16, round(tile.side_m / source.metres_per_pixel(tile.lat)))))
        pixel_m = tile.side_m / side
        image = source.read_into(local_frame(tile.lat, tile.lon),
                                 from_origin(-tile.side_m / 2, tile.side_m / 2, pixel_m, pixel_m), side)
        return resize(image, size) if size is not None else image


def tiles_from_geo(kind: str, paths: Sequence[str], tile_m: float, stride_m: float, zoom: Optional[int] = None,
                   log=print) -> Tuple[List[GeoTile], dict]:
    """All tiles of one or more sources of ``kind`` and the index's ``source`` record."""
    if not (math.isfinite(tile_m) and tile_m > 0 and math.isfinite(stride_m) and stride_m > 0):
        raise UserError(f"--tile_m and --stride_m must be positive metres, got {tile_m:g} and {stride_m:g}")
    tiles, skipped, record = [], 0, []
    for number, path in enumerate(paths):
        source = open_source(kind, path, zoom)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(source.path))[0]) or kind
        tiling = cut_tiles(source, tile_m, stride_m, f"{stem}" if len(paths) == 1 else f"{number}_{stem}")
        if not tiling.tiles:
            raise UserError(f"no tile of {tile_m:g} m is at least {MIN_VALID:.0%} covered by data in {source.path}")
        tiles += tiling.tiles
        skipped += tiling.skipped
        record.append({**source.describe(), "frame": tiling.frame, "grid": [tiling.rows, tiling.columns],
                       "skipped": tiling.skipped})
        log(f"{source.path}: {len(tiling.tiles)} tiles of {tile_m:g} m every {stride_m:g} m "
            f"({tiling.rows} x {tiling.columns} grid; {tiling.skipped} skipped: nodata or outside)")
    return stamped(tiles), {kind: [r["path"] for r in record], "tile_m": tile_m, "stride_m": stride_m,
                   "skipped": skipped, "sources": record}
