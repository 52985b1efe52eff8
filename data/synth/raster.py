"""Rasterise a window of a :class:`~data.synth.scene.Scene` into per-cell layers.

Grid convention: cell ``(r, c)`` of a window has its centre at world
``(x, y) = ((col0 + c) * res, (row0 + r) * res)`` metres (x east, y south). ``col0`` /
``row0`` may be fractional; windows whose ``col0`` / ``row0`` differ by whole numbers
rasterise every shared cell identically (overlapping VIGOR tiles agree pixel for pixel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from data.synth import noise
from data.synth.scene import (ASPHALT, CONCRETE, DIRT, DRY_GRASS, FIELD, GRASS, PARKING, POOL, ROOF_FLAT, ROOF_GABLE,
                              SAND, SIDEWALK, SOIL, WATER, Scene)

KIND_GROUND, KIND_BUILDING, KIND_TREE = 0, 1, 2

_CAR_COLOURS = np.array([(0.85, 0.85, 0.86), (0.10, 0.10, 0.11), (0.55, 0.56, 0.58), (0.60, 0.12, 0.10),
                         (0.15, 0.22, 0.45), (0.35, 0.36, 0.38), (0.75, 0.74, 0.70)], np.float32)


# Ground texture per class: shade = a + b * mid-scale noise + c * fine noise + d * grain.
_TEXTURE = np.ones((12, 4), np.float32) * np.float32([1.0, 0.0, 0.0, 0.0])
_TEXTURE[[GRASS, DRY_GRASS]] = (0.78, 0.34, 0.14, 0.10)
_TEXTURE[SOIL] = (0.8, 0.3, 0.0, 0.15)
_TEXTURE[[ASPHALT, PARKING]] = (0.9, 0.1, 0.0, 0.12)
_TEXTURE[[CONCRETE, SIDEWALK]] = (0.94, 0.06, 0.0, 0.08)
_TEXTURE[WATER] = (0.92, 0.12, 0.0, 0.0)
_TEXTURE[[SAND, DIRT]] = (0.9, 0.16, 0.0, 0.1)
_TEXTURE[POOL] = (0.95, 0.0, 0.1, 0.0)
_VEGETATION = np.zeros(12, np.float32)
_VEGETATION[[GRASS, DRY_GRASS]] = 1.0


@dataclass
class Raster:
    """Layers of one window (all ``ny x nx``; colours ``ny x nx x 3`` float32 in [0, 1]).

    ``height``: top surface above ground (m); ``eave``: wall top (m; roofs rise above it,
    trees have eave == height); ``kind``: 0 ground, 1 building, 2 tree; ``obj``: index in
    scene.buildings / scene.trees (-1 on ground); ``top``: colour seen from above;
    ``ground``: ground colour under objects; ``wall_nx``, ``wall_ny``: outward normal of the
    nearest building wall; ``wall_u``: position (m) along that wall.
    """

    res: float
    col0: float
    row0: float
    ground: np.ndarray
    gcls: np.ndarray
    height: np.ndarray
    eave: np.ndarray
    kind: np.ndarray
    obj: np.ndarray
    top: np.ndarray
    wall_nx: np.ndarray
    wall_ny: np.ndarray
    wall_u: np.ndarray

    @property
    def shape(self):
        return self.height.shape


def _to_cells(pts: np.ndarray, res: float, col0: float, row0: float) -> np.ndarray:
    """World metres -> fixed-point (4 fractional bits) cell coordinates for cv2 drawing."""
    pts = np.asarray(pts, np.float64)
    cells = np.stack([pts[..., 0] / res - col0, pts[..., 1] / res - row0], axis=-1)
    return np.round(cells * 16).astype(np.int32)


def _pieces(pts: np.ndarray, max_len: float) -> np.ndarray:
    """Split a polyline into straight pieces (n x 2 x 2, metres) of at most ``max_len``,
    cut at fixed fractions of each of its segments (independent of any window)."""
    pts = np.asarray(pts, np.float64)
    seg = np.diff(pts, axis=0)
    count = np.maximum(np.ceil(np.hypot(seg[:, 0], seg[:, 1]) / max_len), 1).astype(np.int64)
    owner = np.repeat(np.arange(len(seg)), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    f0 = (k / count[owner])[:, None]
    f1 = ((k + 1) / count[owner])[:, None]
    return np.stack([pts[owner] + seg[owner] * f0, pts[owner] + seg[owner] * f1], axis=1)


def _polygon_spans(polys, res: float, col0: float, row0: float, ny: int, nx: int):
    """Even-odd scanline spans of polygons (list of n_i x 2 arrays, metres) on the window grid.

    A cell belongs to a polygon when its centre does (edges half-open in y, spans
    [x1, x2) in x). Crossings are computed from global cell-centre coordinates, so the
    result never depends on the window. Returns (rows, col_lo, col_hi, polygon index)."""
    empty = (np.zeros(0, np.int64),) * 4
    if not polys:
        return empty
    starts = np.concatenate([np.asarray(p, np.float64) for p in polys])
    ends = np.concatenate([np.roll(np.asarray(p, np.float64), -1, axis=0) for p in polys])
    owner = np.concatenate([np.full(len(p), k, np.int64) for k, p in enumerate(polys)])
    ya, yb = starts[:, 1] / res - row0, ends[:, 1] / res - row0
    lo = np.clip(np.ceil(np.minimum(ya, yb)), 0, ny).astype(np.int64)
    hi = np.clip(np.ceil(np.maximum(ya, yb)), 0, ny).astype(np.int64)
    count = hi - lo
    if count.sum() == 0:
        return empty
    edge = np.repeat(np.arange(len(starts)), count)
    rows = lo[edge] + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    t = (rows - ya[edge]) / (yb[edge] - ya[edge])
    xa, xb = starts[edge, 0] / res - col0, ends[edge, 0] / res - col0
    x = xa + t * (xb - xa)
    poly = owner[edge]
    order = np.lexsort((x, rows, poly))
    rows, x, poly = rows[order], x[order], poly[order]
    rows, x1, x2, poly = rows[0::2], x[0::2], x[1::2], poly[0::2]
    c_lo = np.clip(np.ceil(x1), 0, nx).astype(np.int64)
    c_hi = np.clip(np.ceil(x2), 0, nx).astype(np.int64)
    keep = c_hi > c_lo
    return rows[keep], c_lo[keep], c_hi[keep], poly[keep]


def _circle_spans(cx, cy, radius, res: float, col0: float, row0: float, ny: int, nx: int):
    """Scanline spans of discs (cells whose centre lies within ``radius``), like
    :func:`_polygon_spans`. Returns (rows, col_lo, col_hi, disc index)."""
    yc, xc, rc = cy / res - row0, cx / res - col0, radius / res
    lo = np.clip(np.ceil(yc - rc), 0, ny).astype(np.int64)
    hi = np.clip(np.floor(yc + rc) + 1, 0, ny).astype(np.int64)
    count = np.maximum(hi - lo, 0)
    disc = np.repeat(np.arange(len(cx)), count)
    rows = lo[disc] + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    half = np.sqrt(np.maximum(rc[disc] ** 2 - (rows - yc[disc]) ** 2, 0.0))
    c_lo = np.clip(np.ceil(xc[disc] - half), 0, nx).astype(np.int64)
    c_hi = np.clip(np.floor(xc[disc] + half) + 1, 0, nx).astype(np.int64)
    keep = c_hi > c_lo
    return rows[keep], c_lo[keep], c_hi[keep], disc[keep]


def _paint(shape, spans, priority: np.ndarray) -> np.ndarray:
    """int64 map (-1 = none) of the highest ``priority[index]`` among spans covering each cell."""
    rows, c_lo, c_hi, index = spans
    out = np.full(shape[0] * shape[1], -1, np.int64)
    length = c_hi - c_lo
    if len(rows) == 0 or length.sum() == 0:
        return out.reshape(shape)
    span = np.repeat(np.arange(len(rows)), length)
    cols = c_lo[span] + (np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length))
    np.maximum.at(out, rows[span] * shape[1] + cols, priority[index[span]])
    return out.reshape(shape)


def _draw_segments(target: np.ndarray, segs: np.ndarray, value, thickness: int, res: float, col0: float,
                   row0: float) -> None:
    """Draw thick line segments (n x 2 x 2, metres) into ``target`` (set to ``value``).

    Each segment is drawn on its own small canvas anchored on the global cell grid and
    pasted, so the cells it covers never depend on how the window clips it (cv2 clips
    lines to the image before drawing, which moves their pixels by a window-dependent
    amount)."""
    if len(segs) == 0:
        return
    ny, nx = target.shape[:2]
    fixed = _to_cells(segs, res, col0, row0)  # n x 2 x 2 fixed point (x, y)
    pad = thickness // 2 + 2
    lo = fixed.min(axis=1) // 16 - pad
    hi = fixed.max(axis=1) // 16 + pad + 1
    keep = (hi[:, 0] > 0) & (lo[:, 0] < nx) & (hi[:, 1] > 0) & (lo[:, 1] < ny)
    # segments well inside the window are not clipped: draw them directly, all at once
    inside = keep & (lo[:, 0] >= 0) & (lo[:, 1] >= 0) & (hi[:, 0] <= nx) & (hi[:, 1] <= ny)
    if inside.any():
        cv2.polylines(target, list(fixed[inside]), False, value, thickness, cv2.LINE_8, 4)
    keep &= ~inside
    for seg, (x0, y0), (x1, y1) in zip(fixed[keep], lo[keep], hi[keep]):
        canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
        local = seg - np.array([x0 * 16, y0 * 16], np.int32)
        cv2.line(canvas, tuple(int(v) for v in local[0]), tuple(int(v) for v in local[1]), 1, thickness,
                 cv2.LINE_8, 4)
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y1, ny), min(x1, nx)
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        mask = canvas[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0].view(bool)
        target[cy0:cy1, cx0:cx1][mask] = value


def _dashes(pts: np.ndarray, on: float, off: float) -> np.ndarray:
    """Dash segments (n x 2 x 2, metres) along a polyline: ``on`` m painted, ``off`` m gap,
    the pattern measured from the polyline's start."""
    pts = np.asarray(pts, np.float64)
    seg = np.diff(pts, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    period = on + off
    starts = np.arange(0.0, cum[-1], period)
    ends = np.minimum(starts + on, cum[-1])
    if len(starts) == 0:
        return np.zeros((0, 2, 2))

    def at(s):
        k = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
        frac = ((s - cum[k]) / np.maximum(lengths[k], 1e-9))[:, None]
        return pts[k] + seg[k] * frac

    return np.stack([at(starts), at(ends)], axis=1)


def _offset_polyline(pts: np.ndarray, dist: float) -> np.ndarray:
    """Polyline shifted sideways by ``dist`` (positive = left of travel in x-east/y-south)."""
    pts = np.asarray(pts, np.float64)
    tangent = np.gradient(pts, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    return pts + normal * dist


def _visible(xs_min, ys_min, xs_max, ys_max, window) -> np.ndarray:
    x0, y0, x1, y1 = window
    return (xs_max >= x0) & (xs_min <= x1) & (ys_max >= y0) & (ys_min <= y1)


def rasterize(scene: Scene, res: float, col0: float, row0: float, nx: int, ny: int) -> Raster:
    """Rasterise the window of ``ny x nx`` cells whose cell (0, 0) centre is at
    ``(col0 * res, row0 * res)`` metres."""
    xs = (col0 + np.arange(nx)) * res
    ys = (row0 + np.arange(ny)) * res
    window = (xs[0] - res, ys[0] - res, xs[-1] + res, ys[-1] + res)
    style = scene.style
    seed = int(style["noise_seed"])
    palette = np.asarray(style["palette"], np.float32)
    flat = bool(style.get("flat_ground", False))

    # ---- ground classes -----------------------------------------------------------------
    if flat:
        gcls = np.full((ny, nx), GRASS, np.uint8)
        n_big = np.full((ny, nx), 0.5, np.float32)
    else:
        n_big = noise.grid_fbm(xs, ys, 45.0, seed + 1, 3)
        t1, t2 = style["base_mix"]
        gcls = np.where(n_big < t1, GRASS, np.where(n_big < t2, DRY_GRASS, SOIL)).astype(np.uint8)
    shown = [k for k, patch in enumerate(scene.patches)
             if _visible(patch["poly"][:, 0].min(), patch["poly"][:, 1].min(), patch["poly"][:, 0].max(),
                         patch["poly"][:, 1].max(), window)]
    # later patches lie on top of earlier ones: the highest patch index wins
    spans = _polygon_spans([scene.patches[k]["poly"] for k in shown], res, col0, row0, ny, nx)
    patch_id = _paint((ny, nx), spans, np.array(shown, np.int64)).astype(np.int32)
    if shown:
        classes = np.array([patch["cls"] for patch in scene.patches], np.uint8)
        gcls = np.where(patch_id >= 0, classes[np.maximum(patch_id, 0)], gcls)
    visible_roads = []
    for road in scene.roads:
        pts = road["pts"]
        pad = road["width"] / 2 + road["sidewalk"] + 1
        if _visible(pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad, window):
            visible_roads.append(road)
    # roads over the patches: all sidewalks first, then the carriageways, batched by (class,
    # thickness) in a fixed order (paths, dirt, asphalt) so that a cell's class depends only
    # on the roads covering it, never on the window
    groups = {}
    for road in visible_roads:
        pieces = _pieces(road["pts"], 16.0)
        if road["sidewalk"] > 0:
            thick = max(1, int(round((road["width"] + 2 * road["sidewalk"]) / res)))
            groups.setdefault((0, SIDEWALK, thick), []).append(pieces)
        order = {CONCRETE: 1, DIRT: 2}.get(road["cls"], 3)
        groups.setdefault((order, int(road["cls"]), max(1, int(round(road["width"] / res)))), []).append(pieces)
    if groups:
        road_map = np.full((ny, nx), 255, np.uint8)
        for (_, cls, thick) in sorted(groups):
            _draw_segments(road_map, np.concatenate(groups[(_, cls, thick)]), cls, thick, res, col0, row0)
        on_road = road_map != 255
        gcls = np.where(on_road, road_map, gcls)
        patch_id[on_road] = -1

    # ---- ground colours -----------------------------------------------------------------
    ground = palette[gcls]
    if not flat:
        n_mid = noise.grid_noise(xs, ys, 4.0, seed + 2)
        n_fine = noise.grid_noise(xs, ys, 0.9, seed + 3) - np.float32(0.5)
        grainy = noise.grid_noise(xs, ys, 0.35, seed + 4) - np.float32(0.5)
        # per-class texture: shade = a + b * n_mid + c * n_fine + d * grainy
        a, b, c, d = (_TEXTURE[:, k][gcls] for k in range(4))
        shade = a + b * n_mid + c * n_fine + d * grainy
        ground *= shade[:, :, None]
        # vegetation: soft transition between green and dry grass around the class threshold,
        # plus a large-scale hue drift (greener / yellower areas)
        veg = _VEGETATION[gcls]
        if np.any(veg > 0):
            t1 = np.float32(style["base_mix"][0])
            mix = np.clip((n_big - t1) / np.float32(0.12) + 0.5, 0.0, 1.0) * veg
            lush, dry = palette[GRASS], palette[DRY_GRASS]
            blend = lush + mix[:, :, None] * (dry - lush)
            ground = np.where((veg > 0)[:, :, None], blend * shade[:, :, None], ground)
            ground += (veg * (n_big - np.float32(0.5)))[:, :, None] * np.array([0.12, 0.04, -0.06], np.float32)
        _patch_textures(scene, ground, gcls, patch_id, xs, ys, n_mid, seed)
        _road_markings(visible_roads, ground, res, col0, row0)
    ground = np.clip(ground, 0.0, 1.0).astype(np.float32)

    height, eave, kind, obj, top, wall_nx, wall_ny, wall_u = _objects(scene, res, col0, row0, nx, ny, ground.copy())
    return Raster(res, col0, row0, ground, gcls, height, eave, kind, obj, np.clip(top, 0, 1).astype(np.float32),
                  wall_nx, wall_ny, wall_u)


def _objects(scene: Scene, res: float, col0: float, row0: float, nx: int, ny: int, top=None):
    """Buildings and trees of a window: (height, eave, kind, obj, top, wall_nx, wall_ny,
    wall_u). ``top`` (ny x nx x 3, the ground colours) is painted with roof and canopy
    colours in place; with ``top=None`` only the geometry is computed (shadow casters)."""
    xs = (col0 + np.arange(nx)) * res
    ys = (row0 + np.arange(ny)) * res
    window = (xs[0] - res, ys[0] - res, xs[-1] + res, ys[-1] + res)
    seed = int(scene.style["noise_seed"])
    flat = bool(scene.style.get("flat_ground", False))
    colours = top is not None
    height = np.zeros((ny, nx), np.float32)
    eave = np.zeros((ny, nx), np.float32)
    kind = np.zeros((ny, nx), np.uint8)
    obj = np.full((ny, nx), -1, np.int32)
    wall_nx = np.zeros((ny, nx), np.float32)
    wall_ny = np.zeros((ny, nx), np.float32)
    wall_u = np.zeros((ny, nx), np.float32)

    bl = scene.buildings
    if len(bl["cx"]):
        reach = 0.5 * np.hypot(bl["length"], bl["width"])
        ids = np.flatnonzero(_visible(bl["cx"] - reach, bl["cy"] - reach, bl["cx"] + reach, bl["cy"] + reach, window))
        if len(ids):
            polys = [_box(bl["cx"][i], bl["cy"][i], bl["length"][i], bl["width"][i], bl["angle"][i]) for i in ids]
            bmap = _paint((ny, nx), _polygon_spans(polys, res, col0, row0, ny, nx), ids.astype(np.int64))
            rr, cc = np.nonzero(bmap >= 0)
            if len(rr):
                i = bmap[rr, cc]
                ang = bl["angle"][i].astype(np.float64)
                ca, sa = np.cos(ang), np.sin(ang)
                dx = xs[cc] - bl["cx"][i]
                dy = ys[rr] - bl["cy"][i]
                a = dx * ca + dy * sa
                b = -dx * sa + dy * ca
                half_l = bl["length"][i] / 2
                half_w = bl["width"][i] / 2
                da = np.maximum(half_l - np.abs(a), 0.0)
                db = np.maximum(half_w - np.abs(b), 0.0)
                e = bl["eave"][i]
                ridge = bl["ridge"][i]
                roof = bl["roof"][i]
                slope = np.clip(db / np.maximum(half_w, 1e-6), 0, 1)
                hip = np.minimum(slope, np.clip(da / np.maximum(half_w, 1e-6), 0, 1))
                h = np.where(roof == ROOF_FLAT, e, e + ridge * np.where(roof == ROOF_GABLE, slope, hip))
                height[rr, cc] = h
                eave[rr, cc] = e
                kind[rr, cc] = 1
                obj[rr, cc] = i
            if len(rr) and colours:
                end_wall = da < db
                wall_nx[rr, cc] = np.where(end_wall, np.sign(a) * ca, -np.sign(b) * sa)
                wall_ny[rr, cc] = np.where(end_wall, np.sign(a) * sa, np.sign(b) * ca)
                wall_u[rr, cc] = np.where(end_wall, b, a)
                rough = noise.point_noise(xs[cc], ys[rr], 0.6, seed + 11) - 0.5 if not flat else 0.0
                edge = np.minimum(da, db)
                tone = np.where(roof == ROOF_FLAT,
                                np.where(edge < 0.55, 0.78, 0.96) + 0.1 * rough,
                                0.94 + 0.16 * rough)
                # rooftop units (boxes on a 4 m lattice of the roof) on large flat roofs
                if not flat:
                    ka = np.floor((a + half_l) / 4.0)
                    kb = np.floor((b + half_w) / 4.0)
                    fa, fb = (a + half_l) / 4.0 - ka, (b + half_w) / 4.0 - kb
                    pick = noise.hash_unit(ka.astype(np.int64) + 7919 * i, kb.astype(np.int64), seed + 12)
                    on_unit = (roof == ROOF_FLAT) & (pick > 0.86) & (edge > 1.5) & (half_l > 8) & \
                              (np.abs(fa - 0.5) < 0.3) & (np.abs(fb - 0.5) < 0.25)
                    tone = np.where(on_unit, np.where(pick > 0.93, 1.18, 0.8), tone)
                top[rr, cc] = bl["roof_rgb"][i] * tone[:, None]

    tr = scene.trees
    if len(tr["cx"]):
        ids = np.flatnonzero(_visible(tr["cx"] - tr["radius"], tr["cy"] - tr["radius"],
                                      tr["cx"] + tr["radius"], tr["cy"] + tr["radius"], window))
        if len(ids):
            ids = ids[np.argsort(tr["height"][ids], kind="stable")]
            # taller trees cover lower ones: priority = rank by height
            spans = _circle_spans(tr["cx"][ids].astype(np.float64), tr["cy"][ids].astype(np.float64),
                                  tr["radius"][ids].astype(np.float64), res, col0, row0, ny, nx)
            rank = _paint((ny, nx), spans, np.arange(len(ids), dtype=np.int64))
            tmap = np.where(rank >= 0, ids[np.maximum(rank, 0)], -1)
            rr, cc = np.nonzero(tmap >= 0)
            if len(rr):
                i = tmap[rr, cc]
                dist = np.hypot(xs[cc] - tr["cx"][i], ys[rr] - tr["cy"][i]) / tr["radius"][i]
                dist = np.clip(dist, 0.0, 1.0)
                base, top_h = tr["base"][i], tr["height"][i]
                # round canopy: upper half of an ellipsoid between base and top; conifer: cone
                dome = 0.5 + 0.5 * np.sqrt(np.maximum(1.0 - dist * dist, 0.0))
                h = np.where(tr["conifer"][i] > 0.5, base + (top_h - base) * (1.0 - dist) ** 0.9,
                             base + (top_h - base) * dome)
                above = h > height[rr, cc]
                rr, cc, i, h, dist = rr[above], cc[above], i[above], h[above], dist[above]
                height[rr, cc] = h
                eave[rr, cc] = h
                kind[rr, cc] = 2
                obj[rr, cc] = i
            if len(rr) and colours:
                if flat:
                    clump = np.full(len(rr), 0.5, np.float32)
                else:
                    clump = noise.point_fbm(xs[cc] + 17.0 * i, ys[rr], 1.6, seed + 21, 2)
                tone = (0.62 + 0.75 * clump) * (1.0 - 0.25 * dist ** 2)
                top[rr, cc] = tr["rgb"][i] * tone[:, None]
    return height, eave, kind, obj, top, wall_nx, wall_ny, wall_u




def raster_heights(scene: Scene, res: float, col0: float, row0: float, nx: int, ny: int) -> np.ndarray:
    """Top-surface heights (m) of a window: exactly ``rasterize(...).height``, without the
    cost of the ground and colour layers (used for shadow casters around an aerial)."""
    return _objects(scene, res, col0, row0, nx, ny)[0]


def _box(cx, cy, length, width, angle) -> np.ndarray:
    ca, sa = math.cos(angle), math.sin(angle)
    a = np.array([ca, sa]) * length / 2
    b = np.array([-sa, ca]) * width / 2
    c = np.array([cx, cy], np.float64)
    return np.stack([c - a - b, c + a - b, c + a + b, c - a + b])


def _patch_textures(scene, ground, gcls, patch_id, xs, ys, n_mid, seed) -> None:
    """Crop rows on fields; stall lines and parked cars on parking lots (in place)."""
    for index in np.unique(patch_id[patch_id >= 0]):
        patch = scene.patches[int(index)]
        if patch["cls"] not in (FIELD, PARKING):
            continue
        rr, cc = np.nonzero((patch_id == index) & (gcls == patch["cls"]))
        if not len(rr):
            continue
        x, y = xs[cc], ys[rr]
        ang = patch["angle"]
        if patch["cls"] == FIELD:
            t = (x * math.cos(ang) + y * math.sin(ang)) / patch["period"]
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * t)
            colour = patch["rgb"] * (1 - wave)[:, None] + patch["rgb2"] * wave[:, None]
            ground[rr, cc] = colour * (0.88 + 0.24 * n_mid[rr, cc])[:, None]
        else:
            ox, oy = patch["origin"]
            a = (x - ox) * math.cos(ang) + (y - oy) * math.sin(ang)
            b = -(x - ox) * math.sin(ang) + (y - oy) * math.cos(ang) + patch["depth"] / 2 - 2.5
            module = np.floor(b / 16.0)
            m = b - module * 16.0
            stall = (b > 0) & (b < patch["depth"] - 5.0) & ((m < 5.0) | (m >= 11.0))
            k = np.floor(a / 2.7)
            frac = a / 2.7 - k
            line = stall & (frac < 0.07)
            side = (m >= 11.0).astype(np.int64)
            lot_seed = seed + int(index) * 131
            stall_k, stall_row = k.astype(np.int64), (module * 2 + side).astype(np.int64)
            occupied = noise.hash_unit(stall_k, stall_row, lot_seed) < patch["cars"]
            in_body = ((m > 0.5) & (m < 4.5)) | ((m > 11.5) & (m < 15.5))
            body = stall & occupied & (frac > 0.16) & (frac < 0.84) & in_body
            pick = noise.hash2(stall_k, stall_row, lot_seed + 1) % len(_CAR_COLOURS)
            colour = ground[rr, cc]
            colour = np.where(line[:, None], np.float32(0.85), colour)
            car = _CAR_COLOURS[pick.astype(np.int64)]
            roof_band = (np.abs(np.where(m < 8, m - 2.5, m - 13.5)) < 0.8)
            car = car * np.where(roof_band, 0.8, 1.0)[:, None]
            colour = np.where(body[:, None], car, colour)
            ground[rr, cc] = colour


def _road_markings(roads, ground, res, col0, row0) -> None:
    """Paint lane markings with coverage ``line width / cell size`` (in place)."""
    if not roads:
        return
    ny, nx = ground.shape[:2]
    white = np.zeros((ny, nx), np.float32)
    yellow = np.zeros((ny, nx), np.float32)
    # lines are about 0.15 m wide: several cells on fine rasters, partial coverage on coarse ones
    line_w = max(1, int(round(0.15 / res)))
    alpha = float(min(1.0, 0.15 / res))
    lines = {"white": [], "yellow": []}
    for road in roads:
        kind = road["marking"]
        if kind == 0 or road["cls"] != ASPHALT:
            continue
        pts = road["pts"]
        w = road["width"]
        if kind in (1, 2):
            lines["white" if kind == 1 else "yellow"].append(_dashes(pts, 3.0, 6.0))
        else:
            for off in (-0.2, 0.2):
                lines["yellow"].append(_pieces(_offset_polyline(pts, off), 16.0))
            for off in (-w / 4, w / 4):
                lines["white"].append(_dashes(_offset_polyline(pts, off), 3.0, 9.0))
            for off in (-(w / 2 - 0.5), w / 2 - 0.5):
                lines["white"].append(_pieces(_offset_polyline(pts, off), 16.0))
    for name, layer in (("white", white), ("yellow", yellow)):
        if lines[name]:
            _draw_segments(layer, np.concatenate(lines[name]), alpha, line_w, res, col0, row0)
    for layer, paint in ((white, (0.88, 0.88, 0.86)), (yellow, (0.85, 0.72, 0.25))):
        rr, cc = np.nonzero(layer)
        if len(rr):
            ground[rr, cc] += layer[rr, cc, None] * (np.float32(paint) - ground[rr, cc])
