"""Unknown heading and limited field of view: the convention's round trip through the synthetic
writer and the CVUSA loader, the settings, and the results table."""
import os

import cv2
import numpy as np
import pytest
import torch

from common.errors import UserError
from data.augment import flip_panorama
from data.cvusa import CVUSA, MEAN_COLOUR
from data.cvusa_layout import read_headings
from data.synth.layouts import generate_cvusa
from geometry.heading import columns_heading, crop_fov, fov_width, heading_columns
from helper.cli import format_table, train_main
from helper.config import TEST_HEADING_SEED, RunConfig, migrate_config
from helper.parser import build_test_parser, parse_train_config
from tests.e2e.worlds import TINY_FLAGS, make_cvusa

SATE, PANO = (32, 32), (16, 96)
VAL = "splits/val-19zl.csv"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_cvusa(str(tmp_path_factory.mktemp("cvusa")), n_train=2, n_val=4, side=64, pano_hw=(16, 96))


def test_turn_is_a_left_roll_by_the_recorded_heading(world):
    plain = CVUSA(world, VAL, SATE, PANO, normalise=False)
    turned = CVUSA(world, VAL, SATE, PANO, normalise=False, heading="random", seed=TEST_HEADING_SEED)
    headings = []
    for i in range(len(plain)):
        a, b = plain[i], turned[i]
        columns = heading_columns(b["heading"], PANO[1])
        assert b["heading"] == columns_heading(columns, PANO[1]) and a["heading"] == 0.0
        assert torch.equal(b["street"], torch.roll(a["street"], -columns, dims=-1))
        assert torch.equal(a["satellite"], b["satellite"])
        headings.append(b["heading"])
    again = CVUSA(world, VAL, SATE, PANO, normalise=False, heading="random", seed=TEST_HEADING_SEED)
    assert [again[i]["heading"] for i in range(len(again))] == headings  # a fixed seed: comparable results
    assert len(set(headings)) > 1


def test_field_of_view_keeps_the_centred_window_of_the_turned_panorama(world):
    turned = CVUSA(world, VAL, SATE, PANO, normalise=False, heading="random", seed=3)
    window = CVUSA(world, VAL, SATE, PANO, normalise=False, heading="random", seed=3, fov=90)
    sample = window[1]
    assert sample["street"].shape == (3, 16, fov_width(96, 90)) == (3, 16, 24)
    full = turned[1]["street"].permute(1, 2, 0).numpy()
    assert np.array_equal(sample["street"].permute(1, 2, 0).numpy(), crop_fov(full, 90))
    assert sample["heading"] == turned[1]["heading"]


def test_window_padded_in_place_for_full_width_heads(world):
    window = CVUSA(world, VAL, SATE, PANO, normalise=False, heading="random", seed=3, fov=90)
    padded = CVUSA(world, VAL, SATE, PANO, normalise=False, heading="random", seed=3, fov=90, pad_fov=True)
    street = padded[2]["street"]
    assert street.shape == (3, 16, 96) and torch.equal(street[..., 36:60], window[2]["street"])
    assert torch.equal(street[:, :, :36], torch.tensor(MEAN_COLOUR, dtype=torch.uint8)[:, None, None].expand(3, 16, 36))
    assert torch.equal(street[:, :, 60:], street[:, :, :36])


def test_synthetic_writer_records_headings_and_crops(tmp_path):
    north, turned, window = (str(tmp_path / name) for name in ("north", "turned", "window"))
    generate_cvusa(north, train=1, test=1, seed=5)
    generate_cvusa(turned, train=1, test=1, seed=5, heading="random")
    generate_cvusa(window, train=1, test=1, seed=5, heading="random", fov=90)
    assert not os.path.exists(os.path.join(north, "headings.csv"))
    lines = open(os.path.join(turned, "headings.csv")).read().splitlines()
    assert lines[0] == "id,heading_deg,fov_deg" and len(lines) == 3
    for line in lines[1:]:
        ident, heading, fov = line.split(",")
        labels = [cv2.imread(os.path.join(root, "streetview", "annotations", f"{ident}.png"), cv2.IMREAD_UNCHANGED)
                  for root in (north, turned, window)]
        columns = heading_columns(float(heading), labels[0].shape[1])
        rolled = np.roll(labels[0], -columns, axis=1)
        assert float(fov) == 360.0 and np.array_equal(labels[1], rolled)  # the annotations are lossless
        assert np.array_equal(labels[2], crop_fov(rolled, 90))
    recorded = read_headings(turned)
    plain = CVUSA(turned, VAL, SATE, PANO, normalise=False)
    heading = recorded[os.path.basename(plain.street_paths[0])[:-4]][0]
    assert plain[0]["heading"] == heading
    augmented, flipped = CVUSA(turned, VAL, SATE, PANO, normalise=False, augment=True), set()
    for epoch in range(8):  # a flip mirrors the world: heading h becomes -h
        augmented.set_epoch(epoch)
        sample = augmented[0]
        flip = not torch.equal(sample["street"], plain[0]["street"])
        expected = flip_panorama(plain[0]["street"].permute(1, 2, 0).numpy()) if flip else None
        assert sample["heading"] == ((-heading) % 360.0 if flip else heading)
        assert not flip or np.array_equal(sample["street"].permute(1, 2, 0).numpy(), expected)
        flipped.add(flip)
    assert flipped == {True, False}
    cropped = CVUSA(window, VAL, SATE, PANO)
    assert cropped[0]["street"].shape[-1] == fov_width(PANO[1], 90)
    with pytest.raises(UserError, match="90-degree crops"):
        CVUSA(window, VAL, SATE, PANO, heading="random")


def test_settings_flags_and_errors(tmp_path):
    cfg = parse_train_config("cvusa", ["--train_heading", "random", "--train_fov", "90", "--test_heading", "random",
                                       "--test_fov", "90", "--head", "dsm"])
    assert (cfg["train_heading"], cfg["train_fov"], cfg["test_heading"], cfg["test_fov"]) == ("random", 90.0,
                                                                                            "random", 90.0)
    defaults = parse_train_config("cvusa", [])
    assert (defaults["train_heading"], defaults["train_fov"]) == ("none", 360.0)
    test_args = build_test_parser("cvusa").parse_args(["--checkpoint", "x", "--test_heading", "random",
                                                       "--test_fov", "120"])
    assert (test_args.test_heading, test_args.test_fov) == ("random", 120.0)
    for argv in (["--train_fov", "0"], ["--train_fov", "400"], ["--train_heading", "north"]):
        with pytest.raises(SystemExit):
            parse_train_config("cvusa", argv)
    assert parse_train_config("vigor", ["--train_heading", "random"])["train_heading"] == "random"  # CCVPE's protocol
    with pytest.raises(SystemExit):  # not a flag of the VIGOR scripts
        parse_train_config("vigor", ["--train_fov", "90"])
    with pytest.raises(UserError, match="CVUSA only"):  # nor a setting of a VIGOR config file
        RunConfig.from_dict({"dataset": "vigor", "test_fov": 90.0})
    old = migrate_config({k: v for k, v in defaults.items() if k not in ("train_heading", "train_fov", "test_heading",
                                                                          "test_fov", "resume")}, 2)
    assert RunConfig.from_dict(old, complete=True).train.test_fov == 360.0


def test_table_shows_the_heading_error():
    results = {"dataset": "cvusa", "split": VAL, "queries": 10, "references": 10, "top1p_k": 1,
               "street_to_satellite": {"R@1": 50.0, "R@5": 80.0, "R@10": 100.0, "R@1%": 50.0},
               "orientation": {"median_deg": 4.5, "within_deg": {"10": 80.0, "30": 100.0}, "queries": 5}}
    assert "median heading error 4.5 deg; <=10 deg 80.0%, <=30 deg 100.0%" in format_table(results)
    results["orientation"] = {"median_deg": None, "within_deg": {"10": None, "30": None}, "queries": 0}
    assert "no query has a correct top-1" in format_table(results)


def _headings_world(tmp_path, rows, encoding="utf-8"):
    """A 2 + 4 pair CVUSA world whose headings.csv has ``rows`` after its header."""
    root = make_cvusa(str(tmp_path / "world"), n_train=2, n_val=4, side=64, pano_hw=(16, 96))
    with open(os.path.join(root, "headings.csv"), "w", encoding=encoding) as handle:
        handle.write("\n".join(["id,heading_deg,fov_deg", *rows]) + "\n")
    return root


FULL = [f"{i:07d},{10.0 * i},360" for i in range(1, 7)]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_heading_is_refused_with_file_and_line(tmp_path, value):
    root = _headings_world(tmp_path, [*FULL[:2], f"0000003,{value},360", *FULL[3:]])
    path = os.path.join(root, "headings.csv")
    with pytest.raises(UserError, match=rf"^{path}:4: expected 'id,heading_deg,fov_deg' with a finite heading and a "
                                        r"field of view in \(0, 360\] degrees, got '0000003,"):
        CVUSA(root, VAL, SATE, PANO)


def test_repeated_heading_id_is_refused_like_the_other_id_files(tmp_path):
    root = _headings_world(tmp_path, [*FULL, "0000004,90,360"])
    with pytest.raises(UserError, match=r"headings.csv:8: id 0000004 is listed again \(first at line 5\)"):
        read_headings(root)


def test_headings_encoding(tmp_path):
    """A byte-order mark is fine; text that is not UTF-8 is one error naming the file and line."""
    root = _headings_world(tmp_path, FULL, encoding="utf-8-sig")
    assert read_headings(root)["0000002"] == (20.0, 360.0)
    path = os.path.join(root, "headings.csv")
    with open(path, "ab") as handle:
        handle.write("0000007,1,360 \u00e9t\u00e9\n".encode("latin-1"))
    message = rf"^{path} is not UTF-8 text \(byte 0xe9 on line 8\); save it as UTF-8$"
    with pytest.raises(UserError, match=message):
        CVUSA(root, VAL, SATE, PANO)
    with pytest.raises(UserError, match=message):  # plain training reads it too: it says which panoramas are crops
        train_main("cvusa", ["--data_root", root, "--results_dir", str(tmp_path / "runs"), *TINY_FLAGS])
    assert not (tmp_path / "runs").exists()
