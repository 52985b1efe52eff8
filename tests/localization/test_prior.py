"""query --near / --prior exif: only the tiles within --radius_m are searched, with every index kind."""
import json
import os
import shutil

import numpy as np
import piexif
import pytest

from geometry.earth import haversine_m
from localization.prior import exif_gps

from .conftest import run_cli
from .test_errors import assert_user_error, index_args


def _rational(value):
    """Degrees -> EXIF (degrees, minutes, seconds) rationals (1e-4 s resolution: about 3 mm)."""
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round(((value - degrees) * 60 - minutes) * 60 * 10000)
    return ((degrees, 1), (minutes, 1), (seconds, 10000))


def photo_with_gps(source, path, lat=None, lon=None):
    """A copy of JPEG ``source`` at ``path`` with EXIF holding the GPS (lat, lon), or EXIF without GPS."""
    exif = {"0th": {piexif.ImageIFD.Make: b"test"}, "Exif": {}, "GPS": {}, "1st": {}}
    if lat is not None:
        exif["GPS"] = {piexif.GPSIFD.GPSLatitudeRef: b"N" if lat >= 0 else b"S",
                       piexif.GPSIFD.GPSLatitude: _rational(lat),
                       piexif.GPSIFD.GPSLongitudeRef: b"E" if lon >= 0 else b"W",
                       piexif.GPSIFD.GPSLongitude: _rational(lon)}
    shutil.copyfile(source, path)
    piexif.insert(piexif.dump(exif), path)
    return path


@pytest.fixture(scope="module")
def photos(world, tmp_path_factory):
    """Two panoramas of each city under names without GPS, their true position in EXIF."""
    folder = tmp_path_factory.mktemp("photos")
    out = []
    for city in ("NewYork", "Seattle"):
        directory = os.path.join(world["root"], city, "panorama")
        for name in sorted(os.listdir(directory))[:2]:
            _, lat, lon = name.split(",")[:3]
            out.append(photo_with_gps(os.path.join(directory, name), str(folder / f"{city}_{len(out)}.jpg"),
                                      float(lat), float(lon)))
    return out


def _query(index, photos, out, capsys, *flags, k=5):
    code, printed, err = run_cli(["query", "--index", index, "--out", out, "-k", str(k), "--device", "cpu",
                                  "--no-pictures", *flags, *photos], capsys)
    assert code == 0, err
    return json.load(open(os.path.join(out, "results.json"))), printed


def brute_force(world, index, photo, centre, radius):
    """Names and similarities of the tiles within ``radius`` of ``centre``, best first, from the model."""
    from localization.embed import PanoramaFiles, TileImages, embed, load_model
    from localization.tiles import Tile

    loaded = load_model(world["checkpoint"], "cpu")
    tiles = [Tile.from_dict(row) for row in json.load(open(os.path.join(index, "tiles.json")))]
    inside = [t for t in tiles if haversine_m(centre[0], centre[1], t.lat, t.lon) <= radius]
    satellite = embed(loaded, TileImages(inside, loaded.satellite_size), "satellite", 16, 0, "tiles")
    street = embed(loaded, PanoramaFiles([photo], loaded.pano_size), "street", 1, 0, "photo")
    sims = satellite @ street[0]
    order = np.argsort(-sims, kind="stable")
    return [inside[i].name for i in order], sims[order]


def test_exif_gps_is_read_back(world, tmp_path):
    source = os.path.join(world["root"], "NewYork", "panorama", sorted(os.listdir(os.path.join(world["root"], "NewYork",
                                                                                               "panorama")))[0])
    for lat, lon in ((40.7648, -73.9935), (-33.8568, 151.2153)):
        found = exif_gps(photo_with_gps(source, str(tmp_path / "p.jpg"), lat, lon))
        assert haversine_m(lat, lon, *found) < 0.01
    assert exif_gps(photo_with_gps(source, str(tmp_path / "bare.jpg"))) is None
    assert exif_gps(__file__) is None  # not an image: no prior


def test_prior_exif_searches_only_the_radius_and_equals_brute_force(world, flat_index, photos, tmp_path, capsys):
    results, printed = _query(flat_index, photos, str(tmp_path / "out"), capsys, "--prior", "exif", "--radius_m", "60")
    tiles = json.load(open(os.path.join(flat_index, "tiles.json")))
    for photo, result in zip(photos, results):
        centre = exif_gps(photo)
        within = [t for t in tiles if haversine_m(centre[0], centre[1], t["lat"], t["lon"]) <= 60]
        assert 0 < result["searched"] == len(within) < len(tiles)
        assert f"({len(within)} of {len(tiles)} tiles searched)" in printed
        names, sims = brute_force(world, flat_index, photo, centre, 60)
        assert [c["tile"] for c in result["candidates"]] == names[:5]
        np.testing.assert_allclose([c["similarity"] for c in result["candidates"]], sims[:5], atol=1e-5)
        assert all(haversine_m(centre[0], centre[1], c["lat"], c["lon"]) <= 60 for c in result["candidates"])


@pytest.mark.parametrize("kind", ["ivf", "flat"])
def test_near_gives_the_same_answer_with_every_index_kind(world, flat_index, photos, tmp_path, capsys, kind):
    index = flat_index
    if kind != "flat":
        index = str(tmp_path / kind)
        code, _, err = run_cli(index_args(world, index, "--satellites", *world["satellites"], "--index", kind), capsys)
        assert code == 0, err
    centre = exif_gps(photos[0])
    near = ["--near", f"{centre[0]},{centre[1]}", "--radius_m", "100"]
    results, _ = _query(index, photos, str(tmp_path / "near"), capsys, *near, k=50)
    names, sims = brute_force(world, flat_index, photos[1], centre, 100)
    assert results[1]["searched"] == len(names) == len(results[1]["candidates"])
    assert [c["tile"] for c in results[1]["candidates"]] == names
    np.testing.assert_allclose([c["similarity"] for c in results[1]["candidates"]], sims, atol=1e-5)


def test_exif_if_present_warns_and_searches_everything(world, flat_index, photos, tmp_path, capsys):
    bare = photo_with_gps(photos[0], str(tmp_path / "bare.jpg"))
    results, printed = _query(flat_index, [bare, photos[1]], str(tmp_path / "out"), capsys, "--prior",
                              "exif_if_present", "--radius_m", "60")
    assert f"warning: {bare} has no EXIF GPS position; searching every tile for it" in printed
    assert results[0]["searched"] == len(json.load(open(os.path.join(flat_index, "tiles.json"))))
    assert results[1]["searched"] < results[0]["searched"]


def test_bad_priors(world, flat_index, photos, tmp_path, capsys):
    bare = photo_with_gps(photos[0], str(tmp_path / "bare.jpg"))
    out = str(tmp_path / "out")
    cases = [(["--prior", "exif", "--radius_m", "60", bare], "has no EXIF GPS position for --prior exif"),
             (["--near", "1.0,2.0", "--radius_m", "500", photos[0]], "no tile of the index lies within --radius_m 500 m"),
             (["--near", "1.0,2.0", photos[0]], "--near and --prior need --radius_m R"),
             (["--radius_m", "50", photos[0]], "--radius_m only applies with --near"),
             (["--near", "91,0", "--radius_m", "5", photos[0]], "outside latitude"),
             (["--prior", "exif", "--near", "1,2", "--radius_m", "5", photos[0]], "not both")]
    for flags, message in cases:
        code, _, err = run_cli(["query", "--index", flat_index, "--out", out, "--device", "cpu", *flags], capsys)
        assert_user_error(code, err, message)
        assert not os.path.exists(out)
