"""Bad input: one `error:` line, exit 2, no traceback, nothing (half-)written."""
import os
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
