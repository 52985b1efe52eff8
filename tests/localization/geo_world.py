"""One synthetic VIGOR city as the maps people hold: its whole mosaic as a GeoTIFF in UTM and as
slippy-map tiles (``z/x/y.png`` and MBTiles), all rendered from the world the tile folder shows."""
import math
import os
import sqlite3

import cv2
import mercantile
import numpy as np
import rasterio
from rasterio.transform import from_bounds, from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject

from data.synth.layouts import VIGOR_TILE_M, _item_rng, plan_city
from data.synth.render import aerial_look, render_aerial
from geometry.earth import EARTH_RADIUS_M

UTM_18N = "EPSG:32618"  # New York


def world_frame(origin):
    """The synthetic world's own CRS: equirectangular on the generator's sphere (x east, y north)."""
    lat0, lon0 = origin
    return f"+proj=eqc +lat_ts={lat0!r} +lat_0={lat0!r} +lon_0={lon0!r} +R={EARTH_RADIUS_M!r} +units=m +no_defs"


def city_mosaic(city, train, test, seed, tile_px):
    """``(RGB mosaic, affine transform in world_frame, crs)`` of the whole city, pixel for pixel the
    tiles of the generated folder (tile (r, c) is the crop at ``(r, c) x tile_px / 2``)."""
    plan = plan_city(city, train, test, seed)
    res = VIGOR_TILE_M / tile_px
    side = (plan.grid + 1) * tile_px // 2
    look = aerial_look(_item_rng(plan.aerial_seed, 1))
    image = render_aerial(plan.scene, (0.0, 0.0), side, res, look, grid_origin=(0, 0))
    # pixel (i, j) is centred on world (j res, i res) metres (x east, y south of the origin)
    return image, from_origin(-res / 2, res / 2, res, res), world_frame(plan.origin)


def write_utm_geotiff(path, image, transform, crs, nodata=True):
    """The mosaic reprojected to UTM 18N (bilinear), 0 = nodata outside it, tiled + deflate."""
    height, width = image.shape[:2]
    dst_transform, w, h = calculate_default_transform(crs, UTM_18N, width, height,
                                                      *rasterio.transform.array_bounds(height, width, transform))
    out = np.zeros((3, h, w), np.uint8)
    reproject(np.ascontiguousarray(image.transpose(2, 0, 1)), out, src_transform=transform, src_crs=crs,
              dst_transform=dst_transform, dst_crs=UTM_18N, resampling=Resampling.bilinear, dst_nodata=0)
    profile = dict(driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs=UTM_18N, transform=dst_transform,
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    if nodata:
        profile["nodata"] = 0
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(out)
    return path


def slippy_tiles(image, transform, crs, zoom):
    """``{(x, y): RGBA 256 x 256}``: the mosaic reprojected into the Web Mercator tiles it touches
    (alpha 0 outside it)."""
    height, width = image.shape[:2]
    bounds = rasterio.warp.transform_bounds(crs, "EPSG:4326", *rasterio.transform.array_bounds(height, width, transform))
    source = np.concatenate([image, np.full((height, width, 1), 255, np.uint8)], axis=2).transpose(2, 0, 1)
    tiles = {}
    for tile in mercantile.tiles(*bounds, zoom):
        box = mercantile.xy_bounds(tile)
        out = np.zeros((4, 256, 256), np.uint8)
        reproject(np.ascontiguousarray(source), out, src_transform=transform, src_crs=crs,
                  dst_transform=from_bounds(box.left, box.bottom, box.right, box.top, 256, 256),
                  dst_crs="EPSG:3857", resampling=Resampling.bilinear)
        tiles[(tile.x, tile.y)] = out.transpose(1, 2, 0)
    return tiles


def _png(rgba):
    return cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))[1].tobytes()


def write_xyz(folder, tiles, zoom):
    for (x, y), rgba in tiles.items():
        os.makedirs(os.path.join(folder, str(zoom), str(x)), exist_ok=True)
        with open(os.path.join(folder, str(zoom), str(x), f"{y}.png"), "wb") as handle:
            handle.write(_png(rgba))
    return folder


def write_mbtiles(path, tiles, zoom):
    """MBTiles 1.3: rows in TMS order (row 0 in the south)."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE metadata (name text, value text)")
    db.execute("CREATE TABLE tiles (zoom_level integer, tile_column integer, tile_row integer, tile_data blob)")
    db.executemany("INSERT INTO tiles VALUES (?, ?, ?, ?)",
                   [(zoom, x, 2 ** zoom - 1 - y, _png(rgba)) for (x, y), rgba in tiles.items()])
    db.executemany("INSERT INTO metadata VALUES (?, ?)", [("name", "synthetic"), ("format", "png")])
    db.commit()
    db.close()
    return path


def matching_zoom(lat, metres_per_pixel):
    """The zoom whose ground resolution is closest to ``metres_per_pixel`` (in ratio)."""
    return int(round(math.log2(156543.03392 * math.cos(math.radians(lat)) / metres_per_pixel)))
