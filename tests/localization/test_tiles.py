"""Tile sources: mosaic geometry against known corners, the CSV source, bounds checks."""
import math

import cv2
import numpy as np
import pytest

from common.errors import UserError
from geometry.earth import EARTH_RADIUS_M
from localization.tiles import MosaicGeometry, parse_bounds, tiles_from_csv, tiles_from_mosaic

BOUNDS = (40.77, -74.0, 40.76, -73.98)  # N, W, S, E


@pytest.mark.parametrize("projection", ["equirectangular", "webmercator"])
def test_mosaic_corners_map_to_the_bounds(projection):
    geometry = MosaicGeometry(BOUNDS, width=400, height=300, projection=projection)
    north, west, south, east = BOUNDS
    lat, lon = geometry.pixel_to_gps([0, 400, 0, 400], [0, 300, 300, 0])
    np.testing.assert_allclose(lat, [north, south, south, north], rtol=0, atol=1e-12)
    np.testing.assert_allclose(lon, [west, east, west, east], rtol=0, atol=1e-12)
    mid_lat, mid_lon = geometry.pixel_to_gps(200, 150)
    assert mid_lon == pytest.approx((west + east) / 2, abs=1e-12)
    if projection == "equirectangular":
        assert mid_lat == pytest.approx((north + south) / 2, abs=1e-12)
    else:  # the middle row is the mean Mercator ordinate: a little north of the mean latitude
        merc = [math.log(math.tan(math.pi / 4 + math.radians(v) / 2)) for v in (north, south)]
        expected = math.degrees(2 * math.atan(math.exp(sum(merc) / 2)) - math.pi / 2)
        assert mid_lat == pytest.approx(expected, abs=1e-12)
        assert (north + south) / 2 < mid_lat < (north + south) / 2 + 1e-4


def test_mosaic_tiles_cover_it_from_corner_to_corner(tmp_path):
    north, west, south, east = BOUNDS
    height_m = EARTH_RADIUS_M * math.radians(north - south)
    width_m = EARTH_RADIUS_M * math.cos(math.radians((north + south) / 2)) * math.radians(east - west)
    path = str(tmp_path / "map.png")
    cv2.imwrite(path, np.full((300, 400, 3), 128, np.uint8))
    # a tile of a third of the height every sixth of it: 5 rows; columns as many as fit
    tiles = tiles_from_mosaic(path, BOUNDS, tile_m=height_m / 3, stride_m=height_m / 6)
    rows = sorted({t.box[1] for t in tiles})
    assert rows == [0, 50, 100, 150, 200]
    first, last_row = tiles[0], [t for t in tiles if t.box[1] == 200]
    assert first.box[:2] == (0, 0) and last_row[0].box[3] == 300
    tile_px_x = 400 * (height_m / 3) / width_m
    assert first.box[2] == round(tile_px_x)
    # tile centres: a sixth of the height below N; half a tile width east of W
    assert first.lat == pytest.approx(north - (north - south) / 6, abs=1e-9)
    assert first.lon == pytest.approx(west + (east - west) * (round(tile_px_x) / 2) / 400, abs=1e-9)
    # the bottom row's centre is a sixth of the height above S
    assert last_row[0].lat == pytest.approx(south + (north - south) / 6, abs=1e-9)
    assert all(t.box[2] <= 400 and t.box[3] <= 300 for t in tiles)


def test_whole_mosaic_as_one_tile_is_centred(tmp_path):
    north, west, south, east = BOUNDS
    height_m = EARTH_RADIUS_M * math.radians(north - south)
    path = str(tmp_path / "square.png")
    cv2.imwrite(path, np.zeros((100, 100, 3), np.uint8))
    bounds = (north, west, south, west + (north - south) / math.cos(math.radians((north + south) / 2)))
    (tile,) = tiles_from_mosaic(path, bounds, tile_m=height_m, stride_m=10)
    assert tile.box == (0, 0, 100, 100)
    assert tile.lat == pytest.approx((north + south) / 2, abs=1e-12)
    assert tile.lon == pytest.approx((bounds[1] + bounds[3]) / 2, abs=1e-12)


@pytest.mark.parametrize("text, message", [
    ("40.76,-74,40.77,-73.98", "N > S"), ("40.77,-73.98,40.76,-74", "E > W"), ("1,2,3", "four numbers"),
    ("95,-74,40,-73", "outside latitude"),
])
def test_bad_bounds(text, message):
    with pytest.raises(UserError, match=message):
        parse_bounds(text)


def test_csv_source_resolves_relative_paths_and_skips_a_header(tmp_path):
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "tiles.csv").write_text("path,lat,lon\nimg/a.png,47.5,-122.25\n\n")
    (tile,) = tiles_from_csv(str(tmp_path / "tiles.csv"))
    assert (tile.name, tile.lat, tile.lon) == ("img/a.png", 47.5, -122.25)
    assert tile.path == str(tmp_path / "img" / "a.png")
    (tmp_path / "bad.csv").write_text("img/a.png,north,-122\n")
    with pytest.raises(UserError, match=r"bad.csv:1: lat and lon must be numbers"):
        tiles_from_csv(str(tmp_path / "bad.csv"))
    (tmp_path / "missing.csv").write_text("img/b.png,1,2\n")
    with pytest.raises(UserError, match="1 of 1 tile files are missing"):
        tiles_from_csv(str(tmp_path / "missing.csv"))
