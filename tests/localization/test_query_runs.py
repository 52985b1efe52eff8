"""A query's outputs as a whole: missing tiles, re-runs into the same folder, interruptions, memory."""
import json
import os
import shutil
import signal
import tracemalloc

import cv2
import numpy as np
import pytest

from .conftest import run_cli
from .test_errors import a_panorama, assert_user_error, final_line, index_args


def _panoramas(world, count):
    folder = os.path.join(world["root"], "NewYork", "panorama")
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))[:count]]


def _query(index, out, *extra):
    return ["query", "--index", index, "--out", out, "--device", "cpu", *extra]


@pytest.fixture
def index_of_moved_tiles(world, tmp_path, capsys):
    """An index of a copy of the New York tiles, and that copy's path."""
    tiles, out = str(tmp_path / "satellite"), str(tmp_path / "index")
    shutil.copytree(world["satellites"][0], tiles)
    code, _, err = run_cli(index_args(world, out, "--satellites", tiles), capsys)
    assert code == 0, err
    return out, tiles


def test_a_tile_moved_after_indexing_is_one_error_and_nothing_is_written(world, index_of_moved_tiles, tmp_path,
                                                                        capsys):
    index, tiles = index_of_moved_tiles
    shutil.move(tiles, str(tmp_path / "elsewhere"))
    out = str(tmp_path / "out")
    code, _, err = run_cli(_query(index, out, *_panoramas(world, 3)), capsys)
    line = final_line(code, err)
    assert "refers to tiles by path" in line and tiles in line and not os.path.exists(out)
    # without pictures the tiles are not read: the index alone answers
    code, _, err = run_cli(_query(index, out, "--no-pictures", *_panoramas(world, 3)), capsys)
    assert code == 0, err


def test_a_tile_changed_after_indexing_is_not_shown_as_indexed(world, index_of_moved_tiles, tmp_path, capsys):
    index, tiles = index_of_moved_tiles
    for name in os.listdir(tiles):  # every tile: whichever is a candidate has changed
        path = os.path.join(tiles, name)
        cv2.imwrite(path, 255 - cv2.imread(path))
    out = str(tmp_path / "out")
    code, _, err = run_cli(_query(index, out, *_panoramas(world, 1)), capsys)
    assert "changed since the index was built" in final_line(code, err) and not os.path.exists(out)


def test_queries_folder_as_out_is_refused(world, flat_index, tmp_path, capsys):
    folder = tmp_path / "panoramas"
    folder.mkdir()
    for path in _panoramas(world, 2):
        shutil.copy(path, folder)
    code, _, err = run_cli(_query(flat_index, str(folder), "--queries", str(folder)), capsys)
    assert_user_error(code, err, "--out")
    assert "--queries" in err and sorted(os.listdir(folder)) == sorted(map(os.path.basename, _panoramas(world, 2)))


def test_a_second_query_into_the_same_out_replaces_the_first_as_a_whole(world, flat_index, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert run_cli(_query(flat_index, out, *_panoramas(world, 3)), capsys)[0] == 0
    assert len([n for n in os.listdir(out) if n.endswith(".png")]) == 3
    assert run_cli(_query(flat_index, out, *_panoramas(world, 1)), capsys)[0] == 0
    results = json.load(open(os.path.join(out, "results.json")))
    assert sorted(os.listdir(out)) == sorted(["results.json", "results.csv", "results.geojson", results[0]["figure"]])

    (tmp_path / "out" / "notes.txt").write_text("mine")  # not a localize.py output: never deleted
    code, _, err = run_cli(_query(flat_index, out, *_panoramas(world, 1)), capsys)
    assert_user_error(code, err, "notes.txt")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


@pytest.fixture
def default_sigint():
    """SIGINT raises KeyboardInterrupt, as in a terminal (a process started as a background job of a
    script inherits SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("previous, signum", [(False, signal.SIGINT), (True, signal.SIGINT), (False, signal.SIGTERM)])
def test_ctrl_c_in_query_is_one_line_exit_130_and_writes_nothing(world, flat_index, tmp_path, monkeypatch, capsys,
                                                                 default_sigint, previous, signum):
    import localization.maps as maps

    out = str(tmp_path / "out")
    if previous:
        assert run_cli(_query(flat_index, out, *_panoramas(world, 1)), capsys)[0] == 0
    before = {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)} if previous else None
    real, calls = maps.query_figure, []

    def draw_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signum)  # Ctrl-C (or a SIGTERM) after the first picture
        return real(*args, **kwargs)

    monkeypatch.setattr(maps, "query_figure", draw_then_stop)
    code, _, err = run_cli(_query(flat_index, out, *_panoramas(world, 3)), capsys)
    assert "nothing was written" in final_line(code, err, 128 + signum)
    if previous:
        assert {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)} == before
    else:
        assert not os.path.exists(out)
    assert os.listdir(tmp_path) == (["out"] if previous else [])  # no staging folder left behind


def test_fewer_candidates_than_k_are_reported_as_written(world, tmp_path, capsys):
    index = str(tmp_path / "ivf")
    code, _, err = run_cli(index_args(world, index, "--satellites", *world["satellites"], "--index", "ivf",
                                      "--nlist", "5", "--nprobe", "1"), capsys)
    assert code == 0, err
    out = str(tmp_path / "out")
    code, printed, err = run_cli(_query(index, out, "-k", "50", "--no-pictures", *_panoramas(world, 3)), capsys)
    assert code == 0, err
    most = max(len(r["candidates"]) for r in json.load(open(os.path.join(out, "results.json"))))
    assert most < 50 and "top-50" not in printed
    assert f"up to {most} candidates per query (-k 50)" in printed and "--nprobe" in printed


def _query_peak(world, flat_index, tmp_path, monkeypatch, capsys, count, pictures):
    """Peak traced Python/numpy memory of one query of ``count`` 1024 x 512 panoramas, from the
    moment its model is loaded (loading holds a copy of the weights: a peak of its own)."""
    import localization.embed as embed_module

    load_model = embed_module.load_model

    def load_then_reset_peak(*args, **kwargs):
        loaded = load_model(*args, **kwargs)
        tracemalloc.reset_peak()
        return loaded

    monkeypatch.setattr(embed_module, "load_model", load_then_reset_peak)
    source = cv2.resize(cv2.imread(a_panorama(world)), (1024, 512))
    folder = tmp_path / f"panoramas{count}{pictures}"
    folder.mkdir()
    for number in range(count):
        cv2.imwrite(str(folder / f"p{number}.png"), np.roll(source, 37 * number, axis=1))
    argv = _query(flat_index, str(tmp_path / f"out{count}{pictures}"), "--queries", str(folder), "--batch_size", "2",
                  *([] if pictures else ["--no-pictures"]))
    tracemalloc.start()
    try:
        code, _, err = run_cli(argv, capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, err
    return peak


@pytest.mark.parametrize("pictures", [False, pytest.param(True, marks=pytest.mark.slow)])  # matplotlib is slow traced
def test_query_memory_does_not_grow_with_the_number_of_panoramas(world, flat_index, tmp_path, monkeypatch, capsys,
                                                                 pictures):
    """Each decoded 1024 x 512 panorama is 1.5 MB: 8 more queries may add far less than one of them."""
    few = _query_peak(world, flat_index, tmp_path, monkeypatch, capsys, 2, pictures)  # first: pays one-time costs
    growth = _query_peak(world, flat_index, tmp_path, monkeypatch, capsys, 10, pictures) - few
    assert growth < 1024 * 512 * 3, growth
