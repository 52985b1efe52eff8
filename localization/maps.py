"""What a query writes besides results.json: the CSV, the GeoJSON and the picture of each query.

GeoJSON (RFC 7946): a FeatureCollection of Points, coordinates ``[lon, lat]`` (WGS 84), one
per candidate (``kind: "candidate"``, with query, rank, tile, similarity and, when the
panorama's name carries its GPS, ``distance_m``) and one per panorama with a known position
(``kind: "true position"``). It opens in QGIS, geojson.io and any other GIS.
"""
from __future__ import annotations

import csv
import io
import math
from typing import List, Optional, Sequence

import numpy as np

#: Candidate keys written to results.csv, in order (the optional ones only when some query has them).
CSV_KEYS = ("rank", "tile", "lat", "lon", "similarity")
OPTIONAL_KEYS = ("lat_refined", "lon_refined", "heading_deg", "distance_m")
#: At most this many tiles are drawn in a query's picture (all k are in the result files).
MAX_TILES_SHOWN = 10


def results_csv(results: List[dict]) -> bytes:
    """One row per (query, candidate): query, the candidate keys, the true GPS when known."""
    optional = [key for key in OPTIONAL_KEYS if any(key in c for r in results for c in r["candidates"])]
    header = ["query", *CSV_KEYS, *optional, "true_lat", "true_lon"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for result in results:
        for candidate in result["candidates"]:
            writer.writerow([result["query"], *(candidate[k] for k in CSV_KEYS), *(candidate.get(k, "") for k in optional),
                             result.get("true_lat", ""), result.get("true_lon", "")])
    return buffer.getvalue().encode("utf-8")


def _distance_text(metres: float) -> str:
    return f"{metres / 1000:.1f} km" if metres >= 10_000 else f"{metres:.0f} m"


def _point(lat: float, lon: float, properties: dict) -> dict:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]}, "properties": properties}


def results_geojson(results: List[dict]) -> dict:
    features = []
    for result in results:
        for candidate in result["candidates"]:
            properties = {"kind": "candidate", "query": result["query"],
                          **{k: v for k, v in candidate.items() if k not in ("lat", "lon")}}
            features.append(_point(candidate["lat"], candidate["lon"], properties))
        if "true_lat" in result:
            features.append(_point(result["true_lat"], result["true_lon"],
                                   {"kind": "true position", "query": result["query"]}))
    return {"type": "FeatureCollection", "features": features}


def _pose_arrow(ax, size: Sequence[int], delta: Sequence[float], heading_deg: float) -> None:
    """A dot at the normalised delta ``delta`` of a tile image of ``size`` (H, W) and an arrow along
    ``heading_deg`` (clockwise from north, north up) a fifth of the tile long."""
    height, width = size
    row, col = height / 2 * (1 + delta[0]), width / 2 * (1 - delta[1])
    length = 0.2 * min(height, width)
    angle = math.radians(heading_deg)
    ax.plot([col], [row], marker="o", markersize=3, color="tab:red")
    ax.arrow(col, row, length * math.sin(angle), -length * math.cos(angle), color="tab:red", width=0.01 * width,
             length_includes_head=True)


def query_figure(panorama: np.ndarray, title: str, tiles: Sequence[np.ndarray], candidates: Sequence[dict],
                 all_latlon: np.ndarray, true_latlon: Optional[Sequence[float]] = None,
                 points: Optional[np.ndarray] = None) -> bytes:
    """PNG bytes: the panorama; the top tiles with rank and similarity (with ``points``, one normalised
    delta per candidate, :mod:`models.offset`: that point on each tile with an arrow along the
    candidate's ``heading_deg``); a map of the index's tile centres (grey) with the candidates
    (numbered) and the true position (red star) when known."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.gridspec import GridSpec

    shown = min(len(tiles), MAX_TILES_SHOWN)
    columns = max(shown, 4)
    fig = plt.figure(figsize=(2.0 * columns + 4.5, 6.0), dpi=100)
    grid = GridSpec(2, columns + 2, figure=fig, height_ratios=[1.2, 1.0], wspace=0.15, hspace=0.3)
    ax = fig.add_subplot(grid[0, :columns])
    ax.imshow(panorama)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    for i in range(shown):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(tiles[i])
        candidate = candidates[i]
        label = f"#{candidate['rank']}  {candidate['similarity']:.3f}"
        if "distance_m" in candidate:
            label += f"\n{_distance_text(candidate['distance_m'])} off"
        ax.set_title(label, fontsize=8)
        if points is not None:
            _pose_arrow(ax, tiles[i].shape[:2], points[i], candidate["heading_deg"])
        ax.axis("off")
    ax = fig.add_subplot(grid[:, columns:])
    ax.scatter(all_latlon[:, 1], all_latlon[:, 0], s=6, c="0.75", label="tiles")
    lats = np.array([c["lat"] for c in candidates])
    lons = np.array([c["lon"] for c in candidates])
    ax.scatter(lons, lats, s=40, facecolors="none", edgecolors="tab:blue", label="candidates")
    for candidate in candidates[:MAX_TILES_SHOWN]:
        ax.annotate(str(candidate["rank"]), (candidate["lon"], candidate["lat"]), fontsize=7, color="tab:blue",
                    xytext=(3, 3), textcoords="offset points")
    if true_latlon is not None:
        ax.scatter([true_latlon[1]], [true_latlon[0]], marker="*", s=120, c="tab:red", label="true position")
    centre = float(np.mean(all_latlon[:, 0]))
    ax.set_aspect(1.0 / max(math.cos(math.radians(centre)), 1e-6), adjustable="datalim")
    ax.set_xlabel("longitude", fontsize=8)
    ax.set_ylabel("latitude", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.locator_params(nbins=4)
    ax.ticklabel_format(useOffset=False)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("index extent", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    fig.clear()  # drops the images at once: a closed figure may wait in a reference cycle until gc runs
    plt.close(fig)
    return buffer.getvalue()
