"""What a query writes: results.json keys, results.csv, results.geojson and one PNG per query."""
import csv
import json
import os

import cv2
import numpy as np
import torch

from geometry.earth import haversine_m
from helper.checkpoint import CHECKPOINT_VERSION, save_checkpoint
from helper.config import RunConfig
from localization.cli import main
from models import build_model

from .conftest import CITIES, SIZES


def test_query_writes_json_csv_geojson_and_pictures(world, flat_index, tmp_path, capsys):
    folder = os.path.join(world["root"], "Seattle", "panorama")
    out = str(tmp_path / "out")
    main(["query", "--index", flat_index, "--queries", folder, "-k", "4", "--out", out, "--device", "cpu"])
    printed = capsys.readouterr().out
    names = sorted(os.listdir(folder))
    results = json.load(open(os.path.join(out, "results.json")))
    assert [os.path.basename(r["query"]) for r in results] == names
    assert f"{len(names)} queries, top-4 written to {out}" in printed
    for result in results:
        assert [c["rank"] for c in result["candidates"]] == [1, 2, 3, 4]
        for candidate in result["candidates"]:
            assert {"rank", "tile", "lat", "lon", "similarity", "distance_m"} == set(candidate)
            assert -1.0 <= candidate["similarity"] <= 1.0
        picture = cv2.imread(os.path.join(out, result["figure"]))
        assert picture is not None and picture.shape[1] > picture.shape[0] > 200
    with open(os.path.join(out, "results.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * len(names)
    assert rows[0]["tile"] == results[0]["candidates"][0]["tile"]
    assert float(rows[0]["lat"]) == results[0]["candidates"][0]["lat"]
    geo = json.load(open(os.path.join(out, "results.geojson")))
    assert geo["type"] == "FeatureCollection"
    kinds = [f["properties"]["kind"] for f in geo["features"]]
    assert kinds.count("candidate") == 4 * len(names) and kinds.count("true position") == len(names)
    first = geo["features"][0]
    assert first["geometry"]["coordinates"] == [results[0]["candidates"][0]["lon"], results[0]["candidates"][0]["lat"]]
    # a model without an offset head or heading estimate writes neither
    assert not any(key in c for r in results for c in r["candidates"]
                   for key in ("lat_refined", "lon_refined", "heading_deg"))


def test_panorama_of_any_size_without_gps(world, flat_index, tmp_path, capsys):
    source = sorted(os.listdir(os.path.join(world["root"], "NewYork", "panorama")))[0]
    image = cv2.imread(os.path.join(world["root"], "NewYork", "panorama", source))
    path = str(tmp_path / "my photo.png")
    cv2.imwrite(path, cv2.resize(image, (300, 150)))
    out = str(tmp_path / "out")
    main(["query", "--index", flat_index, path, "-k", "2", "--out", out, "--device", "cpu"])
    capsys.readouterr()
    results = json.load(open(os.path.join(out, "results.json")))
    assert "true_lat" not in results[0] and "distance_m" not in results[0]["candidates"][0]
    assert os.path.exists(os.path.join(out, "my_photo.png"))


def _checkpoint(path, data_root, settings, edit=lambda model: None):
    """A random-weights VIGOR model with ``settings``, its weights changed by ``edit``."""
    run = RunConfig.from_dict({"dataset": "vigor", **SIZES, **settings, "data_root": data_root,
                               "cities": list(CITIES), "device": "cpu", "workers": 0})
    torch.manual_seed(3)
    model = build_model(run.model)
    with torch.no_grad():
        edit(model)
    save_checkpoint(path, {"version": CHECKPOINT_VERSION, "config": run.to_dict(), "model": model.state_dict(),
                           "epoch": 0, "best_metric": 0.0})
    return path, model


def _offset_checkpoint(path, data_root, normalised):
    """A random-weights VIGOR model whose offset head always predicts ``normalised`` (delta / 320)."""
    def constant(model):
        model.offset_head.layers[2].weight.zero_()
        model.offset_head.layers[2].bias.copy_(torch.tensor(normalised))

    return _checkpoint(path, data_root, {"regress_offset": True}, constant)[0]


def _index_and_query(world, checkpoint, tmp_path, folder, k):
    """Index both cities' tiles with ``checkpoint`` into tmp_path/index, query ``folder`` into
    tmp_path/out; the results.json entries."""
    index, out = str(tmp_path / "index"), str(tmp_path / "out")
    main(["index", "--checkpoint", checkpoint, "--out", index, "--satellites", *world["satellites"],
          "--device", "cpu", "--workers", "0"])
    main(["query", "--index", index, "--queries", folder, "-k", str(k), "--out", out, "--device", "cpu"])
    return json.load(open(os.path.join(out, "results.json")))


def test_an_offset_head_refines_every_candidate_by_its_predicted_offset(world, tmp_path, capsys):
    """Offset (0.5, -0.25) x 320 px = (d0, d1) = (160, -80) label pixels: the panorama is 160 px
    south and 80 px east of the tile centre; at VIGOR's 0.114 m/px 18.24 m south, 9.12 m east."""
    checkpoint = _offset_checkpoint(str(tmp_path / "offset.pth"), world["root"], [0.5, -0.25])
    folder = os.path.join(world["root"], "NewYork", "panorama")
    out = str(tmp_path / "out")
    results = _index_and_query(world, checkpoint, tmp_path, folder, 3)
    assert ", refined (" in capsys.readouterr().out
    candidates = [c for r in results for c in r["candidates"]]
    assert len(candidates) == 3 * len(os.listdir(folder))
    for c in candidates:
        south = haversine_m(c["lat"], c["lon"], c["lat_refined"], c["lon"])
        east = haversine_m(c["lat_refined"], c["lon"], c["lat_refined"], c["lon_refined"])
        assert c["lat_refined"] < c["lat"] and c["lon_refined"] > c["lon"]
        np.testing.assert_allclose([south, east], [18.24, 9.12], atol=1e-3)
    with open(os.path.join(out, "results.csv"), newline="") as handle:
        assert float(next(csv.DictReader(handle))["lat_refined"]) == candidates[0]["lat_refined"]

    # tiles listed in a CSV have no known size: no refined positions unless --tile_m is given
    listing = tmp_path / "tiles.csv"
    satellites = world["satellites"][0]
    rows = [f"{os.path.join(satellites, n)},{n[10:-4].split('_')[0]},{n[10:-4].split('_')[1]}"
            for n in sorted(os.listdir(satellites))]
    listing.write_text("path,lat,lon\n" + "\n".join(rows) + "\n")
    for extra, refined in (([], False), (["--tile_m", "100"], True)):
        index = str(tmp_path / f"csv{len(extra)}")
        main(["index", "--checkpoint", checkpoint, "--out", index, "--tiles", str(listing), "--device", "cpu",
              "--workers", "0", *extra])
        main(["query", "--index", index, "--queries", folder, "-k", "1", "--out", out, "--device", "cpu"])
        printed = capsys.readouterr().out
        best = json.load(open(os.path.join(out, "results.json")))[0]["candidates"][0]
        assert ("lat_refined" in best) == refined and ("no refined positions" in printed) != refined
        if refined:  # 100 m tiles: 0.5 x 50 m = 25 m south
            assert abs(haversine_m(best["lat"], best["lon"], best["lat_refined"], best["lon"]) - 25.0) < 1e-3


def test_a_dsm_checkpoint_ranks_by_the_best_circular_shift_and_writes_the_heading(world, tmp_path):
    """Index searches over the street map's rolls give the dsm head's own similarity over all tiles."""
    from localization.embed import PanoramaFiles, TileImages, embed, load_model
    from localization.tiles import Tile

    checkpoint = _checkpoint(str(tmp_path / "dsm.pth"), world["root"], {"head": "dsm"})[0]
    index = str(tmp_path / "index")
    results = _index_and_query(world, checkpoint, tmp_path, os.path.join(world["root"], "Seattle", "panorama"), 5)

    loaded = load_model(checkpoint, "cpu")  # the brute force: every tile, every shift
    tiles = [Tile.from_dict(row) for row in json.load(open(os.path.join(index, "tiles.json")))]
    satellite = embed(loaded, TileImages(tiles, loaded.satellite_size), "satellite", 16, 0, "tiles")
    street = embed(loaded, PanoramaFiles([r["query"] for r in results], loaded.pano_size),
                   "street", 16, 0, "panoramas")
    sims, shifts = loaded.correlation(torch.from_numpy(street), torch.from_numpy(satellite))
    headings = loaded.correlation.heading(shifts, street.shape[1])
    assert loaded.correlation.width > 1 and len({c["heading_deg"] for r in results for c in r["candidates"]}) > 1
    for q, result in enumerate(results):
        order = torch.argsort(-sims[q], stable=True)[:5]
        assert [c["tile"] for c in result["candidates"]] == [tiles[int(j)].name for j in order]
        np.testing.assert_allclose([c["similarity"] for c in result["candidates"]], sims[q, order].numpy(),
                                   atol=1e-5)
        np.testing.assert_allclose([c["heading_deg"] for c in result["candidates"]], headings[q, order].numpy())
