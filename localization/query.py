"""Localise panoramas against an index: embed, search the top k, write the results and pictures.

Per query ``results.json`` holds ``{"query": path, "candidates": [{"rank", "tile", "lat", "lon",
"similarity"}, ...]}``, best first, ``rank`` counting from 1; when the panorama's file name
carries its GPS (VIGOR's ``<id>,<lat>,<lon>,.jpg``) also ``true_lat``/``true_lon`` and, per
candidate, ``distance_m`` (great circle, :func:`helper.metrics.haversine_m`). A model with the
``dsm`` head is searched over circular shifts (:func:`search_over_shifts`) and adds per
candidate ``heading_deg``, the heading of the best shift. A model with an offset head
(``--regress_offset``) adds per candidate the refined position ``lat_refined`` /
``lon_refined``: the tile centre moved by the in-tile offset predicted for that (panorama, tile)
pair (:mod:`helper.offsets` conventions), the normalised offset scaled by half the tile side in
metres (the index's ``tile_m``; unknown for ``--tiles`` built without ``--tile_m``: no refined
positions then). The candidates' tiles are re-embedded from their images for it, exactly as the
index was built, so it works with every index kind. A model with a pose head (``--pose dense``)
refines by it instead (:func:`helper.pose.pose_of_pairs`, as the test scripts) and gives each
candidate ``heading_deg``, the heading it estimates at that point; the picture marks the point
on each tile with an arrow along that heading.

Panoramas: any size; each is resized to the model's panorama size exactly as the evaluation
datasets do. A 360-degree panorama is at least about twice as wide as high (equirectangular
2:1 as VIGOR, up to a horizon strip like CVUSA's 5.5:1): an image whose width / height lies
outside :data:`PANORAMA_ASPECT` (a 4:3 or 16:9 photo, say) is refused.

Nothing is written until every panorama has been read and embedded; each file is written
atomically.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from common.errors import UserError
from common.fileio import write_bytes_atomic, write_json_atomic
from data.io import read_image
from data.vigor_layout import NOMINAL_METRES_PER_PIXEL, TILE_SIDE, parse_panorama_name
from helper.metrics import haversine_m
from localization.tiles import IMAGE_EXTENSIONS, TileReader
from models.offset import delta_pixels

#: Accepted width / height of a 360-degree panorama: 2:1 equirectangular up to a 5.5:1 strip.
PANORAMA_ASPECT = (1.9, 6.0)


def panorama_files(paths: Sequence[str], folder: Optional[str]) -> List[str]:
    """The panoramas named on the command line, or every image of ``--queries`` (sorted)."""
    if folder is not None:
        if not os.path.isdir(folder):
            raise UserError(f"--queries folder not found: {folder}")
        paths = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                       if name.lower().endswith(IMAGE_EXTENSIONS))
        if not paths:
            raise UserError(f"--queries folder {folder} holds no .jpg/.jpeg/.png panorama")
    if not paths:
        raise UserError("no panorama given: pass PANORAMA [PANORAMA ...] or --queries DIR")
    return list(paths)


def read_panorama(path: str, size: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """``(full image, model input at size)``, both RGB uint8; a UserError for an unreadable file or
    an image that is not a 360-degree panorama."""
    full = read_image(path)
    height, width = full.shape[:2]
    ratio = width / height
    low, high = PANORAMA_ASPECT
    if not low <= ratio <= high:
        raise UserError(f"{path} is {width}x{height} (width/height {ratio:.2f}): not a 360-degree panorama. "
                        f"Expected width/height between {low:g} and {high:g} (an equirectangular panorama is 2:1, "
                        f"a CVUSA-style horizon strip about 5.5:1); a normal photo covers a limited field of "
                        f"view, which localize.py does not handle yet (test_cvusa.py --test_fov evaluates the "
                        f"dsm head on such crops)")
    return full, read_image(path, size)  # exactly the evaluation datasets' input


def true_position(path: str) -> Optional[Tuple[float, float]]:
    """``(lat, lon)`` from a VIGOR-style panorama name, or None when the name carries no GPS."""
    try:
        _, lat, lon = parse_panorama_name(path)
    except UserError:
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lat, lon


def _figure_names(paths: Sequence[str]) -> List[str]:
    names, seen = [], set()
    for path in paths:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0]).strip("_") or "query"
        name, number = f"{stem}.png", 1
        while name in seen:
            number += 1
            name = f"{stem}_{number}.png"
        seen.add(name)
        names.append(name)
    return names


def _model_of(index, index_dir: str, checkpoint: Optional[str], device: str):
    """The checkpoint that built ``index`` (or ``checkpoint``, which must have the same weights)."""
    from localization.embed import load_model

    built_with = index.manifest["checkpoint"]
    path = checkpoint or built_with["path"]
    if checkpoint is None and not os.path.isfile(path):
        raise UserError(f"the checkpoint the index was built with is missing: {path}; pass --checkpoint with "
                        f"that checkpoint (weights {built_with['sha256'][:12]})")
    loaded = load_model(path, device)
    if loaded.sha256 != built_with["sha256"]:
        raise UserError(f"the index {index_dir} was built by another checkpoint ({built_with['path']}, weights "
                        f"{built_with['sha256'][:12]}) than {path} (weights {loaded.sha256[:12]}); query with the "
                        f"checkpoint that built it, or rebuild the index with localize.py index")
    return loaded


def search_over_shifts(index, street: np.ndarray, k: int, correlation) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dsm head's exact top ``k``: ``(similarities, tile indices, heading degrees)``, each
    queries x k, best first.

    With full-width maps of unit norm (:func:`localization.embed.embed`) the dsm similarity of
    shift ``s`` is the inner product of the street map rolled right by ``s`` columns with the
    tile's map (:mod:`models.orientation`), so each of the ``w`` rolls is one index search of
    ``k``; a tile's similarity is its best over the rolls. The merged top ``k`` is exact: a tile
    of the true top k is in the top k of the search at its own best shift.
    """
    from models.orientation import shift_heading

    c, h, w = correlation.channels, correlation.height, correlation.width
    maps = street.reshape(len(street), c, h, w)
    found = [index.search(np.roll(maps, shift, axis=-1).reshape(len(street), -1), k) for shift in range(w)]
    sims = np.full((len(street), k), -np.inf, dtype=np.float32)
    ids, shifts = np.full((len(street), k), -1, dtype=np.int64), np.zeros((len(street), k), dtype=np.int64)
    for q in range(len(street)):
        best = {}
        for shift, (values, rows) in enumerate(found):
            for value, row in zip(values[q], rows[q]):
                if row >= 0 and (row not in best or value > best[row][0]):  # first shift among ties
                    best[row] = (value, shift)
        ranked = sorted(best.items(), key=lambda item: -item[1][0])[:k]
        for r, (row, (value, shift)) in enumerate(ranked):
            sims[q, r], ids[q, r], shifts[q, r] = value, row, shift
    headings = shift_heading(torch.from_numpy(shifts), w, w).numpy()
    return sims, ids, headings


def tile_side_m(manifest: dict) -> Optional[float]:
    """The index's tile side in metres (indexes of VIGOR tiles built before it was recorded: nominal)."""
    source = manifest.get("source", {})
    if source.get("tile_m") is None and "satellites" in source:
        return TILE_SIDE * NOMINAL_METRES_PER_PIXEL
    return source.get("tile_m")


def refined_positions(loaded, index, street: np.ndarray, ids: np.ndarray, batch_size: int) -> np.ndarray:
    """``(queries, k, 2)`` lat/lon of every candidate's centre moved by the offset predicted for
    its pair (NaN where a query has fewer than k candidates)."""
    from helper.distributed import unwrap
    from helper.offsets import predict_offsets
    from localization.embed import TileImages, embed

    tiles, pairs = _candidate_tiles(index, ids)
    satellite = embed(loaded, TileImages(tiles, loaded.satellite_size, loaded.run.model.polar_files), "satellite",
                      batch_size, 0, desc="candidate tiles")
    device = loaded.env.device
    normalised = predict_offsets(unwrap(loaded.model), torch.from_numpy(np.repeat(street, ids.shape[1], 0)).to(device),
                                 torch.from_numpy(satellite).to(device),
                                 torch.from_numpy(pairs.reshape(-1)).to(device)).cpu().numpy()
    return _moved_centres(index, tiles, pairs, normalised, ids)


def _candidate_tiles(index, ids: np.ndarray):
    """``(tiles, pairs)``: the distinct candidate tiles of ``ids`` and each candidate's row among them."""
    rows = np.unique(ids[ids >= 0])
    return [index.tiles[int(r)] for r in rows], np.searchsorted(rows, np.where(ids >= 0, ids, rows[0]))


def _moved_centres(index, tiles, pairs: np.ndarray, normalised: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``(queries, k, 2)`` lat/lon: each candidate's tile centre moved by its normalised offset
    (``queries * k x 2``); NaN where a query has fewer than k candidates."""
    from helper.offsets import panorama_gps

    centres = np.array([(t.lat, t.lon) for t in tiles], dtype=np.float64)[pairs.reshape(-1)]
    side_m = tile_side_m(index.manifest)
    refined = panorama_gps(centres, delta_pixels(normalised, TILE_SIDE), side_m / TILE_SIDE).reshape(*ids.shape, 2)
    refined[ids < 0] = np.nan
    return refined


def pose_estimates(loaded, index, inputs: List[np.ndarray], ids: np.ndarray, batch_size: int):
    """The pose head's estimate for every (panorama, candidate) pair, exactly as the test scripts'
    (:func:`helper.pose.pose_of_pairs` on the tile images): ``(points (queries, k, 2) normalised deltas,
    headings (queries, k) degrees)``."""
    from helper.pose_eval import embed_panoramas, pose_of_pairs
    from localization.embed import PanoramaInputs, TileImages

    tiles, pairs = _candidate_tiles(index, ids)
    street = embed_panoramas(loaded.model, PanoramaInputs(inputs), loaded.env, batch_size, 0)
    delta, heading, _ = pose_of_pairs(loaded.model, street, TileImages(tiles, loaded.satellite_size),
                                      torch.from_numpy(pairs), loaded.env, batch_size, 0)
    return delta.cpu().numpy(), heading.cpu().numpy()


def _result(index, panorama: str, sims, rows, refined, headings, figure: Optional[str]) -> dict:
    """One query's entry of results.json: its candidates and, when its name has GPS, the truth."""
    truth = true_position(panorama)
    candidates = []
    for rank, (similarity, row) in enumerate(zip(sims, rows), start=1):
        if row < 0:  # an approximate index may find fewer than k
            break
        tile = index.tiles[int(row)]
        candidate = {"rank": rank, "tile": tile.name, "lat": tile.lat, "lon": tile.lon,
                     "similarity": float(similarity)}
        if refined is not None:
            candidate["lat_refined"], candidate["lon_refined"] = (float(v) for v in refined[rank - 1])
        if headings is not None:
            candidate["heading_deg"] = float(headings[rank - 1])
        if truth is not None:
            candidate["distance_m"] = float(haversine_m(truth[0], truth[1], tile.lat, tile.lon))
        candidates.append(candidate)
    result = {"query": panorama, "candidates": candidates}
    if truth is not None:
        result["true_lat"], result["true_lon"] = truth
    if figure is not None:
        result["figure"] = figure
    return result


def _write_outputs(index, results: List[dict], fulls, ids, out: str, pictures: bool,
                   points: Optional[np.ndarray] = None) -> None:
    """The PNGs (with ``pictures``; ``points``: the pose head's normalised deltas, queries x k x 2, drawn
    with the heading as an arrow on each tile), results.csv, results.geojson and results.json, atomically."""
    from localization.maps import MAX_TILES_SHOWN, query_figure, results_csv, results_geojson

    os.makedirs(out, exist_ok=True)
    if pictures:
        reader = TileReader()
        all_latlon = np.array([(t.lat, t.lon) for t in index.tiles], dtype=np.float64)
        for q, (result, full, rows) in enumerate(zip(results, fulls, ids)):
            shown = [reader(index.tiles[int(r)]) for r in rows[:len(result["candidates"])][:MAX_TILES_SHOWN]]
            png = query_figure(full, os.path.basename(result["query"]), shown, result["candidates"], all_latlon,
                               (result["true_lat"], result["true_lon"]) if "true_lat" in result else None,
                               None if points is None else points[q])
            write_bytes_atomic(os.path.join(out, result["figure"]), png)
    write_bytes_atomic(os.path.join(out, "results.csv"), results_csv(results))
    write_json_atomic(os.path.join(out, "results.geojson"), results_geojson(results))
    write_json_atomic(os.path.join(out, "results.json"), results)


def localise(index_dir: str, panoramas: Sequence[str], out: str, k: int = 5, checkpoint: Optional[str] = None,
             device: str = "auto", batch_size: int = 16, nprobe: Optional[int] = None, pictures: bool = True,
             log=print) -> List[dict]:
    """Query ``panoramas`` against the index in ``index_dir``; write the results into ``out``."""
    from localization.embed import PanoramaInputs, embed
    from localization.index import load_index

    if k < 1:
        raise UserError(f"-k must be >= 1, got {k}")
    index = load_index(index_dir, nprobe)
    loaded = _model_of(index, index_dir, checkpoint, device)
    fulls, inputs = [], []
    for panorama in panoramas:
        full, model_input = read_panorama(panorama, loaded.pano_size)
        fulls.append(full)
        inputs.append(model_input)
    descriptors = embed(loaded, PanoramaInputs(inputs), "street", batch_size, 0, desc="panoramas")
    headings = [None] * len(panoramas)
    if loaded.correlation is None:
        similarities, ids = index.search(descriptors, k)
    else:
        similarities, ids, headings = search_over_shifts(index, descriptors, min(k, len(index.tiles)),
                                                         loaded.correlation)
    refined, points = [None] * len(panoramas), None
    pose = loaded.run.model.pose != "none"
    if pose:  # the pose head refines (and gives the heading) when the model has one
        points, headings = pose_estimates(loaded, index, inputs, ids, batch_size)
    if (pose or loaded.run.model.regress_offset) and tile_side_m(index.manifest) is None:
        log(f"the model has {'a pose' if pose else 'an offset'} head but the index does not know its tiles' side in "
            f"metres (build it with --tile_m): no refined positions")
    elif pose:
        refined = _moved_centres(index, *_candidate_tiles(index, ids), points.reshape(-1, 2), ids)
    elif loaded.run.model.regress_offset:
        refined = refined_positions(loaded, index, descriptors, ids, batch_size)
    figures = _figure_names(panoramas) if pictures else [None] * len(panoramas)
    results = [_result(index, *entry) for entry in zip(panoramas, similarities, ids, refined, headings, figures)]
    _write_outputs(index, results, fulls, ids, out, pictures, points)
    for result in results:
        best = result["candidates"][0]
        line = (f"{os.path.basename(result['query'])}: {best['tile']} ({best['lat']:.6f}, {best['lon']:.6f}) "
                f"similarity {best['similarity']:.3f}")
        if "heading_deg" in best:
            line += f", heading {best['heading_deg']:.1f} deg"
        if "lat_refined" in best:
            line += f", refined ({best['lat_refined']:.6f}, {best['lon_refined']:.6f})"
        if "distance_m" in best:
            line += f", {best['distance_m']:.1f} m from the true position"
        log(line)
    log(f"{len(results)} queries, top-{min(k, len(index.tiles))} written to {out} "
        f"(results.json, results.csv, results.geojson{', one PNG per query' if pictures else ''})")
    return results
