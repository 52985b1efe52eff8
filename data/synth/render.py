"""Render a :class:`~data.synth.scene.Scene` as an aerial orthophoto and as a panorama.

Conventions (the real CVUSA / VIGOR ones):

* world ``(x, y)`` metres, x = east, y = south; headings clockwise from north;
* aerial: top-down, north up: image row 0 = north, column 0 = west; pixel ``(i, j)`` of an
  ``S x S`` aerial centred at ``(cx, cy)`` has its centre at world
  ``(cx + (j - S/2) * res, cy + (i - S/2) * res)`` -- the SAFA polar transform's centre
  ``S/2`` is exactly the point ``(cx, cy)``;
* panorama ``H x W``: column ``j`` looks at heading ``180 deg + 360 deg * j / W`` (South at
  column 0, West at W/4, North at W/2, East at 3W/4: the same angles as the polar
  transform's column ``j``); row ``i`` looks at elevation ``(H/2 - 0.5 - i) * dv`` with
  ``dv = 360 deg / W`` for CVUSA strips (square pixels, about +-32.7 deg at 1232 x 224) and
  ``dv = 180 deg / H`` for VIGOR equirectangular panoramas (row 0 = zenith);
* panorama labels: 0 sky, 1 ground (roads, grass, water, ...), 2 building, 3 tree / vegetation.

The panorama is ray cast through the heightfield "voxel space" style: for every column
the ray is sampled near to far; sample ``k`` covers the rows between its projected top
and the lowest row drawn so far (a running minimum gives occlusion). Vectorised over
columns; the first covering sample of each pixel comes from a histogram of the running
minimum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import cv2
import numpy as np

from data.synth import noise
from data.synth.raster import KIND_BUILDING, KIND_TREE, Raster, raster_heights, rasterize
from data.synth.scene import GRASS, Scene

LABEL_SKY, LABEL_GROUND, LABEL_BUILDING, LABEL_VEGETATION = 0, 1, 2, 3
LABEL_NAMES = ("sky", "ground", "building", "vegetation")


@dataclass
class Look:
    """Illumination and camera response of one rendering.

    ``sun_az``: heading of the sun (radians, clockwise from north); ``sun_el``: elevation
    (radians). ``ambient`` + ``diffuse`` scale lit surfaces; ``shadows`` toggles cast
    shadows. Grading: ``exposure``, per-channel ``gains``, ``saturation``, ``gamma``,
    ``haze`` (added colour), ``blur`` (Gaussian sigma in pixels), ``noise`` (sigma in
    [0, 1] units, deterministic hash of pixel position and ``noise_seed``), ``jpeg``
    quality. Panorama only: ``fog`` distance (m, ``inf`` = none), sky colours, ``clouds``
    cover in [0, 1] (0 = none).
    """

    sun_az: float = math.radians(135.0)
    sun_el: float = math.radians(50.0)
    ambient: float = 1.0
    diffuse: float = 0.0
    shadows: bool = False
    shadow_rgb: Tuple[float, float, float] = (0.5, 0.55, 0.68)
    exposure: float = 1.0
    gains: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    saturation: float = 1.0
    gamma: float = 1.0
    haze: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    blur: float = 0.0
    noise: float = 0.0
    noise_seed: int = 0
    jpeg: int = 92
    fog: float = float("inf")
    zenith_rgb: Tuple[float, float, float] = (0.30, 0.50, 0.86)
    horizon_rgb: Tuple[float, float, float] = (0.76, 0.83, 0.92)
    clouds: float = 0.0
    cloud_seed: int = 0


NEUTRAL = Look()


def aerial_look(rng: np.random.Generator) -> Look:
    """Random satellite / aircraft imaging conditions: high sun, hazy, slightly soft."""
    return Look(
        sun_az=float(rng.uniform(0, 2 * np.pi)), sun_el=math.radians(rng.uniform(45, 72)),
        ambient=float(rng.uniform(0.45, 0.6)), diffuse=1.0, shadows=True,
        shadow_rgb=tuple(float(v) for v in np.array([0.42, 0.47, 0.6]) * rng.uniform(0.85, 1.15)),
        exposure=float(rng.uniform(0.85, 1.05)), gains=tuple(float(v) for v in rng.uniform(0.95, 1.05, 3)),
        saturation=float(rng.uniform(0.75, 1.0)), gamma=float(rng.uniform(0.9, 1.05)),
        haze=tuple(float(v) for v in np.array([0.5, 0.56, 0.66]) * rng.uniform(0.0, 0.07)),
        blur=float(rng.uniform(0.4, 1.0)), noise=float(rng.uniform(0.008, 0.02)),
        noise_seed=int(rng.integers(2 ** 31)), jpeg=int(rng.integers(80, 95)))


def street_look(rng: np.random.Generator) -> Look:
    """Random street-level conditions (independent of the aerial: another day and camera)."""
    overcast = rng.random() < 0.25
    zenith = np.array([0.62, 0.65, 0.70]) if overcast else np.array([0.32, 0.5, 0.8])
    horizon = np.array([0.80, 0.81, 0.83]) if overcast else np.array([0.74, 0.82, 0.92])
    return Look(
        sun_az=float(rng.uniform(0, 2 * np.pi)), sun_el=math.radians(rng.uniform(20, 65)),
        ambient=float(rng.uniform(0.55, 0.7) if not overcast else 0.85),
        diffuse=float(0.15 if overcast else rng.uniform(0.6, 0.8)), shadows=not overcast,
        shadow_rgb=tuple(float(v) for v in np.array([0.5, 0.55, 0.68]) * rng.uniform(0.9, 1.1)),
        exposure=float(rng.uniform(0.9, 1.12)), gains=tuple(float(v) for v in rng.uniform(0.95, 1.05, 3)),
        saturation=float(rng.uniform(0.85, 1.12)), gamma=float(rng.uniform(0.9, 1.1)),
        blur=float(rng.uniform(0.0, 0.6)), noise=float(rng.uniform(0.006, 0.018)),
        noise_seed=int(rng.integers(2 ** 31)), jpeg=int(rng.integers(82, 95)),
        fog=float(rng.uniform(250, 700)), zenith_rgb=tuple(float(v) for v in zenith * rng.uniform(0.9, 1.1, 3)),
        horizon_rgb=tuple(float(v) for v in horizon * rng.uniform(0.95, 1.05, 3)),
        clouds=float(0.0 if overcast else rng.uniform(0.0, 0.7)), cloud_seed=int(rng.integers(2 ** 31)))


# ---------------------------------------------------------------------------------------
# Lighting
# ---------------------------------------------------------------------------------------

def cast_shadows(height: np.ndarray, res: float, sun_az: float, sun_el: float, row_offset: int = 0,
                 col_offset: int = 0) -> np.ndarray:
    """Soft shadow mask in [0, 1] (1 = fully shadowed) of a heightfield.

    A cell is shadowed when a cell on its discrete line towards the sun rises above the
    sun ray through it. Line sweep from the sun's side: rows (or columns, whichever the
    sun direction follows more) are visited in order, carrying per cell the highest
    ``height - distance * tan(elevation)`` seen so far; the lateral drift of the sun line
    is applied as whole-cell shifts whose pattern depends on the *global* row index
    (``row_offset`` / ``col_offset`` = global index of cell (0, 0)), so two windows of one
    mosaic agree wherever both contain every caster within reach."""
    to_col, to_row = math.sin(sun_az), -math.cos(sun_az)
    transpose = abs(to_col) > abs(to_row)
    h = np.ascontiguousarray(height.T if transpose else height)
    along, across = (to_col, to_row) if transpose else (to_row, to_col)
    offset = col_offset if transpose else row_offset
    step = 1 if along > 0 else -1
    drift = across / abs(along)          # columns per row step towards the sun (|drift| <= 1)
    drop = np.float32(res * math.tan(sun_el) * math.hypot(1.0, drift))
    n_rows, n_cols = h.shape
    out = np.zeros_like(h, dtype=np.float32)
    best = np.full(n_cols, -1e6, np.float32)
    # global cumulative lateral shift of the sun line at each row: cells with equal
    # (column - shift(row)) lie on one line
    rows_global = np.arange(n_rows) + offset
    shift = np.floor(step * rows_global * drift + 0.5).astype(np.int64)
    order = range(n_rows - 1, -1, -1) if step > 0 else range(n_rows)
    prev = None
    for r in order:
        if prev is not None:
            src = np.maximum(h[prev], best)
            d = int(shift[prev] - shift[r])  # column of the upstream cell = column + d
            if d == 0:
                best = src - drop
            elif d > 0:
                best = np.empty_like(src)
                best[:n_cols - d] = src[d:] - drop
                best[n_cols - d:] = -1e6
            else:
                best = np.empty_like(src)
                best[-d:] = src[:n_cols + d] - drop
                best[:-d] = -1e6
            out[r] = np.clip((best - h[r]) / np.float32(0.3), 0.0, 1.0)
        prev = r
    return out.T if transpose else out


def surface_light(raster: Raster, look: Look, shadow: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-cell light factor (ny x nx x 3) of top surfaces: Lambert on the heightfield
    normals, normalised so flat unshadowed ground gets ambient + diffuse, times the shadow
    tint where cast shadows fall."""
    ny, nx = raster.shape
    if look.diffuse == 0.0 and not look.shadows:
        return np.full((ny, nx, 1), look.ambient, np.float32)
    gy, gx = np.gradient(raster.height, raster.res)
    gx = np.clip(gx, -2.5, 2.5)
    gy = np.clip(gy, -2.5, 2.5)
    sx = math.sin(look.sun_az) * math.cos(look.sun_el)
    sy = -math.cos(look.sun_az) * math.cos(look.sun_el)
    sz = math.sin(look.sun_el)
    lambert = (-gx * sx - gy * sy + sz) / np.sqrt(gx * gx + gy * gy + 1.0) / sz
    light = look.ambient + look.diffuse * np.clip(lambert, 0.0, 1.35)
    light = np.repeat(light[:, :, None].astype(np.float32), 3, axis=2)
    if look.shadows:
        if shadow is None:
            shadow = cast_shadows(raster.height, raster.res, look.sun_az, look.sun_el,
                                  int(math.floor(raster.row0 + 1e-6)), int(math.floor(raster.col0 + 1e-6)))
        shadow = shadow[:, :, None]
        shaded = (look.ambient + 0.25 * look.diffuse) * np.asarray(look.shadow_rgb, np.float32) / 0.55
        light = light * (1 - shadow) + shaded * shadow
    return light


def grade(image: np.ndarray, look: Look, pixel_rows: Optional[np.ndarray] = None,
          pixel_cols: Optional[np.ndarray] = None) -> np.ndarray:
    """Camera response: exposure, white balance, saturation, gamma, haze, blur, noise -> uint8.

    Sensor noise is Gaussian from a generator seeded by ``look.noise_seed``, or, when
    ``pixel_rows`` / ``pixel_cols`` (1-D global pixel indices) are given, a hash of the
    pixel position (tiles of one mosaic then share the noise of shared pixels)."""
    img = np.ascontiguousarray(image, dtype=np.float32)
    if look.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), look.blur)
    # exposure, white balance and saturation are one linear colour map (+ haze offset)
    s = float(look.saturation)
    mix = s * np.eye(3) + (1.0 - s) / 3.0 * np.ones((3, 3))
    matrix = mix @ np.diag(look.exposure * np.asarray(look.gains, np.float64))
    affine = np.concatenate([matrix, np.asarray(look.haze, np.float64)[:, None]], axis=1)
    img = cv2.transform(img, affine.astype(np.float32))
    np.clip(img, 0.0, 1.0, out=img)
    if look.gamma != 1.0:
        lut = (np.arange(4096, dtype=np.float32) / np.float32(4095.0)) ** np.float32(1.0 / look.gamma)
        img = lut[(img * np.float32(4095.0) + np.float32(0.5)).astype(np.int32)]
    if look.noise > 0:
        if pixel_rows is None:
            n = np.random.default_rng(look.noise_seed).standard_normal(img.shape, dtype=np.float32)
        else:
            # triangular noise (sum of two uniforms from the two halves of one 32-bit hash)
            n = np.empty(img.shape, np.float32)
            for ch in range(3):
                h = noise.hash2(pixel_cols[None, :], pixel_rows[:, None], look.noise_seed + 97 * ch)
                n[:, :, ch] = (h & np.uint32(0xFFFF)).astype(np.float32) + (h >> np.uint32(16)).astype(np.float32)
            n = (n * np.float32(1.0 / 65536.0) - 1.0) * np.float32(2.45)
        n *= np.float32(look.noise)
        img += n
    img *= np.float32(255.0)
    img += np.float32(0.5)
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Aerial
# ---------------------------------------------------------------------------------------

def _max_height_near(scene: Scene, box) -> float:
    x0, y0, x1, y1 = box
    best = 0.0
    bl, tr = scene.buildings, scene.trees
    if len(bl["cx"]):
        near = (bl["cx"] > x0) & (bl["cx"] < x1) & (bl["cy"] > y0) & (bl["cy"] < y1)
        if near.any():
            best = max(best, float((bl["eave"][near] + bl["ridge"][near]).max()))
    if len(tr["cx"]):
        near = (tr["cx"] > x0) & (tr["cx"] < x1) & (tr["cy"] > y0) & (tr["cy"] < y1)
        if near.any():
            best = max(best, float(tr["height"][near].max()))
    return best


def render_aerial(scene: Scene, center: Tuple[float, float], side: int, res: float, look: Look = NEUTRAL,
                  grid_origin: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Top-down, north-up ``side x side`` RGB uint8 aerial around world ``center``.

    ``res``: metres per pixel. Pixel ``(i, j)`` has its centre at world
    ``((col0 + j) * res, (row0 + i) * res)`` with ``(col0, row0) = grid_origin``; the
    default ``center / res - side / 2`` puts ``center`` at pixel index ``side / 2`` (the
    SAFA polar transform's centre). Tiles of one mosaic pass origins that differ by whole
    pixels (VIGOR: :func:`data.synth.layouts.tile_grid_origin`, the centre at index
    ``side / 2`` as by default): rasterisation and sensor noise then agree on every shared pixel.
    """
    cx, cy = center
    if grid_origin is None:
        col0, row0 = cx / res - side / 2.0, cy / res - side / 2.0
    else:
        col0, row0 = float(grid_origin[0]), float(grid_origin[1])
    noise_origin = (int(math.floor(col0 + 1e-6)), int(math.floor(row0 + 1e-6)))
    half_m = side * res / 2
    reach = 80.0
    # colour layers with a small margin (blur, gradients); shadow casters from heights only,
    # over a margin as long as the longest shadow (the mosaic stays consistent)
    margin = int(math.ceil(3 * look.blur + 2))
    n = side + 2 * margin
    raster = rasterize(scene, res, col0 - margin, row0 - margin, n, n)
    shadow = None
    if look.shadows:
        tallest = _max_height_near(scene, (cx - half_m - reach, cy - half_m - reach, cx + half_m + reach,
                                           cy + half_m + reach))
        extra = int(math.ceil(min(tallest / max(math.tan(look.sun_el), 0.2), reach) / res)) + 1
        heights = raster_heights(scene, res, col0 - margin - extra, row0 - margin - extra, n + 2 * extra, n + 2 * extra)
        shadow = cast_shadows(heights, res, look.sun_az, look.sun_el, int(math.floor(row0 + 1e-6)) - margin - extra,
                              int(math.floor(col0 + 1e-6)) - margin - extra)[extra:extra + n, extra:extra + n]
    colour = raster.top * surface_light(raster, look, shadow)
    if look.blur > 0:
        colour = cv2.GaussianBlur(colour.astype(np.float32), (0, 0), look.blur)
    colour = colour[margin:margin + side, margin:margin + side]
    if grid_origin is None:
        return grade(colour, replace(look, blur=0.0))
    return grade(colour, replace(look, blur=0.0), np.arange(side) + noise_origin[1], np.arange(side) + noise_origin[0])


# ---------------------------------------------------------------------------------------
# Panorama
# ---------------------------------------------------------------------------------------

def panorama_angles(width: int, height: int, layout: str) -> Tuple[np.ndarray, np.ndarray]:
    """(headings W, elevations H) in radians of the pixel centres.

    Heading of column j: pi + 2 pi j / W (clockwise from north). Elevation of row i:
    (H/2 - 0.5 - i) * dv with dv = 2 pi / W ("cvusa") or pi / H ("vigor")."""
    dv = 2 * math.pi / width if layout == "cvusa" else math.pi / height
    headings = math.pi + 2 * math.pi * np.arange(width) / width
    elevations = (height / 2.0 - 0.5 - np.arange(height)) * dv
    return headings, elevations


def _ray_distances(near: float, far: float, rel: float, min_step: float) -> np.ndarray:
    out = [near]
    t = near
    while t < far:
        t += max(rel * t, min_step)
        out.append(t)
    return np.array(out, np.float64)


def silhouette_elevation(scene: Scene, headings: np.ndarray) -> np.ndarray:
    """Elevation (radians) of the distant tree line / skyline beyond the rendered area."""
    sil = scene.style.get("silhouette")
    if not sil or sil["base"] <= 0:
        return np.full(len(headings), -1.0)
    k = np.arange(1, len(sil["amps"]) + 1)
    deg = sil["base"] + (sil["amps"][None, :] * np.sin(k[None, :] * headings[:, None] + sil["phases"][None, :])).sum(1)
    return np.radians(np.clip(deg, 0.15, None))


def _sky(phi: np.ndarray, e: np.ndarray, look: Look) -> np.ndarray:
    """Sky colour (n x 3) at headings ``phi`` and elevations ``e`` (radians, 1-D)."""
    e = np.clip(e, 0.0, None)
    w = (e / (math.pi / 2)) ** 0.55
    zen = np.asarray(look.zenith_rgb, np.float32)
    hor = np.asarray(look.horizon_rgb, np.float32)
    col = hor[None, :] * (1 - w)[:, None] + zen[None, :] * w[:, None]
    # sun glow
    cos_sun = (np.cos(e) * math.cos(look.sun_el) * np.cos(phi - look.sun_az) + np.sin(e) * math.sin(look.sun_el))
    glow = np.clip(cos_sun, 0, 1) ** 24
    col = col + glow[:, None] * np.array([0.35, 0.3, 0.2], np.float32)
    if look.clouds > 0:
        cot = 1.0 / np.tan(np.maximum(e, math.radians(1.5)))
        cx = cot * np.sin(phi) * 800.0
        cy = cot * np.cos(phi) * 800.0
        n = noise.point_fbm(cx, cy, 900.0, look.cloud_seed, 3)
        cover = np.clip((n - (1.0 - look.clouds) * 0.75) / 0.2, 0, 1)
        cover *= np.clip(e / math.radians(3.0), 0, 1)
        shade = 0.78 + 0.22 * noise.point_noise(cx, cy, 250.0, look.cloud_seed + 1)
        col = col * (1 - cover)[:, None] + (np.array([0.93, 0.93, 0.95], np.float32) * shade[:, None]) * cover[:, None]
    return col.astype(np.float32)


class _Pass:
    """Flattened (``ny * nx``) layers of one heightfield variant: with or without trees."""

    def __init__(self, raster: Raster, light: np.ndarray, without_trees: bool):
        if without_trees:
            tree = raster.kind == KIND_TREE
            self.height = np.where(tree, np.float32(0), raster.height).ravel()
            self.kind = np.where(tree, np.uint8(0), raster.kind).ravel()
            self.eave = np.where(tree, np.float32(0), raster.eave).ravel()
            self.top = np.where(tree[:, :, None], raster.ground, raster.top).reshape(-1, 3)
        else:
            self.height = raster.height.ravel()
            self.kind = raster.kind.ravel()
            self.eave = raster.eave.ravel()
            self.top = raster.top.reshape(-1, 3)
        self.obj = raster.obj.ravel()
        self.ground = raster.ground.reshape(-1, 3)
        self.light = np.broadcast_to(light, raster.top.shape).reshape(-1, 3)
        self.wall_nx = raster.wall_nx.ravel()
        self.wall_ny = raster.wall_ny.ravel()
        self.wall_u = raster.wall_u.ravel()


def _first_cover(h: np.ndarray, t: np.ndarray, cam_height: float, centre_row: float, dv: float,
                 height: int, width: int) -> np.ndarray:
    """Index of the nearest sample covering each pixel (H x W; len(t) = none).

    Sample k's surface top projects to row v_k; it covers row v iff v_k <= v and no nearer
    sample covers v, i.e. k is the first index whose running minimum of v is <= v."""
    v_top = centre_row - np.arctan2(h - cam_height, t[:, None]) / dv
    running = np.minimum.accumulate(v_top, axis=0)
    first_row = np.clip(np.ceil(running - 1e-9), 0, height).astype(np.int64)
    hist = np.bincount((first_row * width + np.arange(width)[None, :]).ravel(), minlength=(height + 1) * width)
    covered = np.cumsum(hist.reshape(height + 1, width), axis=0)[:height]
    return len(t) - covered


def _bilinear(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Separable bilinear samples ``len(rows) x len(cols) x C`` of ``grid`` (H x W x C) at
    fractional cell coordinates (clamped to the grid)."""
    def axis(coords, n):
        c = np.clip(coords, 0, n - 1)
        lo = np.minimum(np.floor(c).astype(np.int64), n - 2 if n > 1 else 0)
        return lo, np.minimum(lo + 1, n - 1), (c - lo).astype(np.float32)

    r0, r1, wr = axis(rows, grid.shape[0])
    c0, c1, wc = axis(cols, grid.shape[1])
    along = grid[r0] * (1 - wr)[:, None, None] + grid[r1] * wr[:, None, None]
    return along[:, c0] * (1 - wc)[None, :, None] + along[:, c1] * wc[None, :, None]


def _join(a: Raster, b: Raster) -> Raster:
    """Two rasters' layers flattened and concatenated into one 1 x (Na + Nb) raster
    (cell indices of ``b`` follow those of ``a``)."""

    def cat(x, y):
        tail = x.shape[2:]
        return np.concatenate([x.reshape(1, -1, *tail), y.reshape(1, -1, *tail)], axis=1)

    layers = ("ground", "gcls", "height", "eave", "kind", "obj", "top", "wall_nx", "wall_ny", "wall_u")
    return Raster(a.res, a.col0, a.row0, **{name: cat(getattr(a, name), getattr(b, name)) for name in layers})


def render_panorama(scene: Scene, camera: Tuple[float, float], width: int, height: int, layout: str = "cvusa",
                    look: Look = NEUTRAL, cam_height: float = 2.0, res: float = 0.4,
                    view_radius: float = 90.0) -> Tuple[np.ndarray, np.ndarray]:
    """Ray-cast a north-aligned panorama at world ``camera`` (x east, y south, metres).

    ``layout`` "cvusa" (strip, square pixels, horizon at the middle) or "vigor" (full
    equirectangular sphere). ``res``: heightfield cell size (m) of the window of radius
    ``view_radius`` rasterised around the camera; beyond it only the distant silhouette
    and hazy ground are drawn. Tree canopies float: below a canopy's base the view passes
    to what lies behind (a second pass without trees), except for the trunk. Returns
    (RGB uint8 ``height x width x 3``, labels uint8 ``height x width``: 0 sky, 1 ground,
    2 building, 3 vegetation).
    """
    headings, elevations = panorama_angles(width, height, layout)
    dv = 2 * math.pi / width if layout == "cvusa" else math.pi / height
    centre_row = height / 2.0 - 0.5
    cam_x, cam_y = camera
    n_cells = int(math.ceil(2 * view_radius / res)) + 2
    col0 = math.floor(cam_x / res) - n_cells // 2
    row0 = math.floor(cam_y / res) - n_cells // 2
    coarse = rasterize(scene, res, col0, row0, n_cells, n_cells)
    coarse_light = surface_light(coarse, look)
    # near field: a 4x finer window around the camera (road markings, kerbs at the bottom rows)
    fine_res = res / 4.0
    near_radius = min(12.0, view_radius)
    n_fine = int(math.ceil(2 * near_radius / fine_res)) + 4
    fcol0 = math.floor(cam_x / fine_res) - n_fine // 2
    frow0 = math.floor(cam_y / fine_res) - n_fine // 2
    fine = rasterize(scene, fine_res, fcol0, frow0, n_fine, n_fine)
    fx = (fcol0 + np.arange(n_fine)) * fine_res
    fy = (frow0 + np.arange(n_fine)) * fine_res
    fine_light = _bilinear(np.broadcast_to(coarse_light, coarse.top.shape), fy / res - row0, fx / res - col0)
    raster = _join(coarse, fine)
    light = np.concatenate([np.broadcast_to(coarse_light, coarse.top.shape).reshape(1, -1, 3),
                            fine_light.reshape(1, -1, 3)], axis=1)
    n_coarse = n_cells * n_cells

    lowest = elevations.min()
    if lowest < -math.radians(80):
        near = 0.05
    else:
        near = max(0.05, 0.8 * cam_height / math.tan(-lowest)) if lowest < 0 else 1.0
    t = _ray_distances(near, view_radius, min(0.02, 4 * math.pi / width), 0.5 * res)
    dir_x = np.sin(headings)
    dir_y = -np.cos(headings)
    px = cam_x + t[:, None] * dir_x[None, :]
    py = cam_y + t[:, None] * dir_y[None, :]
    ci = np.rint(px / res - col0).astype(np.int64)
    ri = np.rint(py / res - row0).astype(np.int64)
    outside = (ci < 0) | (ci >= n_cells) | (ri < 0) | (ri >= n_cells)
    flat_idx = np.clip(ri, 0, n_cells - 1) * n_cells + np.clip(ci, 0, n_cells - 1)
    near_k = t < near_radius
    fci = np.rint(px[near_k] / fine_res - fcol0).astype(np.int64)
    fri = np.rint(py[near_k] / fine_res - frow0).astype(np.int64)
    flat_idx[near_k] = n_coarse + np.clip(fri, 0, n_fine - 1) * n_fine + np.clip(fci, 0, n_fine - 1)

    ctx = dict(scene=scene, look=look, t=t, flat_idx=flat_idx, outside=outside, headings=headings,
               elevations=elevations,
               dir_x=dir_x, dir_y=dir_y, camera=(cam_x, cam_y), cam_height=cam_height, view_radius=view_radius,
               sil=silhouette_elevation(scene, headings), haze=np.asarray(look.horizon_rgb, np.float32) * 0.92)
    image = np.empty((height, width, 3), np.float32)
    labels = np.empty((height, width), np.uint8)
    rr, cc = np.indices((height, width)).reshape(2, -1)

    full = _Pass(raster, light, without_trees=False)
    h = np.where(outside, np.float32(0), full.height[flat_idx])
    k_star = _first_cover(h, t, cam_height, centre_row, dv, height, width)
    colour, label, through = _shade(rr, cc, k_star[rr, cc], h, full, ctx)
    image[rr, cc] = colour
    labels[rr, cc] = label
    if through.any():
        bare = _Pass(raster, light, without_trees=True)
        h2 = np.where(outside, np.float32(0), bare.height[flat_idx])
        k2 = _first_cover(h2, t, cam_height, centre_row, dv, height, width)
        r2, c2 = rr[through], cc[through]
        colour, label, _ = _shade(r2, c2, k2[r2, c2], h2, bare, ctx)
        image[r2, c2] = colour
        labels[r2, c2] = label
    rgb = grade(image, look)
    return rgb, labels


def _shade(rr, cc, k, h, layers: _Pass, ctx) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour, label and "see through" flag (below a tree canopy) of pixels (rr, cc)
    whose first covering sample is ``k`` (len(t) = none)."""
    scene, look, t = ctx["scene"], ctx["look"], ctx["t"]
    headings, elevations = ctx["headings"], ctx["elevations"]
    dir_x, dir_y = ctx["dir_x"], ctx["dir_y"]
    cam_x, cam_y = ctx["camera"]
    haze = ctx["haze"]
    flat_look = scene.style.get("flat_ground", False)
    n = len(rr)
    colour = np.zeros((n, 3), np.float32)
    label = np.zeros(n, np.uint8)
    through = np.zeros(n, bool)

    hit = k < len(t)
    hi = np.flatnonzero(hit)
    if len(hi):
        kk, r_, c_ = k[hi], rr[hi], cc[hi]
        cell = ctx["flat_idx"][kk, c_]
        t_hit = t[kk]
        z = ctx["cam_height"] + t_hit * np.tan(elevations[r_])
        h_prev = np.where(kk > 0, h[np.maximum(kk - 1, 0), c_], 0.0)
        outside = ctx["outside"][kk, c_]
        kind = np.where(outside, np.uint8(0), layers.kind[cell])
        obj = layers.obj[cell]
        wall = (kind > 0) & (z > h_prev + 1e-6) & (z <= layers.eave[cell] + 1e-6)
        # the ray reached the ground just before an object's footprint (sampling gap): ground
        on_ground = (kind > 0) & ~wall & (z <= h_prev + 1e-6) & (h_prev < 0.05)
        kind = np.where(on_ground, 0, kind)
        col = np.where(on_ground[:, None], layers.ground[cell], layers.top[cell]) * layers.light[cell]
        if outside.any():
            col[outside] = scene.palette[GRASS] * look.ambient
        sun_x, sun_y = math.sin(look.sun_az), -math.cos(look.sun_az)
        cos_el = math.cos(look.sun_el)
        bw = wall & (kind == KIND_BUILDING)
        if bw.any():
            i = obj[bw]
            bl = scene.buildings
            cb = cell[bw]
            u = layers.wall_u[cb]
            zz = z[bw]
            facing = layers.wall_nx[cb] * sun_x + layers.wall_ny[cb] * sun_y
            lit = look.ambient + look.diffuse * 0.9 * cos_el * np.clip(facing, 0, 1)
            base = bl["facade_rgb"][i]
            if not flat_look:
                base = base * (0.93 + 0.12 * noise.point_noise(u + 31.0 * i, zz, 2.5, 5)[:, None])
            fz = zz / bl["floor_h"][i]
            fu = u / bl["win_period"][i]
            fz, fu = fz - np.floor(fz), fu - np.floor(fu)
            period = bl["win_period"][i]
            in_window = (fz > 0.3) & (fz < 0.8) & (np.abs(fu - 0.5) * period < np.minimum(0.7, 0.3 * period)) & \
                        (zz < bl["eave"][i] - 0.6) & (bl["windows"][i] > 0.5)
            half_win = np.minimum(0.7, 0.3 * period)
            in_frame = (fz > 0.26) & (fz < 0.84) & (np.abs(fu - 0.5) * period < half_win + 0.12) & \
                       (zz < bl["eave"][i] - 0.5) & (bl["windows"][i] > 0.5) & ~in_window
            glass = bl["window_rgb"][i] * (0.85 + 0.3 * np.clip(zz / 40.0, 0, 1))[:, None]
            facade = np.where(in_window[:, None], glass, base * lit[:, None])
            facade = np.where(in_frame[:, None], np.float32(0.82) * lit[:, None], facade)
            plinth = np.where(zz < 0.45, 0.72, 1.0) * (0.8 + 0.2 * np.clip(zz / 1.5, 0, 1))
            col[bw] = facade * plinth[:, None]
        tw = wall & (kind == KIND_TREE)
        if tw.any():
            i = obj[tw]
            tr = scene.trees
            zz = z[tw]
            dxr, dyr = dir_x[c_[tw]], dir_y[c_[tw]]
            facing = -(dxr * sun_x + dyr * sun_y)
            lit = look.ambient + look.diffuse * 0.7 * cos_el * np.clip(facing, 0, 1)
            hx = cam_x + t_hit[tw] * dxr
            hy = cam_y + t_hit[tw] * dyr
            if flat_look:
                leaves = np.full(len(i), 0.5, np.float32)
            else:
                leaves = noise.point_fbm(hx + hy * 0.7 + 13.0 * i, zz, 0.9, 7, 2)
            span = np.maximum(tr["height"][i] - tr["base"][i], 0.1)
            tone = (0.5 + 0.65 * leaves) * (0.62 + 0.38 * np.clip((zz - tr["base"][i]) / span, 0, 1))
            canopy = tr["rgb"][i] * (tone * lit)[:, None]
            # below the heightfield's canopy wall: the lower half of a round canopy (ray /
            # ellipsoid test), the trunk, or the view through to what lies behind
            below = zz < np.where(tr["conifer"][i] > 0.5, tr["base"][i], 0.5 * (tr["base"][i] + tr["height"][i]))
            cos_e = np.cos(elevations[r_[tw]])
            sin_e = np.sin(elevations[r_[tw]])
            radius = tr["radius"][i]
            semi = np.maximum(0.5 * (tr["height"][i] - tr["base"][i]), 0.1)
            ox, oy = cam_x - tr["cx"][i], cam_y - tr["cy"][i]
            oz = (ctx["cam_height"] - 0.5 * (tr["base"][i] + tr["height"][i])) * radius / semi
            qx, qy, qz = cos_e * dxr, cos_e * dyr, sin_e * radius / semi
            qb = ox * qx + oy * qy + oz * qz
            qa = qx * qx + qy * qy + qz * qz
            qc = ox * ox + oy * oy + oz * oz - radius * radius
            in_canopy = (qb * qb - qa * qc >= 0) & (tr["conifer"][i] < 0.5)
            canopy[below & in_canopy] *= 0.62
            perp = np.abs((tr["cx"][i] - cam_x) * dyr - (tr["cy"][i] - cam_y) * dxr)
            trunk = below & ~in_canopy & (perp < np.clip(0.06 * radius, 0.12, 0.3)) & (zz < tr["base"][i] + 1.0)
            canopy[trunk] = np.array([0.28, 0.22, 0.17], np.float32) * lit[trunk, None] * 0.8
            see = np.zeros(len(hi), bool)
            see[np.flatnonzero(tw)[below & ~in_canopy & ~trunk]] = True
            through[hi[see]] = True
            col[tw] = canopy
        fade = 1.0 - np.exp(-t_hit / look.fog) if math.isfinite(look.fog) else np.zeros_like(t_hit)
        if math.isfinite(look.fog) or scene.style.get("silhouette", {}).get("base", 0) > 0:
            vr = ctx["view_radius"]
            edge = np.clip((t_hit - 0.72 * vr) / (0.28 * vr), 0, 1)
            fade = np.maximum(fade, edge * edge * (3 - 2 * edge))
        colour[hi] = col * (1 - fade)[:, None] + haze[None, :] * fade[:, None]
        label[hi] = np.where(kind == KIND_BUILDING, LABEL_BUILDING,
                             np.where(kind == KIND_TREE, LABEL_VEGETATION, LABEL_GROUND))

    mi = np.flatnonzero(~hit)
    if len(mi):
        r_, c_ = rr[mi], cc[mi]
        el = elevations[r_]
        sil = ctx["sil"][c_]
        far_ground = el < 0
        treeline = (el >= 0) & (el < sil)
        sky = ~far_ground & ~treeline
        out = np.empty((len(mi), 3), np.float32)
        lab = np.empty(len(mi), np.uint8)
        out[far_ground] = haze * 0.97
        lab[far_ground] = LABEL_GROUND
        if treeline.any():
            tone = 0.85 + 0.3 * noise.point_noise(headings[c_[treeline]] * 60.0, el[treeline] * 400.0, 1.0, 3)
            tl = np.asarray(scene.style["silhouette"]["rgb"], np.float32)
            mix = 0.55 if math.isfinite(look.fog) else 0.0
            out[treeline] = (tl[None, :] * tone[:, None]) * (1 - mix) + haze[None, :] * mix
            lab[treeline] = LABEL_VEGETATION
        if sky.any():
            out[sky] = _sky(headings[c_[sky]], el[sky], look)
            lab[sky] = LABEL_SKY
        colour[mi] = out
        label[mi] = lab
    return colour, label, through
