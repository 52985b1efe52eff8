"""The synthetic world: panorama / aerial geometry, occlusion, labels, on-disk layouts,
VIGOR label consistency with the GPS in the file names, determinism and the CLI."""
import csv
import math
import os
import re

import cv2
import numpy as np
import pytest

from data import synthetic as syn
from common.errors import UserError
from geometry.earth import EARTH_RADIUS_M, gps_to_north_east

MAGENTA = (1.0, 0.0, 1.0)
CYAN = (0.0, 1.0, 1.0)
YELLOW = (1.0, 1.0, 0.0)


def _mask(image, rgb):
    """Pixels whose colour is within 60/255 of ``rgb`` (0/1 components)."""
    target = np.array(rgb) * 255
    return (np.abs(image.astype(np.float64) - target) < 60).all(axis=2)


def _pole(scene, x, y, height, rgb, side=2.0):
    """A square column of one colour (facade and roof), centred at (x, y) metres."""
    syn.add_building(scene, x, y, side, side, height, facade_rgb=rgb, roof_rgb=rgb)


def _circular_mean_col(mask, width):
    cols = np.nonzero(mask.any(axis=0))[0]
    angles = 2 * np.pi * cols / width
    mean = math.atan2(np.sin(angles).mean(), np.cos(angles).mean())
    return (mean % (2 * np.pi)) * width / (2 * np.pi)


# ------------------------------------------------------------------ panorama geometry

@pytest.mark.parametrize("layout,width,height", [("cvusa", 720, 131), ("vigor", 720, 360)])
def test_compass_columns(layout, width, height):
    """North at W/2, East at 3W/4, West at W/4, South at column 0 (wrapping)."""
    scene = syn.blank_scene(60, ground_rgb=(0.4, 0.4, 0.4))
    _pole(scene, 0.0, -20.0, 8.0, MAGENTA)   # north (y = south)
    _pole(scene, 20.0, 0.0, 8.0, CYAN)       # east
    _pole(scene, -20.0, 0.0, 8.0, YELLOW)    # west
    _pole(scene, 0.0, 20.0, 8.0, (0.0, 0.0, 1.0))  # south
    rgb, _ = syn.render_panorama(scene, (0.0, 0.0), width, height, layout, syn.NEUTRAL, 2.0, res=0.2,
                                 view_radius=40.0)
    assert _circular_mean_col(_mask(rgb, MAGENTA), width) == pytest.approx(width / 2, abs=0.6)
    assert _circular_mean_col(_mask(rgb, CYAN), width) == pytest.approx(3 * width / 4, abs=0.6)
    assert _circular_mean_col(_mask(rgb, YELLOW), width) == pytest.approx(width / 4, abs=0.6)
    south = _mask(rgb, (0.0, 0.0, 1.0)).any(axis=0)
    assert south[0] and south[-1] and not south[width // 8: -width // 8].any()


@pytest.mark.parametrize("layout,width,height", [("cvusa", 720, 131), ("vigor", 720, 360)])
def test_pole_rows_and_width(layout, width, height):
    """A pole 20 m away at heading 30 deg: predicted column span, top and bottom rows."""
    heading = math.radians(30.0)
    dist, side, top, cam_h = 20.0, 2.0, 9.0, 2.0
    x, y = dist * math.sin(heading), -dist * math.cos(heading)
    scene = syn.blank_scene(60, ground_rgb=(0.4, 0.4, 0.4))
    syn.add_building(scene, x, y, side, side, top, angle=heading - math.pi / 2, facade_rgb=MAGENTA,
                     roof_rgb=MAGENTA)  # a face looks at the camera
    rgb, labels = syn.render_panorama(scene, (0.0, 0.0), width, height, layout, syn.NEUTRAL, cam_h, res=0.1,
                                      view_radius=40.0)
    mask = _mask(rgb, MAGENTA)
    dv = 2 * math.pi / width if layout == "cvusa" else math.pi / height
    centre_row = height / 2 - 0.5
    col = ((heading - math.pi) % (2 * math.pi)) / (2 * math.pi) * width  # heading 180 deg at column 0
    assert _circular_mean_col(mask, width) == pytest.approx(col, abs=0.6)
    near = dist - side / 2  # the facing wall
    half_angle = math.atan2(side / 2, near)
    assert mask.any(axis=0).sum() == pytest.approx(2 * half_angle / (2 * math.pi) * width, abs=2)
    rows = np.nonzero(labels[:, int(round(col))] == syn.LABEL_BUILDING)[0]  # the foot is shaded darker
    top_row = centre_row - math.atan2(top - cam_h, near) / dv
    bottom_row = centre_row + math.atan2(cam_h, near) / dv
    assert rows.min() == pytest.approx(top_row, abs=1.5)
    assert rows.max() == pytest.approx(bottom_row, abs=1.5)
    assert (labels[mask] == syn.LABEL_BUILDING).all() and mask[:, int(round(col))].sum() > 0.7 * len(rows)
    # the rows just above the pole and the bottom row at the pole's column
    assert labels[int(top_row) - 3, int(round(col))] == syn.LABEL_SKY
    assert labels[-1, int(round(col))] == syn.LABEL_GROUND


def test_vigor_rows_cover_the_sphere():
    """Equirectangular: row 0 near the zenith, last row near the nadir; a tall building
    next to the camera reaches high elevations at its predicted row."""
    width, height = 512, 256
    scene = syn.blank_scene(60, ground_rgb=MAGENTA)
    _pole(scene, 0.0, -6.0, 40.0, CYAN, side=4.0)
    rgb, labels = syn.render_panorama(scene, (0.0, 0.0), width, height, "vigor", syn.NEUTRAL, 2.0, res=0.1,
                                      view_radius=30.0)
    assert (labels[0] == syn.LABEL_SKY).all()
    assert _mask(rgb[-1:], MAGENTA).all()                 # ground straight down
    top_row = height / 2 - 0.5 - math.degrees(math.atan2(38.0, 4.0)) / (180.0 / height)
    rows = np.nonzero(_mask(rgb, CYAN)[:, width // 2])[0]
    assert rows.min() == pytest.approx(top_row, abs=1.5)


def test_occlusion_by_building_and_tree():
    """A tall building hides a pole behind it; a tree canopy hides the top of another pole
    while its lower part stays visible under the canopy."""
    scene = syn.blank_scene(60, ground_rgb=(0.4, 0.4, 0.4))
    _pole(scene, 0.0, -30.0, 10.0, MAGENTA)
    _pole(scene, 30.0, 0.0, 16.0, CYAN)
    visible, _ = syn.render_panorama(scene, (0.0, 0.0), 720, 131, "cvusa", syn.NEUTRAL, 2.0, res=0.2,
                                     view_radius=45.0)
    full_cyan = _mask(visible, CYAN)
    assert _mask(visible, MAGENTA).sum() > 50 and full_cyan.sum() > 50

    syn.add_building(scene, 0.0, -12.0, 8.0, 4.0, 20.0, facade_rgb=(0.5, 0.5, 0.5), roof_rgb=(0.5, 0.5, 0.5))
    syn.add_tree(scene, 14.0, 0.0, 3.0, 12.0, base=6.0, rgb=(0.1, 0.5, 0.1))
    hidden, labels = syn.render_panorama(scene, (0.0, 0.0), 720, 131, "cvusa", syn.NEUTRAL, 2.0, res=0.2,
                                         view_radius=45.0)
    assert _mask(hidden, MAGENTA).sum() == 0
    assert (labels[40:60, 360] == syn.LABEL_BUILDING).all()
    cyan = _mask(hidden, CYAN)
    rows = np.nonzero(full_cyan[:, 536])[0]    # beside the trunk (columns 539-541)
    top_visible = np.nonzero(cyan[:, 536])[0]
    assert 0 < cyan.sum() < full_cyan.sum()
    assert top_visible.min() > rows.min() + 5 and top_visible.max() == rows.max()  # top hidden, foot seen
    # canopy between elevations atan(4/14) (its base) and the strip's upper edge at heading 90 deg
    canopy_rows = slice(5, int(131 / 2 - math.degrees(math.atan2(4.0, 14.0)) / 0.5) - 2)
    assert (labels[canopy_rows, 540] == syn.LABEL_VEGETATION).all()


def test_cast_shadows_brute_force_and_crop_invariance():
    """Line-sweep shadows agree with marching towards the sun, and a window that holds
    every caster within reach gives the same mask (the VIGOR tile mosaic relies on it)."""
    from data.synth.render import cast_shadows

    rng = np.random.default_rng(0)
    height = np.zeros((160, 160), np.float32)
    for _ in range(25):
        r, c = rng.integers(0, 150, 2)
        height[r:r + rng.integers(3, 10), c:c + rng.integers(3, 10)] = rng.uniform(3, 20)
    res, el = 0.5, math.radians(50)
    reach = int(20 / math.tan(el) / res) + 2
    for az in np.radians([20.0, 110.0, 200.0, 290.0]):
        full = cast_shadows(height, res, az, el)
        to_c, to_r = math.sin(az), -math.cos(az)
        wrong = 0
        for r, c in rng.integers(reach, 160 - reach, (100, 2)):
            best = max((height[int(round(r + s * to_r)), int(round(c + s * to_c))] - s * res * math.tan(el)
                        for s in np.arange(0.5, reach * 1.5, 0.25)
                        if 0 <= round(r + s * to_r) < 160 and 0 <= round(c + s * to_c) < 160), default=0.0)
            wrong += (best > height[r, c] + 0.3) != (full[r, c] >= 1.0)
        assert wrong <= 8  # discretisation of the sun line only
        r0, c0 = 23, 41
        crop = cast_shadows(height[r0:, c0:], res, az, el, r0, c0)
        ok = np.ones(crop.shape, bool)
        ok[:reach] = to_r >= 0
        ok[-reach:] &= to_r <= 0
        ok[:, :reach] &= to_c >= 0
        ok[:, -reach:] &= to_c <= 0
        assert np.array_equal(full[r0:, c0:][ok], crop[ok])


# ------------------------------------------------------------------ aerial geometry

def test_aerial_north_up_and_centre():
    """Row 0 = north, column 0 = west; world (0, 0) at pixel index S/2 (polar centre)."""
    side, res = 100, 0.5
    scene = syn.blank_scene(60, ground_rgb=(0.4, 0.4, 0.4))
    _pole(scene, 0.0, -20.0, 5.0, MAGENTA)  # north
    _pole(scene, 15.0, 0.0, 5.0, CYAN)      # east
    aerial = syn.render_aerial(scene, (0.0, 0.0), side, res, syn.NEUTRAL)
    rows, cols = np.nonzero(_mask(aerial, MAGENTA))
    assert rows.mean() == pytest.approx(side / 2 - 20 / res, abs=0.6)
    assert cols.mean() == pytest.approx(side / 2, abs=0.6)
    rows, cols = np.nonzero(_mask(aerial, CYAN))
    assert cols.mean() == pytest.approx(side / 2 + 15 / res, abs=0.6)
    assert rows.mean() == pytest.approx(side / 2, abs=0.6)
    assert _mask(aerial, MAGENTA).sum() == pytest.approx((2 / res) ** 2, abs=2 * 2 / res + 1)


@pytest.mark.parametrize("size", ["demo", "full"])
def test_vigor_tile_centre_is_pixel_index_half_side(size):
    """The GPS of a tile (its centre) is pixel index (S/2, S/2) of the rendered tile: the official
    convention that the loader's panorama_pixel reads (a marker there is centred on S/2)."""
    from data.vigor import panorama_pixel

    side = syn.SIZES[size].vigor_tile
    res = syn.VIGOR_TILE_M / side
    for row, col in ((0, 0), (2, 3)):
        x, y = syn.tile_centre(row, col)
        col0, row0 = syn.tile_grid_origin(row, col, side)
        assert (col0 + side / 2) * res == pytest.approx(x) and (row0 + side / 2) * res == pytest.approx(y)
    x, y = syn.tile_centre(0, 0)
    scene = syn.blank_scene(100, ground_rgb=(0.4, 0.4, 0.4))
    _pole(scene, x, y, 0.5, MAGENTA, side=11 * res)  # 11 pixels wide: symmetric about its centre
    aerial = syn.render_aerial(scene, (x, y), side, res, syn.NEUTRAL, grid_origin=syn.tile_grid_origin(0, 0, side))
    rows, cols = np.nonzero(_mask(aerial, MAGENTA))
    assert (rows.mean(), cols.mean()) == pytest.approx(panorama_pixel((0.0, 0.0), side), abs=0.05)
    assert (rows.mean(), cols.mean()) == pytest.approx((side / 2, side / 2), abs=0.05)


# ------------------------------------------------------------------ CVUSA layout

ID_RE = r"\d{7}"
CSV_RE = re.compile(rf"^bingmap/19/({ID_RE})\.jpg,streetview/panos/\1\.jpg,streetview/annotations/\1\.png$")


@pytest.fixture(scope="module")
def cvusa_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cvusa"))
    syn.generate_cvusa(out, 3, 2, seed=7, size="demo", max_offset=0.5, workers=1)
    return out


def _read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_cvusa_layout_and_formats(cvusa_dir):
    ids = {}
    for split in ("train-19zl.csv", "val-19zl.csv"):
        data = _read_bytes(os.path.join(cvusa_dir, "splits", split))
        assert b"\r" not in data and data.endswith(b"\n")
        lines = data.decode().splitlines()
        ids[split] = []
        for line in lines:
            match = CSV_RE.match(line)
            assert match, line
            ids[split].append(match.group(1))
            for rel in line.split(","):
                assert os.path.isfile(os.path.join(cvusa_dir, rel))
    assert len(ids["train-19zl.csv"]) == 3 and len(ids["val-19zl.csv"]) == 2
    everything = sorted(ids["train-19zl.csv"] + ids["val-19zl.csv"])
    assert everything == [f"{i:07d}" for i in range(1, 6)]
    ident = everything[0]
    aerial = cv2.imread(os.path.join(cvusa_dir, "bingmap", "19", f"{ident}.jpg"), cv2.IMREAD_UNCHANGED)
    pano = cv2.imread(os.path.join(cvusa_dir, "streetview", "panos", f"{ident}.jpg"), cv2.IMREAD_UNCHANGED)
    labels = cv2.imread(os.path.join(cvusa_dir, "streetview", "annotations", f"{ident}.png"), cv2.IMREAD_UNCHANGED)
    assert aerial.shape == (256, 256, 3) and pano.shape == (93, 512, 3)
    assert labels.shape == (93, 512) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert (labels[0] == syn.LABEL_SKY).mean() > 0.3 and (labels[-1] == syn.LABEL_GROUND).all()


def test_cvusa_offsets_file_and_meaning(cvusa_dir):
    with open(os.path.join(cvusa_dir, "offsets.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == [f"{i:07d}" for i in range(1, 6)]
    offsets = np.array([[float(r["dx_px"]), float(r["dy_px"])] for r in rows])
    assert (np.hypot(*offsets.T) <= 0.5 * 128 + 1e-3).all() and np.hypot(*offsets.T).max() > 1.0
    # the same item without offset: identical panorama, aerial shifted by (dx, dy)
    index = int(np.argmax(np.hypot(*offsets.T))) + 1
    shifted, pano_a, _, (dx, dy), _ = syn.cvusa_pair(index, 7, "demo", max_offset=0.5)
    centred, pano_b, _, (dx0, dy0), _ = syn.cvusa_pair(index, 7, "demo", max_offset=0.0)
    assert (dx, dy) == pytest.approx(tuple(offsets[index - 1]), abs=1e-3) and (dx0, dy0) == (0.0, 0.0)
    assert np.array_equal(pano_a, pano_b)
    a = cv2.cvtColor(shifted, cv2.COLOR_RGB2GRAY).astype(np.float64)
    b = cv2.cvtColor(centred, cv2.COLOR_RGB2GRAY).astype(np.float64)
    (sx, sy), _ = cv2.phaseCorrelate(b, a)  # shift of ``a`` relative to ``b``
    assert (sx, sy) == pytest.approx((dx, dy), abs=1.0)


def test_cvusa_deterministic_and_worker_independent(cvusa_dir, tmp_path):
    again = str(tmp_path / "again")
    syn.generate_cvusa(again, 3, 2, seed=7, size="demo", max_offset=0.5, workers=2)
    files = sorted(os.path.relpath(os.path.join(d, f), cvusa_dir) for d, _, fs in os.walk(cvusa_dir) for f in fs)
    assert len(files) == 5 * 3 + 4  # + splits (2), offsets.csv, gps.csv
    for rel in files:
        assert _read_bytes(os.path.join(cvusa_dir, rel)) == _read_bytes(os.path.join(again, rel)), rel
    other = str(tmp_path / "other")
    syn.generate_cvusa(other, 1, 0, seed=8, size="demo", workers=1)
    rel = os.path.join("bingmap", "19", "0000001.jpg")
    assert _read_bytes(os.path.join(cvusa_dir, rel)) != _read_bytes(os.path.join(other, rel))


# ------------------------------------------------------------------ VIGOR layout

SAT_RE = re.compile(r"^satellite_(-?\d+\.\d+)_(-?\d+\.\d+)\.png$")
PANO_RE = re.compile(r"^([A-Za-z0-9_-]{22}),(-?\d+\.\d+),(-?\d+\.\d+),\.jpg$")
CITIES = ["NewYork", "Chicago"]


@pytest.fixture(scope="module")
def vigor_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vigor"))
    syn.generate_vigor(out, CITIES, 4, 2, seed=3, size="demo", workers=1)
    return out


def _lines(path):
    data = _read_bytes(path)
    assert b"\r" not in data and data.endswith(b"\n")
    return data.decode().splitlines()


def test_vigor_layout_and_names(vigor_dir):
    for city in CITIES:
        sats = _lines(os.path.join(vigor_dir, "splits", city, "satellite_list.txt"))
        assert len(sats) == 16 and len(set(sats)) == 16
        for name in sats:
            assert SAT_RE.match(name), name
            assert os.path.isfile(os.path.join(vigor_dir, city, "satellite", name))
        tile = cv2.imread(os.path.join(vigor_dir, city, "satellite", sats[0]), cv2.IMREAD_UNCHANGED)
        assert tile.shape == (256, 256, 3)
        train = _lines(os.path.join(vigor_dir, "splits", city, "same_area_balanced_train.txt"))
        test = _lines(os.path.join(vigor_dir, "splits", city, "same_area_balanced_test.txt"))
        every = _lines(os.path.join(vigor_dir, "splits", city, "pano_label_balanced.txt"))
        assert len(train) == 4 and len(test) == 2 and every == train + test
        names = [line.split(" ")[0] for line in every]
        assert len(set(names)) == 6 and any(n.startswith("-") for n in names)
        for line in every:
            fields = line.split(" ")
            assert len(fields) == 13
            assert PANO_RE.match(fields[0]), fields[0]
            assert all(f in sats for f in fields[1::3])
            [float(f) for i, f in enumerate(fields[1:]) if i % 3]
            pano = cv2.imread(os.path.join(vigor_dir, city, "panorama", fields[0]), cv2.IMREAD_UNCHANGED)
            assert pano.shape == (256, 512, 3)
    # different cities are different worlds
    a = _lines(os.path.join(vigor_dir, "splits", CITIES[0], "satellite_list.txt"))[5]
    b = _lines(os.path.join(vigor_dir, "splits", CITIES[1], "satellite_list.txt"))[5]
    assert _read_bytes(os.path.join(vigor_dir, CITIES[0], "satellite", a)) != \
        _read_bytes(os.path.join(vigor_dir, CITIES[1], "satellite", b))


def test_vigor_labels_match_gps(vigor_dir):
    """Deltas = satellite centre minus panorama from the GPS in the names (d0 > 0: south,
    d1 > 0: west) within a pixel; the positive is the nearest centre; the four listed tiles
    are exactly the tiles containing the panorama."""
    for city in CITIES:
        sats = _lines(os.path.join(vigor_dir, "splits", city, "satellite_list.txt"))
        centres = np.array([[float(v) for v in SAT_RE.match(s).groups()] for s in sats])
        for line in _lines(os.path.join(vigor_dir, "splits", city, "pano_label_balanced.txt")):
            fields = line.split(" ")
            _, lat, lon = PANO_RE.match(fields[0]).groups()
            lat, lon = float(lat), float(lon)
            # metres from the panorama to every tile centre: (north, east)
            north, east = gps_to_north_east(lat, lon, centres[:, 0], centres[:, 1])
            d0_all = north / 0.114          # centre north of the panorama -> panorama south -> d0 > 0
            d1_all = east / 0.114           # centre east of the panorama -> panorama west -> d1 > 0
            containing = set(np.nonzero((np.abs(d0_all) <= 320) & (np.abs(d1_all) <= 320))[0])
            listed = [sats.index(f) for f in fields[1::3]]
            assert set(listed) == containing and len(listed) == 4
            assert listed[0] == int(np.argmin(np.hypot(d0_all, d1_all)))
            for k, j in enumerate(listed):
                d0, d1 = float(fields[2 + 3 * k]), float(fields[3 + 3 * k])
                assert d0 == pytest.approx(d0_all[j], abs=1.0) and d1 == pytest.approx(d1_all[j], abs=1.0)
                assert abs(d0) <= 320 and abs(d1) <= 320


def test_vigor_tiles_overlap_consistently(vigor_dir):
    """Half-overlapping tiles are crops of one mosaic: shared halves are identical."""
    city = CITIES[0]
    sats = _lines(os.path.join(vigor_dir, "splits", city, "satellite_list.txt"))
    tiles = [cv2.imread(os.path.join(vigor_dir, city, "satellite", s)) for s in sats]
    grid, half = 4, 128
    for row in range(grid):
        for col in range(grid - 1):
            left, right = tiles[row * grid + col], tiles[row * grid + col + 1]
            assert np.array_equal(left[:, half:], right[:, :half])
    for row in range(grid - 1):
        top, bottom = tiles[row * grid], tiles[(row + 1) * grid]
        assert np.array_equal(top[half:], bottom[:half])


def test_vigor_deterministic(vigor_dir, tmp_path):
    again = str(tmp_path / "again")
    syn.generate_vigor(again, CITIES[:1], 4, 2, seed=3, size="demo", workers=2)
    city = CITIES[0]
    for sub in ("satellite", "panorama"):
        names = sorted(os.listdir(os.path.join(vigor_dir, city, sub)))
        assert names == sorted(os.listdir(os.path.join(again, city, sub)))
        for name in names:
            ours, theirs = os.path.join(vigor_dir, city, sub, name), os.path.join(again, city, sub, name)
            assert _read_bytes(ours) == _read_bytes(theirs)
    for name in ("satellite_list.txt", "pano_label_balanced.txt"):
        assert _read_bytes(os.path.join(vigor_dir, "splits", city, name)) == \
            _read_bytes(os.path.join(again, "splits", city, name))
    plan = syn.plan_city(city, 4, 2, seed=4)
    assert [p[0] for p in plan.panos] != [line.split(" ")[0] for line in
                                         _lines(os.path.join(vigor_dir, "splits", city, "pano_label_balanced.txt"))]


# ------------------------------------------------------------------ CLI

def test_cli_writes_and_rejects_bad_flags(tmp_path):
    out = str(tmp_path / "cli")
    syn.main(["--layout", "cvusa", "--out", out, "--train", "1", "--test", "1", "--seed", "2",
              "--workers", "1", "--quiet"])
    assert len(_lines(os.path.join(out, "splits", "train-19zl.csv"))) == 1
    assert len(_lines(os.path.join(out, "splits", "val-19zl.csv"))) == 1
    bad = [
        ["--layout", "vigor", "--out", out, "--train", "1", "--test", "1", "--max_offset", "0.5"],
        ["--layout", "cvusa", "--out", out, "--train", "1", "--test", "1", "--max_offset", "1.5"],
        ["--layout", "cvusa", "--out", out, "--train", "0", "--test", "0"],
        ["--layout", "cvusa", "--out", out, "--train", "-1", "--test", "1"],
        ["--layout", "vigor", "--out", out, "--train", "1", "--test", "1", "--cities", "New York"],
        ["--layout", "cvusa", "--out", out, "--train", "1", "--test", "1", "--workers", "-1"],
    ]
    for argv in bad:
        with pytest.raises(UserError):
            syn.main(argv + ["--quiet"])


def test_cli_workers_0_is_the_main_process(tmp_path):
    """--workers 0 means the main process, as everywhere else; the bytes are those of any other count."""
    outputs = []
    for workers in ("0", "1"):
        out = tmp_path / workers
        syn.main(["--layout", "cvusa", "--out", str(out), "--train", "1", "--test", "1", "--seed", "2",
                  "--workers", workers, "--quiet"])
        outputs.append({str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert outputs[0] == outputs[1] and len(outputs[0]) >= 8
    with pytest.raises(UserError, match=r"^--workers must be 0 \(the main process\) or more, got -2$"):
        syn.main(["--layout", "cvusa", "--out", str(tmp_path / "x"), "--train", "1", "--test", "1", "--workers", "-2"])


# ------------------------------------------------------------------ full size

def test_full_size_cvusa_pair():
    """--size full gives the real CVUSA pixel sizes: 750 x 750 aerial, 1232 x 224 panorama."""
    aerial, pano, labels, offset, _ = syn.cvusa_pair(1, 0, "full")
    assert aerial.shape == (750, 750, 3) and pano.shape == (224, 1232, 3) and labels.shape == (224, 1232)
    assert offset == (0.0, 0.0)
    assert {syn.LABEL_SKY, syn.LABEL_GROUND} <= set(np.unique(labels).tolist())


@pytest.mark.slow
def test_full_size_vigor_images():
    """--size full gives the real VIGOR pixel sizes: 640 x 640 tiles, 2048 x 1024 panoramas."""
    plan = syn.plan_city("Seattle", 1, 0, seed=0)
    assert syn.vigor_tile(plan, 0, "full").shape == (640, 640, 3)
    rgb, labels, _ = syn.vigor_panorama(plan, 0, "full")
    assert rgb.shape == (1024, 2048, 3)
    assert np.isin(labels[0], [syn.LABEL_SKY, syn.LABEL_VEGETATION]).all()  # zenith: sky (or a canopy)
    assert (labels[-1] == syn.LABEL_GROUND).all()                           # nadir: the road


def test_generated_folders_load_with_the_project_loaders(tmp_path):
    """The synthetic layouts are read by the real CVUSA and VIGOR loaders, labels included."""
    from data.cvusa import CVUSA
    from data.vigor import VigorPairs
    from data.vigor_layout import VigorIndex

    cvusa = str(tmp_path / "cvusa")
    syn.generate_cvusa(cvusa, train=3, test=2, seed=0, size="demo")
    for split, count in (("splits/train-19zl.csv", 3), ("splits/val-19zl.csv", 2)):
        dataset = CVUSA(cvusa, split, sate_size=(64, 64), pano_size=(32, 176))
        sample = dataset[count - 1]
        assert len(dataset) == count and sample["street"].shape == (3, 32, 176)
        assert sample["satellite"].shape == (3, 64, 64)
    vigor = str(tmp_path / "vigor")
    syn.generate_vigor(vigor, cities="Chicago,Seattle", train=3, test=2, seed=0, size="demo")
    index = VigorIndex(vigor, ["Chicago", "Seattle"], "train", "same")
    assert len(index) == 6 and index.semi.shape == (6, 3)
    # the positive is the nearest satellite centre to each panorama's GPS
    nearest = [int(np.argmin(((index.satellite_gps - gps) ** 2).sum(1))) for gps in index.street_gps]
    assert list(index.positive) == nearest
    sample = VigorPairs(index, sate_size=(64, 64), pano_size=(32, 64))[5]
    assert sample["street"].shape == (3, 32, 64) and sample["positive"] == index.positive[5]
    cross = VigorIndex(vigor, ["Seattle"], "test", "cross")
    assert len(cross) == 5


def _pairwise_metres(points):
    """N x N distances (equirectangular) of (lat, lon) degrees, inf on the diagonal."""
    lat, lon = np.radians(np.asarray(points, dtype=np.float64)).T
    dist = EARTH_RADIUS_M * np.hypot(lat[:, None] - lat[None], (lon[:, None] - lon[None]) * np.cos(lat[:, None]))
    np.fill_diagonal(dist, np.inf)
    return dist


def test_cvusa_gps_file_lists_every_location_apart(cvusa_dir):
    from data.cvusa_layout import read_gps_csv

    with open(os.path.join(cvusa_dir, "gps.csv")) as handle:
        assert handle.readline() == "id,lat,lon\n"
    positions = read_gps_csv(os.path.join(cvusa_dir, "gps.csv"))
    assert sorted(positions) == [str(i) for i in range(1, 6)]
    assert _pairwise_metres(list(positions.values())).min() > syn.CVUSA_AERIAL_M


def test_cvusa_positions_group_districts_and_never_overlap():
    kinds = ["rural", "suburban", "urban", "park", "industrial"]
    districts = {i: kinds[(i * 7) % 5] for i in range(1, 201)}
    positions = syn.cvusa_positions(districts, seed=3)
    assert positions == syn.cvusa_positions(districts, seed=3) != syn.cvusa_positions(districts, seed=4)
    dist = _pairwise_metres([positions[i] for i in range(1, 201)])
    assert dist.min() > syn.CVUSA_AERIAL_M  # no two centred aerials overlap
    nearest = dist.argmin(axis=1)
    assert all(districts[i + 1] == districts[int(j) + 1] for i, j in enumerate(nearest))  # nearby places look alike
