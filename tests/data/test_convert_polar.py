"""The polar converter CLI (``python -m data.convert_polar``): it writes rint of the SAFA reference
(:mod:`geometry.polar`, tested in tests/geometry), for CVUSA and VIGOR, with clear errors."""
import glob
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data import convert_polar
from data.convert_polar import polar_transform
from data.io import read_image
from common.errors import EXIT_USER_ERROR, UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _make_aerials(root, names, side=40, folder="bingmap/19"):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for name in names:
        coarse = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
        path = os.path.join(root, folder, name)
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 95] if name.endswith(".jpg") else [])
        paths.append(path)
    return paths


def _write_splits(root, train, val):
    os.makedirs(os.path.join(root, "splits"), exist_ok=True)
    for csv, ids in (("train-19zl.csv", train), ("val-19zl.csv", val)):
        with open(os.path.join(root, "splits", csv), "w") as handle:
            handle.write("".join(f"bingmap/19/{i}.jpg,streetview/panos/{i}.jpg,streetview/annotations/{i}.png\r\n"
                                 for i in ids))


def _run(root, *extra):
    return convert_polar.main(["--data_root", str(root), "--no_progress", *extra])


def _expected(aerial_path, height, width):
    return np.clip(np.rint(polar_transform(read_image(aerial_path), height, width)), 0, 255).astype(np.uint8)


def test_cli_writes_rint_of_the_reference(tmp_path):
    root = str(tmp_path)
    _make_aerials(root, ["0000001.jpg", "0000002.jpg", "0000003.jpg", "0000009.jpg"])
    _write_splits(root, ["0000001", "0000002"], ["0000003", "0000002"])  # 0000009 is in no split
    summary = _run(root, "--height", "12", "--width", "48", "--workers", "1")
    assert summary == {"converted": 3, "skipped": 0}
    assert sorted(os.listdir(os.path.join(root, "polarmap/19"))) == ["0000001.png", "0000002.png", "0000003.png"]
    for name in ("0000001", "0000002", "0000003"):
        written = cv2.imread(os.path.join(root, "polarmap/19", name + ".png"), cv2.IMREAD_UNCHANGED)
        assert written.dtype == np.uint8 and written.shape == (12, 48, 3)
        assert np.array_equal(written[:, :, ::-1], _expected(os.path.join(root, "bingmap/19", name + ".jpg"), 12, 48))
    assert not glob.glob(os.path.join(root, "polarmap/19", "*.tmp*"))


def test_cli_worker_pool_skip_existing_and_overwrite(tmp_path):
    root = str(tmp_path)
    paths = _make_aerials(root, [f"{i:07d}.jpg" for i in range(1, 6)])  # no splits: all of bingmap/19
    assert _run(root, "--workers", "2") == {"converted": 5, "skipped": 0}
    target = os.path.join(root, "polarmap/19/0000002.png")
    expected = _expected(paths[1], 112, 616)  # default CVUSA size
    assert np.array_equal(read_image(target), expected)
    cv2.imwrite(target, np.zeros((112, 616, 3), np.uint8))  # an existing file of the right size
    assert _run(root, "--workers", "2") == {"converted": 0, "skipped": 5}
    assert not read_image(target).any()  # left alone
    cv2.imwrite(target, np.zeros((3, 3, 3), np.uint8))  # an existing file of another size: refuse to mix
    with pytest.raises(UserError, match="1 existing polar images are not 112x616") as info:
        _run(root, "--workers", "2")
    assert target in str(info.value) and "3x3" in str(info.value)
    assert _run(root, "--workers", "2", "--overwrite") == {"converted": 5, "skipped": 0}
    assert np.array_equal(read_image(target), expected)
    os.remove(target)
    assert _run(root, "--workers", "1") == {"converted": 1, "skipped": 4}
    assert np.array_equal(read_image(target), expected)


def test_cli_user_errors(tmp_path):
    root = str(tmp_path)
    _make_aerials(root, ["0000001.jpg"])
    _write_splits(root, ["0000001", "0000002"], [])
    with pytest.raises(UserError, match="1 of 2 files") as info:
        _run(root)
    assert os.path.join(root, "bingmap/19/0000002.jpg") in str(info.value)
    with pytest.raises(UserError, match="split CSV not found"):
        _run(root, "--csv", "splits/other.csv")

    nested = str(tmp_path / "nested")
    _make_aerials(nested, ["0000001.jpg"], folder="bingmap/bingmap/19")
    with pytest.raises(UserError, match="nested folder"):
        _run(nested)

    oblong = str(tmp_path / "oblong")
    os.makedirs(os.path.join(oblong, "bingmap/19"))
    cv2.imwrite(os.path.join(oblong, "bingmap/19/0000001.jpg"), np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(UserError, match="not square") as info:
        _run(oblong, "--workers", "1")
    assert "0000001.jpg" in str(info.value)


def test_cli_missing_data_root_exits_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data.convert_polar", "--data_root", str(tmp_path / "nowhere")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_USER_ERROR
    assert result.stderr.startswith("error: data root not found") and str(tmp_path / "nowhere") in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_vigor(tmp_path):
    root = str(tmp_path / "VIGOR")
    names = ["satellite_40.71234567_-74.00123456.png", "satellite_40.7125_-74.0015.png"]
    paths = _make_aerials(root, names, side=32, folder="NewYork/satellite")
    _make_aerials(root, ["satellite_41.9_-87.6.png"], side=32, folder="Chicago/satellite")
    os.makedirs(os.path.join(root, "splits/NewYork"))  # not a city folder (no satellite/)
    assert _run(root, "--dataset", "vigor", "--cities", "NewYork", "--height", "8", "--width", "16") == {
        "converted": 2, "skipped": 0}
    for name, path in zip(names, paths):
        written = read_image(os.path.join(root, "NewYork/polarmap", name))
        assert np.array_equal(written, _expected(path, 8, 16))
    assert not os.path.exists(os.path.join(root, "Chicago/polarmap"))
    with pytest.raises(UserError, match="--overwrite") as info:  # default 320 x 640 over the 8 x 16 files
        _run(root, "--dataset", "vigor", "--workers", "1")
    assert "2 existing polar images" in str(info.value) and names[0] in str(info.value)
    assert _run(root, "--dataset", "vigor", "--workers", "1", "--overwrite") == {"converted": 3, "skipped": 0}
    assert read_image(os.path.join(root, "Chicago/polarmap/satellite_41.9_-87.6.png")).shape == (320, 640, 3)
    with pytest.raises(UserError, match="Seattle") as info:
        _run(root, "--dataset", "vigor", "--cities", "NewYork,Seattle")
    assert "present: Chicago, NewYork" in str(info.value)
    with pytest.raises(UserError, match="no VIGOR city folders") as info:  # data_root one level too high
        _run(str(tmp_path), "--dataset", "vigor")
    assert f"they exist under {root}: pass that as --data_root" in str(info.value)
