"""The SAFA polar transform: the one home of its formula (numpy only; no torch).

Reference definition (docs/datasets.md), for an aerial of side S and an output of
``height x width``, output pixel ``(i, j)`` reads source pixel coordinates::

    r   = (S/2) / height * (height - 1 - i)      # row 0 = outer ring, last row = centre
    row = S/2 + r * cos(2*pi*j/width)            # source row    (axis 0)
    col = S/2 - r * sin(2*pi*j/width)            # source column (axis 1)

Convention
----------
* Source coordinates are pixel *index* coordinates: pixel ``[r, c]`` sits at ``(r, c)``;
  the centre of the transform is index ``(S/2, S/2)`` (not ``(S-1)/2``).
* Bilinear with the neighbours ``floor(.)`` and ``floor(.) + 1``; a neighbour outside
  ``[0, S)`` contributes 0.
* Column 0 looks South, W/4 West, W/2 North, 3W/4 East: the layout of CVUSA/VIGOR panoramas.
* A non-square ``Hs x Ws`` satellite scales rows by ``Hs`` and columns by ``Ws`` (an ellipse
  inscribed in the image); for ``Hs == Ws`` this is exactly the formula above.
* :func:`polar_grid` and :func:`polar_map_points` express the same map in the normalized
  ``(x, y)`` frame of ``F.grid_sample`` with ``align_corners=False`` (pixel column ``c`` of a
  width-``W`` image at ``x = (2c + 1) / W - 1``).
"""
from __future__ import annotations

import functools
from typing import Sequence, Tuple

import numpy as np

from geometry import hw


def polar_source(side_h: float, side_w: float, height: int, width: int, i, j) -> Tuple[np.ndarray, np.ndarray]:
    """Source ``(row, col)`` index coordinates (float64) read by output position ``(i, j)``.

    ``i``/``j`` are output row/column positions (arrays, continuous values allowed) of a
    ``height x width`` polar image of a ``side_h x side_w`` satellite.
    """
    i = np.asarray(i, dtype=np.float64)
    j = np.asarray(j, dtype=np.float64)
    theta = 2.0 * np.pi * j / width
    row = side_h / 2.0 + (side_h / 2.0) / height * (height - 1 - i) * np.cos(theta)
    col = side_w / 2.0 - (side_w / 2.0) / height * (height - 1 - i) * np.sin(theta)
    return row, col


def polar_source_coords(side: int, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Source (row, col) pixel coordinates, each ``height x width`` float64, of the SAFA grid."""
    i = np.arange(height, dtype=np.float64)[:, None]
    j = np.arange(width, dtype=np.float64)[None, :]
    return polar_source(side, side, height, width, i, j)


def _square_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"polar_transform expects a square H x W x C image, got shape {image.shape}")
    return image


def polar_transform(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Polar-transform a square ``S x S x C`` aerial into ``height x width x C`` float32.

    Exactly the SAFA formula above: bilinear, zero outside the image.
    """
    image = _square_image(image)
    side = image.shape[0]
    row, col = polar_source_coords(side, height, width)
    r0 = np.floor(row).astype(np.int64)
    c0 = np.floor(col).astype(np.int64)
    dr = (row - r0)[..., None]
    dc = (col - c0)[..., None]
    src = image.astype(np.float64)
    out = np.zeros((height, width, image.shape[2]), dtype=np.float64)
    for rr, cc, weight in (
        (r0, c0, (1 - dr) * (1 - dc)),
        (r0, c0 + 1, (1 - dr) * dc),
        (r0 + 1, c0, dr * (1 - dc)),
        (r0 + 1, c0 + 1, dr * dc),
    ):
        inside = (rr >= 0) & (rr < side) & (cc >= 0) & (cc < side)
        values = np.zeros_like(out)
        values[inside] = src[rr[inside], cc[inside]]
        out += weight * values
    return out.astype(np.float32)


@functools.lru_cache(maxsize=4)
def polar_gather_table(side: int, height: int, width: int, channels: int) -> Tuple[np.ndarray, np.ndarray]:
    """Precomputed bilinear taps of the SAFA grid for an ``S x S x C`` image (C-order flattened).

    Returns ``(index, weight)``, each ``4 x (height * width * channels)``: output element
    ``e`` is ``sum_k weight[k, e] * image.flat[index[k, e]]`` over the taps (r0, c0),
    (r0, c0+1), (r0+1, c0), (r0+1, c0+1) in that order. The weights are the float64 values
    :func:`polar_transform` computes; a tap outside the image has weight 0 and index 0.
    """
    row, col = polar_source_coords(side, height, width)
    r0 = np.floor(row).astype(np.int64)
    c0 = np.floor(col).astype(np.int64)
    dr = row - r0
    dc = col - c0
    channel = np.arange(channels)
    index = np.empty((4, height, width, channels), dtype=np.intp)
    weight = np.empty((4, height, width, channels), dtype=np.float64)
    taps = ((r0, c0, (1 - dr) * (1 - dc)), (r0, c0 + 1, (1 - dr) * dc),
            (r0 + 1, c0, dr * (1 - dc)), (r0 + 1, c0 + 1, dr * dc))
    for k, (rr, cc, w) in enumerate(taps):
        inside = (rr >= 0) & (rr < side) & (cc >= 0) & (cc < side)
        index[k] = np.where(inside, rr * side + cc, 0)[..., None] * channels + channel
        weight[k] = np.where(inside, w, 0.0)[..., None]
    index.setflags(write=False)
    weight.setflags(write=False)
    return index.reshape(4, -1), weight.reshape(4, -1)


def polar_transform_fast(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """:func:`polar_transform` through the cached gather table: bit-identical float32 output.

    Same arithmetic in the same order (float64 products, taps summed in order, then a
    float32 cast), so ``polar_transform_fast(a) == polar_transform(a)`` exactly.
    """
    image = _square_image(image)
    index, weight = polar_gather_table(image.shape[0], int(height), int(width), image.shape[2])
    flat = np.ascontiguousarray(image).reshape(-1)
    out = flat.take(index[0]).astype(np.float64)
    out *= weight[0]
    for k in range(1, 4):
        term = flat.take(index[k]).astype(np.float64)
        term *= weight[k]
        out += term
    return out.astype(np.float32).reshape(int(height), int(width), image.shape[2])


def polar_image_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The uint8 polar image the converter writes: ``clip(rint(polar_transform(image)), 0, 255)``.

    ``np.rint`` rounds half to even on the float32 value; no per-image stretching (SAFA's
    own files were min-max stretched per image by an old scipy save function; ours are not).
    """
    out = polar_transform_fast(image, height, width)
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def polar_map_points(points: np.ndarray, sate_size: Sequence[int], pano_size: Sequence[int]) -> np.ndarray:
    """Map panorama-frame points to satellite-frame points with the SAFA polar formula.

    ``points``: ``... x 2`` array of (x, y) normalized output positions (continuous, not
    only pixel centres). Returns the ``... x 2`` float64 (x, y) normalized satellite
    positions they read. At pixel centres it equals :func:`polar_grid`.
    """
    sate_h, sate_w = hw(sate_size)
    pano_h, pano_w = hw(pano_size)
    points = np.asarray(points, dtype=np.float64)
    j = ((points[..., 0] + 1.0) * pano_w - 1.0) / 2.0  # continuous output column
    i = ((points[..., 1] + 1.0) * pano_h - 1.0) / 2.0  # continuous output row
    row, col = polar_source(sate_h, sate_w, pano_h, pano_w, i, j)
    return np.stack([(2.0 * col + 1.0) / sate_w - 1.0, (2.0 * row + 1.0) / sate_h - 1.0], axis=-1)


def polar_grid(sate_size: Sequence[int], pano_size: Sequence[int]) -> np.ndarray:
    """Sampling grid ``1 x Hp x Wp x 2`` (float32, (x, y), align_corners=False) of the SAFA polar map.

    ``sate_size = (Hs, Ws)`` is the satellite (input) size, ``pano_size = (Hp, Wp)`` the
    output size. ``F.grid_sample(sat, grid, align_corners=False, padding_mode="zeros")``
    reproduces :func:`polar_transform` for square satellites.
    """
    pano_h, pano_w = hw(pano_size)
    i = np.arange(pano_h, dtype=np.float64)[:, None]
    j = np.arange(pano_w, dtype=np.float64)[None, :]
    x = (2.0 * j + 1.0) / pano_w - 1.0
    y = (2.0 * i + 1.0) / pano_h - 1.0
    points = np.stack(np.broadcast_arrays(x, y), axis=-1)
    return polar_map_points(points, sate_size, pano_size)[None].astype(np.float32)


def satellite_input_size(sate_size: Sequence[int], pano_size: Sequence[int], polar_files: bool) -> Tuple[int, int]:
    """(H, W) of the satellite tensor a model receives: a precomputed polar image has the
    panorama's size ``pano_size``; a raw aerial has ``sate_size``."""
    return hw(pano_size if polar_files else sate_size)
