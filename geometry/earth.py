"""The sphere of the official VIGOR evaluation: great-circle distances and local metres <-> GPS.

Conventions: GPS is (lat, lon) in degrees, latitude first; the earth is a sphere of radius
:data:`EARTH_RADIUS_M`. Around an origin (lat0, lon0) a point ``north`` metres north and
``east`` metres east is at (local equirectangular projection, radians)
``lat = lat0 + north / R``, ``lon = lon0 + east / (R cos lat0)``; over a tile or a city the
error of that projection is far below a pixel. Everything is float64 numpy and broadcasts;
:func:`haversine_m` also takes torch tensors.

Label deltas (VIGOR's, docs/datasets.md): a delta ``(d0, d1)`` is the tile centre minus the
panorama in pixels of the label's tile; the panorama sits at row ``320 + d0``, column
``320 - d1`` of the 640 tile, so ``d0 > 0`` puts it **south** of the centre and ``d1 > 0``
**west**: with ``s`` metres per label pixel it is ``-d0 * s`` north and ``-d1 * s`` east.
"""
from __future__ import annotations

import math
import sys
from typing import Tuple

import numpy as np

#: Earth radius of the official VIGOR metre-level evaluation, in metres (the one radius of the project).
EARTH_RADIUS_M = 6_371_004.0


def haversine_m(lat1, lon1, lat2, lon2, radius: float = EARTH_RADIUS_M):
    """Great-circle distance in metres between (lat1, lon1) and (lat2, lon2), in degrees.

    Vectorised (broadcasting) in float64; torch tensors in -> float64 tensor out, anything else
    -> numpy float64 array (or scalar). Haversine form (stable for small distances); the
    official VIGOR code uses the mathematically equivalent spherical law of cosines.
    """
    torch = sys.modules.get("torch")  # a tensor argument means torch is loaded; this module never loads it
    values = (lat1, lon1, lat2, lon2)
    if torch is not None and any(isinstance(v, torch.Tensor) for v in values):
        xp = torch
        dev = next(v.device for v in values if isinstance(v, torch.Tensor))
        args = [torch.as_tensor(v, dtype=torch.float64).to(dev) for v in values]
    else:
        xp = np
        args = [np.asarray(v, dtype=np.float64) for v in values]
    p1, l1, p2, l2 = (a * (math.pi / 180.0) for a in args)
    h = xp.sin((p2 - p1) / 2) ** 2 + xp.cos(p1) * xp.cos(p2) * xp.sin((l2 - l1) / 2) ** 2
    h = xp.clip(h, 0.0, 1.0)
    return 2.0 * radius * xp.arcsin(xp.sqrt(h))


def north_east_to_gps(lat0, lon0, north_m, east_m) -> Tuple[np.ndarray, np.ndarray]:
    """``(lat, lon)`` degrees of the points ``north_m`` north and ``east_m`` east of
    (``lat0``, ``lon0``) (the module's local projection)."""
    lat0 = np.asarray(lat0, dtype=np.float64)
    lat = lat0 + np.degrees(np.asarray(north_m, dtype=np.float64) / EARTH_RADIUS_M)
    lon = lon0 + np.degrees(np.asarray(east_m, dtype=np.float64) / (EARTH_RADIUS_M * np.cos(np.radians(lat0))))
    return lat, lon


def gps_to_north_east(lat0, lon0, lat, lon) -> Tuple[np.ndarray, np.ndarray]:
    """``(north, east)`` metres of (``lat``, ``lon``) from (``lat0``, ``lon0``): the inverse of
    :func:`north_east_to_gps`."""
    lat0 = np.asarray(lat0, dtype=np.float64)
    north = np.radians(np.asarray(lat, dtype=np.float64) - lat0) * EARTH_RADIUS_M
    east = np.radians(np.asarray(lon, dtype=np.float64) - lon0) * EARTH_RADIUS_M * np.cos(np.radians(lat0))
    return north, east


def panorama_gps(tile_gps, delta, metres_per_pixel) -> np.ndarray:
    """GPS ``(..., 2)`` (lat, lon degrees) of the panorama whose label delta to the tile centred
    at ``tile_gps`` ``(..., 2)`` is ``delta`` ``(..., 2)`` pixels (see the module doc);
    ``metres_per_pixel`` a scalar or broadcastable array. Float64."""
    tile_gps = np.asarray(tile_gps, dtype=np.float64)
    delta = np.asarray(delta, dtype=np.float64)
    scale = np.asarray(metres_per_pixel, dtype=np.float64)
    lat, lon = north_east_to_gps(tile_gps[..., 0], tile_gps[..., 1], -delta[..., 0] * scale, -delta[..., 1] * scale)
    return np.stack([lat, lon], axis=-1)
