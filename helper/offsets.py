"""Metre-level localisation refined by a predicted in-tile offset (VIGOR).

A label delta and the GPS of its panorama are related by :func:`geometry.earth.panorama_gps`
(the convention and the local projection on the sphere of the VIGOR evaluation are in
:mod:`geometry.earth`).

Metres per label pixel are a property of each city's imagery, read off its labels
(:func:`label_metres_per_pixel`): the median ratio of the panorama-to-tile-centre distance
(from the GPS in the file names) to the label's pixel distance, over every tile of every
panorama. It is 0.114 on the synthetic world; on real VIGOR it is the scale the labels were
made with (not checked here; SliceMatch's per-city figures for the imagery: 0.1008-0.1181).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from common.errors import UserError
from geometry.earth import gps_to_north_east, haversine_m, panorama_gps
from helper.metrics import localization_summary

#: Label offsets shorter than this (pixels) carry too little of the scale to estimate it.
MIN_SCALE_DELTA_PX = 1.0


def label_metres_per_pixel(street_gps: np.ndarray, tile_gps: np.ndarray, delta: np.ndarray) -> float:
    """Metres per label pixel implied by labels: ``street_gps`` (N, 2), the GPS of their tiles
    ``tile_gps`` (N, T, 2) and the deltas (N, T, 2); the median over the pairs (module doc)."""
    street_gps = np.asarray(street_gps, dtype=np.float64)[:, None, :]
    tile_gps = np.asarray(tile_gps, dtype=np.float64)
    delta = np.asarray(delta, dtype=np.float64)
    north, east = gps_to_north_east(tile_gps[..., 0], tile_gps[..., 1], street_gps[..., 0], street_gps[..., 1])
    pixels = np.hypot(delta[..., 0], delta[..., 1])
    usable = pixels >= MIN_SCALE_DELTA_PX
    if not usable.any():
        raise UserError("the VIGOR labels have no offset of a pixel or more: cannot tell the metres per pixel")
    return float(np.median(np.hypot(north, east)[usable] / pixels[usable]))


def city_metres_per_pixel(index) -> np.ndarray:
    """Metres per label pixel of each city of a :class:`data.vigor_layout.VigorIndex` (``len(cities)``,)."""
    tiles = np.concatenate([index.positive[:, None], index.semi], axis=1)
    out = np.empty(len(index.cities), dtype=np.float64)
    for c in range(len(index.cities)):
        rows = index.street_city == c
        out[c] = label_metres_per_pixel(index.street_gps[rows], index.satellite_gps[tiles[rows]], index.deltas[rows])
    return out


def refined_localization(index, top1: torch.Tensor, offset_px: np.ndarray) -> dict:
    """The results JSON's ``localization_refined`` and ``localization_top1_positive`` blocks.

    ``top1`` (N,) the top-1 satellite of every query of ``index``; ``offset_px`` (N, 2) the
    delta predicted for each (query, top-1) pair in label pixels. The refined position is the
    top-1 centre moved by that offset (module doc), with the metres per pixel of the top-1's city.
    """
    top1 = np.asarray(top1.detach().cpu().long())
    scale = city_metres_per_pixel(index)[index.satellite_city[top1]]
    refined = panorama_gps(index.satellite_gps[top1], offset_px, scale)
    street = index.street_gps
    error = haversine_m(street[:, 0], street[:, 1], refined[:, 0], refined[:, 1])
    centre = haversine_m(street[:, 0], street[:, 1], index.satellite_gps[top1, 0], index.satellite_gps[top1, 1])
    hit = top1 == index.positive
    return {"localization_refined": localization_summary(error),
            "localization_top1_positive": {"queries": int(hit.sum()), "median_m": _median(centre[hit]),
                                           "median_m_refined": _median(error[hit])}}


def _median(values: np.ndarray) -> Optional[float]:
    return float(np.median(values)) if values.size else None


def predict_offsets(model, street: torch.Tensor, satellite: torch.Tensor, top1: torch.Tensor,
                    batch_size: int = 4096) -> torch.Tensor:
    """Normalised offsets ``(N, 2)`` of the pairs (street[i], satellite[top1[i]]), batched on the
    descriptors' device by the (unwrapped) model's offset head, without gradients, in float32."""
    out = []
    with torch.no_grad():
        for s in range(0, street.shape[0], batch_size):
            rows = slice(s, s + batch_size)
            out.append(model.predict_offset(street[rows], satellite[top1[rows]]).float())
    return torch.cat(out)
