"""The SAFA polar transform of aerial images.

Reference definition (datasets.md), for a square aerial of side S and an output of
``height x width``::

    r   = (S/2) / height * (height - 1 - i)      # row 0 = outer ring, last row = centre
    row = S/2 + r * cos(2*pi*j/width)            # source row    (axis 0)
    col = S/2 - r * sin(2*pi*j/width)            # source column (axis 1)

The value is the bilinear sample at (row, col) using the neighbours floor(.) and
floor(.)+1; a neighbour outside [0, S) contributes 0. Column 0 looks South, W/4
West, W/2 North, 3W/4 East: the same layout as CVUSA/VIGOR panoramas.
"""
from __future__ import annotations

import numpy as np


def polar_source_coords(side: int, height: int, width: int) -> tuple:
    """Source (row, col) pixel coordinates, each ``height x width`` float64, of the SAFA grid."""
    i = np.arange(height, dtype=np.float64)[:, None]
    j = np.arange(width, dtype=np.float64)[None, :]
    radius = (side / 2.0) / height * (height - 1 - i)
    theta = 2.0 * np.pi * j / width
    row = side / 2.0 + radius * np.cos(theta)
    col = side / 2.0 - radius * np.sin(theta)
    return row, col


def polar_transform(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Polar-transform a square ``S x S x C`` aerial into ``height x width x C`` float32.

    Exactly the SAFA formula above: bilinear, zero outside the image.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"polar_transform expects a square H x W x C image, got shape {image.shape}")
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
