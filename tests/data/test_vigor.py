"""VIGOR index, parsing, errors, datasets and the paired VIGOR augmentation."""
import math
import os

import cv2
import numpy as np
import pytest
import torch

from data.convert_polar import polar_transform
from data.io import read_image, to_tensor
from data.vigor import (CROSS_TEST, CROSS_TRAIN, SAME_AREA_CITIES, VigorIndex, VigorPairs, VigorPanoramas,
                        VigorSatellites, augment_pair, flip_deltas, flip_panorama, panorama_pixel,
                        parse_panorama_name, parse_satellite_name, polar_relpath, read_list, rotate_deltas,
                        rotate_panorama, vigor_indices)
from helper.errors import UserError

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
            cv2.imwrite(os.path.join(root, polar_relpath(f"{city}/satellite/{name}")), polar[:, :, ::-1])


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
    assert polar_relpath("Chicago/satellite/" + REAL_SAT) == "Chicago/polarmap/" + REAL_SAT
    assert polar_relpath("NewYork/satellite/satellite_1_2.jpg") == "NewYork/polarmap/satellite_1_2.png"


# ------------------------------------------------------------------------------- index
def _check_index_against_info(index, info):
    """Every array of the index agrees with the names/labels written by make_vigor."""
    offset = 0
    for city in index.cities:
        names = info[city]["sats"]
        assert index.sat_ranges[city] == (offset, offset + len(names))
        for k, name in enumerate(names):
            assert index.sat_paths[offset + k] == f"{city}/satellite/{name}"
            assert tuple(index.sat_gps[offset + k]) == parse_satellite_name(name)
        offset += len(names)
    assert index.num_satellites == offset


def test_index_global_order_follows_city_order(tmp_path):
    info = make_vigor(tmp_path, images=False, crlf_city="Seattle")
    for cities in (("NewYork", "Seattle"), ("Seattle", "NewYork")):
        index = VigorIndex(str(tmp_path), cities, "train", "same", check_files=False)
        _check_index_against_info(index, info)
        assert index.num_panoramas == 8
        assert index.positive.shape == (8,) and index.semi.shape == (8, 3) and index.deltas.shape == (8, 4, 2)
        assert index.pano_gps.shape == (8, 2) and index.pano_gps.dtype == np.float64
        assert index.sat_gps.dtype == np.float64 and index.positive.dtype == np.int64
        row = 0
        for c, city in enumerate(cities):
            for pano, sats, deltas in info[city]["labels"][:4]:
                assert index.pano_paths[row] == f"{city}/panorama/{pano}"
                assert tuple(index.pano_gps[row]) == parse_panorama_name(pano)[1:]
                assert index.pano_city[row] == c
                got = [index.positive[row], *index.semi[row]]
                assert [os.path.basename(index.sat_paths[j]) for j in got] == sats
                # the global index lands inside the city's own block
                start, stop = index.sat_ranges[city]
                assert all(start <= j < stop for j in got)
                np.testing.assert_array_equal(index.deltas[row], np.array(deltas))
                row += 1
    # Seattle's satellites start after NewYork's in the official order
    index = VigorIndex(str(tmp_path), ("NewYork", "Seattle"), "train", "same", check_files=False)
    assert index.sat_ranges["Seattle"][0] == len(info["NewYork"]["sats"]) == 12


def test_same_and_cross_area_read_their_label_files(tmp_path):
    info = make_vigor(tmp_path, cities=SAME_AREA_CITIES, grid=(3, 3), n_train=3, n_test=2, images=False)
    same_train, same_test = vigor_indices(str(tmp_path), "same", check_files=False)
    assert same_train.cities == SAME_AREA_CITIES == same_test.cities
    assert same_train.num_panoramas == 4 * 3 and same_test.num_panoramas == 4 * 2
    assert same_train.num_satellites == same_test.num_satellites == 4 * 9
    assert [os.path.basename(f) for f in same_test.label_files] == ["same_area_balanced_test.txt"] * 4
    test_panos = {f"{city}/panorama/{label[0]}" for city in SAME_AREA_CITIES for label in info[city]["labels"][3:]}
    assert set(same_test.pano_paths.tolist()) == test_panos

    cross_train, cross_test = vigor_indices(str(tmp_path), "cross", check_files=False)
    assert cross_train.cities == CROSS_TRAIN and cross_test.cities == CROSS_TEST
    assert cross_train.num_panoramas == 2 * 5 and cross_test.num_panoramas == 2 * 5
    assert cross_train.num_satellites == cross_test.num_satellites == 2 * 9
    assert {p.split("/")[0] for p in cross_test.pano_paths} == set(CROSS_TEST)
    assert [os.path.basename(f) for f in cross_test.label_files] == ["pano_label_balanced.txt"] * 2
    _check_index_against_info(cross_test, info)
    # in cross-area test, SanFrancisco's satellites get global indices 0..8
    assert cross_test.sat_ranges == {"SanFrancisco": (0, 9), "Chicago": (9, 18)}
    with pytest.raises(UserError, match="overlap"):
        vigor_indices(str(tmp_path), "cross", train_cities=["NewYork"], test_cities=["NewYork"], check_files=False)


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
    expected = to_tensor(read_image(index.sat_file(index.positive[4]), (32, 32)))
    assert torch.equal(sample["satellite"], expected)
    assert torch.equal(sample["street"], to_tensor(read_image(index.pano_file(4), (8, 32))))

    queries = VigorPanoramas(index, pano_size=(8, 32))
    assert len(queries) == 6 and set(queries[2]) == {"street", "index"}
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
    aerial = read_image(index.sat_file(j))
    expected = to_tensor(polar_transform(aerial, 8, 32).round().clip(0, 255).astype(np.uint8))
    assert torch.equal(polar, expected)
    pairs = VigorPairs(index, pano_size=(8, 32), polar_files=True)
    assert pairs[1]["satellite"].shape == (3, 8, 32)
    with pytest.raises(UserError, match="pano_size"):
        VigorSatellites(index, polar_files=True)


# ------------------------------------------------------------------------ augmentation
def test_panorama_flip_and_roll_column_maps():
    width = 16
    pano = np.tile(np.arange(width, dtype=np.int64)[None, :, None], (2, 1, 1))
    flipped = flip_panorama(pano)[0, :, 0]
    assert flipped.tolist() == [(width - c) % width for c in range(width)]
    # north (W/2) stays north, east (3W/4) now shows the old west (W/4)
    assert flipped[width // 2] == width // 2 and flipped[3 * width // 4] == width // 4
    rolled = rotate_panorama(pano, 1)[0, :, 0]
    assert rolled[width // 2] == 3 * width // 4  # north now shows the old east
    assert np.array_equal(flip_panorama(flip_panorama(pano)), pano)
    assert np.array_equal(rotate_panorama(pano, 4), pano)
    with pytest.raises(UserError, match="multiple of 4"):
        rotate_panorama(np.zeros((2, 10, 3)), 1)


def test_delta_rules():
    delta = np.array([[30.0, -70.0], [1.0, 2.0]])
    np.testing.assert_array_equal(flip_deltas(delta), [[30.0, 70.0], [1.0, -2.0]])
    np.testing.assert_array_equal(rotate_deltas(delta, 1), [[-70.0, -30.0], [2.0, -1.0]])
    np.testing.assert_array_equal(rotate_deltas(delta, 2), -delta)
    np.testing.assert_array_equal(rotate_deltas(delta, 4), delta)
    np.testing.assert_array_equal(rotate_deltas(delta, 3), rotate_deltas(delta, -1))


def _heading_column(pano_rc, landmark_rc, width):
    """Panorama column (index frame, column 0 = South, W/2 = North) looking at the landmark."""
    down, right = landmark_rc[0] - pano_rc[0], landmark_rc[1] - pano_rc[1]
    heading = math.atan2(right, -down)  # clockwise from north
    return (width / 2 + width * heading / (2 * math.pi)) % width


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_augmentation_keeps_tile_position_and_view_consistent(flip, k):
    """Marker at the panorama's location + a landmark: after (flip, k) the marker sits at
    the transformed deltas, and the panorama column that saw the landmark still does."""
    side, width = 640, 64
    pano_r, pano_c = 410, 220                      # pixel holding the panorama
    delta = np.array([pano_r + 0.5 - 320, 320 - pano_c - 0.5])
    assert panorama_pixel(delta) == (pano_r + 0.5, pano_c + 0.5)
    for offset in ((-40, 40), (40, 40), (0, -60), (-50, -50), (30, 0)):
        aerial = np.zeros((side, side, 2), np.uint8)
        aerial[pano_r, pano_c, 0] = 255
        aerial[pano_r + offset[0], pano_c + offset[1], 1] = 255
        column = _heading_column((pano_r, pano_c), (pano_r + offset[0], pano_c + offset[1]), width)
        assert column == int(column)
        pano = np.zeros((4, width, 1), np.uint8)
        pano[:, int(column)] = 255

        new_pano, new_aerial, new_delta = augment_pair(pano, aerial, delta, flip, k)
        expected_delta = rotate_deltas(flip_deltas(delta) if flip else delta, k)
        np.testing.assert_array_equal(new_delta, expected_delta)
        marker = np.unravel_index(np.argmax(new_aerial[:, :, 0]), (side, side))
        assert (marker[0] + 0.5, marker[1] + 0.5) == panorama_pixel(new_delta)
        landmark = np.unravel_index(np.argmax(new_aerial[:, :, 1]), (side, side))
        new_column = _heading_column(marker, landmark, width)
        assert int(np.argmax(new_pano[0, :, 0])) == new_column


@pytest.mark.parametrize("flip,k", [(True, 0), (False, 1), (True, 3), (False, 2)])
def test_polar_image_augmentation_matches_polar_of_augmented_aerial(flip, k):
    """Augmenting a polar image = polar transform of the augmented aerial (blob peak column)."""
    side, height, width = 64, 16, 64
    rows, cols = np.mgrid[0:side, 0:side]
    aerial = (255 * np.exp(-((rows - 18) ** 2 + (cols - 45) ** 2) / 18.0))[:, :, None].astype(np.float32)
    polar = polar_transform(aerial, height, width)
    pano = np.zeros((height, width, 1), np.float32)
    _, aug_polar, _ = augment_pair(pano, polar, np.zeros(2), flip, k, satellite_is_polar=True)
    _, aug_aerial, _ = augment_pair(pano, aerial, np.zeros(2), flip, k)
    reference = polar_transform(aug_aerial, height, width)
    got = int(np.argmax(aug_polar[height // 3].ravel()))
    want = int(np.argmax(reference[height // 3].ravel()))
    assert min((got - want) % width, (want - got) % width) <= 1


def _circular_centre(weights, width):
    angle = 2 * np.pi * np.arange(width) / width
    mean = math.atan2(float((weights * np.sin(angle)).sum()), float((weights * np.cos(angle)).sum()))
    return (mean / (2 * np.pi) * width) % width


def test_pairs_augmentation_end_to_end(tmp_path):
    """Through the dataset: the tile marker follows "delta", the panorama's north stripe
    follows the roll; draws are reproducible per (seed, epoch, index)."""
    make_vigor(tmp_path, cities=("NewYork",), n_train=2, n_test=1)
    index = VigorIndex(str(tmp_path), ("NewYork",), "train", "same")
    side, width = 64, 64
    tile = np.zeros((side, side, 3), np.uint8)
    row, col = panorama_pixel(index.deltas[0, 0], side)
    assert row == int(row) and col == int(col)
    tile[int(row) - 3:int(row) + 3, int(col) - 3:int(col) + 3] = 255
    cv2.imwrite(index.sat_file(index.positive[0]), tile)
    pano = np.zeros((16, width, 3), np.uint8)
    pano[:, width // 2 - 1:width // 2 + 2] = 255    # stripe centred on north
    cv2.imwrite(index.pano_file(0), pano, [cv2.IMWRITE_JPEG_QUALITY, 100])

    pairs = VigorPairs(index, sate_size=(side, side), pano_size=(16, width), augment=True, rotate=True, seed=3)
    seen = set()
    for epoch in range(12):
        pairs.set_epoch(epoch)
        sample = pairs[0]
        flip, k = sample["flip"], sample["rotation"]
        seen.add((flip, k))
        expected = rotate_deltas(flip_deltas(index.deltas[0, 0]) if flip else index.deltas[0, 0], k)
        np.testing.assert_array_equal(sample["delta"].numpy(), expected)
        mask = (sample["satellite"][0] > 0).numpy()
        rr, cc = np.nonzero(mask)
        assert (rr.mean() + 0.5, cc.mean() + 0.5) == panorama_pixel(expected, side)
        weights = sample["street"][0].mean(0).numpy()
        centre = _circular_centre(np.clip(weights - weights.min(), 0, None) ** 4, width)
        want = (width / 2 - k * width / 4) % width
        assert min(abs(centre - want), width - abs(centre - want)) < 0.5
        again = pairs[0]
        assert torch.equal(again["satellite"], sample["satellite"]) and torch.equal(again["street"], sample["street"])
    assert len(seen) >= 5  # both flips and several rotations were drawn
    pairs.set_epoch(0)
    draws = [pairs.draw(i) for i in range(3)]
    assert draws == [VigorPairs(index, augment=True, rotate=True, seed=3).draw(i) for i in range(3)]
    plain = VigorPairs(index, sate_size=(side, side), pano_size=(16, width))
    assert all(plain.draw(i) == (False, 0) for i in range(3))
    with pytest.raises(UserError, match="square"):
        VigorPairs(index, sate_size=(32, 64), rotate=True)
