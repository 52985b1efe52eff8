"""What a query writes: results.json keys, results.csv, results.geojson and one PNG per query."""
import csv
import json
import os

import cv2

from localization.cli import main


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
    # no model of this code base estimates a refined position or a heading (yet): never written
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
