"""CVUSA: split CSV parsing, up-front file checks with layout hints, loading, polar files,
and reproducible paired augmentation."""
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from data import convert_polar
from data.augment import flip_aerial, flip_panorama
from data.cvusa import CVUSA
from data.cvusa_layout import pair_positions, polar_path, read_gps_csv, read_split_csv
from data.io import MISSING_EXAMPLES
from data.io import read_image
from data.tensors import IMAGENET_MEAN, IMAGENET_STD, normalise, to_tensor
from common.errors import UserError

SATE = (32, 32)  # small stand-ins for 256 x 256 / 112 x 616
PANO = (16, 88)
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def _csv(tmp_path, text, name="s.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode())
    return str(path)


def test_read_split_csv_edge_cases(tmp_path):
    text = ("bingmap/19/0000001.jpg,streetview/panos/0000001.jpg,streetview/annotations/0000001.png\r\n"
            "\r\n"
            "  bingmap/19/0000002.jpg , streetview/panos/0000002.jpg  \r\n"
            "   \n"
            "bingmap/19/0000003.jpg,streetview/panos/0000003.jpg,\n"
            "bingmap/19/0000004.jpg,streetview/panos/0000004.jpg,a.png,extra")  # no final newline
    assert read_split_csv(_csv(tmp_path, text)) == [
        ("bingmap/19/0000001.jpg", "streetview/panos/0000001.jpg", "streetview/annotations/0000001.png"),
        ("bingmap/19/0000002.jpg", "streetview/panos/0000002.jpg", None),
        ("bingmap/19/0000003.jpg", "streetview/panos/0000003.jpg", None),
        ("bingmap/19/0000004.jpg", "streetview/panos/0000004.jpg", "a.png"),
    ]
    assert read_split_csv(_csv(tmp_path, "\ufeffa.jpg,b.jpg\n", "bom.csv")) == [("a.jpg", "b.jpg", None)]
    assert read_split_csv(_csv(tmp_path, "\n\n", "empty.csv")) == []


@pytest.mark.parametrize("bad_line", ["bingmap/19/0000002.jpg", "bingmap/19/0000002.jpg,", ",streetview/x.jpg"])
def test_short_line_is_a_user_error_with_file_and_line(tmp_path, bad_line):
    path = _csv(tmp_path, f"a.jpg,b.jpg\r\n\r\n{bad_line}\r\nc.jpg,d.jpg\r\n")
    with pytest.raises(UserError) as info:
        read_split_csv(path)
    assert f"{path}:3" in str(info.value)


def test_missing_csv_names_the_path(tmp_path):
    with pytest.raises(UserError, match="split CSV not found") as info:
        read_split_csv(str(tmp_path / "nope.csv"))
    assert str(tmp_path / "nope.csv") in str(info.value)


def test_read_gps_csv_header_ids_and_blank_lines(tmp_path):
    path = _csv(tmp_path, "\ufeffid,lat,lon\r\n0000001, 40.5,-73.25\r\n\r\n12,-33.9,151.2\nsite-a,0,180\n")
    assert read_gps_csv(path) == {"1": (40.5, -73.25), "12": (-33.9, 151.2), "site-a": (0.0, 180.0)}
    assert read_gps_csv(_csv(tmp_path, "7,1,2\n", "no_header.csv")) == {"7": (1.0, 2.0)}
    positions = pair_positions(path, ["bingmap/19/0000012.jpg", "bingmap/19/0000001.jpg"], "splits/train.csv")
    assert positions.tolist() == [[-33.9, 151.2], [40.5, -73.25]]


@pytest.mark.parametrize("text, message", [
    ("id,lat,lon\n1,40.5\n", ":2: expected 'id,lat,lon'"),
    ("1,40.5,-73\n2,north,-73\n", ":2: expected 'id,lat,lon'"),
    ("1,95,-73\n", ":1: expected 'id,lat,lon' with latitude in [-90, 90]"),
    ("1,40,-73\nid,lat,lon\n", ":2: expected"),  # a header only on the first line
    ("1,40,-73\n\n0001,41,-73\n", ":3: id 0001 is listed again (first at line 1)"),
])
def test_bad_gps_rows_name_file_and_line(tmp_path, text, message):
    path = _csv(tmp_path, text)
    with pytest.raises(UserError) as info:
        read_gps_csv(path)
    assert str(info.value).startswith(path) and message in str(info.value)


def test_gps_csv_that_is_not_utf8_names_file_and_line(tmp_path):
    path = str(tmp_path / "gps.csv")
    open(path, "wb").write("id,lat,lon\n1,40,-73\nS\u00e3o Paulo,-23.5,-46.6\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"gps.csv is not UTF-8 text \(byte 0xe3 on line 3\); save it as UTF-8$"):
        read_gps_csv(path)


def test_gps_csv_missing_file_or_pair(tmp_path):
    with pytest.raises(UserError, match="--gps_csv file not found: .*nope.csv"):
        read_gps_csv(str(tmp_path / "nope.csv"))
    path = _csv(tmp_path, "1,40,-73\n")
    with pytest.raises(UserError, match=r"has no row for id 0000002 \(aerial bingmap/19/0000002.jpg, "
                                        r"splits/train.csv line 2\); every training pair needs one"):
        pair_positions(path, ["bingmap/19/0000001.jpg", "bingmap/19/0000002.jpg"], "splits/train.csv")


def test_polar_rel_path():
    assert polar_path("bingmap/19/0000042.jpg") == "polarmap/19/0000042.png"
    assert polar_path("bingmap\\19\\0000042.jpg") == "polarmap/19/0000042.png"
    assert polar_path("aerial/0000042.jpeg") == "polarmap/19/0000042.png"


def _make_cvusa(root, count=4, aerial_side=96, pano=(48, 264)):
    """A tiny CVUSA layout: aerial i and panorama i are flat colour COLOURS[i] plus a marker."""
    root = str(root)
    for folder in ("bingmap/19", "streetview/panos", "splits"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    lines = []
    for i in range(count):
        name = f"{i + 1:07d}"
        aerial = np.full((aerial_side, aerial_side, 3), COLOURS[i % 4], np.uint8)
        aerial[: aerial_side // 4, : aerial_side // 4] = 255  # north-west marker: asymmetric
        street = np.full((*pano, 3), COLOURS[(i + 1) % 4], np.uint8)
        street[:, : pano[1] // 8] = 0  # marker near the South column, on its left
        cv2.imwrite(os.path.join(root, "bingmap/19", name + ".jpg"), aerial[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(os.path.join(root, "streetview/panos", name + ".jpg"), street[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        lines.append(f"bingmap/19/{name}.jpg,streetview/panos/{name}.jpg,streetview/annotations/{name}.png")
    with open(os.path.join(root, "splits", "train-19zl.csv"), "w") as handle:
        handle.write("\r\n".join(lines[: count // 2]) + "\r\n")
    with open(os.path.join(root, "splits", "val-19zl.csv"), "w") as handle:
        handle.write("\n".join(lines[count // 2:]) + "\n")
    return root


@pytest.fixture
def cvusa_root(tmp_path):
    return _make_cvusa(tmp_path / "CVUSA")


def test_loads_shapes_and_normalisation(cvusa_root):
    dataset = CVUSA(cvusa_root, "splits/val-19zl.csv", SATE, PANO)
    assert len(dataset) == 2
    sample = dataset[1]
    assert sample["index"] == 1
    assert sample["street"].shape == (3, *PANO) and sample["satellite"].shape == (3, *SATE)
    assert sample["street"].dtype == torch.float32
    # exactly data.io's decode + resize + ImageNet normalisation
    expected = to_tensor(read_image(os.path.join(cvusa_root, "bingmap/19/0000004.jpg"), SATE))
    assert torch.equal(sample["satellite"], expected)
    # de-normalised, the flat part of the aerial is its colour (JPEG tolerance)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (sample["satellite"] * std + mean) * 255
    assert torch.allclose(rgb[:, -4:, -4:].mean(dim=(1, 2)), torch.tensor(COLOURS[3], dtype=torch.float32), atol=4)
    street_rgb = (sample["street"] * std + mean) * 255
    assert torch.allclose(street_rgb[:, :, -4:].mean(dim=(1, 2)), torch.tensor(COLOURS[0], dtype=torch.float32),
                          atol=4)
    # absolute csv paths work too; train split holds the other pairs
    train = CVUSA(cvusa_root, os.path.join(cvusa_root, "splits/train-19zl.csv"), SATE, PANO)
    assert train.street_paths == ["streetview/panos/0000001.jpg", "streetview/panos/0000002.jpg"]


def test_uint8_samples_normalise_to_the_float_samples(cvusa_root):
    floats = CVUSA(cvusa_root, "splits/val-19zl.csv", SATE, PANO, augment=True, seed=1)
    packed = CVUSA(cvusa_root, "splits/val-19zl.csv", SATE, PANO, augment=True, seed=1, normalise=False)
    for index in range(len(floats)):
        a, b = floats[index], packed[index]
        assert b["street"].dtype == torch.uint8 and b["satellite"].shape == (3, *SATE)
        assert torch.equal(normalise(b["street"]), a["street"])
        assert torch.equal(normalise(b["satellite"]), a["satellite"])


def test_missing_files_reported_up_front_with_count(cvusa_root):
    os.remove(os.path.join(cvusa_root, "bingmap/19/0000003.jpg"))
    os.remove(os.path.join(cvusa_root, "streetview/panos/0000004.jpg"))
    with pytest.raises(UserError) as info:
        CVUSA(cvusa_root, "splits/val-19zl.csv", SATE, PANO)
    message = str(info.value)
    assert "2 of 4 files" in message
    assert os.path.join(cvusa_root, "bingmap/19/0000003.jpg") in message
    assert os.path.join(cvusa_root, "streetview/panos/0000004.jpg") in message
    assert "val-19zl.csv" in message


def test_many_missing_files_listed_briefly(tmp_path):
    lines = "".join(f"bingmap/19/{i:07d}.jpg,streetview/panos/{i:07d}.jpg\n" for i in range(20))
    os.makedirs(tmp_path / "splits")
    (tmp_path / "splits" / "x.csv").write_text(lines)
    with pytest.raises(UserError) as info:
        CVUSA(str(tmp_path), "splits/x.csv", SATE, PANO)
    message = str(info.value)
    assert "40 of 40 files" in message and f"and {40 - MISSING_EXAMPLES} more" in message
    assert message.count(".jpg") == MISSING_EXAMPLES
    assert "expected folder" in message and "bingmap/19 does not exist" in message


@pytest.mark.parametrize("folder", ["bingmap", "streetview"])
def test_nested_archive_folder_hint(cvusa_root, folder):
    inner = {"bingmap": "19", "streetview": "panos"}[folder]
    os.makedirs(os.path.join(cvusa_root, folder, folder))
    shutil.move(os.path.join(cvusa_root, folder, inner), os.path.join(cvusa_root, folder, folder, inner))
    with pytest.raises(UserError) as info:
        CVUSA(cvusa_root, "splits/val-19zl.csv", SATE, PANO)
    message = str(info.value)
    assert "2 of 4 files" in message
    assert f"but {os.path.join(cvusa_root, folder, folder, inner)} does" in message
    assert "nested folder" in message
    assert f"mv {os.path.join(cvusa_root, folder, folder)}/* {os.path.join(cvusa_root, folder)}/" in message


def test_data_root_one_level_too_high(cvusa_root):
    parent = os.path.dirname(cvusa_root)
    with pytest.raises(UserError) as info:
        CVUSA(parent, "splits/val-19zl.csv", SATE, PANO)
    assert f"--data_root {cvusa_root}" in str(info.value)
    with pytest.raises(UserError, match="data root not found"):
        CVUSA(os.path.join(parent, "nope"), "splits/val-19zl.csv", SATE, PANO)


def test_polar_files(cvusa_root):
    with pytest.raises(UserError) as info:
        CVUSA(cvusa_root, "splits/val-19zl.csv", SATE, PANO, polar_files=True)
    assert "polarmap/19/0000003.png" in str(info.value).replace(os.sep, "/")
    assert f"python -m data.convert_polar --data_root {cvusa_root}" in str(info.value)

    convert_polar.main(["--data_root", cvusa_root, "--height", "24", "--width", "132", "--workers", "1",
                        "--no_progress"])
    dataset = CVUSA(cvusa_root, "splits/val-19zl.csv", SATE, PANO, polar_files=True)
    sample = dataset[0]
    assert sample["satellite"].shape == (3, *PANO)
    polar_path = os.path.join(cvusa_root, "polarmap/19/0000003.png")
    assert torch.equal(sample["satellite"], to_tensor(read_image(polar_path, PANO)))
    sized = CVUSA(cvusa_root, "splits/val-19zl.csv", SATE, (24, 132), polar_files=True)
    assert torch.equal(sized[0]["satellite"], to_tensor(read_image(polar_path)))


def test_decoding_errors_name_the_file(cvusa_root):
    path = os.path.join(cvusa_root, "streetview/panos/0000003.jpg")
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 3])
    dataset = CVUSA(cvusa_root, "splits/val-19zl.csv", SATE, PANO)  # exists: passes the up-front check
    with pytest.raises(UserError, match="truncated") as info:
        dataset[0]
    assert path in str(info.value)


def test_augmentation_is_paired_and_reproducible(cvusa_root):
    plain = CVUSA(cvusa_root, "splits/train-19zl.csv", SATE, PANO)
    augmented = CVUSA(cvusa_root, "splits/train-19zl.csv", SATE, PANO, augment=True, seed=3)
    again = CVUSA(cvusa_root, "splits/train-19zl.csv", SATE, PANO, augment=True, seed=3)
    decisions = []
    for epoch in range(8):
        augmented.set_epoch(epoch)
        again.set_epoch(epoch)
        for index in range(len(plain)):
            sample, twin = augmented[index], again[index]
            assert torch.equal(sample["street"], twin["street"]) and torch.equal(sample["satellite"], twin["satellite"])
            street = read_image(os.path.join(cvusa_root, plain.street_paths[index]), PANO)
            aerial = read_image(os.path.join(cvusa_root, plain.satellite_paths[index]), SATE)
            street_flipped = torch.equal(sample["street"], to_tensor(flip_panorama(street)))
            aerial_flipped = torch.equal(sample["satellite"], to_tensor(flip_aerial(aerial)))
            assert street_flipped == aerial_flipped  # both views or neither
            if not street_flipped:
                assert torch.equal(sample["street"], to_tensor(street))
                assert torch.equal(sample["satellite"], to_tensor(aerial))
            decisions.append(street_flipped)
    assert 3 <= sum(decisions) <= 13  # both outcomes occur across epochs (16 draws)


def test_rotation_needs_compatible_sizes(cvusa_root):
    with pytest.raises(UserError, match="divisible by 4"):
        CVUSA(cvusa_root, "splits/val-19zl.csv", SATE, (16, 90), rotate=True)
    with pytest.raises(UserError, match="square"):
        CVUSA(cvusa_root, "splits/val-19zl.csv", (32, 48), PANO, rotate=True)
    dataset = CVUSA(cvusa_root, "splits/val-19zl.csv", SATE, PANO, augment=True, rotate=True)
    shapes = {tuple(dataset[i]["satellite"].shape) for i in range(len(dataset))}
    assert shapes == {(3, *SATE)}


# ------------------------------------------------------------------ offset labels (--regress_offset)
#: (dx_px, dy_px) of the marked pairs: the camera at aerial pixel (row S/2 + dy, column S/2 + dx).
CAMERAS = [(5, -9), (-12, 3), (2, 14), (-7, 11)]


def _marked_world(root, side=64, pano=(16, 88), header=True):
    """A CVUSA layout whose lossless aerials are black but for one white pixel where the camera is."""
    root = str(root)
    for folder in ("bingmap/19", "streetview/panos", "splits"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    lines, rows = [], ["id,dx_px,dy_px"] if header else []
    for i, (dx, dy) in enumerate(CAMERAS):
        name = f"{i + 1:07d}"
        aerial = np.zeros((side, side, 3), np.uint8)
        aerial[side // 2 + dy, side // 2 + dx] = 255
        cv2.imwrite(os.path.join(root, "bingmap/19", name + ".png"), aerial)
        cv2.imwrite(os.path.join(root, "streetview/panos", name + ".png"), np.full((*pano, 3), 40 * i, np.uint8))
        lines.append(f"bingmap/19/{name}.png,streetview/panos/{name}.png")
        rows.append(f"{name},{dx},{dy}")
    (open(os.path.join(root, "splits", "train-19zl.csv"), "w")).write("\n".join(lines) + "\n")
    (open(os.path.join(root, "offsets.csv"), "w")).write("\n".join(rows) + "\n")
    return root


def test_offset_labels_follow_the_vigor_convention(tmp_path):
    from data.cvusa_layout import pair_deltas, read_offsets_csv

    root = _marked_world(tmp_path)
    path = os.path.join(root, "offsets.csv")
    assert read_offsets_csv(path)["1"] == (5.0, -9.0)
    deltas = pair_deltas(path, ["bingmap/19/0000002.png", "bingmap/19/0000001.png"], "splits/train-19zl.csv")
    assert deltas.tolist() == [[3.0, 12.0], [-9.0, -5.0]]  # (d0, d1) = (dy, -dx)
    dataset = CVUSA(root, "splits/train-19zl.csv", (64, 64), (16, 88), offsets_csv="offsets.csv")
    assert dataset.tile_side == 64 and dataset[0]["delta"].dtype == torch.float64
    assert "delta" not in CVUSA(root, "splits/train-19zl.csv", (64, 64), (16, 88))[0]  # without labels: as before


def test_augmented_deltas_still_point_at_the_camera(tmp_path):
    """Paired flips and quarter turns move the marked camera pixel exactly where the delta says (row
    S/2 + d0, column S/2 - d1, as VIGOR's), through all 8 flip/rotation combinations."""
    root = _marked_world(tmp_path)
    dataset = CVUSA(root, "splits/train-19zl.csv", (64, 64), (16, 88), augment=True, rotate=True, seed=3,
                    normalise=False, offsets_csv="offsets.csv")
    from data.vigor import augment_deltas

    seen = set()
    for epoch in range(16):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            image = sample["satellite"][0].numpy()
            marker = np.unravel_index(int(np.argmax(image)), image.shape)
            assert image[marker] == 255 and (image > 0).sum() == 1
            d0, d1 = sample["delta"].tolist()
            assert (32 + d0, 32 - d1) == marker
            dx, dy = CAMERAS[index]
            seen |= {(flip, k) for flip in (False, True) for k in range(4)
                     if augment_deltas((dy, -dx), flip, k).tolist() == [d0, d1]}
    assert len(seen) == 8


def test_offset_label_errors(tmp_path):
    root = _marked_world(tmp_path, header=False)  # the header is optional
    assert CVUSA(root, "splits/train-19zl.csv", (64, 64), (16, 88), offsets_csv="offsets.csv")[1]["delta"].tolist() \
        == [3.0, 12.0]
    with open(os.path.join(root, "offsets.csv"), "a") as handle:
        handle.write("0000009,nan,2\n")
    with pytest.raises(UserError, match=r"offsets.csv:5: expected 'id,dx_px,dy_px' with finite pixel offsets"):
        CVUSA(root, "splits/train-19zl.csv", (64, 64), (16, 88), offsets_csv="offsets.csv")
    rows = open(os.path.join(root, "offsets.csv")).read().splitlines()[:-1]
    for row in (["0000009,32,-32"], ["0000009,-32.5,0"], ["0000009,0,1e6"]):  # far outside: not a camera in it
        (tmp_path / "range.csv").write_text("\n".join(rows + row) + "\n")
        if row == ["0000009,32,-32"]:  # the edge of the 64-pixel aerial is still inside
            CVUSA(root, "splits/train-19zl.csv", (64, 64), (16, 88), offsets_csv=str(tmp_path / "range.csv"))
            continue
        with pytest.raises(UserError, match=rf"range.csv:5: expected 'id,dx_px,dy_px' with finite pixel offsets in "
                                            rf"\[-32, 32\] \(the camera inside the 64 x 64 aerial\), got "
                                            rf"'{row[0]}'$"):
            CVUSA(root, "splits/train-19zl.csv", (64, 64), (16, 88), offsets_csv=str(tmp_path / "range.csv"))
    (tmp_path / "one.csv").write_text("1,0,0\n")
    with pytest.raises(UserError, match=r"--offsets_csv .*one.csv has no row for id 0000002 .*train without "
                                        r"--regress_offset"):
        CVUSA(root, "splits/train-19zl.csv", (64, 64), (16, 88), offsets_csv=str(tmp_path / "one.csv"))
    os.remove(os.path.join(root, "offsets.csv"))
    with pytest.raises(UserError, match=r"--offsets_csv file not found: .*offsets.csv; .*CVUSA has no offset labels; "
                                        r"synthetic worlds written with .*--max_offset"):
        CVUSA(root, "splits/train-19zl.csv", (64, 64), (16, 88), offsets_csv="offsets.csv")
