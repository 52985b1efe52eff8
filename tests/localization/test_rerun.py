"""Re-running `localize.py index`: other parameters, changed or broken tiles, repeats, interruptions, locks."""
import contextlib
import json
import os
import shutil

import faiss
import numpy as np
import pytest

from common.fileio import lock_folder, unlock

from .conftest import run_cli
from .test_errors import assert_user_error, final_line, index_args


@pytest.fixture
def own_tiles(world, tmp_path):
    """A copy of the New York tiles (25 of them) that a test may change."""
    folder = str(tmp_path / "satellite")
    shutil.copytree(world["satellites"][0], folder)
    return folder


def _build(world, out, capsys, *extra, tiles=None, source=None):
    code, printed, err = run_cli(index_args(world, out, *(source or ["--satellites", tiles]), *extra), capsys)
    assert code == 0, err
    return printed


def _vectors(folder):
    index = faiss.read_index(os.path.join(folder, "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)


def _manifest(folder):
    return json.load(open(os.path.join(folder, "manifest.json")))


@pytest.mark.parametrize("flags, named, old, new", [
    (["--tile_m", "50"], "--tile_m", "72.96", "50"),
    (["--index", "ivf"], "--index", "flat", "ivf"),
])
def test_a_finished_index_rerun_with_other_parameters_is_refused_then_rebuilt(world, own_tiles, tmp_path, capsys,
                                                                              flags, named, old, new):
    out = str(tmp_path / "index")
    _build(world, out, capsys, tiles=own_tiles)
    before = _manifest(out)
    code, _, err = run_cli(index_args(world, out, "--satellites", own_tiles, *flags), capsys)
    assert_user_error(code, err, f"{named} {old}")
    assert f"(this build: {new})" in err and "--rebuild" in err
    assert _manifest(out) == before  # untouched
    printed = _build(world, out, capsys, *flags, "--rebuild", tiles=own_tiles)
    assert "rebuilding" in printed
    manifest = _manifest(out)
    assert (manifest["source"]["tile_m"], manifest["index"]["kind"]) == (
        (50.0, "flat") if named == "--tile_m" else (pytest.approx(72.96), "ivf"))
    assert sorted(os.listdir(out)) == ["index.faiss", "manifest.json", "tiles.json"]


def test_changed_tile_images_are_detected_and_named(world, own_tiles, tmp_path, capsys):
    out = str(tmp_path / "index")
    _build(world, out, capsys, tiles=own_tiles)
    names = sorted(os.listdir(own_tiles))
    first = os.path.join(own_tiles, names[0])
    shutil.copyfile(os.path.join(own_tiles, names[5]), first)  # other image content, same name and GPS
    code, _, err = run_cli(index_args(world, out, "--satellites", own_tiles), capsys)
    assert_user_error(code, err, "changed since the index was built")
    assert names[0] in err and "1 of 25 tile files changed" in err and "--rebuild" in err
    _build(world, out, capsys, "--rebuild", tiles=own_tiles)
    vectors = _vectors(out)
    np.testing.assert_allclose(vectors[0], vectors[5], atol=1e-6)  # the new image's descriptor


def test_a_corrupt_tile_keeps_the_embedded_chunks_for_the_rerun_without_it(world, own_tiles, tmp_path, capsys):
    out = str(tmp_path / "index")
    bad = os.path.join(own_tiles, sorted(os.listdir(own_tiles))[20])  # in the third chunk of 8
    data = bytearray(open(bad, "rb").read())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # whole header and end, a broken body
    open(bad, "wb").write(bytes(data))
    code, _, err = run_cli(index_args(world, out, "--satellites", own_tiles, "--chunk", "8"), capsys)
    line = final_line(code, err)
    assert "could not decode image" in line and bad in line and "16 of 25 tiles embedded so far are kept" in line
    os.remove(bad)
    printed = _build(world, out, capsys, "--chunk", "8", tiles=own_tiles)
    assert "resumed: 16 of 24 tiles" in printed
    assert _manifest(out)["count"] == 24


@pytest.mark.parametrize("damage, message", [("header", "no readable image header"), ("end", "truncated PNG")])
def test_a_tile_with_a_broken_header_or_end_is_refused_before_anything_is_written(world, own_tiles, tmp_path, capsys,
                                                                                  damage, message):
    last = os.path.join(own_tiles, sorted(os.listdir(own_tiles))[-1])
    data = open(last, "rb").read()
    open(last, "wb").write(b"\x89PNG\r\n\x1a\n" + b"junk" * 8 if damage == "header" else data[:len(data) // 2])
    out = str(tmp_path / "index")
    code, _, err = run_cli(index_args(world, out, "--satellites", own_tiles), capsys)
    assert_user_error(code, err, message)
    assert os.path.basename(last) in err and not os.path.exists(out)


def test_dot_files_beside_the_tiles_are_skipped(world, own_tiles, tmp_path, capsys):
    (tmp_path / "satellite" / "._satellite_40.7_-73.9.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # macOS
    out = str(tmp_path / "index")
    _build(world, out, capsys, tiles=own_tiles)
    assert _manifest(out)["count"] == 25


@pytest.mark.parametrize("case", ["folder twice", "CSV row twice", "same GPS as .png and .jpg"])
def test_repeated_tiles_are_refused(world, own_tiles, tmp_path, capsys, case):
    out = str(tmp_path / "index")
    name = sorted(os.listdir(own_tiles))[0]
    if case == "folder twice":
        code, _, err = run_cli(index_args(world, out, "--satellites", own_tiles, own_tiles + "/"), capsys)
        assert_user_error(code, err, "given twice")
    elif case == "CSV row twice":
        listing = tmp_path / "tiles.csv"
        listing.write_text(f"satellite/{name},40.7,-73.9\nsatellite/{name},40.7,-73.9\n")
        code, _, err = run_cli(index_args(world, out, "--tiles", str(listing)), capsys)
        assert_user_error(code, err, "listed twice")
        assert "rows 1 and 2" in err
    else:
        shutil.copyfile(os.path.join(own_tiles, name), os.path.join(own_tiles, name[:-4] + ".jpg"))
        code, _, err = run_cli(index_args(world, out, "--satellites", own_tiles), capsys)
        assert_user_error(code, err, "same GPS")
        assert name in err and name[:-4] + ".jpg" in err
    assert not os.path.exists(out)


def _interrupt_second_chunk(monkeypatch):
    import localization.embed as embed_module

    real, calls = embed_module.embed, []

    def embed_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while embedding the second chunk
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_module, "embed", embed_then_stop)
    return lambda: monkeypatch.setattr(embed_module, "embed", real)


def test_ctrl_c_in_index_is_one_line_exit_130_and_resumable(world, own_tiles, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "index")
    restore = _interrupt_second_chunk(monkeypatch)
    code, _, err = run_cli(index_args(world, out, "--satellites", own_tiles, "--chunk", "8"), capsys)
    assert "run the same command again" in final_line(code, err, 130)
    restore()
    assert "resumed: 8 of 25 tiles" in _build(world, out, capsys, "--chunk", "8", tiles=own_tiles)


def test_a_second_build_into_a_folder_in_use_is_refused(world, own_tiles, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "index")
    restore = _interrupt_second_chunk(monkeypatch)
    with contextlib.suppress(KeyboardInterrupt):  # (exit 130 above: SystemExit, caught by run_cli)
        run_cli(index_args(world, out, "--satellites", own_tiles, "--chunk", "8"), capsys)
    restore()
    assert os.path.isdir(os.path.join(out, "building"))
    lock = lock_folder(out, "index folder")  # the first build still running
    try:
        code, _, err = run_cli(index_args(world, out, "--satellites", own_tiles, "--chunk", "8"), capsys)
    finally:
        unlock(lock)
    assert_user_error(code, err, "in use by another process")
    assert "--out" in err and "resumed" not in err
