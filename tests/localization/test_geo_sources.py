"""--raster / --xyz / --mbtiles: one synthetic city as a tile folder, a UTM GeoTIFF and slippy tiles."""
import json
import os
import warnings

import numpy as np
import pytest
import rasterio
from pyproj import Geod, Transformer

from data.synth.layouts import VIGOR_TILE_M, city_origin
from geometry.earth import haversine_m
from localization.geo import training_tile_m, tiles_from_geo

from .conftest import run_cli
from .geo_world import (UTM_18N, city_mosaic, matching_zoom, slippy_tiles, write_mbtiles,
                        write_utm_geotiff, write_xyz)
from .test_errors import assert_user_error

CITY = "NewYork"
TILE_PX = 256  # the demo world's tile side


@pytest.fixture(scope="module")
def maps(world, tmp_path_factory):
    """The city of the ``world`` fixture as a UTM GeoTIFF, a z/x/y folder and an MBTiles file."""
    folder = tmp_path_factory.mktemp("maps")
    image, transform, crs = city_mosaic(CITY, 8, 8, 0, TILE_PX)
    zoom = matching_zoom(city_origin(CITY)[0], VIGOR_TILE_M / TILE_PX)
    tiles = slippy_tiles(image, transform, crs, zoom)
    return {"image": image, "transform": transform, "crs": crs, "zoom": zoom,
            "geotiff": write_utm_geotiff(str(folder / "city_utm.tif"), image, transform, crs),
            "xyz": write_xyz(str(folder / "xyz"), tiles, zoom),
            "mbtiles": write_mbtiles(str(folder / "city.mbtiles"), tiles, zoom)}


def index_args(world, out, *source, checkpoint="checkpoint"):
    return ["index", "--checkpoint", world[checkpoint], "--out", out, *source, "--device", "cpu", "--workers", "0"]


def ranked(index, panoramas, tmp_path, capsys, k):
    """Per query, its candidates ``[(lat, lon, similarity), ...]``, best first."""
    out = str(tmp_path / ("q_" + os.path.basename(index)))
    code, _, err = run_cli(["query", "--index", index, "--out", out, "-k", str(k), "--device", "cpu",
                            "--no-pictures", *panoramas], capsys)
    assert code == 0, err
    return [np.array([(c["lat"], c["lon"], c["similarity"]) for c in r["candidates"]])
            for r in json.load(open(os.path.join(out, "results.json")))]


def test_folder_geotiff_and_slippy_indexes_agree(world, maps, tmp_path, capsys):
    """The same city as tiles, a UTM GeoTIFF, z/x/y tiles and MBTiles: the same 5 x 5 grid (within a
    metre), nearly the same similarities, and each query's top-1 within a few metres."""
    indexes = {"folder": ["--satellites", os.path.join(world["root"], CITY, "satellite")],
               "geotiff": ["--raster", maps["geotiff"]], "xyz": ["--xyz", maps["xyz"], "--zoom", str(maps["zoom"])],
               "mbtiles": ["--mbtiles", maps["mbtiles"]]}
    for name, source in indexes.items():
        code, out, err = run_cli(index_args(world, str(tmp_path / name), *source, checkpoint="other_checkpoint"),
                                 capsys)
        assert code == 0, err
        manifest = json.load(open(tmp_path / name / "manifest.json"))
        assert manifest["count"] == 25  # the city's 5 x 5 tile grid, whatever the source
        if name != "folder":  # the default tile: the checkpoint's VIGOR training tiles, half overlap
            assert manifest["source"]["tile_m"] == VIGOR_TILE_M and manifest["source"]["stride_m"] == VIGOR_TILE_M / 2
            assert "25 tiles (0 skipped: nodata or outside the source)" in out
            assert "tile side 72.96 m (the side of the checkpoint's vigor training tiles)" in out
    panoramas = [os.path.join(world["root"], CITY, "panorama", name)
                 for name in sorted(os.listdir(os.path.join(world["root"], CITY, "panorama")))]
    found = {name: ranked(str(tmp_path / name), panoramas, tmp_path, capsys, k=25) for name in indexes}
    for name in ("geotiff", "xyz", "mbtiles"):
        for folder, other in zip(found["folder"], found[name]):
            # the same grid: each tile within a metre of a folder tile, with nearly its similarity
            metres = haversine_m(other[:, None, 0], other[:, None, 1], folder[None, :, 0], folder[None, :, 1])
            nearest = metres.argmin(axis=1)
            assert metres.min(axis=1).max() < 1.0 and len(set(nearest)) == 25
            spread = folder[:, 2].max() - folder[:, 2].min()
            assert np.abs(other[:, 2] - folder[nearest, 2]).max() < 0.1 * spread
            assert metres[0, 0] < 3.0, (name, metres[0, 0])  # the same top-1


def test_geotiff_tile_centres_agree_with_pyproj(maps):
    """The grid is centred on the raster's data: the middle tile's GPS is the raster's centre pixel
    through its transform and CRS (pyproj), and neighbours are stride_m apart due east / south."""
    tiles, source = tiles_from_geo("raster", [maps["geotiff"]], 50.0, 20.0, log=lambda *_: None)
    with rasterio.open(maps["geotiff"]) as dataset:
        mask = dataset.dataset_mask() > 0
        rows, cols = np.nonzero(mask)
        to_gps = Transformer.from_crs(dataset.crs, "EPSG:4326", always_xy=True)
        # the data's extent in the local frame is symmetric about the mosaic's centre pixel
        centre = dataset.transform @ ((cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2)
    lon, lat = to_gps.transform(*centre)
    grid_rows, grid_cols = source["sources"][0]["grid"]
    assert grid_rows % 2 == 1 and grid_cols % 2 == 1 and source["skipped"] == 0
    middle = next(t for t in tiles if t.name.endswith(f"_r{grid_rows // 2:04d}_c{grid_cols // 2:04d}"))
    assert abs(middle.lat - lat) < 1e-6 and abs(middle.lon - lon) < 1e-6
    geod = Geod(ellps="WGS84")
    by_name = {t.name: t for t in tiles}
    for tile in tiles:
        stem, r, c = tile.name.rsplit("_", 2)
        east = by_name.get(f"{stem}_{r}_c{int(c[1:]) + 1:04d}")
        south = by_name.get(f"{stem}_r{int(r[1:]) + 1:04d}_{c}")
        for neighbour, azimuth in ((east, 90.0), (south, 180.0)):
            if neighbour is not None:
                forward, _, metres = geod.inv(tile.lon, tile.lat, neighbour.lon, neighbour.lat)
                assert metres == pytest.approx(20.0, abs=1e-3) and forward % 360 == pytest.approx(azimuth, abs=0.01)


def test_nodata_tiles_are_skipped_and_counted(maps, tmp_path, capsys):
    image = maps["image"].copy()
    image[224:544, 224:544] = 0  # a 91 m hole in the middle: the centre tile and its 4 neighbours lose > half
    path = str(tmp_path / "hole.tif")
    height, width = image.shape[:2]
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8", nodata=0,
                       crs=maps["crs"], transform=maps["transform"], tiled=True, compress="deflate") as dataset:
        dataset.write(image.transpose(2, 0, 1))
    printed = []
    tiles, source = tiles_from_geo("raster", [path], VIGOR_TILE_M, VIGOR_TILE_M / 2, log=printed.append)
    assert (len(tiles), source["skipped"]) == (20, 5)
    assert "20 tiles of 72.96 m every 36.48 m (5 x 5 grid; 5 skipped: nodata or outside)" in printed[0]
    assert not any(t.name.endswith("_r0002_c0002") or t.name.endswith("_r0001_c0002") for t in tiles)


def test_training_tile_side_comes_from_the_dataset():
    from helper.config import RunConfig

    assert training_tile_m(RunConfig.from_dict({"dataset": "vigor"})) == pytest.approx(640 * 0.114)
    assert training_tile_m(RunConfig.from_dict({"dataset": "cvusa"})) == 165.0


def test_bad_sources(world, maps, tmp_path, capsys):
    no_crs, no_transform = str(tmp_path / "plain.tif"), str(tmp_path / "no_transform.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        for path, crs in ((no_crs, None), (no_transform, UTM_18N)):
            with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                               crs=crs) as dataset:
                dataset.write(np.zeros((3, 64, 64), np.uint8))
    out = str(tmp_path / "out")
    cases = [(["--raster", no_crs], "has no coordinate reference system (CRS)"),
             (["--raster", no_transform], "has a CRS but no geotransform"),
             (["--xyz", maps["xyz"], "--zoom", "12"], f"has no tiles at --zoom 12; it has zoom levels {maps['zoom']}"),
             (["--xyz", maps["xyz"]], "--xyz needs --zoom Z"),
             (["--raster", maps["geotiff"], "--tile_m", "5000"], "less than one --tile_m 5000 m tile"),
             (["--raster", maps["geotiff"], "--bounds", "1,2,0,3"], "--bounds only applies to --mosaic"),
             (["--raster", str(tmp_path / "missing.tif")], "--raster file not found")]
    for source, message in cases:
        code, _, err = run_cli(index_args(world, out, *source), capsys)
        assert_user_error(code, err, message)
        assert not os.path.exists(out)


@pytest.mark.slow
def test_near_on_an_ivfpq_index_of_a_raster(world, maps, tmp_path, capsys):
    """ivfpq (>= 256 tiles: 20 m tiles every 8 m of the GeoTIFF): --near searches only the radius, ranks by
    the vectors the index stores, and stays within their quantisation error of the exact flat index."""
    from localization.embed import PanoramaFiles, embed, load_model
    from localization.index import load_index
    from localization.prior import stored_descriptors

    source = ["--raster", maps["geotiff"], "--tile_m", "20", "--stride_m", "8"]
    for kind in ("ivfpq", "flat"):
        code, _, err = run_cli(index_args(world, str(tmp_path / kind), *source, "--index", kind), capsys)
        assert code == 0, err
    directory = os.path.join(world["root"], CITY, "panorama")
    panorama = os.path.join(directory, sorted(os.listdir(directory))[0])
    _, lat, lon = os.path.basename(panorama).split(",")[:3]
    found = {}
    for kind in ("ivfpq", "flat"):
        code, _, err = run_cli(["query", "--index", str(tmp_path / kind), "--out", str(tmp_path / f"q_{kind}"), "-k",
                                "400", "--near", f"{lat},{lon}", "--radius_m", "40", "--device", "cpu",
                                "--no-pictures", panorama], capsys)
        assert code == 0, err
        found[kind] = json.load(open(tmp_path / f"q_{kind}" / "results.json"))[0]
    index = load_index(str(tmp_path / "ivfpq"))
    assert len(index.tiles) >= 256
    rows = [i for i, t in enumerate(index.tiles) if haversine_m(float(lat), float(lon), t.lat, t.lon) <= 40]
    assert found["ivfpq"]["searched"] == found["flat"]["searched"] == len(rows) == len(found["ivfpq"]["candidates"])
    loaded = load_model(world["checkpoint"], "cpu")
    street = embed(loaded, PanoramaFiles([panorama], loaded.pano_size), "street", 1, 0, "q")[0]
    sims = stored_descriptors(index.index, np.array(rows)) @ street
    order = np.argsort(-sims, kind="stable")
    assert [c["tile"] for c in found["ivfpq"]["candidates"]] == [index.tiles[rows[i]].name for i in order]
    exact = {c["tile"]: c["similarity"] for c in found["flat"]["candidates"]}
    assert max(abs(c["similarity"] - exact[c["tile"]]) for c in found["ivfpq"]["candidates"]) < 0.02


@pytest.mark.parametrize("source", ["geotiff", "xyz", "mbtiles"])
def test_a_geo_index_reruns_and_queries_with_pictures(world, maps, tmp_path, capsys, source):
    """A finished index of a raster or slippy source: re-running the same index is accepted (nothing
    changed), and a query with pictures reads its tiles back from the source."""
    flags = {"geotiff": ["--raster", maps["geotiff"]], "xyz": ["--xyz", maps["xyz"], "--zoom", str(maps["zoom"])],
             "mbtiles": ["--mbtiles", maps["mbtiles"]]}[source]
    index = str(tmp_path / "index")
    for _ in range(2):
        code, _, err = run_cli(index_args(world, index, *flags), capsys)
        assert code == 0, err
    panorama = os.path.join(world["root"], CITY, "panorama", sorted(os.listdir(os.path.join(world["root"], CITY,
                                                                                           "panorama")))[0])
    out = str(tmp_path / "query")
    code, _, err = run_cli(["query", "--index", index, "--out", out, "-k", "3", "--device", "cpu", panorama], capsys)
    assert code == 0, err
    result = json.load(open(os.path.join(out, "results.json")))[0]
    assert os.path.exists(os.path.join(out, result["figure"]))
