"""Bad input: one `error:` line, exit 2, no traceback, nothing (half-)written."""
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from .conftest import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def assert_user_error(code, err, message):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err


def final_line(code, err, expected_code=2):
    """The last line of stderr after progress bars (which redraw with carriage returns and cursor
    moves): exit code checked, no traceback, exactly one message line."""
    assert code == expected_code and "Traceback" not in err, err
    lines = [line.strip() for line in re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", err)) if line.strip()]
    messages = [line for line in lines if line.startswith(("error: ", "interrupted"))]
    assert len(messages) == 1 and messages[0] == lines[-1], err
    return lines[-1]


def index_args(world, out, *source):
    return ["index", "--checkpoint", world["checkpoint"], "--out", out, *source, "--device", "cpu", "--workers", "0"]


def a_panorama(world):
    folder = os.path.join(world["root"], "NewYork", "panorama")
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def test_script_query_with_another_checkpoint(world, flat_index, tmp_path):
    out = str(tmp_path / "out")
    proc = subprocess.run([sys.executable, "localize.py", "query", "--index", flat_index, "--checkpoint",
                           world["other_checkpoint"], "--out", out, "--device", "cpu", a_panorama(world)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_user_error(proc.returncode, proc.stderr, "was built by another checkpoint")
    assert not os.path.exists(out)


def test_script_undecodable_panorama(world, flat_index, tmp_path):
    bad = tmp_path / "broken,40.7,-73.9,.jpg"
    bad.write_bytes(open(a_panorama(world), "rb").read()[:2000])  # truncated JPEG
    out = str(tmp_path / "out")
    proc = subprocess.run([sys.executable, "localize.py", "query", "--index", flat_index, "--out", out,
                           "--device", "cpu", a_panorama(world), str(bad)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_user_error(proc.returncode, proc.stderr, "truncated JPEG")
    assert not os.path.exists(out)  # the good panorama before it was not written either


def test_index_into_a_folder_of_another_checkpoint(world, flat_index, capsys):
    before = sorted(os.listdir(flat_index))
    args = index_args(world, flat_index, "--satellites", *world["satellites"])
    args[args.index("--checkpoint") + 1] = world["other_checkpoint"]
    code, _, err = run_cli(args, capsys)
    assert_user_error(code, err, "refusing to mix checkpoints")
    assert sorted(os.listdir(flat_index)) == before


@pytest.mark.parametrize("damage, message", [
    ("delete", "index file is missing"), ("corrupt", "index file is corrupt"),
    ("manifest", "index manifest is corrupt"),
])
def test_missing_or_corrupt_index_files(world, flat_index, tmp_path, capsys, damage, message):
    broken = str(tmp_path / "broken")
    shutil.copytree(flat_index, broken)
    if damage == "delete":
        os.remove(os.path.join(broken, "index.faiss"))
    elif damage == "corrupt":
        data = bytearray(open(os.path.join(broken, "index.faiss"), "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(os.path.join(broken, "index.faiss"), "wb").write(bytes(data))
    else:
        open(os.path.join(broken, "manifest.json"), "w").write("{ not json")
    out = str(tmp_path / "out")
    code, _, err = run_cli(["query", "--index", broken, "--out", out, "--device", "cpu", a_panorama(world)], capsys)
    assert_user_error(code, err, message)
    assert not os.path.exists(out)


def test_bad_tile_sources(world, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "index")
    code, _, err = run_cli(index_args(world, out, "--satellites", str(empty)), capsys)
    assert_user_error(code, err, "holds no tile images")

    named = tmp_path / "named"
    named.mkdir()
    cv2.imwrite(str(named / "my_tile.png"), np.zeros((16, 16, 3), np.uint8))
    code, _, err = run_cli(index_args(world, out, "--satellites", str(named)), capsys)
    assert_user_error(code, err, "tile name without GPS")

    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "satellite_40.7_-73.9.png").write_text("not an image")
    code, _, err = run_cli(index_args(world, out, "--satellites", str(fake)), capsys)
    assert_user_error(code, err, "not a JPEG or PNG image")

    cv2.imwrite(str(tmp_path / "map.png"), np.zeros((64, 64, 3), np.uint8))
    code, _, err = run_cli(index_args(world, out, "--mosaic", str(tmp_path / "map.png"), "--bounds",
                                      "40.76,-74,40.77,-73.99", "--tile_m", "50", "--stride_m", "25"), capsys)
    assert_user_error(code, err, "needs N > S")
    assert not os.path.exists(out)


def test_bad_panoramas(world, flat_index, tmp_path, capsys):
    photo = str(tmp_path / "photo.jpg")
    cv2.imwrite(photo, np.zeros((480, 640, 3), np.uint8))  # a 4:3 photo
    text = str(tmp_path / "notes.png")
    open(text, "w").write("hello")
    out = str(tmp_path / "out")
    for path, message in ((photo, "not a 360-degree panorama"), (text, "not a JPEG or PNG image")):
        code, _, err = run_cli(["query", "--index", flat_index, "--out", out, "--device", "cpu", path], capsys)
        assert_user_error(code, err, message)
    assert not os.path.exists(out)


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_tile_side_must_be_a_finite_positive_number(world, tmp_path, capsys, value):
    out = str(tmp_path / "index")
    code, _, err = run_cli(["index", "--checkpoint", world["checkpoint"], "--out", out, "--satellites",
                            *world["satellites"], "--device", "cpu", "--tile_m", value], capsys)
    assert code == 2 and "--tile_m must be a finite number > 0" in err and not os.path.exists(out), err


@pytest.fixture
def no_model(monkeypatch):
    """Fails a test that gets as far as loading the model (the check must come before any work)."""
    import localization.embed as embed_module

    def refuse(*args, **kwargs):
        raise AssertionError("reached the model: the error should have come first")

    monkeypatch.setattr(embed_module, "load_model", refuse)


@pytest.mark.parametrize("command", ["index", "query"])
@pytest.mark.parametrize("where", ["file", "under a file", "unwritable"])
def test_an_output_folder_that_cannot_be_written_is_refused_first(world, flat_index, tmp_path, capsys, no_model,
                                                                  command, where):
    (tmp_path / "taken").write_text("a file")
    out = {"file": str(tmp_path / "taken"), "under a file": str(tmp_path / "taken" / "out"),
           "unwritable": "/proc/localize_out"}[where]
    if command == "index":
        argv = index_args(world, out, "--satellites", *world["satellites"])
    else:
        argv = ["query", "--index", flat_index, "--out", out, "--device", "cpu", a_panorama(world)]
    code, _, err = run_cli(argv, capsys)
    assert_user_error(code, err, "not writable" if where == "unwritable" else "a file, not a folder")
    assert out in err


def test_webmercator_bounds_beyond_its_latitude_limit(world, tmp_path, capsys, no_model):
    cv2.imwrite(str(tmp_path / "map.png"), np.zeros((64, 64, 3), np.uint8))
    out = str(tmp_path / "index")
    code, _, err = run_cli(index_args(world, out, "--mosaic", str(tmp_path / "map.png"), "--bounds", "90,-74,80,-73",
                                      "--tile_m", "5000", "--stride_m", "5000", "--projection", "webmercator"), capsys)
    assert_user_error(code, err, "85.0511")
    assert not os.path.exists(out)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["index"].update(kind="ivf"), "holds a 'flat' index"),
    (lambda m: m.pop("checkpoint"), "no 'checkpoint'"),
    (lambda m: m["index"].pop("kind"), "no 'index.kind'"),
    (lambda m: m.update(source=[]), "'source' must be"),
])
def test_a_hand_edited_manifest_is_one_clear_error_naming_it(world, flat_index, tmp_path, capsys, edit, message):
    import json

    broken = str(tmp_path / "broken")
    shutil.copytree(flat_index, broken)
    path = os.path.join(broken, "manifest.json")
    manifest = json.load(open(path))
    edit(manifest)
    json.dump(manifest, open(path, "w"))
    out = str(tmp_path / "out")
    code, _, err = run_cli(["query", "--index", broken, "--out", out, "--device", "cpu", a_panorama(world)], capsys)
    assert_user_error(code, err, message)
    assert path in err and not os.path.exists(out)


def test_an_edited_tile_list_says_rebuild_once(world, flat_index, tmp_path, capsys):
    broken = str(tmp_path / "broken")
    shutil.copytree(flat_index, broken)
    with open(os.path.join(broken, "tiles.json"), "a") as handle:
        handle.write(" ")
    code, _, err = run_cli(["query", "--index", broken, "--out", str(tmp_path / "out"), "--device", "cpu",
                            a_panorama(world)], capsys)
    assert_user_error(code, err, "index file is corrupt")
    assert err.count("rebuild the index") == 1, err


@pytest.mark.parametrize("case", ["1x1 tile", "stride", "projection", "8x4 panorama"])
def test_absurd_sizes_are_refused(world, flat_index, tmp_path, capsys, no_model, case):
    from localization.tiles import MosaicGeometry

    out = str(tmp_path / "index")
    if case == "1x1 tile":
        cv2.imwrite(str(tmp_path / "dot.png"), np.zeros((1, 1, 3), np.uint8))
        (tmp_path / "tiles.csv").write_text("dot.png,40.7,-73.9\n")
        code, _, err = run_cli(index_args(world, out, "--tiles", str(tmp_path / "tiles.csv")), capsys)
        assert_user_error(code, err, "1 x 1 pixels")
    elif case == "stride":
        cv2.imwrite(str(tmp_path / "map.png"), np.zeros((256, 256, 3), np.uint8))
        code, _, err = run_cli(index_args(world, out, "--mosaic", str(tmp_path / "map.png"), "--bounds",
                                          "40.7700,-74.0000,40.7691,-73.9988", "--tile_m", "50", "--stride_m", "0.5"),
                               capsys)
        assert_user_error(code, err, "--stride_m 0.5")
        mx, my = MosaicGeometry((40.77, -74.0, 40.7691, -73.9988), 256, 256).metres_per_pixel()
        count = (int((256 - 50 / my) / (0.5 / my) + 1e-9) + 1) * (int((256 - 50 / mx) / (0.5 / mx) + 1e-9) + 1)
        assert f"cuts {count} tiles" in err and count > 9000
    elif case == "projection":
        code, _, err = run_cli(index_args(world, out, "--satellites", *world["satellites"], "--projection",
                                          "webmercator"), capsys)
        assert_user_error(code, err, "--projection only applies to --mosaic")
    else:
        tiny = str(tmp_path / "tiny,40.7,-73.9,.png")
        cv2.imwrite(tiny, np.zeros((4, 8, 3), np.uint8))
        code, _, err = run_cli(["query", "--index", flat_index, "--out", str(tmp_path / "q"), "--device", "cpu",
                                tiny], capsys)
        assert_user_error(code, err, "8 x 4 pixels")
        assert not os.path.exists(str(tmp_path / "q"))
    assert not os.path.exists(out)


@pytest.mark.parametrize("header", ["path,lon,lat", "lat,lon,path", "Path, Lat, Lon"])
def test_a_csv_header_names_its_columns_in_any_order(tmp_path, header):
    from localization.tiles import tiles_from_csv

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    values = {"path": "a.png", "lat": "47.5", "lon": "-122.25"}
    columns = [name.strip().lower() for name in header.split(",")]
    (tmp_path / "tiles.csv").write_text(header + "\n" + ",".join(values[c] for c in columns) + "\n")
    (tile,) = tiles_from_csv(str(tmp_path / "tiles.csv"))
    assert (tile.name, tile.lat, tile.lon) == ("a.png", 47.5, -122.25)
