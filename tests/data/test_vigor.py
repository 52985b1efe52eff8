"""VIGOR index, parsing, errors, datasets and the paired VIGOR augmentation."""
import math
import os

import cv2
import numpy as np
import pytest
import torch

import data.augment as augment_module
from data.augment import aerial_point, paired_augment, sample_rng
from data.convert_polar import polar_transform
from data.io import read_image
from data.tensors import normalise, to_tensor
from data.vigor import VigorPairs, VigorPanoramas, VigorSatellites, augment_deltas, flip_deltas, panorama_pixel, rotate_deltas
from data.vigor_layout import (CROSS_TEST, CROSS_TRAIN, PANO_SIZE, SAME_AREA_CITIES, TILE_SIDE, VigorConfig, VigorIndex,
                               parse_panorama_name, parse_satellite_name, polar_path, read_list)
from common.errors import UserError

REAL_PANO = "-0-MZBp3e1p5aBhMLnaUNQ,41.88373255988426,-87.62657128046946,.jpg"
REAL_SAT = "satellite_41.8771276047049_-87.6269626412138.png"
ID_CHARS = "abcXYZ019-_"


# ----------------------------------------------------------------------------- builder
def make_vigor(root, cities=("NewYork", "Seattle"), grid=(3, 4), n_train=4, n_test=3, images=True,
               sate_side=64, pano_hw=(16, 64), seed=0, crlf_city=None):
    """Write a tiny VIGOR-layout dataset; returns {city: {"sats": [names in list order],
    "labels": [(pano, [4 sat names], [[d0, d1] x 4])] in pano_label order}}.

    Tiles of city c lie on a grid with centres (i*320, j*320) in 640-tile pixels (half
    overlap); panoramas lie at multiples of 10 pixels strictly inside the grid, so each is
    covered by exactly four tiles; the positive is the nearest centre.
    """
    rng = np.random.default_rng(seed)
    root = str(root)
    info = {}
    for c, city in enumerate(cities):
        gy, gx = grid
        lat0, lon0 = 40.0 + c, -80.0 - c
        names = {(i, j): f"satellite_{lat0 - i * 0.0003 + 1e-9 * j!r}_{lon0 + j * 0.0004 + 1e-9 * i!r}.png"
                 for i in range(gy) for j in range(gx)}
        sat_order = list(names.values())
        rng.shuffle(sat_order)
        labels = []
        seen = set()
        while len(labels) < n_train + n_test:
            row = int(rng.integers(1, (gy - 1) * 32)) * 10
            col = int(rng.integers(1, (gx - 1) * 32)) * 10
            if row % 320 == 0 or col % 320 == 0 or row % 320 == 160 or col % 320 == 160 or (row, col) in seen:
                continue
            seen.add((row, col))
            i0, j0 = row // 320, col // 320
            cover = [(i, j) for i in (i0, i0 + 1) for j in (j0, j0 + 1)]
            cover.sort(key=lambda t: (t[0] * 320 - row) ** 2 + (t[1] * 320 - col) ** 2)
            pano_id = "".join(rng.choice(list(ID_CHARS), 22))
            pano_id = "-" + pano_id[1:] if len(labels) % 2 == 0 else pano_id[:5] + "_" + pano_id[6:]
            pano = f"{pano_id},{lat0 - row / 320 * 0.0003!r},{lon0 + col / 320 * 0.0004!r},.jpg"
            deltas = [[float(row - i * 320), float(j * 320 - col)] for i, j in cover]
            labels.append((pano, [names[t] for t in cover], deltas))
        info[city] = {"sats": sat_order, "labels": labels}

        split_dir = os.path.join(root, "splits", city)
        os.makedirs(split_dir, exist_ok=True)
        end = "\r\n" if city == crlf_city else "\n"
        with open(os.path.join(split_dir, "satellite_list.txt"), "w", newline="") as handle:
            handle.write(end.join(sat_order))  # no final newline

        def line(label):
            pano, sats, deltas = label
            fields = [pano]
            for name, (d0, d1) in zip(sats, deltas):
                fields += [name, repr(d0), repr(d1)]
            return " ".join(fields)

        for fname, part in (("same_area_balanced_train.txt", labels[:n_train]),
                            ("same_area_balanced_test.txt", labels[n_train:]),
                            ("pano_label_balanced.txt", labels)):
            with open(os.path.join(split_dir, fname), "w", newline="") as handle:
                handle.write("".join(line(label) + end for label in part))
        os.makedirs(os.path.join(root, city, "panorama"), exist_ok=True)
        os.makedirs(os.path.join(root, city, "satellite"), exist_ok=True)
        if images:
            for name in sat_order:
                image = rng.integers(0, 256, (sate_side, sate_side, 3), dtype=np.uint8)
                assert cv2.imwrite(os.path.join(root, city, "satellite", name), image)
            for pano, _, _ in labels:
                image = rng.integers(0, 256, (pano_hw[0], pano_hw[1], 3), dtype=np.uint8)
                assert cv2.imwrite(os.path.join(root, city, "panorama", pano), image)
    return info


def write_polarmaps(root, info, size=(8, 32)):
    for city, data in info.items():
        os.makedirs(os.path.join(root, city, "polarmap"), exist_ok=True)
        for name in data["sats"]:
            aerial = read_image(os.path.join(root, city, "satellite", name))
            polar = polar_transform(aerial, *size).round().clip(0, 255).astype(np.uint8)
            cv2.imwrite(os.path.join(root, polar_path(f"{city}/satellite/{name}")), polar[:, :, ::-1])


# ----------------------------------------------------------------------------- parsing
def test_constants_official_order():
    assert SAME_AREA_CITIES == ("NewYork", "Seattle", "SanFrancisco", "Chicago")
    assert CROSS_TRAIN == ("NewYork", "Seattle") and CROSS_TEST == ("SanFrancisco", "Chicago")


def test_parse_panorama_name_real_and_odd_ids():
    assert parse_panorama_name(REAL_PANO) == ("-0-MZBp3e1p5aBhMLnaUNQ", 41.88373255988426, -87.62657128046946)
    # basename only: a comma in a parent folder must not matter; '_' inside ids
    assert parse_panorama_name("/data/a,b/Chicago/panorama/ab_cd-EF,1.5,-2.25,.jpg") == ("ab_cd-EF", 1.5, -2.25)
    assert parse_panorama_name("x,1,2,.jpg\r\n") == ("x", 1.0, 2.0)
    for bad in ("abc.jpg", "id,1.0,2.0.jpg", "id,north,2.0,.jpg", ",1,2,.jpg"):
        with pytest.raises(UserError, match="panorama name"):
            parse_panorama_name(bad)


def test_parse_satellite_name_real():
    assert parse_satellite_name(REAL_SAT) == (41.8771276047049, -87.6269626412138)
    assert parse_satellite_name("Chicago/satellite/" + REAL_SAT) == (41.8771276047049, -87.6269626412138)
    for bad in ("satellite.png", "satellite_1.0_x.png"):
        with pytest.raises(UserError, match="satellite name"):
            parse_satellite_name(bad)


def test_read_list_crlf_blank_lines_no_final_newline(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbfa.png\r\nb.png\r\n\r\n  \r\nc.png")
    assert read_list(str(path)) == [(1, "a.png"), (2, "b.png"), (5, "c.png")]
    with pytest.raises(UserError, match="not found"):
        read_list(str(tmp_path / "missing.txt"))


def test_polar_relpath():
    assert polar_path("Chicago/satellite/" + REAL_SAT) == "Chicago/polarmap/" + REAL_SAT
    assert polar_path("NewYork/satellite/satellite_1_2.jpg") == "NewYork/polarmap/satellite_1_2.png"


# ------------------------------------------------------------------------------- index
def _check_index_against_info(index, info):
    """Every array of the index agrees with the names/labels written by make_vigor."""
    offset = 0
    for city in index.cities:
        names = info[city]["sats"]
        assert index.satellite_ranges[city] == (offset, offset + len(names))
        for k, name in enumerate(names):
            assert index.satellite_paths[offset + k] == f"{city}/satellite/{name}"
            assert tuple(index.satellite_gps[offset + k]) == parse_satellite_name(name)
        offset += len(names)
    assert index.num_satellites == offset


def test_index_global_order_follows_city_order(tmp_path):
    info = make_vigor(tmp_path, images=False, crlf_city="Seattle")
    for cities in (("NewYork", "Seattle"), ("Seattle", "NewYork")):
        index = VigorIndex(str(tmp_path), cities, "train", "same", check_files=False)
        _check_index_against_info(index, info)
        assert index.num_panoramas == 8
        assert index.positive.shape == (8,) and index.semi.shape == (8, 3) and index.deltas.shape == (8, 4, 2)
        assert index.street_gps.shape == (8, 2) and index.street_gps.dtype == np.float64
        assert index.satellite_gps.dtype == np.float64 and index.positive.dtype == np.int64
        row = 0
        for c, city in enumerate(cities):
            for pano, sats, deltas in info[city]["labels"][:4]:
                assert index.street_paths[row] == f"{city}/panorama/{pano}"
                assert tuple(index.street_gps[row]) == parse_panorama_name(pano)[1:]
                assert index.street_city[row] == c
                got = [index.positive[row], *index.semi[row]]
                assert [os.path.basename(index.satellite_paths[j]) for j in got] == sats
                # the global index lands inside the city's own block
                start, stop = index.satellite_ranges[city]
                assert all(start <= j < stop for j in got)
                np.testing.assert_array_equal(index.deltas[row], np.array(deltas))
                row += 1
    # Seattle's satellites start after NewYork's in the official order
    index = VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "train", "same", check_files=False)
    assert index.satellite_ranges["Seattle"][0] == len(info["NewYork"]["sats"]) == 12


def test_same_and_cross_area_read_their_label_files(tmp_path):
    info = make_vigor(tmp_path, cities=SAME_AREA_CITIES, grid=(3, 3), n_train=3, n_test=2, images=False)
    same = VigorConfig(str(tmp_path), "same")
    same_train, same_test = same.index("train", check_files=False), same.index("test", check_files=False)
    assert same_train.cities == SAME_AREA_CITIES == same_test.cities
    assert same_train.num_panoramas == 4 * 3 and same_test.num_panoramas == 4 * 2
    assert same_train.num_satellites == same_test.num_satellites == 4 * 9
    assert [os.path.basename(f) for f in same_test.label_files] == ["same_area_balanced_test.txt"] * 4
    test_panos = {f"{city}/panorama/{label[0]}" for city in SAME_AREA_CITIES for label in info[city]["labels"][3:]}
    assert set(same_test.street_paths.tolist()) == test_panos

    cross = VigorConfig(str(tmp_path), "cross")
    cross_train, cross_test = cross.index("train", check_files=False), cross.index("test", check_files=False)
    assert cross_train.cities == CROSS_TRAIN and cross_test.cities == CROSS_TEST
    assert cross_train.num_panoramas == 2 * 5 and cross_test.num_panoramas == 2 * 5
    assert cross_train.num_satellites == cross_test.num_satellites == 2 * 9
    assert {p.split("/")[0] for p in cross_test.street_paths} == set(CROSS_TEST)
    assert [os.path.basename(f) for f in cross_test.label_files] == ["pano_label_balanced.txt"] * 2
    _check_index_against_info(cross_test, info)
    # in cross-area test, SanFrancisco's satellites get global indices 0..8
    assert cross_test.satellite_ranges == {"SanFrancisco": (0, 9), "Chicago": (9, 18)}
    with pytest.raises(UserError, match="NewYork is in both --train_cities and --test_cities"):
        VigorConfig(str(tmp_path), "cross", train_cities=["NewYork"], test_cities=["NewYork"])


# ------------------------------------------------------------------------------ errors
def test_missing_root_and_city(tmp_path):
    make_vigor(tmp_path, images=False)
    with pytest.raises(UserError, match="data root not found"):
        VigorIndex(str(tmp_path / "nope"), ("NewYork",), "train", "same")
    with pytest.raises(UserError) as err:
        VigorIndex(str(tmp_path), ("NewYork", "Chicago"), "train", "same")
    message = str(err.value)
    assert "'Chicago'" in message and "NewYork, Seattle" in message and "--cities" in message
    with pytest.raises(UserError, match="nested"):
        VigorIndex(str(_nest(tmp_path)), ("NewYork",), "train", "same")
    with pytest.raises(UserError, match="unknown VIGOR mode"):
        VigorIndex(str(tmp_path), ("NewYork",), "train", "both")
    with pytest.raises(UserError, match="listed twice"):
        VigorIndex(str(tmp_path), ("NewYork", "NewYork"), "train", "same")


def _nest(tmp_path):
    outer = tmp_path / "outer"
    (outer / "VIGOR").mkdir(parents=True)
    os.symlink(tmp_path / "NewYork", outer / "VIGOR" / "NewYork")
    return outer


def test_missing_list_file(tmp_path):
    make_vigor(tmp_path, images=False)
    os.remove(tmp_path / "splits" / "Seattle" / "same_area_balanced_test.txt")
    VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "train", "same", check_files=False)
    with pytest.raises(UserError, match="same_area_balanced_test.txt"):
        VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "test", "same", check_files=False)


def test_malformed_and_unknown_satellite_lines(tmp_path):
    make_vigor(tmp_path, images=False)
    label_file = tmp_path / "splits" / "Seattle" / "same_area_balanced_train.txt"
    lines = label_file.read_text().splitlines()
    good = lines[1]

    lines[1] = " ".join(good.split()[:12])
    label_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as err:
        VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "train", "same", check_files=False)
    assert f"{label_file}:2:" in str(err.value) and "12 fields, expected 13" in str(err.value)

    fields = good.split()
    fields[7] = "satellite_1.5_2.5.png"
    lines[1] = " ".join(fields)
    label_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as err:
        VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "train", "same", check_files=False)
    assert f"{label_file}:2:" in str(err.value) and "'satellite_1.5_2.5.png'" in str(err.value)

    fields = good.split()
    fields[3] = "west"
    lines[1] = " ".join(fields)
    label_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"{label_file}:2: malformed"):
        VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "train", "same", check_files=False)


def test_missing_image_files_are_counted(tmp_path):
    info = make_vigor(tmp_path)
    VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "train", "same")
    for name in info["Seattle"]["sats"][:2]:
        os.remove(tmp_path / "Seattle" / "satellite" / name)
    with pytest.raises(UserError) as err:
        VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "train", "same")
    assert "2 of 24 VIGOR satellite files are missing" in str(err.value)
    assert info["Seattle"]["sats"][0] in str(err.value)


# ----------------------------------------------------------------------------- datasets
def test_datasets_load_with_shapes_and_normalisation(tmp_path):
    make_vigor(tmp_path)
    index = VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "test", "same")
    pairs = VigorPairs(index, sate_size=(32, 32), pano_size=(8, 32))
    assert len(pairs) == 6
    sample = pairs[4]
    assert sample["street"].shape == (3, 8, 32) and sample["satellite"].shape == (3, 32, 32)
    assert sample["street"].dtype == torch.float32
    assert sample["index"] == 4 and sample["positive"] == index.positive[4]
    assert sample["semi"].tolist() == index.semi[4].tolist()
    assert sample["flip"] is False and sample["rotation"] == 0
    np.testing.assert_array_equal(sample["delta"].numpy(), index.deltas[4, 0])
    expected = to_tensor(read_image(index.satellite_file(index.positive[4]), (32, 32)))
    assert torch.equal(sample["satellite"], expected)
    assert torch.equal(sample["street"], to_tensor(read_image(index.street_file(4), (8, 32))))

    queries = VigorPanoramas(index, pano_size=(8, 32))
    assert len(queries) == 6 and set(queries[2]) == {"street", "index", "heading"} and queries[2]["heading"] == 0.0
    assert queries[2]["street"].shape == (3, 8, 32) and queries[2]["index"] == 2
    references = VigorSatellites(index, sate_size=(16, 16))
    assert len(references) == 24 and set(references[13]) == {"satellite", "index"}
    assert references[13]["satellite"].shape == (3, 16, 16) and references[13]["index"] == 13
    batch = next(iter(torch.utils.data.DataLoader(pairs, batch_size=3)))
    assert batch["street"].shape == (3, 3, 8, 32) and batch["semi"].shape == (3, 3)


def test_polar_files(tmp_path):
    info = make_vigor(tmp_path)
    index = VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "train", "same")
    with pytest.raises(UserError, match="convert_polar"):
        VigorSatellites(index, polar_files=True, pano_size=(8, 32))
    write_polarmaps(str(tmp_path), info, size=(8, 32))
    references = VigorSatellites(index, polar_files=True, pano_size=(8, 32))
    j = 5
    polar = references[j]["satellite"]
    assert polar.shape == (3, 8, 32)
    aerial = read_image(index.satellite_file(j))
    expected = to_tensor(polar_transform(aerial, 8, 32).round().clip(0, 255).astype(np.uint8))
    assert torch.equal(polar, expected)
    pairs = VigorPairs(index, pano_size=(8, 32), polar_files=True)
    assert pairs[1]["satellite"].shape == (3, 8, 32)
    with pytest.raises(UserError, match="8 x 32, which does not fit --pano_size 320,640"):
        VigorSatellites(index, polar_files=True)  # the official panorama size: these polar images are too small


# ------------------------------------------------------------------------ augmentation
# Images are augmented by data.augment (its image formulas are tested in test_augment.py);
# here: the VIGOR deltas under that convention, and VigorPairs wiring it together.
def test_panorama_pixel_index_convention():
    # index coordinates: zero deltas = the tile centre = the polar centre, index S/2
    assert panorama_pixel((0.0, 0.0), 640) == (320.0, 320.0)
    assert panorama_pixel((0.0, 0.0), 37) == (18.5, 18.5)
    assert panorama_pixel((30.0, -70.0)) == (350.0, 390.0)     # south-east of the centre
    assert panorama_pixel((30.0, -70.0), 64) == (35.0, 39.0)


def test_delta_rules():
    delta = np.array([[30.0, -70.0], [1.0, 2.0]])
    np.testing.assert_array_equal(flip_deltas(delta), [[30.0, 70.0], [1.0, -2.0]])
    np.testing.assert_array_equal(rotate_deltas(delta, 1), [[-70.0, -30.0], [2.0, -1.0]])
    np.testing.assert_array_equal(rotate_deltas(delta, 2), -delta)
    np.testing.assert_array_equal(rotate_deltas(delta, 4), delta)
    np.testing.assert_array_equal(rotate_deltas(delta, 3), rotate_deltas(delta, -1))
    np.testing.assert_array_equal(flip_deltas(flip_deltas(delta)), delta)
    np.testing.assert_array_equal(augment_deltas(delta, True, 3), rotate_deltas(flip_deltas(delta), 3))
    np.testing.assert_array_equal(augment_deltas(delta, False, 0), delta)
    np.testing.assert_array_equal(augment_deltas(delta[0], True, 1), [70.0, -30.0])
    # the polar centre (index S/2 = zero deltas) is the fixed point of every augmentation
    for side in (640, 64, 37):
        assert panorama_pixel((0.0, 0.0), side) == (side / 2, side / 2)
    for flip in (False, True):
        for k in range(4):
            np.testing.assert_array_equal(augment_deltas(np.zeros(2), flip, k), [0.0, 0.0])


@pytest.mark.parametrize("side", [640, 64, 37])
def test_delta_rules_agree_with_aerial_point(side):
    """augment_deltas == data.augment.aerial_point on the panorama position (both in pixel
    index coordinates, no half-pixel shift)."""
    rng = np.random.default_rng(side)
    delta = rng.uniform(-300, 300, (50, 2))
    rows, cols = np.transpose([panorama_pixel(d, side) for d in delta])
    for flip in (False, True):
        for k in range(4):
            new_rows, new_cols = aerial_point(rows, cols, side, flip, k)
            got = np.array([panorama_pixel(d, side) for d in augment_deltas(delta, flip, k)])
            np.testing.assert_allclose(got, np.stack([new_rows, new_cols], 1), rtol=0, atol=1e-9)


def _heading_column(pano_rc, landmark_rc, width):
    """Panorama column (index frame, column 0 = South, W/2 = North) looking at the landmark."""
    down, right = landmark_rc[0] - pano_rc[0], landmark_rc[1] - pano_rc[1]
    heading = math.atan2(right, -down)  # clockwise from north
    return (width / 2 + width * heading / (2 * math.pi)) % width


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("side", [640, 64, 37])
def test_augmentation_keeps_tile_position_and_view_consistent(flip, k, side):
    """Marker at the panorama's location + a landmark, augmented by data.augment: the marker's
    index is panorama_pixel(augment_deltas(...)) (exactly where S divides 640 so the deltas are
    integers; to 1e-9 for S = 37), and the panorama column that saw the landmark still does."""
    width = 64
    pano_r, pano_c = side * 41 // 64, side * 22 // 64      # integer index of the panorama pixel
    delta = np.array([(pano_r - side / 2) * TILE_SIDE / side, (side / 2 - pano_c) * TILE_SIDE / side])
    exact = TILE_SIDE % side == 0
    if exact:
        assert np.all(delta == np.round(delta))

    def check(position, want):
        if exact:
            assert tuple(position) == tuple(want)
        else:
            np.testing.assert_allclose(position, want, rtol=0, atol=1e-9)

    check(panorama_pixel(delta, side), (pano_r, pano_c))
    for offset in ((-4, 4), (4, 4), (0, -6), (-5, -5), (3, 0)):
        aerial = np.zeros((side, side, 2), np.uint8)
        aerial[pano_r, pano_c, 0] = 255
        aerial[pano_r + offset[0], pano_c + offset[1], 1] = 255
        column = _heading_column((pano_r, pano_c), (pano_r + offset[0], pano_c + offset[1]), width)
        assert column == int(column)
        pano = np.zeros((4, width, 1), np.uint8)
        pano[:, int(column)] = 255

        street, satellite = (pano, aerial)
        if flip:
            street, satellite = augment_module.flip_panorama(street), augment_module.flip_aerial(satellite)
        street, satellite = augment_module.roll_panorama(street, k), augment_module.rotate_aerial(satellite, k)
        new_delta = augment_deltas(delta, flip, k)
        marker = np.unravel_index(np.argmax(satellite[:, :, 0]), (side, side))
        assert satellite[marker + (0,)] == 255
        check(panorama_pixel(new_delta, side), (float(marker[0]), float(marker[1])))
        landmark = np.unravel_index(np.argmax(satellite[:, :, 1]), (side, side))
        new_column = _heading_column(marker, landmark, width)
        assert int(np.argmax(street[0, :, 0])) == new_column


def _circular_centre(weights, width):
    angle = 2 * np.pi * np.arange(width) / width
    mean = math.atan2(float((weights * np.sin(angle)).sum()), float((weights * np.cos(angle)).sum()))
    return (mean / (2 * np.pi) * width) % width


def test_pairs_augmentation_end_to_end(tmp_path):
    """Through the dataset: the tile marker follows "delta", the panorama's north stripe
    follows the roll; draws are data.augment.paired_augment with sample_rng(seed, epoch, index)."""
    make_vigor(tmp_path, cities=("NewYork",), n_train=2, n_test=1)
    index = VigorIndex(str(tmp_path), ("NewYork",), "train", "same")
    side, width = 64, 64
    tile = np.zeros((side, side, 3), np.uint8)
    row, col = panorama_pixel(index.deltas[0, 0], side)
    assert row == int(row) and col == int(col)
    tile[int(row) - 3:int(row) + 4, int(col) - 3:int(col) + 4] = 255   # 7x7 block centred on the panorama index
    cv2.imwrite(index.satellite_file(index.positive[0]), tile)
    pano = np.zeros((16, width, 3), np.uint8)
    pano[:, width // 2 - 1:width // 2 + 2] = 255    # stripe centred on north
    cv2.imwrite(index.street_file(0), pano, [cv2.IMWRITE_JPEG_QUALITY, 100])
    raw_pano, raw_tile = read_image(index.street_file(0), (16, width)), read_image(index.satellite_file(index.positive[0]),
                                                                                 (side, side))

    pairs = VigorPairs(index, sate_size=(side, side), pano_size=(16, width), augment=True, rotate=True, seed=3)
    fresh = VigorPairs(index, sate_size=(side, side), pano_size=(16, width), augment=True, rotate=True, seed=3)
    seen = set()
    for epoch in range(12):
        pairs.set_epoch(epoch)
        sample = pairs[0]
        flip, k = sample["flip"], sample["rotation"]
        assert isinstance(flip, bool) and isinstance(k, int)
        seen.add((flip, k))
        # exactly data.augment's decisions and images
        street, satellite, params = paired_augment(raw_pano, raw_tile, sample_rng(3, epoch, 0), flip=True, rotate=True)
        assert params == {"flip": int(flip), "rotation": k}
        assert torch.equal(sample["street"], to_tensor(street))
        assert torch.equal(sample["satellite"], to_tensor(satellite))
        expected = rotate_deltas(flip_deltas(index.deltas[0, 0]) if flip else index.deltas[0, 0], k)
        np.testing.assert_array_equal(sample["delta"].numpy(), expected)
        assert sample["delta"].dtype == torch.float64
        mask = (sample["satellite"][0] > 0).numpy()
        rr, cc = np.nonzero(mask)
        assert len(rr) == 49
        assert (rr.mean(), cc.mean()) == panorama_pixel(expected, side)
        weights = sample["street"][0].mean(0).numpy()
        centre = _circular_centre(np.clip(weights - weights.min(), 0, None) ** 4, width)
        want = (width / 2 - k * width / 4) % width
        assert min(abs(centre - want), width - abs(centre - want)) < 0.5
        again = pairs[0]
        assert torch.equal(again["satellite"], sample["satellite"]) and torch.equal(again["street"], sample["street"])
        fresh.set_epoch(epoch)
        other = fresh[0]                                   # another instance: the same draw
        assert (other["flip"], other["rotation"]) == (flip, k) and torch.equal(other["street"], sample["street"])
    assert len(seen) >= 5  # both flips and several rotations were drawn
    plain = VigorPairs(index, sate_size=(side, side), pano_size=(16, width))
    for i in range(len(plain)):
        sample = plain[i]
        assert (sample["flip"], sample["rotation"]) == (False, 0)
        np.testing.assert_array_equal(sample["delta"].numpy(), index.deltas[i, 0])
    # flip only: the rotation is never drawn, the flip decisions are those of the full draw
    flips = VigorPairs(index, sate_size=(side, side), pano_size=(16, width), augment=True, seed=3)
    for epoch in range(4):
        flips.set_epoch(epoch)
        pairs.set_epoch(epoch)
        assert (flips[1]["flip"], flips[1]["rotation"]) == (pairs[1]["flip"], 0)
    with pytest.raises(UserError, match="square"):
        VigorPairs(index, sate_size=(32, 64), rotate=True)
    with pytest.raises(UserError, match="divisible by 4"):
        VigorPairs(index, sate_size=(32, 32), pano_size=(8, 30), rotate=True)


def test_pairs_flip_on_non_square_aerial_tracks_columns(tmp_path):
    """A flip alone works on a non-square sate_size; the column is scaled by the aerial width."""
    make_vigor(tmp_path, cities=("NewYork",), n_train=2, n_test=1)
    index = VigorIndex(str(tmp_path), ("NewYork",), "train", "same")
    height, side = 32, 64
    tile = np.zeros((side, side, 3), np.uint8)
    row, col = panorama_pixel(index.deltas[0, 0], side)
    assert col == int(col)
    tile[:, int(col) - 1:int(col) + 2] = 255          # 3-column stripe centred on the panorama column
    cv2.imwrite(index.satellite_file(index.positive[0]), tile)
    pairs = VigorPairs(index, sate_size=(height, side), pano_size=(8, 32), augment=True, seed=1)
    flipped = 0
    for epoch in range(6):
        pairs.set_epoch(epoch)
        sample = pairs[0]
        cc = np.nonzero((sample["satellite"][0, 0] > 0).numpy())[0]
        assert len(cc) == 3 and cc.mean() == panorama_pixel(sample["delta"].numpy(), side)[1]
        flipped += sample["flip"]
    assert 0 < flipped < 6


@pytest.mark.parametrize("flip,k", [(True, 0), (False, 1), (True, 3), (False, 2)])
def test_polar_files_pairs_are_augmented_like_panoramas(tmp_path, flip, k):
    """With polar_files the polar satellite gets the panorama's flip/roll (data.augment, so
    it equals the polar image of the augmented 640 tile) and the deltas use the 640 tile."""
    info = make_vigor(tmp_path, cities=("NewYork",), n_train=2, n_test=1)
    write_polarmaps(str(tmp_path), info, size=(8, 32))
    index = VigorIndex(str(tmp_path), ("NewYork",), "train", "same")
    pairs = VigorPairs(index, pano_size=(8, 32), polar_files=True, augment=True, rotate=True, seed=0)
    # find a (epoch, sample) with the requested draw
    for epoch in range(200):
        params = paired_augment(np.zeros((1, 4)), np.zeros((4, 4)), sample_rng(0, epoch, 1), rotate=True)[2]
        if params == {"flip": int(flip), "rotation": k}:
            break
    pairs.set_epoch(epoch)
    sample = pairs[1]
    assert (sample["flip"], sample["rotation"]) == (flip, k)
    polar = read_image(index.polar_file(index.positive[1]), (8, 32))
    street = read_image(index.street_file(1), (8, 32))
    if flip:
        polar, street = augment_module.flip_panorama(polar), augment_module.flip_panorama(street)
    polar, street = augment_module.roll_panorama(polar, k), augment_module.roll_panorama(street, k)
    assert torch.equal(sample["satellite"], to_tensor(polar)) and torch.equal(sample["street"], to_tensor(street))
    np.testing.assert_array_equal(sample["delta"].numpy(), augment_deltas(index.deltas[1, 0], flip, k))


# --------------------------------------------------------------------------- normalise
def test_uint8_output_normalises_to_the_float_output(tmp_path):
    info = make_vigor(tmp_path, cities=("NewYork",), n_train=3, n_test=1)
    write_polarmaps(str(tmp_path), info, size=(8, 32))
    index = VigorIndex(str(tmp_path), ("NewYork",), "train", "same")
    kwargs = [
        (VigorPairs, dict(sate_size=(32, 32), pano_size=(8, 32), augment=True, rotate=True, seed=5)),
        (VigorPairs, dict(pano_size=(8, 32), polar_files=True, augment=True, seed=5)),
        (VigorPanoramas, dict(pano_size=(8, 32))),
        (VigorSatellites, dict(sate_size=(16, 16))),
        (VigorSatellites, dict(polar_files=True, pano_size=(8, 32))),
    ]
    for cls, kw in kwargs:
        floats, uint8 = cls(index, **kw), cls(index, normalise=False, **kw)
        assert floats.normalise is True and uint8.normalise is False
        for dataset in (floats, uint8):
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(2)
        for i in range(3):
            a, b = floats[i], uint8[i]
            assert set(a) == set(b)
            for key in ("street", "satellite"):
                if key not in a:
                    continue
                assert a[key].dtype == torch.float32 and b[key].dtype == torch.uint8
                assert b[key].shape == a[key].shape and b[key].shape[0] == 3 and b[key].is_contiguous()
                assert torch.equal(normalise(b[key]), a[key])
            for key in set(a) - {"street", "satellite"}:
                same = torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key]
                assert same, key
    # batches of uint8 samples normalise to the float batches
    loader = lambda ds: next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))  # noqa: E731
    pairs_kw = dict(sate_size=(32, 32), pano_size=(8, 32), augment=True, rotate=True, seed=5)
    a, b = loader(VigorPairs(index, **pairs_kw)), loader(VigorPairs(index, normalise=False, **pairs_kw))
    assert b["satellite"].dtype == torch.uint8 and b["satellite"].shape == (3, 3, 32, 32)
    assert torch.equal(normalise(b["satellite"]), a["satellite"]) and torch.equal(normalise(b["street"]), a["street"])


def test_pairs_with_a_semi_positive_augment_it_like_the_positive(tmp_path):
    """The semi-positive is one of the three, read and augmented with the positive's decisions (which do
    not change), its deltas transformed alike."""
    from data.augment import augment_satellite

    make_vigor(tmp_path)
    index = VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "train", "same")
    options = dict(sate_size=(32, 32), pano_size=(8, 32), augment=True, rotate=True, seed=3)
    plain, semi = VigorPairs(index, **options), VigorPairs(index, **options, semi_positive=True)
    slots = set()
    for i in range(len(plain)):
        a, b = plain[i], semi[i]
        assert set(b) - set(a) == {"semi_satellite", "semi_delta"}
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
        matches = [slot for slot in (1, 2, 3) if torch.equal(b["semi_satellite"], to_tensor(augment_satellite(
            read_image(index.satellite_file(index.semi[i, slot - 1]), (32, 32)), b["flip"], b["rotation"])))]
        assert matches
        slot = matches[0]
        np.testing.assert_array_equal(b["semi_delta"].numpy(),
                                      augment_deltas(index.deltas[i, slot], b["flip"], b["rotation"]))
        slots.add(slot)
    assert len(slots) > 1


def test_random_heading_turns_the_panorama_by_its_label(tmp_path):
    """--train_heading / --test_heading random on VIGOR: the panorama is its north-aligned self rolled
    left by heading W / 360 columns (geometry.heading), the same turns for the same seed."""
    from geometry.heading import heading_columns

    make_vigor(tmp_path)
    index = VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "train", "same")
    plain = VigorPanoramas(index, pano_size=(8, 32))
    turned = VigorPanoramas(index, pano_size=(8, 32), heading="random", seed=5)
    again = VigorPanoramas(index, pano_size=(8, 32), heading="random", seed=5)
    headings = []
    for i in range(len(plain)):
        sample = turned[i]
        columns = heading_columns(sample["heading"], 32)
        assert torch.equal(sample["street"], torch.roll(plain[i]["street"], -columns, dims=2))
        assert torch.equal(again[i]["street"], sample["street"]) and again[i]["heading"] == sample["heading"]
        headings.append(sample["heading"])
    assert len(set(headings)) > 1
    pairs = VigorPairs(index, sate_size=(16, 16), pano_size=(8, 32), heading="random", seed=1)
    sample = pairs[0]
    columns = heading_columns(sample["heading"], 32)
    assert torch.equal(sample["street"], torch.roll(VigorPairs(index, sate_size=(16, 16), pano_size=(8, 32))[0]["street"],
                                                    -columns, dims=2))
