"""How a query is searched beyond "a panorama against every tile": a GPS prior and a limited field of view.

* **Prior** (``--near LAT,LON --radius_m R`` or ``--prior exif``): only the tiles whose centre
  lies within ``R`` metres (great circle, :func:`geometry.earth.haversine_m`) of the prior are
  searched. ``exif`` reads the photo's EXIF GPS (a photo without it is an error);
  ``exif_if_present`` warns and searches every tile for such a photo.
* **Field of view** (``--fov DEG``): a photo covering ``DEG`` degrees (any aspect) is resized to
  the model's panorama height and ``fov_width(pano width, DEG)`` columns
  (:mod:`geometry.heading`), exactly the window ``test_cvusa.py --test_fov DEG`` feeds; only a
  head that takes windows (``dsm``) slides it over the satellite strip and estimates the heading.

Both are searched by brute force over the tiles' descriptors as the index stores them
(:func:`stored_descriptors`: exact for ``flat`` and ``ivf``; for ``ivfpq`` the re-scoring
vectors, or the PQ codes with ``--refine_bits 0``), in chunks of :data:`SEARCH_CHUNK` tiles:
the inner product, or the dsm similarity over column shifts
(:class:`models.orientation.CircularCorrelation`) whose best shift gives ``heading_deg``.
Each result records ``searched``, the number of tiles searched for it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple

import numpy as np

from common.errors import UserError
from geometry.heading import FULL_CIRCLE, fov_width
from geometry.earth import haversine_m

PRIORS = ("none", "exif", "exif_if_present")
#: Tiles scored per block of the brute-force search.
SEARCH_CHUNK = 4096


# ------------------------------------------------------------------------------ priors
def parse_near(text: str) -> Tuple[float, float]:
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--near must be LAT,LON in degrees, got {text!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise UserError(f"--near {text!r} lies outside latitude [-90, 90] / longitude [-180, 180]")
    return lat, lon


def _degrees(values, ref: bytes, negative: bytes) -> float:
    degrees = sum(float(Fraction(int(n), int(d))) / 60 ** i for i, (n, d) in enumerate(values))
    return -degrees if ref.upper().startswith(negative) else degrees


def exif_gps(path: str) -> Optional[Tuple[float, float]]:
    """``(lat, lon)`` of a photo's EXIF GPS, or None when it has none (PNG, no EXIF, no GPS tags)."""
    import piexif

    try:
        gps = piexif.load(path).get("GPS") or {}
    except (piexif.InvalidImageDataError, ValueError, KeyError, OSError, TypeError):
        return None
    tags = piexif.GPSIFD
    try:
        lat = _degrees(gps[tags.GPSLatitude], gps.get(tags.GPSLatitudeRef, b"N"), b"S")
        lon = _degrees(gps[tags.GPSLongitude], gps.get(tags.GPSLongitudeRef, b"E"), b"W")
    except (KeyError, ValueError, TypeError, ZeroDivisionError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lat, lon


# ----------------------------------------------------------------------------- search
def stored_descriptors(index, rows: np.ndarray) -> np.ndarray:
    """The descriptors a FAISS index stores for ``rows`` (module doc), float32 ``len(rows) x D``."""
    import faiss

    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexRefine):
        inner = faiss.downcast_index(inner.refine_index)
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()
    return inner.reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64))


def brute_force(index, street: np.ndarray, rows: np.ndarray, k: int, correlation
                ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Top ``k`` of one query descriptor over tiles ``rows``: ``(similarities, rows, headings or None)``,
    best first (ties: the lower row first)."""
    import torch

    query = torch.from_numpy(np.ascontiguousarray(street[None], dtype=np.float32))
    sims, shifts = [], []
    for start in range(0, len(rows), SEARCH_CHUNK):
        stored = stored_descriptors(index, rows[start:start + SEARCH_CHUNK])
        if correlation is None:
            sims.append(stored @ query[0].numpy())
        else:
            value, shift = correlation(query, torch.from_numpy(stored))
            sims.append(value[0].numpy())
            shifts.append(shift[0])
    sims = np.concatenate(sims)
    order = np.lexsort((rows, -sims))[:k]
    headings = None
    if correlation is not None:
        headings = correlation.heading(torch.cat(shifts)[torch.from_numpy(order)], street.shape[0]).numpy()
    return sims[order].astype(np.float32), rows[order], headings


@dataclass
class QueryView:
    """A query's prior and field of view (module doc); the default searches every tile with panoramas."""

    near: Optional[Tuple[float, float]] = None
    radius_m: Optional[float] = None
    prior: str = "none"
    fov: Optional[float] = None
    centres: List[Optional[Tuple[float, float]]] = field(default_factory=list)
    searched_rows: List[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.prior not in PRIORS:
            raise UserError(f"unknown --prior {self.prior!r}; valid: {', '.join(PRIORS)}")
        if self.near is not None and self.prior != "none":
            raise UserError("give --near LAT,LON or --prior exif, not both")
        located = self.near is not None or self.prior != "none"
        if located and self.radius_m is None:
            raise UserError("--near and --prior need --radius_m R (metres around the prior to search)")
        if self.radius_m is not None:
            if not located:
                raise UserError("--radius_m only applies with --near LAT,LON or --prior exif")
            if not (math.isfinite(self.radius_m) and self.radius_m > 0):
                raise UserError(f"--radius_m must be a finite number > 0, got {self.radius_m:g}")
        if self.fov is not None and not (math.isfinite(self.fov) and 0 < self.fov <= FULL_CIRCLE):
            raise UserError(f"--fov must be in (0, 360] degrees, got {self.fov:g}")

    @property
    def brute_force(self) -> bool:
        return self.radius_m is not None or self.fov is not None

    def locate(self, photos: Sequence[str], log=print) -> None:
        """Read each photo's prior centre up front (EXIF errors before anything runs)."""
        self.centres = [self.near] * len(photos)
        if self.prior == "none":
            return
        for number, photo in enumerate(photos):
            self.centres[number] = exif_gps(photo)
            if self.centres[number] is None:
                if self.prior == "exif":
                    raise UserError(f"{photo} has no EXIF GPS position for --prior exif; give --near LAT,LON "
                                    f"instead, or --prior exif_if_present to search every tile for such photos")
                log(f"warning: {photo} has no EXIF GPS position; searching every tile for it")

    def prepare(self, index, loaded) -> None:
        """Check the model takes this view and find each query's tiles, before anything is embedded."""
        self.searched_rows = [self.rows(index.tiles, centre) for centre in self.centres] if self.brute_force else []
        model = loaded.run.model
        if not self.limited:
            return
        if not model.takes_windows:
            raise UserError(f"--fov {self.fov:g} needs a checkpoint whose head takes street windows; the head of "
                            f"{loaded.path} is '{model.head}': train one with --head dsm (test_cvusa.py --test_fov "
                            f"evaluates it on such crops)")
        for head, present in (("offset", model.regress_offset), ("pose", model.pose != "none")):
            if present:
                raise UserError(f"--fov {self.fov:g}: the {head} head of {loaded.path} needs 360-degree panoramas")

    @property
    def limited(self) -> bool:
        """Whether the photos cover less than a full circle (``--fov`` below 360)."""
        return self.fov is not None and self.fov != FULL_CIRCLE

    def input_size(self, pano_size: Sequence[int]) -> Tuple[int, int]:
        """The model input of this view's photos: the panorama height and the window's width."""
        height, width = pano_size
        return (height, fov_width(width, self.fov)) if self.limited else (height, width)

    def rows(self, tiles, centre: Optional[Tuple[float, float]]) -> np.ndarray:
        """Index rows of the tiles to search around ``centre`` (all without a prior)."""
        if centre is None or self.radius_m is None:
            return np.arange(len(tiles), dtype=np.int64)
        lat = np.array([t.lat for t in tiles])
        lon = np.array([t.lon for t in tiles])
        distance = haversine_m(centre[0], centre[1], lat, lon)
        rows = np.nonzero(distance <= self.radius_m)[0].astype(np.int64)
        if not len(rows):
            raise UserError(f"no tile of the index lies within --radius_m {self.radius_m:g} m of the prior "
                            f"({centre[0]:.6f}, {centre[1]:.6f}); the nearest is {float(distance.min()):.0f} m "
                            f"away (the index covers latitude {lat.min():.6f} to {lat.max():.6f}, longitude "
                            f"{lon.min():.6f} to {lon.max():.6f}): check the prior or use a larger --radius_m")
        return rows

    def search(self, index, descriptors: np.ndarray, k: int, correlation):
        """``(similarities, rows, headings or None per query, searched per query)``; rows -1 past the found
        (after :meth:`locate` and :meth:`prepare`)."""
        k = min(int(k), len(index.tiles))
        sims = np.full((len(descriptors), k), -np.inf, dtype=np.float32)
        ids = np.full((len(descriptors), k), -1, dtype=np.int64)
        headings, searched = [], []
        for number, street in enumerate(descriptors):
            rows = self.searched_rows[number]
            found_sims, found_rows, found_headings = brute_force(index.index, street, rows, k, correlation)
            sims[number, :len(found_rows)], ids[number, :len(found_rows)] = found_sims, found_rows
            headings.append(found_headings)
            searched.append(len(rows))
        return sims, ids, headings if correlation is not None else [None] * len(descriptors), searched
