"""The synthetic world as vector primitives in metres, and its procedural generators.

Convention: world coordinates ``(x, y)`` in metres with **x = east, y = south**, so the
aerial image's columns follow x and its rows follow y (row 0 = north). Headings are
clockwise from north: a unit step at heading ``phi`` is ``(sin phi, -cos phi)``.

A :class:`Scene` holds ground patches (polygons of one ground class), roads (polylines
with width, sidewalks and markings), buildings (rotated boxes with flat, gable or hip
roofs) and trees (round or conical canopies). Renderers rasterise any window of it, so
one scene serves a single CVUSA location or a whole VIGOR city.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

# Ground classes (index into Scene.palette).
GRASS, DRY_GRASS, SOIL, WATER, ASPHALT, CONCRETE, SIDEWALK, FIELD, SAND, POOL, DIRT, PARKING = range(12)
ROOF_FLAT, ROOF_GABLE, ROOF_HIP = 0, 1, 2
MAX_BUILDING_M = 70.0

# Occupancy codes of the 1 m planning grid (generation only).
OCC_FREE, OCC_ROAD, OCC_SIDEWALK, OCC_BUILDING, OCC_WATER, OCC_PARK, OCC_PAVED, OCC_FIELD = range(8)
_BUILDING_BLOCKERS = (OCC_ROAD, OCC_SIDEWALK, OCC_BUILDING, OCC_WATER, OCC_PARK, OCC_PAVED)
_TREE_BLOCKERS = (OCC_ROAD, OCC_BUILDING, OCC_WATER, OCC_PAVED, OCC_FIELD)
_LUTS: Dict[Tuple[int, ...], np.ndarray] = {}


def _lut(codes: Sequence[int]) -> np.ndarray:
    """Boolean lookup table over occupancy codes (cached)."""
    key = tuple(sorted(set(int(c) for c in codes)))
    if key not in _LUTS:
        table = np.zeros(256, bool)
        table[list(key)] = True
        _LUTS[key] = table
    return _LUTS[key]

_BASE_PALETTE = np.array([
    (0.36, 0.46, 0.24),  # grass
    (0.52, 0.51, 0.34),  # dry grass
    (0.47, 0.38, 0.29),  # soil
    (0.17, 0.26, 0.31),  # water
    (0.29, 0.29, 0.30),  # asphalt
    (0.55, 0.54, 0.51),  # concrete
    (0.62, 0.61, 0.58),  # sidewalk
    (0.45, 0.52, 0.26),  # field (overridden per field)
    (0.78, 0.72, 0.56),  # sand
    (0.30, 0.66, 0.78),  # pool
    (0.55, 0.46, 0.35),  # dirt road
    (0.27, 0.27, 0.28),  # parking
], dtype=np.float32)

_PITCHED_ROOFS = np.array([(0.42, 0.42, 0.43), (0.27, 0.27, 0.29), (0.40, 0.30, 0.24), (0.52, 0.27, 0.21),
                           (0.70, 0.40, 0.28), (0.30, 0.40, 0.33), (0.36, 0.39, 0.43), (0.60, 0.55, 0.46)],
                          dtype=np.float32)
_FLAT_ROOFS = np.array([(0.62, 0.61, 0.58), (0.74, 0.74, 0.72), (0.32, 0.32, 0.33), (0.58, 0.53, 0.46),
                        (0.50, 0.50, 0.52)], dtype=np.float32)
_FACADES = np.array([(0.55, 0.30, 0.22), (0.40, 0.25, 0.20), (0.78, 0.72, 0.60), (0.86, 0.85, 0.82),
                     (0.60, 0.60, 0.58), (0.32, 0.42, 0.52), (0.35, 0.48, 0.46), (0.84, 0.76, 0.52),
                     (0.62, 0.70, 0.76), (0.74, 0.62, 0.46), (0.62, 0.20, 0.15)], dtype=np.float32)
_HOUSE_FACADES = (2, 3, 7, 8, 9, 0, 4)
_CITY_FACADES = (0, 1, 2, 4, 5, 6, 9, 3)
_CANOPIES = np.array([(0.20, 0.32, 0.13), (0.26, 0.37, 0.16), (0.16, 0.27, 0.13), (0.30, 0.38, 0.15),
                      (0.42, 0.36, 0.16), (0.12, 0.22, 0.12)], dtype=np.float32)

_BUILDING_FIELDS = ("cx", "cy", "length", "width", "angle", "eave", "ridge", "roof", "roof_rgb",
                    "facade_rgb", "window_rgb", "floor_h", "win_period", "windows")
_TREE_FIELDS = ("cx", "cy", "radius", "height", "base", "conifer", "rgb")


@dataclass
class Scene:
    """Vector description of a world (metres, x east, y south).

    ``buildings`` / ``trees`` map field names to equal-length arrays (colours ``n x 3``
    float32 in [0, 1]). ``patches`` are dicts ``{"cls", "poly" (n x 2), ...}`` drawn in
    order over the base ground; ``roads`` are dicts ``{"pts" (n x 2), "width",
    "sidewalk", "cls", "marking"}`` drawn after the patches. ``style`` carries the
    palette (``palette``: 12 x 3), the base-ground mixture, the noise seed and the
    distant silhouette of the panorama horizon.
    """

    extent: Tuple[float, float, float, float]
    style: Dict
    patches: List[Dict] = field(default_factory=list)
    roads: List[Dict] = field(default_factory=list)
    buildings: Dict[str, np.ndarray] = field(default_factory=dict)
    trees: Dict[str, np.ndarray] = field(default_factory=dict)
    road_points: Optional[np.ndarray] = None  # k x 3 (x, y, half free width) camera candidates

    @property
    def palette(self) -> np.ndarray:
        return self.style["palette"]


def default_style(seed: int = 0, palette: Optional[np.ndarray] = None) -> Dict:
    """A neutral style: plain grass base, standard palette, flat horizon."""
    return {
        "palette": (_BASE_PALETTE if palette is None else palette).copy(),
        "base_mix": (1.0, 1.0),  # fbm thresholds: below first = grass, below second = dry grass, else soil
        "noise_seed": int(seed),
        "silhouette": {"base": 0.0, "amps": np.zeros(0), "phases": np.zeros(0), "rgb": (0.35, 0.42, 0.40)},
    }


def empty_buildings() -> Dict[str, np.ndarray]:
    return {
        name: np.zeros((0, 3), np.float32) if name.endswith("_rgb") else np.zeros(0, np.float32)
        for name in _BUILDING_FIELDS
    }


def empty_trees() -> Dict[str, np.ndarray]:
    return {name: np.zeros((0, 3), np.float32) if name == "rgb" else np.zeros(0, np.float32) for name in _TREE_FIELDS}


def blank_scene(half: float = 100.0, seed: int = 0, ground_rgb: Optional[Sequence[float]] = None) -> Scene:
    """An empty flat world ``[-half, half]^2`` (for tests): grass or one uniform colour."""
    style = default_style(seed)
    if ground_rgb is not None:
        style["palette"][GRASS] = np.asarray(ground_rgb, np.float32)
        style["flat_ground"] = True
    return Scene((-half, -half, half, half), style, buildings=empty_buildings(), trees=empty_trees())


def add_building(scene: Scene, cx: float, cy: float, length: float, width: float, height: float,
                 angle: float = 0.0, facade_rgb=(0.6, 0.6, 0.6), roof_rgb=(0.5, 0.5, 0.5),
                 roof: int = ROOF_FLAT, ridge: float = 0.0, windows: bool = False) -> int:
    """Append one box building to ``scene`` (``angle``: radians of the length axis from +x
    towards +y). Returns its index."""
    record = {
        "cx": cx, "cy": cy, "length": length, "width": width, "angle": angle, "eave": height,
        "ridge": ridge, "roof": roof, "roof_rgb": roof_rgb, "facade_rgb": facade_rgb,
        "window_rgb": (0.2, 0.24, 0.3), "floor_h": 3.2, "win_period": 2.6, "windows": float(windows),
    }
    _append(scene.buildings, record, _BUILDING_FIELDS)
    return len(scene.buildings["cx"]) - 1


def add_tree(scene: Scene, cx: float, cy: float, radius: float, height: float, base: float = 2.0,
             conifer: bool = False, rgb=(0.2, 0.32, 0.13)) -> int:
    """Append one tree to ``scene``. Returns its index."""
    record = {"cx": cx, "cy": cy, "radius": radius, "height": height, "base": base,
              "conifer": float(conifer), "rgb": rgb}
    _append(scene.trees, record, _TREE_FIELDS)
    return len(scene.trees["cx"]) - 1


def _append(table: Dict[str, np.ndarray], record: Dict, names: Sequence[str]) -> None:
    for name in names:
        value = np.asarray(record[name], np.float32)
        table[name] = np.concatenate([table[name], value[None]], axis=0)


# ---------------------------------------------------------------------------------------
# Planning: occupancy grid + primitive lists
# ---------------------------------------------------------------------------------------

class SceneBuilder:
    """Accumulates primitives while keeping a 1 m occupancy grid for collision tests."""

    def __init__(self, extent: Tuple[float, float, float, float], style: Dict, occ_res: float = 1.0):
        self.extent = tuple(float(v) for v in extent)
        self.style = style
        self.res = occ_res
        xmin, ymin, xmax, ymax = self.extent
        shape = (int(math.ceil((ymax - ymin) / occ_res)), int(math.ceil((xmax - xmin) / occ_res)))
        self.occ = np.zeros(shape, np.uint8)
        self.patches: List[Dict] = []
        self.roads: List[Dict] = []
        self.buildings: List[Dict] = []
        self.trees: List[Dict] = []
        self.keep_clear: List[Tuple[float, float, float]] = []

    # -- coordinates ------------------------------------------------------------------
    def _fixed(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, np.float64)
        cells = (pts - np.array(self.extent[:2])) / self.res - 0.5
        return np.round(cells * 16).astype(np.int32)

    def inside(self, x: float, y: float, margin: float = 0.0) -> bool:
        xmin, ymin, xmax, ymax = self.extent
        return xmin + margin <= x <= xmax - margin and ymin + margin <= y <= ymax - margin

    def occ_at(self, x: float, y: float) -> int:
        col = int((x - self.extent[0]) / self.res)
        row = int((y - self.extent[1]) / self.res)
        if 0 <= row < self.occ.shape[0] and 0 <= col < self.occ.shape[1]:
            return int(self.occ[row, col])
        return -1

    def _poly_mask(self, poly: np.ndarray):
        """(row slice, col slice, mask) of a convex polygon on the occupancy grid, or None."""
        fixed = self._fixed(poly)
        c0 = max(int(fixed[:, 0].min()) // 16 - 1, 0)
        r0 = max(int(fixed[:, 1].min()) // 16 - 1, 0)
        c1 = min(int(fixed[:, 0].max()) // 16 + 2, self.occ.shape[1])
        r1 = min(int(fixed[:, 1].max()) // 16 + 2, self.occ.shape[0])
        if c1 <= c0 or r1 <= r0:
            return None
        mask = np.zeros((r1 - r0, c1 - c0), np.uint8)
        cv2.fillConvexPoly(mask, fixed - np.array([c0 * 16, r0 * 16], np.int32), 1, cv2.LINE_8, 4)
        return slice(r0, r1), slice(c0, c1), mask.astype(bool)

    def free(self, poly: np.ndarray, blockers: Sequence[int], margin: float = 0.0) -> bool:
        """True when the convex ``poly`` lies inside the extent and touches none of ``blockers``."""
        poly = np.asarray(poly, np.float64)
        xmin, ymin, xmax, ymax = self.extent
        if poly[:, 0].min() < xmin + margin or poly[:, 0].max() > xmax - margin:
            return False
        if poly[:, 1].min() < ymin + margin or poly[:, 1].max() > ymax - margin:
            return False
        found = self._poly_mask(poly)
        if found is None:
            return False
        rows, cols, mask = found
        return not _lut(blockers)[self.occ[rows, cols][mask]].any()

    def mark_poly(self, poly: np.ndarray, code: int) -> None:
        found = self._poly_mask(poly)
        if found is not None:
            rows, cols, mask = found
            self.occ[rows, cols][mask] = code

    def mark_polygon(self, poly: np.ndarray, code: int) -> None:
        cv2.fillPoly(self.occ, [self._fixed(poly)], int(code), cv2.LINE_8, 4)

    # -- primitives -------------------------------------------------------------------
    def add_patch(self, cls: int, poly: np.ndarray, code: Optional[int] = None, **params) -> None:
        poly = np.asarray(poly, np.float64)
        self.patches.append({"cls": int(cls), "poly": poly, **params})
        if code is not None:
            self.mark_polygon(poly, code)

    def add_road(self, pts: np.ndarray, width: float, sidewalk: float = 0.0, cls: int = ASPHALT,
                 marking: int = 0) -> None:
        pts = np.asarray(pts, np.float64)
        self.roads.append({"pts": pts, "width": float(width), "sidewalk": float(sidewalk), "cls": int(cls),
                           "marking": int(marking)})
        fixed = self._fixed(pts)
        if sidewalk > 0:
            thick = max(1, int(round((width + 2 * sidewalk) / self.res)))
            cv2.polylines(self.occ, [fixed], False, OCC_SIDEWALK, thick, cv2.LINE_8, 4)
        cv2.polylines(self.occ, [fixed], False, OCC_ROAD, max(1, int(round(width / self.res))), cv2.LINE_8, 4)

    def can_build(self, cx, cy, length, width, angle, blockers=_BUILDING_BLOCKERS) -> bool:
        """True when a building footprint (+0.5 m all round) is free and clear of keep-clear zones."""
        reach = 0.5 * (length + width)
        if not self.inside(cx, cy, margin=reach * 0.5):
            return False
        for (kx, ky, kr) in self.keep_clear:
            if math.hypot(cx - kx, cy - ky) < kr + 0.5 * math.hypot(length, width):
                return False
        poly = box_corners(cx, cy, length + 1.0, width + 1.0, angle)
        lut = _lut(blockers)
        for x, y in ((cx, cy), *poly):  # cheap early rejection: centre and corners
            code = self.occ_at(x, y)
            if code >= 0 and lut[code]:
                return False
        return self.free(poly, blockers, margin=1.0)

    def try_building(self, cx, cy, length, width, angle, blockers=_BUILDING_BLOCKERS, **attrs) -> bool:
        """Add a building (length >= width after an optional quarter turn) when its footprint is free."""
        if width > length:
            length, width, angle = width, length, angle + math.pi / 2
        if not self.can_build(cx, cy, length, width, angle, blockers):
            return False
        self.mark_poly(box_corners(cx, cy, length, width, angle), OCC_BUILDING)
        self.buildings.append({"cx": cx, "cy": cy, "length": length, "width": width, "angle": angle, **attrs})
        return True

    def try_tree(self, cx, cy, radius, height, base, conifer, rgb, blockers=_TREE_BLOCKERS) -> bool:
        """Add a tree when its trunk (a 2 x 2 m block of the grid) is free and the canopy
        centre lies at least half a radius inside the extent."""
        if not self.inside(cx, cy, margin=radius * 0.5):
            return False
        col = int((cx - self.extent[0]) / self.res - 0.5)
        row = int((cy - self.extent[1]) / self.res - 0.5)
        block = self.occ[max(row, 0):row + 2, max(col, 0):col + 2]
        if block.size == 0 or _lut(blockers)[block].any():
            return False
        for (kx, ky, kr) in self.keep_clear:
            if math.hypot(cx - kx, cy - ky) < kr + radius:
                return False
        self.trees.append({"cx": cx, "cy": cy, "radius": radius, "height": height, "base": base,
                           "conifer": float(conifer), "rgb": rgb})
        return True

    def build(self, road_points: Optional[np.ndarray] = None) -> Scene:
        buildings = empty_buildings()
        trees = empty_trees()
        if self.buildings:
            buildings = {name: np.array([b[name] for b in self.buildings], np.float32) for name in _BUILDING_FIELDS}
        if self.trees:
            trees = {name: np.array([t[name] for t in self.trees], np.float32) for name in _TREE_FIELDS}
        return Scene(self.extent, self.style, self.patches, self.roads, buildings, trees, road_points)


def box_corners(cx: float, cy: float, length: float, width: float, angle: float) -> np.ndarray:
    """4 x 2 corners of a box centred at (cx, cy), ``length`` along ``angle`` (radians)."""
    ca, sa = math.cos(angle), math.sin(angle)
    ax, ay = ca * length / 2, sa * length / 2
    bx, by = -sa * width / 2, ca * width / 2
    return np.array([(cx - ax - bx, cy - ay - by), (cx + ax - bx, cy + ay - by),
                     (cx + ax + bx, cy + ay + by), (cx - ax + bx, cy - ay + by)])


# ---------------------------------------------------------------------------------------
# Styles
# ---------------------------------------------------------------------------------------

DISTRICTS: Dict[str, Dict] = {
    "rural": dict(lot=(25, 60), depth=(8, 14), setback=(8, 25), gap=(30, 160), fill=0.5, floors=(1, 2),
                  floor_h=3.0, roofs=(0.1, 0.6, 0.3), facades=(3, 10, 7, 2, 8), street_trees=0.15,
                  win_period=(3.5, 6.0),
                  yard_trees=(0, 4), driveway=0.8, pool=0.02, road_w=(6, 8), sidewalk=(0, 0)),
    "suburban": dict(lot=(17, 30), depth=(9, 15), setback=(5, 11), gap=(2, 9), fill=0.85, floors=(1, 2),
                     floor_h=3.0, roofs=(0.08, 0.52, 0.4), facades=_HOUSE_FACADES, street_trees=0.5,
                     win_period=(3.5, 6.0),
                     yard_trees=(0, 3), driveway=0.85, pool=0.15, road_w=(7, 10), sidewalk=(0, 2)),
    "urban": dict(lot=(14, 36), depth=(14, 28), setback=(0, 3), gap=(0, 4), fill=0.88, floors=(2, 9),
                  floor_h=3.3, roofs=(0.92, 0.04, 0.04), facades=_CITY_FACADES, street_trees=0.45,
                  yard_trees=(0, 1), driveway=0.0, pool=0.0, road_w=(10, 15), sidewalk=(2.5, 4)),
    "downtown": dict(lot=(24, 50), depth=(20, 38), setback=(0, 4), gap=(2, 10), fill=0.9, floors=(6, 35),
                     floor_h=3.5, roofs=(1.0, 0.0, 0.0), facades=(5, 6, 4, 9, 3, 2), street_trees=0.35,
                     yard_trees=(0, 0), driveway=0.0, pool=0.0, road_w=(14, 20), sidewalk=(3, 5)),
    "industrial": dict(lot=(30, 80), depth=(25, 55), setback=(6, 18), gap=(8, 30), fill=0.7, floors=(1, 2),
                       floor_h=5.0, roofs=(0.95, 0.05, 0.0), facades=(4, 3, 2, 8), street_trees=0.1,
                       yard_trees=(0, 1), driveway=0.0, pool=0.0, road_w=(9, 13), sidewalk=(0, 2)),
}


def random_style(rng: np.random.Generator, district: str) -> Dict:
    """Palette, base-ground mixture and horizon silhouette for one scene."""
    style = default_style(int(rng.integers(0, 2 ** 31)))
    palette = style["palette"]
    palette *= rng.uniform(0.9, 1.1, size=(len(palette), 1)).astype(np.float32)
    palette *= rng.uniform(0.95, 1.05, size=palette.shape).astype(np.float32)
    if district == "rural":
        style["base_mix"] = (rng.uniform(0.35, 0.65), rng.uniform(0.7, 0.9))
    elif district in ("urban", "downtown", "industrial"):
        style["base_mix"] = (rng.uniform(0.55, 0.8), rng.uniform(0.85, 0.95))
    else:
        style["base_mix"] = (rng.uniform(0.6, 0.9), rng.uniform(0.9, 1.0))
    n = 7
    style["silhouette"] = {
        "base": float(rng.uniform(0.6, 2.5)),
        "amps": (rng.uniform(0.2, 1.4, n) / np.arange(1, n + 1) ** 0.7).astype(np.float64),
        "phases": rng.uniform(0, 2 * np.pi, n),
        "rgb": tuple(float(v) for v in np.array([0.33, 0.42, 0.36]) * rng.uniform(0.85, 1.1)),
    }
    return style


def _colour(rng: np.random.Generator, table: np.ndarray, choices: Optional[Sequence[int]] = None,
            jitter: float = 0.08) -> np.ndarray:
    index = int(choices[int(rng.integers(len(choices)))]) if choices is not None else int(rng.integers(len(table)))
    tint = rng.uniform(1 - jitter, 1 + jitter) * rng.uniform(1 - jitter / 3, 1 + jitter / 3, 3)
    return np.clip(table[index] * tint, 0, 1).astype(np.float32)


def _building_attrs(rng: np.random.Generator, d: Dict, height_scale: float = 1.0) -> Dict:
    lo, hi = d["floors"]
    floors = int(np.clip(round(math.exp(rng.uniform(math.log(lo), math.log(hi + 0.99))) * height_scale), 1, 60))
    p_flat, p_gable, p_hip = d["roofs"]
    pick = rng.random() * (p_flat + p_gable + p_hip)
    roof = ROOF_FLAT if pick < p_flat else (ROOF_GABLE if pick < p_flat + p_gable else ROOF_HIP)
    floor_h = d["floor_h"] * rng.uniform(0.92, 1.1)
    # capped at 70 m: with the aerial sun at >= 45 deg no shadow is longer than the 80 m the
    # aerial renderer looks around a tile, so overlapping tiles always agree
    eave = min(floors * floor_h + rng.uniform(0.0, 0.8), MAX_BUILDING_M)
    facade = _colour(rng, _FACADES, d["facades"])
    roof_rgb = _colour(rng, _FLAT_ROOFS if roof == ROOF_FLAT else _PITCHED_ROOFS)
    window = np.array([0.16, 0.19, 0.24]) if rng.random() < 0.6 else np.array([0.38, 0.48, 0.58])
    return {"eave": eave, "ridge": 0.0, "roof": roof, "roof_rgb": roof_rgb,
            "facade_rgb": facade, "window_rgb": (window * rng.uniform(0.85, 1.15)).astype(np.float32),
            "floor_h": floor_h, "win_period": rng.uniform(*d.get("win_period", (2.2, 3.6))), "windows": 1.0}


def _finish_ridge(attrs: Dict, width: float, rng: np.random.Generator) -> Dict:
    if attrs["roof"] != ROOF_FLAT:
        attrs["ridge"] = 0.5 * min(width, 14.0) * rng.uniform(0.45, 0.9)
    return attrs


def _tree(rng: np.random.Generator, conifer_p: float = 0.15, scale: float = 1.0) -> Dict:
    conifer = rng.random() < conifer_p
    if conifer:
        radius = rng.uniform(1.6, 3.4) * scale
        height = radius * rng.uniform(3.5, 5.5)
        base = rng.uniform(0.5, 2.0)
        rgb = _colour(rng, _CANOPIES, (2, 5), 0.1)
    else:
        radius = rng.uniform(2.2, 5.5) * scale
        height = radius * rng.uniform(1.6, 2.5) + rng.uniform(0, 2)
        base = height * rng.uniform(0.25, 0.45)
        rgb = _colour(rng, _CANOPIES, (0, 1, 3, 0, 1, 4), 0.12)
    return {"radius": radius, "height": height, "base": base, "conifer": conifer, "rgb": rgb}


# ---------------------------------------------------------------------------------------
# Generation pieces
# ---------------------------------------------------------------------------------------

def _curve(rng: np.random.Generator, start, heading: float, length: float, wiggle: float, step: float = 6.0):
    """Polyline from ``start`` following a smooth random heading walk (``heading`` radians from +x)."""
    n = max(2, int(length / step) + 1)
    rate = 0.0
    pts = [np.asarray(start, np.float64)]
    for _ in range(n - 1):
        rate = 0.85 * rate + rng.normal(0, wiggle)
        heading += rate
        pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    return np.stack(pts)


def _marking_for(width: float, rng: np.random.Generator, district: str) -> int:
    if width < 6.5:
        return 0
    if district == "rural":
        return int(rng.choice([0, 2], p=[0.3, 0.7]))
    if width >= 12:
        return 3
    return int(rng.choice([1, 2], p=[0.4, 0.6]))


def _road_width(rng: np.random.Generator, d: Dict, major: bool) -> Tuple[float, float]:
    lo, hi = d["road_w"]
    width = rng.uniform(lo, hi) * (1.25 if major else 1.0)
    sw_lo, sw_hi = d["sidewalk"]
    sidewalk = rng.uniform(sw_lo, sw_hi) if sw_hi > 0 else 0.0
    if sidewalk < 1.0:
        sidewalk = 0.0
    return width, sidewalk


def grid_roads(b: SceneBuilder, rng: np.random.Generator, angle: float, spacing: Tuple[float, float],
               style_at: Callable, drop: float = 0.15, through: Tuple[float, float] = (0.0, 0.0),
               major_every: int = 4) -> None:
    """A rotated street grid whose lines pass through ``through``; segments between
    intersections are dropped with probability ``drop`` (T-junctions, dead ends)."""
    xmin, ymin, xmax, ymax = b.extent
    reach = math.hypot(xmax - xmin, ymax - ymin)
    ua = np.array([math.cos(angle), math.sin(angle)])
    ub = np.array([-math.sin(angle), math.cos(angle)])
    origin = np.asarray(through, np.float64)
    centre = np.array([(xmin + xmax) / 2, (ymin + ymax) / 2])
    lines = []
    for axis, (u, v) in enumerate(((ua, ub), (ub, ua))):
        gap = spacing[axis]
        offsets = [0.0]
        for sign in (1, -1):
            pos = 0.0
            while abs(pos) < reach:
                pos += sign * gap * rng.uniform(0.8, 1.2)
                offsets.append(pos)
        lines.append((u, v, sorted(offsets)))
    # intersections along each line = offsets of the other family
    for axis in (0, 1):
        u, v, offsets = lines[axis]
        cross = lines[1 - axis][2]
        for k, off in enumerate(offsets):
            base = origin + v * off
            # skip lines far outside the extent
            if abs(np.dot(base - centre, v)) > reach / 2 + 5:
                continue
            major = (round(off / max(spacing[axis], 1)) % major_every) == 0
            d = style_at(base)
            width, sidewalk = _road_width(rng, d, major)
            marking = _marking_for(width, rng, d.get("name", "urban"))
            for c0, c1 in zip(cross[:-1], cross[1:]):
                p0, p1 = base + u * c0, base + u * c1
                mid = (p0 + p1) / 2
                if abs(np.dot(mid - centre, u)) > reach / 2 + abs(c1 - c0):
                    continue
                keep_anyway = abs(off) < 1e-9 and c0 <= 0 <= c1
                if not keep_anyway and rng.random() < drop:
                    continue
                # extend by half a road width so consecutive segments join cleanly
                ext = u * width * 0.5
                b.add_road(np.stack([p0 - ext, p1 + ext]), width, sidewalk, ASPHALT, marking)


def lots_along_roads(b: SceneBuilder, rng: np.random.Generator, style_at: Callable,
                     height_scale_at: Callable = lambda p: 1.0) -> None:
    """Place buildings (and driveways, pools, yard trees) on lots facing every road segment."""
    for road in list(b.roads):
        pts = road["pts"]
        half = road["width"] / 2 + road["sidewalk"]
        for p, q in zip(pts[:-1], pts[1:]):
            seg = q - p
            seg_len = float(np.hypot(*seg))
            if seg_len < 5:
                continue
            u = seg / seg_len
            n = np.array([-u[1], u[0]])
            angle = math.atan2(u[1], u[0])
            for side in (-1.0, 1.0):
                s = rng.uniform(0, 10)
                while s < seg_len:
                    if not b.inside(p[0] + u[0] * s, p[1] + u[1] * s, margin=-60.0):
                        s += 20.0  # far outside the world: skip ahead
                        continue
                    d = style_at(p + u * s)
                    lot = rng.uniform(*d["lot"])
                    if rng.random() < d["fill"]:
                        frontage = lot * rng.uniform(0.6, 0.92)
                        depth = rng.uniform(*d["depth"])
                        setback = half + rng.uniform(*d["setback"]) + 1.5
                        for shrink in (1.0, 0.7, 0.5):  # shallower buildings where the block is narrow
                            dep = depth * shrink
                            centre = p + u * (s + lot / 2) + side * n * (setback + dep / 2)
                            if b.can_build(centre[0], centre[1], frontage, dep, angle):
                                attrs = _finish_ridge(_building_attrs(rng, d, height_scale_at(centre)),
                                                      min(frontage, dep), rng)
                                b.try_building(centre[0], centre[1], frontage, dep, angle, **attrs)
                                front = p + u * (s + lot / 2) + side * n * setback
                                _yard(b, rng, d, centre, front, u, n * side, frontage, dep, half, setback)
                                break
                    s += lot + rng.uniform(*d["gap"])


def _yard(b, rng, d, centre, front, u, out, frontage, depth, half, setback) -> None:
    """Driveway to the road, a pool behind the house, trees in the yard.

    ``front`` is the middle of the house front (``setback`` m from the road centre line),
    ``out`` the unit vector from the road towards the house, ``half`` the road's half
    width including sidewalks."""
    if rng.random() < d["driveway"]:
        width = rng.uniform(3.0, 5.0)
        lateral = u * (frontage / 2 - width / 2 - rng.uniform(0, 1.5)) * (1 if rng.random() < 0.5 else -1)
        length = setback - half + 1.0
        if length > 1.5:
            mid = front + lateral - out * (length / 2 - 0.2)
            poly = box_corners(mid[0], mid[1], length, width, math.atan2(out[1], out[0]))
            b.add_patch(CONCRETE, poly, OCC_PAVED)
    if rng.random() < d["pool"]:
        back = centre + out * (depth / 2 + rng.uniform(3, 6))
        pool = box_corners(back[0], back[1], rng.uniform(7, 11), rng.uniform(3.5, 5.5),
                           math.atan2(u[1], u[0]))
        if b.free(pool, _BUILDING_BLOCKERS):
            b.add_patch(CONCRETE, box_corners(back[0], back[1], 13, 8, math.atan2(u[1], u[0])))  # the deck
            b.add_patch(POOL, pool, OCC_PAVED)
    lo, hi = d["yard_trees"]
    for _ in range(int(rng.integers(lo, hi + 1))):
        spot = centre + out * rng.uniform(-depth / 2 - 6, depth / 2 + 9) + u * rng.uniform(-frontage, frontage)
        t = _tree(rng)
        b.try_tree(spot[0], spot[1], t["radius"], t["height"], t["base"], t["conifer"], t["rgb"])


def street_trees(b: SceneBuilder, rng: np.random.Generator, style_at: Callable) -> None:
    """Rows of similar trees along road segments (on the sidewalk or the verge)."""
    for road in list(b.roads):
        if road["cls"] != ASPHALT:
            continue
        pts = road["pts"]
        for p, q in zip(pts[:-1], pts[1:]):
            seg = q - p
            seg_len = float(np.hypot(*seg))
            if seg_len < 10:
                continue
            d = style_at((p + q) / 2)
            u = seg / seg_len
            n = np.array([-u[1], u[0]])
            for side in (-1.0, 1.0):
                if rng.random() > d["street_trees"]:
                    continue
                proto = _tree(rng, conifer_p=0.05, scale=0.85)
                spacing = rng.uniform(7, 14)
                offset = road["width"] / 2 + (road["sidewalk"] * 0.6 if road["sidewalk"] > 0 else rng.uniform(1.5, 3.5))
                s = rng.uniform(2, spacing)
                blockers = (OCC_BUILDING, OCC_WATER, OCC_PAVED)
                while s < seg_len - 2:
                    spot = p + u * s + side * n * offset
                    scale = rng.uniform(0.85, 1.15)
                    b.try_tree(spot[0], spot[1], proto["radius"] * scale, proto["height"] * scale,
                               proto["base"], proto["conifer"], proto["rgb"] * rng.uniform(0.92, 1.08),
                               blockers=blockers + (OCC_ROAD,))
                    s += spacing * rng.uniform(0.9, 1.1)


def tree_clusters(b: SceneBuilder, rng: np.random.Generator, n_clusters: int, per_cluster: Tuple[int, int],
                  spread: Tuple[float, float], conifer_p: float = 0.2, area=None) -> None:
    """Groups of trees (woods, parks, tree lines)."""
    xmin, ymin, xmax, ymax = area if area is not None else b.extent
    for _ in range(n_clusters):
        cx, cy = rng.uniform(xmin, xmax), rng.uniform(ymin, ymax)
        sigma = rng.uniform(*spread)
        cp = conifer_p * rng.uniform(0, 2)
        for _ in range(int(rng.integers(*per_cluster))):
            x, y = cx + rng.normal(0, sigma), cy + rng.normal(0, sigma)
            t = _tree(rng, conifer_p=min(cp, 1.0))
            b.try_tree(x, y, t["radius"], t["height"], t["base"], t["conifer"], t["rgb"])


def noisy_blob(rng: np.random.Generator, cx: float, cy: float, radius: float, n: int = 48) -> np.ndarray:
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(1, 6):
        r += rng.uniform(0, 0.22) / k ** 0.6 * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    r *= radius
    return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)


def fields(b: SceneBuilder, rng: np.random.Generator, angle: float, size: Tuple[float, float]) -> None:
    """Farm parcels on a rotated grid: crops with row textures, pasture, bare soil."""
    xmin, ymin, xmax, ymax = b.extent
    reach = math.hypot(xmax - xmin, ymax - ymin) / 2
    ua = np.array([math.cos(angle), math.sin(angle)])
    ub = np.array([-math.sin(angle), math.cos(angle)])
    centre = np.array([(xmin + xmax) / 2, (ymin + ymax) / 2]) + rng.uniform(-30, 30, 2)
    a_edges = _edges(rng, -reach, reach, size)
    b_edges = _edges(rng, -reach, reach, size)
    crop_colours = [((0.40, 0.52, 0.22), (0.33, 0.44, 0.19)), ((0.74, 0.66, 0.40), (0.66, 0.58, 0.34)),
                    ((0.50, 0.40, 0.30), (0.42, 0.33, 0.25)), ((0.56, 0.60, 0.30), (0.47, 0.52, 0.24)),
                    ((0.62, 0.52, 0.36), (0.55, 0.45, 0.30))]
    for a0, a1 in zip(a_edges[:-1], a_edges[1:]):
        for b0, b1 in zip(b_edges[:-1], b_edges[1:]):
            margin = rng.uniform(1.0, 3.0)
            corners = [centre + ua * a + ub * bb for a, bb in ((a0 + margin, b0 + margin), (a1 - margin, b0 + margin),
                                                              (a1 - margin, b1 - margin), (a0 + margin, b1 - margin))]
            kind = rng.choice(4, p=[0.62, 0.16, 0.1, 0.12])
            poly = np.stack(corners)
            if kind == 0:
                ca, cb = crop_colours[int(rng.integers(len(crop_colours)))]
                jitter = rng.uniform(0.9, 1.1, 3)
                b.add_patch(FIELD, poly, OCC_FIELD, angle=angle + (math.pi / 2 if rng.random() < 0.5 else 0.0),
                            period=float(rng.uniform(2.0, 5.0)), rgb=np.array(ca) * jitter, rgb2=np.array(cb) * jitter)
            elif kind == 1:
                b.add_patch(DRY_GRASS, poly, OCC_FIELD)
            elif kind == 2:
                b.add_patch(SOIL, poly, OCC_FIELD)
            else:
                # woods parcel
                b.mark_polygon(poly, OCC_FREE)
                mid = poly.mean(axis=0)
                ha, hb = (a1 - a0) / 2, (b1 - b0) / 2
                extent = (mid[0] - ha, mid[1] - hb, mid[0] + ha, mid[1] + hb)
                tree_clusters(b, rng, 3, (10, 25), (6, 14), conifer_p=0.3, area=extent)


def _edges(rng, lo, hi, size):
    edges = [lo]
    while edges[-1] < hi:
        edges.append(edges[-1] + rng.uniform(*size))
    return edges


def parking_lots(b: SceneBuilder, rng: np.random.Generator, n: int, style_at: Callable) -> None:
    """Asphalt lots with painted stalls (and painted cars) next to roads."""
    roads = [r for r in b.roads if r["cls"] == ASPHALT]
    if not roads:
        return
    for _ in range(n * 6):
        if n <= 0:
            break
        road = roads[int(rng.integers(len(roads)))]
        pts = road["pts"]
        k = int(rng.integers(len(pts) - 1))
        p, q = pts[k], pts[k + 1]
        seg_len = float(np.hypot(*(q - p)))
        if seg_len < 20:
            continue
        u = (q - p) / seg_len
        nrm = np.array([-u[1], u[0]]) * (1 if rng.random() < 0.5 else -1)
        length = rng.uniform(20, 55)
        depth = 16.0 * int(rng.integers(1, 4)) + 5.0
        off = road["width"] / 2 + road["sidewalk"] + rng.uniform(1, 4) + depth / 2
        centre = p + u * rng.uniform(length / 2, max(length / 2 + 1, seg_len - length / 2)) + nrm * off
        angle = math.atan2(u[1], u[0])
        poly = box_corners(centre[0], centre[1], length, depth, angle)
        if b.free(poly, _BUILDING_BLOCKERS + (OCC_FIELD,)):
            b.add_patch(PARKING, poly, OCC_PAVED, angle=angle, cars=float(rng.uniform(0.2, 0.8)),
                        origin=np.asarray(centre), depth=depth)
            n -= 1


def _road_points(b: SceneBuilder, step: float = 4.0) -> np.ndarray:
    """Candidate camera points every ``step`` m on road centre lines: rows (x, y, usable half width)."""
    out = []
    for road in b.roads:
        pts = road["pts"]
        seg = np.diff(pts, axis=0)
        lengths = np.hypot(seg[:, 0], seg[:, 1])
        cum = np.concatenate([[0.0], np.cumsum(lengths)])
        s = np.arange(0.0, cum[-1], step)
        k = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
        xy = pts[k] + seg[k] * ((s - cum[k]) / np.maximum(lengths[k], 1e-9))[:, None]
        out.append(np.column_stack([xy, np.full(len(s), max(road["width"] / 2 - 1.2, 0.0))]))
    return np.concatenate(out, axis=0) if out else np.zeros((0, 3))


# ---------------------------------------------------------------------------------------
# Top-level generators
# ---------------------------------------------------------------------------------------

def make_location_scene(rng: np.random.Generator, half: float, district: Optional[str] = None) -> Scene:
    """One CVUSA-like location ``[-half, half]^2`` with a road through the camera at (0, 0)."""
    if district is None:
        district = str(rng.choice(["rural", "suburban", "urban", "park", "industrial"],
                                  p=[0.24, 0.38, 0.2, 0.08, 0.1]))
    style = random_style(rng, district)
    style["district"] = district
    b = SceneBuilder((-half, -half, half, half), style)
    b.keep_clear.append((0.0, 0.0, 2.5))  # the camera: no building or canopy over it
    d = dict(DISTRICTS.get(district, DISTRICTS["suburban"]), name=district)
    const = lambda p: d  # noqa: E731
    angle = rng.uniform(0, np.pi)
    ua = np.array([math.cos(angle), math.sin(angle)])
    ub = np.array([-ua[1], ua[0]])

    if district == "rural":
        fields(b, rng, angle + rng.normal(0, 0.05), (45, 140))
        if rng.random() < 0.3:
            lake = noisy_blob(rng, *(ub * rng.uniform(40, 110) * rng.choice([-1, 1]) + ua * rng.uniform(-80, 80)),
                              rng.uniform(12, 35))
            b.add_patch(WATER, lake, OCC_WATER)
        width = rng.uniform(5.5, 8.0)
        dirt = rng.random() < 0.25
        main = _curve(rng, -ua * 2.2 * half, angle, 4.4 * half, rng.uniform(0, 0.01))
        main -= main[np.argmin(np.hypot(*main.T))]
        if dirt:
            b.add_road(main, 4.5, 0.0, DIRT, 0)
        else:
            b.add_road(main, width, 0.0, ASPHALT, _marking_for(width, rng, "rural"))
        if rng.random() < 0.5:
            off = rng.uniform(-half, half)
            b.add_road(np.stack([ua * off - ub * 2 * half, ua * off + ub * 2 * half]), rng.uniform(4, 6), 0.0, DIRT)
        lots_along_roads(b, rng, const)
        tree_clusters(b, rng, int(rng.integers(2, 7)), (4, 18), (4, 12), conifer_p=0.3)
        street_trees(b, rng, const)
    elif district == "park":
        shore = ub * rng.uniform(25, 60) * rng.choice([-1, 1]) + ua * rng.uniform(-40, 40)
        lake = noisy_blob(rng, shore[0] + np.sign(shore[0]) * 40 + rng.uniform(-20, 20),
                          shore[1] + np.sign(shore[1]) * 40, rng.uniform(35, 70))
        b.add_patch(WATER, lake, OCC_WATER)
        width, sidewalk = _road_width(rng, DISTRICTS["suburban"], True)
        main = _curve(rng, -ua * 2.2 * half, angle, 4.4 * half, rng.uniform(0.0, 0.006))
        main -= main[np.argmin(np.hypot(*main.T))]
        b.add_road(main, width, max(sidewalk, 2.0), ASPHALT, 2)
        for _ in range(int(rng.integers(2, 5))):
            start = rng.uniform(-half, half, 2)
            b.add_road(_curve(rng, start, rng.uniform(0, 2 * np.pi), rng.uniform(60, 200), 0.04, 4.0),
                       rng.uniform(2.0, 3.5), 0.0, CONCRETE)
        tree_clusters(b, rng, int(rng.integers(5, 10)), (6, 20), (5, 15), conifer_p=0.25)
        lots_along_roads(b, rng, lambda p: dict(d, fill=0.25, lot=(20, 40), floors=(1, 3), roofs=(0.5, 0.3, 0.2),
                                                  facades=_HOUSE_FACADES, setback=(5, 15), depth=(10, 18), gap=(10, 60),
                                                  driveway=0.3, pool=0.0, yard_trees=(0, 2)))
        street_trees(b, rng, lambda p: dict(d, street_trees=0.7))
    else:
        if district == "suburban":
            width, sidewalk = _road_width(rng, d, True)
            main = _curve(rng, -ua * 2.2 * half, angle, 4.4 * half, rng.uniform(0, 0.004))
            main -= main[np.argmin(np.hypot(*main.T))]
            b.add_road(main, width, sidewalk, ASPHALT, _marking_for(width, rng, district))
            for _ in range(int(rng.integers(2, 6))):
                k = int(rng.integers(len(main)))
                if not b.inside(*main[k], margin=10):
                    continue
                side = rng.choice([-1, 1])
                nrm = np.array([-(main[min(k + 1, len(main) - 1)] - main[max(k - 1, 0)])[1],
                                (main[min(k + 1, len(main) - 1)] - main[max(k - 1, 0)])[0]])
                nrm /= max(np.linalg.norm(nrm), 1e-9)
                heading = math.atan2(nrm[1] * side, nrm[0] * side) + rng.normal(0, 0.15)
                w2, s2 = _road_width(rng, d, False)
                side_road = _curve(rng, main[k], heading, rng.uniform(70, 220), rng.uniform(0, 0.02), 5.0)
                b.add_road(side_road, w2, s2, ASPHALT, 0)
                if rng.random() < 0.35 and b.inside(*side_road[-1]):
                    b.add_patch(ASPHALT, noisy_blob(rng, *side_road[-1], rng.uniform(8, 12), 24), OCC_ROAD)
            if rng.random() < 0.3:
                off = ub * rng.uniform(70, 120) * rng.choice([-1, 1])
                w2, s2 = _road_width(rng, d, False)
                b.add_road(np.stack([off - ua * 2 * half, off + ua * 2 * half]), w2, s2, ASPHALT, 0)
            if rng.random() < 0.15:
                b.add_patch(WATER, noisy_blob(rng, *rng.uniform(-half, half, 2), rng.uniform(10, 25)), OCC_WATER)
        else:
            spacing = (rng.uniform(60, 130), rng.uniform(60, 160))
            grid_roads(b, rng, angle, spacing, const, drop=rng.uniform(0.05, 0.3), through=(0.0, 0.0))
            if district == "urban" and rng.random() < 0.3:
                park = box_corners(*(rng.uniform(-half, half, 2)), rng.uniform(40, 80), rng.uniform(40, 80), angle)
                b.add_patch(GRASS, park, OCC_PARK)
                tree_clusters(b, rng, 3, (6, 14), (6, 12), 0.1,
                              area=(park[:, 0].min(), park[:, 1].min(), park[:, 0].max(), park[:, 1].max()))
            parking_lots(b, rng, int(rng.integers(0, 4 if district == "industrial" else 3)), const)
            if district == "urban" and rng.random() < 0.4:
                px, py = rng.uniform(-half / 2, half / 2, 2)
                plaza = box_corners(px, py, rng.uniform(20, 45), rng.uniform(20, 45), angle)
                if b.free(plaza, _BUILDING_BLOCKERS):
                    b.add_patch(CONCRETE, plaza, OCC_PAVED)
        lots_along_roads(b, rng, const)
        if district != "industrial":
            _interior_fill(b, rng, d, angle, int(rng.integers(10, 50) if district == "urban" else rng.integers(0, 10)))
        street_trees(b, rng, const)
        tree_clusters(b, rng, int(rng.integers(1, 6)), (3, 12), (4, 10), conifer_p=0.15)
    return b.build()


def _interior_fill(b: SceneBuilder, rng, d, angle, attempts) -> None:
    xmin, ymin, xmax, ymax = b.extent
    for _ in range(attempts):
        cx, cy = rng.uniform(xmin, xmax), rng.uniform(ymin, ymax)
        length, width = rng.uniform(*d["lot"]) * 0.8, rng.uniform(*d["depth"])
        if b.can_build(cx, cy, length, width, angle):
            attrs = _finish_ridge(_building_attrs(rng, d), min(length, width), rng)
            b.try_building(cx, cy, length, width, angle, **attrs)


# City presets for the VIGOR layout: grid angle, block sizes, downtown strength, water.
CITY_PRESETS = {
    "NewYork": dict(angle=math.radians(29.0), spacing=(62, 240), downtown=1.6, green=0.12, water="east"),
    "Seattle": dict(angle=math.radians(-2.0), spacing=(90, 110), downtown=0.9, green=0.3, water="west"),
    "SanFrancisco": dict(angle=math.radians(0.0), spacing=(95, 120), downtown=0.7, green=0.18, water="north"),
    "Chicago": dict(angle=math.radians(0.0), spacing=(100, 200), downtown=1.2, green=0.2, water="east"),
}


def city_preset(name: str, rng: np.random.Generator) -> Dict:
    """Preset for a real VIGOR city, or a random one for any other name."""
    if name in CITY_PRESETS:
        return dict(CITY_PRESETS[name])
    return dict(angle=rng.uniform(0, np.pi / 2), spacing=(rng.uniform(60, 120), rng.uniform(80, 200)),
                downtown=rng.uniform(0.5, 1.5), green=rng.uniform(0.1, 0.3),
                water=str(rng.choice(["east", "west", "north", "south", "none"])))


def make_city_scene(rng: np.random.Generator, size: float, preset: Dict) -> Scene:
    """One VIGOR-like city over ``[0, size]^2``: a street grid with a downtown whose
    building heights fall off with distance, residential edges, parks and a waterfront."""
    style = random_style(rng, "urban")
    style["district"] = "city"
    b = SceneBuilder((0.0, 0.0, size, size), style)
    centre = np.array([size / 2, size / 2])
    downtown = centre + rng.uniform(-0.3, 0.3, 2) * size
    radius = max(size * 0.35, 150.0)

    def style_at(p):
        dist = float(np.linalg.norm(np.asarray(p) - downtown)) / radius
        level = preset["downtown"] * math.exp(-dist * dist) + 0.15 * (rng.random() - 0.5)
        if level > 0.9:
            return dict(DISTRICTS["downtown"], name="downtown")
        if level > 0.35:
            return dict(DISTRICTS["urban"], name="urban")
        return dict(DISTRICTS["suburban"], name="suburban", sidewalk=(1.5, 2.5), lot=(12, 22), gap=(1, 4))

    water_side = preset.get("water", "none")
    if water_side != "none" and rng.random() < 0.8:
        depth = size * rng.uniform(0.06, 0.14)
        lo, hi = -10.0, size + 10.0
        poly = {"east": [(size - depth, lo), (hi, lo), (hi, hi), (size - depth, hi)],
                "west": [(lo, lo), (depth, lo), (depth, hi), (lo, hi)],
                "north": [(lo, lo), (hi, lo), (hi, depth), (lo, depth)],
                "south": [(lo, size - depth), (hi, size - depth), (hi, hi), (lo, hi)]}[water_side]
        poly = np.array(poly, np.float64)
        b.add_patch(SAND if rng.random() < 0.3 else GRASS, _grow(poly, 6.0, water_side), OCC_PARK)  # the shore
        b.add_patch(WATER, poly, OCC_WATER)
    grid_roads(b, rng, preset["angle"], preset["spacing"], style_at, drop=0.06, through=tuple(centre))
    # parks: some blocks become green
    n_parks = int(round(preset["green"] * (size / 120.0) ** 2 * 0.6))
    for _ in range(n_parks):
        pc = rng.uniform(0.1 * size, 0.9 * size, 2)
        park = box_corners(pc[0], pc[1], rng.uniform(30, 90), rng.uniform(30, 90), preset["angle"])
        if b.free(park, (OCC_BUILDING, OCC_ROAD, OCC_WATER)):
            b.add_patch(GRASS, park, OCC_PARK)
            tree_clusters(b, rng, 3, (5, 14), (5, 12), 0.15,
                          area=(park[:, 0].min(), park[:, 1].min(), park[:, 0].max(), park[:, 1].max()))
            if rng.random() < 0.6:
                b.add_road(_curve(rng, pc, rng.uniform(0, 2 * np.pi), rng.uniform(30, 80), 0.05, 4.0),
                           2.5, 0.0, CONCRETE)
    parking_lots(b, rng, int(size / 60), style_at)

    def height_at(p):
        dist = float(np.linalg.norm(np.asarray(p) - downtown)) / radius
        return 0.6 + 0.8 * math.exp(-dist * dist)

    lots_along_roads(b, rng, style_at, height_at)
    for _ in range(int(3 * (size / 30) ** 2)):
        p = rng.uniform(0, size, 2)
        d = style_at(p)
        length, width = rng.uniform(*d["lot"]) * 0.8, rng.uniform(*d["depth"])
        if b.can_build(p[0], p[1], length, width, preset["angle"]):
            attrs = _finish_ridge(_building_attrs(rng, d, height_at(p)), min(length, width), rng)
            b.try_building(p[0], p[1], length, width, preset["angle"], **attrs)
    # paved yards and plazas between the buildings (under them where they overlap)
    paved = {"downtown": 0.8, "urban": 0.5}
    for _ in range(int((size / 40) ** 2)):
        p = rng.uniform(0, size, 2)
        if rng.random() > paved.get(style_at(p).get("name"), 0.1):
            continue
        poly = box_corners(p[0], p[1], rng.uniform(15, 45), rng.uniform(15, 40), preset["angle"])
        if b.free(poly, (OCC_WATER, OCC_PARK)):
            b.add_patch(CONCRETE if rng.random() < 0.6 else ASPHALT, poly)
    street_trees(b, rng, style_at)
    tree_clusters(b, rng, int((size / 100) ** 2), (2, 8), (3, 8), 0.15)
    return b.build(_road_points(b))


def _grow(poly: np.ndarray, amount: float, side: str) -> np.ndarray:
    grown = poly.copy()
    axis, sign = {"east": (0, -1), "west": (0, 1), "north": (1, 1), "south": (1, -1)}[side]
    inner = grown[:, axis] == (grown[:, axis].min() if sign < 0 else grown[:, axis].max())
    grown[inner, axis] += sign * amount
    return grown
