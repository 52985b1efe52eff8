"""Write synthetic datasets in exactly the on-disk layouts of CVUSA and VIGOR.

CVUSA layout (``generate_cvusa``)::

    splits/train-19zl.csv, splits/val-19zl.csv   no header, LF endings, three relative paths:
        bingmap/19/<7-digit id>.jpg,streetview/panos/<id>.jpg,streetview/annotations/<id>.png
    bingmap/19/<id>.jpg              aerial, north up, S x S (750 full / 256 demo), 0.22 m/px at 750
    streetview/panos/<id>.jpg        panorama strip W x H (1232 x 224 full / 512 x 93 demo)
    streetview/annotations/<id>.png  8-bit labels, same size: 0 sky, 1 ground, 2 building, 3 vegetation
    offsets.csv                      header ``id,dx_px,dy_px``: the camera sits at aerial pixel
                                     (row S/2 + dy_px, column S/2 + dx_px); dx east, dy south,
                                     in pixels of the written aerial; all 0 without --max_offset
    gps.csv                          header ``id,lat,lon``: where each location (train and test)
                                     lies on one map (see :func:`cvusa_positions`), for --sampling gps

CVUSA pixel convention: pixel (i, j) of the aerial has its centre at index coordinates
(i, j), and the camera of a centred pair is at index coordinates (S/2, S/2): exactly the
centre of the SAFA polar transform (docs/datasets.md), so polar(aerial) and the panorama share
their geometry.

VIGOR layout (``generate_vigor``)::

    <City>/satellite/satellite_<lat>_<lon>.png   tile centre GPS (repr of floats), 640 / 256 px,
                                                 72.96 m wide (0.114 m/px at 640), half-overlap grid
    <City>/panorama/<22-char id>,<lat>,<lon>,.jpg  equirectangular 2048 x 1024 / 512 x 256
    splits/<City>/satellite_list.txt               tiles row-major (north to south, west to east)
    splits/<City>/same_area_balanced_train.txt     13 fields per line (train panoramas)
    splits/<City>/same_area_balanced_test.txt      (test panoramas)
    splits/<City>/pano_label_balanced.txt          all panoramas of the city (train then test)

Label line: ``pano sat_pos d0 d1 sat_semi1 d0 d1 sat_semi2 d0 d1 sat_semi3 d0 d1`` with
(d0, d1) = satellite centre minus panorama in pixels of the 640 px tile (0.114 m, also
for demo-size tiles): d0 = latitude difference (> 0: panorama south of the centre), d1 =
longitude difference (> 0: panorama west), i.e. the panorama sits at row 320 + d0,
column 320 - d1 of a 640 px tile, in pixel index coordinates (pixel [r, c] sits at (r, c);
the tile centre GPS is index (320, 320), the centre of the polar transform, as in the
official VIGOR code; see :func:`tile_grid_origin`). The positive is the tile with the nearest centre; the
semi-positives are the other three tiles containing the point, nearest first.
Overlapping tiles are crops of one consistent mosaic: shared pixels are identical.

GPS <-> metres: local equirectangular projection around a per-city origin (the world's
north-west corner), on the sphere of the VIGOR evaluation (:mod:`geometry.earth`).

Every item draws from its own ``numpy`` generator seeded by (seed, layout, city, item),
so the bytes written do not depend on the number of worker processes.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import zlib
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from common.fileio import write_bytes_atomic
from data.io import write_image_atomic
from data.synth.render import aerial_look, render_aerial, render_panorama, street_look
from data.synth.scene import Scene, city_preset, make_city_scene, make_location_scene
from geometry.earth import gps_to_north_east, north_east_to_gps
from geometry.heading import columns_heading, crop_fov, roll_to_heading
from common.errors import UserError
from data.cvusa_layout import AERIAL_SIDE_M
from data.vigor_layout import NOMINAL_METRES_PER_PIXEL, SAME_AREA_CITIES, TILE_SIDE_M

VIGOR_M_PER_PX = NOMINAL_METRES_PER_PIXEL  # at the 640 px tile
VIGOR_TILE_M = TILE_SIDE_M
VIGOR_STRIDE_M = VIGOR_TILE_M / 2
CVUSA_AERIAL_M = AERIAL_SIDE_M
VIEW_RADIUS_M = 80.0
CITY_ORIGINS = {"NewYork": (40.7648, -73.9935), "Seattle": (47.6205, -122.3493),
                "SanFrancisco": (37.7935, -122.4260), "Chicago": (41.8960, -87.6500)}
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
_CVUSA_TAG, _VIGOR_TAG, _HEADING_TAG = 0xC05A, 0x51608, 0x4EAD


@dataclass(frozen=True)
class SizeSpec:
    """Pixel sizes of one ``--size`` preset (panorama sizes are (height, width))."""

    cvusa_aerial: int
    cvusa_pano: Tuple[int, int]
    vigor_tile: int
    vigor_pano: Tuple[int, int]
    pano_res: float  # heightfield cell size (m) used for ray casting


SIZES: Dict[str, SizeSpec] = {
    "full": SizeSpec(750, (224, 1232), 640, (1024, 2048), 0.2),
    "demo": SizeSpec(256, (93, 512), 256, (256, 512), 0.6),
}


def size_spec(size) -> SizeSpec:
    if isinstance(size, SizeSpec):
        return size
    if size not in SIZES:
        raise UserError(f"unknown --size {size!r}; choose one of {', '.join(SIZES)}")
    return SIZES[size]


# ---------------------------------------------------------------------------------------
# Geography
# ---------------------------------------------------------------------------------------

def metres_to_gps(x: float, y: float, origin: Tuple[float, float]) -> Tuple[float, float]:
    """World (x east, y south) metres -> (lat, lon) degrees around ``origin`` = world (0, 0)."""
    lat, lon = north_east_to_gps(*origin, -y, x)
    return float(lat), float(lon)


def gps_to_metres(lat: float, lon: float, origin: Tuple[float, float]) -> Tuple[float, float]:
    """Inverse of :func:`metres_to_gps`."""
    north, east = gps_to_north_east(*origin, lat, lon)
    return float(east), float(-north)


def city_origin(city: str) -> Tuple[float, float]:
    """Fixed origin for the real VIGOR cities, a stable pseudo-random US location otherwise."""
    if city in CITY_ORIGINS:
        return CITY_ORIGINS[city]
    h = zlib.crc32(city.encode())
    return 30.0 + (h % 10007) / 10007 * 15.0, -120.0 + (h // 10007 % 10009) / 10009 * 45.0


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------

def _item_rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def _write_labels(path: str, labels: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", labels.astype(np.uint8))
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    write_bytes_atomic(path, buf.tobytes())


def _write_lines(path: str, lines: Sequence[str]) -> None:
    write_bytes_atomic(path, "".join(line + "\n" for line in lines).encode("ascii"))


def _run(func, tasks: List, workers: int, progress: bool, desc: str, initializer=None, initargs=()) -> List:
    workers = max(1, min(int(workers), len(tasks) or 1))
    bar = tqdm(total=len(tasks), desc=desc, unit="item", disable=not progress, dynamic_ncols=True)
    results = []
    try:
        if workers == 1:
            if initializer is not None:
                initializer(*initargs)
            for task in tasks:
                results.append(func(task))
                bar.update(1)
        else:
            with multiprocessing.Pool(workers, initializer=initializer, initargs=initargs) as pool:
                for result in pool.imap(func, tasks, chunksize=max(1, min(8, len(tasks) // (4 * workers)))):
                    results.append(result)
                    bar.update(1)
                pool.close()
                pool.join()
    finally:
        bar.close()
    return results


def _check_counts(train: int, test: int) -> None:
    for name, value in (("--train", train), ("--test", test)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise UserError(f"{name} must be a non-negative integer, got {value!r}")
    if train + test == 0:
        raise UserError("--train and --test are both 0: nothing to generate; ask for at least one item")


def _prepare_out(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} exists and is not a directory; choose another path")
    os.makedirs(out, exist_ok=True)


# ---------------------------------------------------------------------------------------
# CVUSA
# ---------------------------------------------------------------------------------------

def cvusa_id(index: int) -> str:
    return f"{index:07d}"


def cvusa_pair(index: int, seed: int, size="demo", max_offset: float = 0.0):
    """Render CVUSA item ``index`` (1-based) in memory.

    Returns ``(aerial S x S x 3, panorama H x W x 3, labels H x W, (dx_px, dy_px), looks)``
    where the camera sits at aerial pixel (row S/2 + dy_px, col S/2 + dx_px)."""
    return _render_cvusa(index, seed, size, max_offset)[:5]


#: Map of the CVUSA-layout world (:func:`cvusa_positions`): its north-west corner, the spacing
#: of the location cells (an aerial of 165 m plus up to 40 m of jitter each side fits one), and
#: the gap between two districts' regions.
CVUSA_ORIGIN = (39.0, -98.0)
CVUSA_CELL_M = 250.0
CVUSA_JITTER_M = 40.0
CVUSA_DISTRICT_GAP_M = 2000.0


def cvusa_positions(districts: Dict[int, str], seed: int) -> Dict[int, Tuple[float, float]]:
    """``{index: (lat, lon)}`` of the CVUSA-layout locations on one consistent map.

    Nearby places look alike, as in the real world: each district kind (rural, suburban, ...)
    has its own square region, west to east in name order, ``CVUSA_DISTRICT_GAP_M`` apart;
    inside it the locations of that kind occupy randomly chosen cells of a
    ``CVUSA_CELL_M`` grid (about half the cells), jittered by up to ``CVUSA_JITTER_M``, so no
    two centred aerials overlap. A function of ``seed`` and the districts only (not of the images).
    """
    rng = _item_rng(seed, _CVUSA_TAG, 0xFFFE)
    positions: Dict[int, Tuple[float, float]] = {}
    west = 0.0
    for district in sorted(set(districts.values())):
        members = sorted(i for i, d in districts.items() if d == district)
        side = math.ceil(math.sqrt(2 * len(members)))
        cells = rng.permutation(side * side)[:len(members)]
        jitter = rng.uniform(-CVUSA_JITTER_M, CVUSA_JITTER_M, size=(len(members), 2))
        for index, cell, (jx, jy) in zip(members, cells.tolist(), jitter):
            row, col = divmod(cell, side)
            x = west + (col + 0.5) * CVUSA_CELL_M + jx
            y = (row + 0.5) * CVUSA_CELL_M + jy
            positions[index] = metres_to_gps(x, y, CVUSA_ORIGIN)
        west += side * CVUSA_CELL_M + CVUSA_DISTRICT_GAP_M
    return positions


def _render_cvusa(index: int, seed: int, size, max_offset: float):
    """:func:`cvusa_pair` plus the location's district kind."""
    spec = size_spec(size)
    scene_ss, look_ss, offset_ss = np.random.SeedSequence([seed & 0xFFFFFFFF, _CVUSA_TAG, index]).spawn(3)
    scene = make_location_scene(np.random.default_rng(scene_ss), CVUSA_AERIAL_M)
    look_rng = np.random.default_rng(look_ss)
    a_look, s_look = aerial_look(look_rng), street_look(look_rng)
    cam_height = float(look_rng.uniform(1.9, 2.5))
    off_rng = np.random.default_rng(offset_ss)
    radius = off_rng.random() * max_offset * CVUSA_AERIAL_M / 2
    theta = off_rng.uniform(0, 2 * np.pi)
    side = spec.cvusa_aerial
    res = CVUSA_AERIAL_M / side
    # the camera stays at the scene origin (on its road); the aerial is centred at -offset
    dx_m, dy_m = radius * math.cos(theta), radius * math.sin(theta)
    aerial = render_aerial(scene, (-dx_m, -dy_m), side, res, a_look)
    height, width = spec.cvusa_pano
    pano, labels = render_panorama(scene, (0.0, 0.0), width, height, "cvusa", s_look, cam_height,
                                   res=spec.pano_res, view_radius=VIEW_RADIUS_M)
    return aerial, pano, labels, (dx_m / res, dy_m / res), (a_look, s_look), scene.style["district"]


def _cvusa_task(task) -> Tuple[int, float, float, str, float]:
    out, index, seed, size, max_offset, heading, fov = task
    aerial, pano, labels, (dx, dy), (a_look, s_look), district = _render_cvusa(index, seed, size, max_offset)
    columns = int(_item_rng(seed, _CVUSA_TAG, index, _HEADING_TAG).integers(pano.shape[1])) if heading == "random" else 0
    turn = columns_heading(columns, pano.shape[1])
    pano, labels = (crop_fov(roll_to_heading(image, columns), fov) for image in (pano, labels))
    ident = cvusa_id(index)
    write_image_atomic(os.path.join(out, "bingmap", "19", f"{ident}.jpg"), aerial,
                       [cv2.IMWRITE_JPEG_QUALITY, a_look.jpeg])
    write_image_atomic(os.path.join(out, "streetview", "panos", f"{ident}.jpg"), pano,
                       [cv2.IMWRITE_JPEG_QUALITY, s_look.jpeg])
    _write_labels(os.path.join(out, "streetview", "annotations", f"{ident}.png"), labels)
    return index, dx, dy, district, turn


def generate_cvusa(out: str, train: int, test: int, seed: int = 0, size="demo", max_offset: float = 0.0,
                   workers: int = 1, progress: bool = False, heading: str = "none", fov: float = 360.0) -> Dict:
    """Write a CVUSA-layout synthetic dataset of ``train`` + ``test`` pairs into ``out``.

    Ids 1..train+test; a seeded permutation picks the ``test`` ids of ``val-19zl.csv``.
    ``max_offset`` F in [0, 1]: the panorama is taken at a random vector of length
    uniform in [0, F] x (aerial half side) from the aerial centre (recorded in offsets.csv).
    ``gps.csv`` places every location on one map (:func:`cvusa_positions`).
    ``heading="random"``: each panorama (and its labels) is turned to a random heading, a left
    roll by a whole number of columns; ``fov`` < 360 keeps the centred window of that many
    degrees (:mod:`geometry.heading`); either writes ``headings.csv`` (``id,heading_deg,fov_deg``).
    Returns a summary dict (counts, paths, sizes)."""
    _check_counts(train, test)
    spec = size_spec(size)
    if not (0.0 <= float(max_offset) <= 1.0):
        raise UserError(f"--max_offset must lie in [0, 1] (fraction of the aerial half side), got {max_offset}")
    if heading not in ("none", "random"):
        raise UserError(f"--heading must be none or random, got {heading!r}")
    if not 0.0 < float(fov) <= 360.0:
        raise UserError(f"--fov must lie in (0, 360] degrees, got {fov}")
    _prepare_out(out)
    for sub in ("splits", os.path.join("bingmap", "19"), os.path.join("streetview", "panos"),
                os.path.join("streetview", "annotations")):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    total = train + test
    perm = _item_rng(seed, _CVUSA_TAG, 0xFFFF).permutation(np.arange(1, total + 1))
    test_ids = set(int(i) for i in perm[:test])
    tasks = [(out, index, int(seed), size, float(max_offset), heading, float(fov)) for index in range(1, total + 1)]
    results = _run(_cvusa_task, tasks, workers, progress, "cvusa")
    offsets = {index: (dx, dy) for index, dx, dy, _, _ in results}
    positions = cvusa_positions({index: district for index, _, _, district, _ in results}, seed)
    if heading == "random" or fov < 360.0:
        _write_lines(os.path.join(out, "headings.csv"),
                     ["id,heading_deg,fov_deg"] + [f"{cvusa_id(index)},{turn!r},{float(fov)!r}"
                                                   for index, _, _, _, turn in sorted(results)])

    def line(index: int) -> str:
        ident = cvusa_id(index)
        return f"bingmap/19/{ident}.jpg,streetview/panos/{ident}.jpg,streetview/annotations/{ident}.png"

    _write_lines(os.path.join(out, "splits", "train-19zl.csv"),
                 [line(i) for i in range(1, total + 1) if i not in test_ids])
    _write_lines(os.path.join(out, "splits", "val-19zl.csv"), [line(i) for i in sorted(test_ids)])
    _write_lines(os.path.join(out, "offsets.csv"),
                 ["id,dx_px,dy_px"] + [f"{cvusa_id(i)},{offsets[i][0]:.3f},{offsets[i][1]:.3f}"
                                       for i in range(1, total + 1)])
    _write_lines(os.path.join(out, "gps.csv"),
                 ["id,lat,lon"] + [f"{cvusa_id(i)},{positions[i][0]:.7f},{positions[i][1]:.7f}"
                                   for i in range(1, total + 1)])
    return {"layout": "cvusa", "out": out, "train": train, "test": test, "aerial_px": spec.cvusa_aerial,
            "pano_hw": spec.cvusa_pano, "m_per_px": CVUSA_AERIAL_M / spec.cvusa_aerial}


# ---------------------------------------------------------------------------------------
# VIGOR
# ---------------------------------------------------------------------------------------

@dataclass
class CityPlan:
    """Everything about one VIGOR city that is decided before rendering."""

    city: str
    scene: Scene
    origin: Tuple[float, float]
    grid: int                         # tiles per side
    tiles: List[Tuple[str, float, float]]          # (file name, x, y) row-major
    panos: List[Tuple[str, float, float, int]]     # (file name, x, y, item seed)
    labels: List[str]                 # label line per panorama (same order)
    train: int
    aerial_seed: int


def _city_key(city: str) -> int:
    return zlib.crc32(city.encode("utf-8"))


def tile_centre(row: int, col: int) -> Tuple[float, float]:
    """World (x, y) metres of tile (row, col)'s centre: ((col + 1), (row + 1)) x stride."""
    return (col + 1) * VIGOR_STRIDE_M, (row + 1) * VIGOR_STRIDE_M


def _pano_id(rng: np.random.Generator, k: int) -> str:
    chars = _ID_ALPHABET[rng.integers(0, len(_ID_ALPHABET), 22)]
    if k % 8 == 3:
        chars[0] = "-"
    elif chars[0] == "-":
        chars[0] = "Q"
    return "".join(chars)


def plan_city(city: str, train: int, test: int, seed: int) -> CityPlan:
    """Build a city's world, tile grid, panorama positions / names and label lines."""
    rng = _item_rng(seed, _VIGOR_TAG, _city_key(city))
    n = train + test
    grid = max(4, int(math.ceil(math.sqrt(n))) + 1)
    world = (grid + 1) * VIGOR_STRIDE_M
    scene = make_city_scene(rng, world, city_preset(city, rng))
    origin = city_origin(city)
    tiles = []
    for row in range(grid):
        for col in range(grid):
            x, y = tile_centre(row, col)
            lat, lon = metres_to_gps(x, y, origin)
            tiles.append((f"satellite_{lat!r}_{lon!r}.png", x, y))

    lo, hi = VIGOR_STRIDE_M + 0.5, grid * VIGOR_STRIDE_M - 0.5
    pts = scene.road_points
    ok = (pts[:, 0] > lo) & (pts[:, 0] < hi) & (pts[:, 1] > lo) & (pts[:, 1] < hi)
    candidates = pts[ok]
    tr = scene.trees
    low_trees = tr["base"] < 4.0
    panos, labels, used = [], [], set()
    for k in range(n):
        for _attempt in range(200):
            if len(candidates) and _attempt < 150:
                x, y, half = candidates[int(rng.integers(len(candidates)))]
                angle = rng.uniform(0, 2 * np.pi)
                lateral = rng.uniform(0, 0.5) * half
                x, y = x + lateral * math.cos(angle), y + lateral * math.sin(angle)
            else:  # no road inside the covered area: anywhere inside it
                x, y = rng.uniform(lo, hi, 2)
            if not (lo < x < hi and lo < y < hi):
                continue
            if len(tr["cx"]) and (np.hypot(tr["cx"][low_trees] - x, tr["cy"][low_trees] - y)
                                  < tr["radius"][low_trees] + 0.5).any():
                continue
            break
        pano_id = _pano_id(rng, k)
        while pano_id in used:
            pano_id = _pano_id(rng, k)
        used.add(pano_id)
        lat, lon = metres_to_gps(x, y, origin)
        name = f"{pano_id},{lat!r},{lon!r},.jpg"
        panos.append((name, float(x), float(y), int(rng.integers(2 ** 31))))
        labels.append(_label_line(name, x, y, tiles, grid))
    return CityPlan(city, scene, origin, grid, tiles, panos, labels, train, int(rng.integers(2 ** 31)))


def _label_line(name: str, x: float, y: float, tiles, grid: int) -> str:
    c0 = int(math.floor(x / VIGOR_STRIDE_M)) - 1
    r0 = int(math.floor(y / VIGOR_STRIDE_M)) - 1
    cands = []
    for row in (r0, r0 + 1):
        for col in (c0, c0 + 1):
            if not (0 <= row < grid and 0 <= col < grid):
                raise AssertionError(f"panorama at ({x}, {y}) outside the 4-tile area")
            tname, tx, ty = tiles[row * grid + col]
            d0 = (y - ty) / VIGOR_M_PER_PX  # > 0: panorama south of the tile centre
            d1 = (tx - x) / VIGOR_M_PER_PX  # > 0: panorama west of the tile centre
            cands.append((math.hypot(d0, d1), tname, d0, d1))
    cands.sort(key=lambda item: item[0])
    fields = [name]
    for _, tname, d0, d1 in cands:
        fields += [tname, repr(float(d0)), repr(float(d1))]
    return " ".join(fields)


_PLANS: Dict[str, CityPlan] = {}


def _init_plans(plans: Dict[str, CityPlan]) -> None:
    _PLANS.clear()
    _PLANS.update(plans)


def vigor_tile(plan: CityPlan, index: int, size="demo") -> np.ndarray:
    """Render satellite tile ``index`` (position in the city's satellite_list) in memory."""
    spec = size_spec(size)
    side = spec.vigor_tile
    res = VIGOR_TILE_M / side
    row, col = divmod(index, plan.grid)
    _, x, y = plan.tiles[index]
    look = aerial_look(_item_rng(plan.aerial_seed, 1))
    return render_aerial(plan.scene, (x, y), side, res, look, grid_origin=tile_grid_origin(row, col, side))


def tile_grid_origin(row: int, col: int, side: int) -> Tuple[int, int]:
    """Mosaic position ``(col0, row0)`` of tile (row, col)'s pixel [0, 0] (see ``render_aerial``).

    Tiles step by ``side / 2`` whole pixels (one shared pixel grid, so overlaps agree), and
    the tile centre, whose GPS names the tile, sits at pixel index ``(side/2, side/2)``: the
    official VIGOR convention (docs/datasets.md) that :func:`data.vigor.panorama_pixel` reads.
    """
    return col * (side // 2), row * (side // 2)


def vigor_panorama(plan: CityPlan, index: int, size="demo"):
    """Render panorama ``index`` of the city in memory -> (RGB, labels, look)."""
    spec = size_spec(size)
    _, x, y, item_seed = plan.panos[index]
    rng = _item_rng(item_seed, 2)
    look = street_look(rng)
    cam_height = float(rng.uniform(2.0, 2.6))
    height, width = spec.vigor_pano
    rgb, labels = render_panorama(plan.scene, (x, y), width, height, "vigor", look, cam_height,
                                  res=spec.pano_res, view_radius=VIEW_RADIUS_M)
    return rgb, labels, look


def _vigor_task(task) -> None:
    out, city, kind, index, size = task
    plan = _PLANS[city]
    if kind == "tile":
        image = vigor_tile(plan, index, size)
        write_image_atomic(os.path.join(out, city, "satellite", plan.tiles[index][0]), image)
    else:
        rgb, _, look = vigor_panorama(plan, index, size)
        write_image_atomic(os.path.join(out, city, "panorama", plan.panos[index][0]), rgb,
                           [cv2.IMWRITE_JPEG_QUALITY, look.jpeg])


def parse_cities(cities) -> List[str]:
    if isinstance(cities, str):
        cities = [c.strip() for c in cities.split(",")]
    cities = [c for c in cities if c]
    if not cities:
        raise UserError("--cities is empty; give a comma-separated list such as NewYork,Seattle")
    for city in cities:
        if not city.replace("_", "").replace("-", "").isalnum() or not city.isascii():
            raise UserError(f"invalid city name {city!r} in --cities: use letters, digits, '-' or '_'")
    if len(set(cities)) != len(cities):
        raise UserError(f"--cities lists a city twice: {','.join(cities)}")
    return cities


def generate_vigor(out: str, cities=SAME_AREA_CITIES, train: int = 10, test: int = 10, seed: int = 0, size="demo",
                   workers: int = 1, progress: bool = False) -> Dict:
    """Write a VIGOR-layout synthetic dataset: per city ``train`` + ``test`` panoramas.

    Returns a summary dict with, per city, the tile grid side and counts."""
    _check_counts(train, test)
    spec = size_spec(size)
    cities = parse_cities(cities)
    _prepare_out(out)
    plans = {city: plan_city(city, train, test, int(seed)) for city in cities}
    tasks = []
    for city, plan in plans.items():
        for sub in ("satellite", "panorama"):
            os.makedirs(os.path.join(out, city, sub), exist_ok=True)
        os.makedirs(os.path.join(out, "splits", city), exist_ok=True)
        tasks += [(out, city, "tile", i, size) for i in range(len(plan.tiles))]
        tasks += [(out, city, "pano", i, size) for i in range(len(plan.panos))]
    _run(_vigor_task, tasks, workers, progress, "vigor", _init_plans, (plans,))
    summary = {"layout": "vigor", "out": out, "tile_px": spec.vigor_tile, "pano_hw": spec.vigor_pano, "cities": {}}
    for city, plan in plans.items():
        split_dir = os.path.join(out, "splits", city)
        _write_lines(os.path.join(split_dir, "satellite_list.txt"), [t[0] for t in plan.tiles])
        _write_lines(os.path.join(split_dir, "same_area_balanced_train.txt"), plan.labels[:plan.train])
        _write_lines(os.path.join(split_dir, "same_area_balanced_test.txt"), plan.labels[plan.train:])
        _write_lines(os.path.join(split_dir, "pano_label_balanced.txt"), plan.labels)
        summary["cities"][city] = {"grid": plan.grid, "satellites": len(plan.tiles), "panoramas": len(plan.panos),
                                   "origin": plan.origin}
    return summary
