"""Localise panoramas against an index: embed, search the top k, write the results and pictures.

Per query ``results.json`` holds ``{"query": path, "candidates": [{"rank", "tile", "lat", "lon",
"similarity"}, ...]}``, best first, ``rank`` counting from 1; when the panorama's file name
carries its GPS (VIGOR's ``<id>,<lat>,<lon>,.jpg``) also ``true_lat``/``true_lon`` and, per
candidate, ``distance_m`` (great circle, :func:`geometry.earth.haversine_m`). A model with the
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

Panoramas: any size from :data:`data.io.MIN_IMAGE_SIDE` pixels a side; each is resized to the
model's panorama size exactly as the evaluation datasets do. A 360-degree panorama is at least
about twice as wide as high (equirectangular 2:1 as VIGOR, up to a horizon strip like CVUSA's
5.5:1): an image whose width / height lies outside :data:`PANORAMA_ASPECT` (a 4:3 or 16:9
photo, say) is refused. Every panorama's header is checked before any work.

Memory: panoramas are decoded one batch at a time at the model's size, and again one at a time
(at most :data:`PICTURE_WIDTH` pixels wide) for their picture, so memory does not grow with
the number of queries beyond the descriptors and the results (a few kB per query).

Outputs are all-or-nothing: they are written into a staging folder beside ``--out`` that then
replaces ``--out`` as a whole (a previous query's outputs there are replaced, never mixed with
the new ones; a folder holding other files is refused up front). The index refers to tiles by
path: the candidates' tiles are read back for the pictures and the refined positions, so they
must still be where, and as, they were indexed (checked before anything is written).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from common.errors import UserError
from common.fileio import check_output_dir, write_bytes_atomic, write_json_atomic
from data.io import read_image
from data.vigor_layout import TILE_SIDE, TILE_SIDE_M, parse_panorama_name
from geometry.earth import haversine_m, panorama_gps
from localization.geo import GeoTileReader
from localization.maps import MAX_TILES_SHOWN
from localization.tiles import check_image_file, image_names
from models.offset import delta_pixels

#: Accepted width / height of a 360-degree panorama: 2:1 equirectangular up to a 5.5:1 strip.
PANORAMA_ASPECT = (1.9, 6.0)
#: A query's picture shows its panorama at most this many pixels wide (the figure draws it smaller).
PICTURE_WIDTH = 2048


def panorama_files(paths: Sequence[str], folder: Optional[str]) -> List[str]:
    """The panoramas named on the command line, or every image of ``--queries`` (sorted)."""
    if folder is not None:
        if not os.path.isdir(folder):
            raise UserError(f"--queries folder not found: {folder}")
        paths = [os.path.join(folder, name) for name in image_names(folder)]
        if not paths:
            raise UserError(f"--queries folder {folder} holds no .jpg/.jpeg/.png panorama")
    if not paths:
        raise UserError("no panorama given: pass PANORAMA [PANORAMA ...] or --queries DIR")
    return list(paths)


def check_panorama(path: str, limited: bool = False) -> None:
    """A UserError unless ``path`` is a JPEG/PNG file (:func:`localization.tiles.check_image_file`)
    shaped like a 360-degree panorama (any shape for a ``limited`` field of view, ``--fov``); nothing
    is decoded."""
    height, width = check_image_file(path, "panorama", "pass a 360-degree panorama")
    if limited:
        return
    ratio = width / height
    low, high = PANORAMA_ASPECT
    if not low <= ratio <= high:
        raise UserError(f"{path} is {width}x{height} (width/height {ratio:.2f}): not a 360-degree panorama. "
                        f"Expected width/height between {low:g} and {high:g} (an equirectangular panorama is 2:1, "
                        f"a CVUSA-style horizon strip about 5.5:1); for a photo of a limited field of view pass "
                        f"--fov DEG (with a --head dsm checkpoint)")


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
        return TILE_SIDE_M
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
    centres = np.array([(t.lat, t.lon) for t in tiles], dtype=np.float64)[pairs.reshape(-1)]
    side_m = tile_side_m(index.manifest)
    refined = panorama_gps(centres, delta_pixels(normalised, TILE_SIDE), side_m / TILE_SIDE).reshape(*ids.shape, 2)
    refined[ids < 0] = np.nan
    return refined


def pose_estimates(loaded, index, panoramas, ids: np.ndarray, batch_size: int):
    """The pose head's estimate for every (panorama, candidate) pair of the ``panoramas`` dataset
    (:class:`localization.embed.PanoramaFiles`), exactly as the test scripts' (:func:`helper.pose.pose_of_pairs`
    on the tile images): ``(points (queries, k, 2) normalised deltas, headings (queries, k) degrees)``."""
    from helper.pose_eval import embed_panoramas, pose_of_pairs
    from localization.embed import TileImages

    tiles, pairs = _candidate_tiles(index, ids)
    street = embed_panoramas(loaded.model, panoramas, loaded.env, batch_size, 0)
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


#: The files a query writes besides its pictures (whose names results.json lists).
RESULT_FILES = ("results.json", "results.csv", "results.geojson")


def check_out_folder(out: str) -> None:
    """A UserError unless ``out`` is new, empty or holds only a previous query's outputs (which the
    new ones replace as a whole), and the folder around it lets a staging folder be renamed into it."""
    check_output_dir(os.path.dirname(os.path.abspath(out)), "the folder of --out")
    if not os.path.isdir(out):
        return
    ours = set(RESULT_FILES)
    try:
        with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
            ours.update(r["figure"] for r in json.load(handle) if isinstance(r, dict) and "figure" in r)
    except (OSError, ValueError, TypeError):
        pass
    others = sorted(set(os.listdir(out)) - ours)
    if others:
        raise UserError(f"--out {out} holds files that are not the outputs of a previous query "
                        f"({', '.join(others[:3])}{' ...' if len(others) > 3 else ''}), which the new outputs would "
                        f"replace; choose a new or empty --out")


def check_tiles_on_disk(index, rows: np.ndarray) -> None:
    """A UserError unless every tile among ``rows`` is still the file that was indexed."""
    for row in np.unique(rows[rows >= 0]):
        tile = index.tiles[int(row)]
        problem = tile.stamp_differs()
        if problem:
            raise UserError(f"the index refers to tiles by path, and tile {tile.name} ({tile.path}) {problem}; "
                            f"put the tiles back where and as they were indexed, rebuild the index with "
                            f"localize.py index --rebuild, or query with --no-pictures (and without refined "
                            f"positions) to use the index alone")


def _write_outputs(index, results: List[dict], ids, out: str, pictures: bool,
                   points: Optional[np.ndarray] = None) -> None:
    """The PNGs (with ``pictures``; each panorama read again, one at a time; ``points``: the pose head's
    normalised deltas, queries x k x 2, drawn with the heading as an arrow on each tile), results.csv,
    results.geojson and results.json into a staging folder, which then replaces ``out``."""
    from localization.maps import query_figure, results_csv, results_geojson

    parent, name = os.path.split(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{name}.partial{os.getpid()}")
    try:
        os.mkdir(staging)
        if pictures:
            reader = GeoTileReader()
            all_latlon = np.array([(t.lat, t.lon) for t in index.tiles], dtype=np.float64)
            for q, (result, rows) in enumerate(zip(results, ids)):
                shown = [reader(index.tiles[int(r)]) for r in rows[:len(result["candidates"])][:MAX_TILES_SHOWN]]
                png = query_figure(_picture_panorama(result["query"]), os.path.basename(result["query"]), shown,
                                   result["candidates"], all_latlon,
                                   (result["true_lat"], result["true_lon"]) if "true_lat" in result else None,
                                   None if points is None else points[q])
                write_bytes_atomic(os.path.join(staging, result["figure"]), png)
        write_bytes_atomic(os.path.join(staging, "results.csv"), results_csv(results))
        write_json_atomic(os.path.join(staging, "results.geojson"), results_geojson(results))
        write_json_atomic(os.path.join(staging, "results.json"), results)
        _replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _picture_panorama(path: str) -> np.ndarray:
    """The panorama as a query's picture shows it: at most :data:`PICTURE_WIDTH` pixels wide."""
    height, width = check_image_file(path, "panorama", "pass a 360-degree panorama")
    if width <= PICTURE_WIDTH:
        return read_image(path)
    return read_image(path, (max(1, round(height * PICTURE_WIDTH / width)), PICTURE_WIDTH))


def _replace_folder(new: str, out: str) -> None:
    """Put folder ``new`` in the place of ``out`` (two renames; the old one is then deleted)."""
    old = None
    if os.path.exists(out):
        old = f"{new}.old"
        os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError as exc:
        if old is not None:
            os.rename(old, out)
        raise UserError(f"cannot write --out {out}: {exc.strerror or exc}") from None
    if old is not None:
        shutil.rmtree(old)


def localise(index_dir: str, panoramas: Sequence[str], out: str, k: int = 5, checkpoint: Optional[str] = None,
             device: str = "auto", batch_size: int = 16, nprobe: Optional[int] = None, pictures: bool = True,
             log=print, view=None) -> List[dict]:
    """Query ``panoramas`` against the index in ``index_dir``; write the results into ``out``.

    ``view``: a :class:`localization.prior.QueryView` (GPS prior, field of view), already located."""
    from localization.embed import PanoramaFiles, embed
    from localization.index import load_index

    if k < 1:
        raise UserError(f"-k must be >= 1, got {k}")
    check_out_folder(out)
    for panorama in panoramas:
        check_panorama(panorama, limited=view is not None and view.limited)
    index = load_index(index_dir, nprobe)
    loaded = _model_of(index, index_dir, checkpoint, device)
    if view is not None:
        view.prepare(index, loaded)
    size = loaded.pano_size if view is None else view.input_size(loaded.pano_size)
    descriptors = embed(loaded, PanoramaFiles(panoramas, size), "street", batch_size, 0, desc="panoramas")
    headings, searched = [None] * len(panoramas), None
    if view is not None and view.brute_force:
        similarities, ids, headings, searched = view.search(index, descriptors, k, loaded.correlation)
    elif loaded.correlation is None:
        similarities, ids = index.search(descriptors, k)
    else:
        similarities, ids, headings = search_over_shifts(index, descriptors, min(k, len(index.tiles)),
                                                         loaded.correlation)
    refined, points = [None] * len(panoramas), None
    pose = loaded.run.model.pose != "none"
    refine = (pose or loaded.run.model.regress_offset) and tile_side_m(index.manifest) is not None
    if (pose or loaded.run.model.regress_offset) and not refine:
        log(f"the model has {'a pose' if pose else 'an offset'} head but the index does not know its tiles' side in "
            f"metres (build it with --tile_m): no refined positions")
    if pictures or pose or refine:  # their tiles are read back: the pictures show the first MAX_TILES_SHOWN
        check_tiles_on_disk(index, ids if pose or refine else ids[:, :MAX_TILES_SHOWN])
    if pose:  # the pose head refines (and gives the heading) when the model has one
        points, headings = pose_estimates(loaded, index, PanoramaFiles(panoramas, size), ids, batch_size)
        if refine:
            refined = _moved_centres(index, *_candidate_tiles(index, ids), points.reshape(-1, 2), ids)
    elif refine:
        refined = refined_positions(loaded, index, descriptors, ids, batch_size)
    figures = _figure_names(panoramas) if pictures else [None] * len(panoramas)
    results = [_result(index, *entry) for entry in zip(panoramas, similarities, ids, refined, headings, figures)]
    for result, count in zip(results, searched or []):
        result["searched"] = count
    _write_outputs(index, results, ids, out, pictures, points)
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
        if "searched" in result:
            line += f" ({result['searched']} of {len(index.tiles)} tiles searched)"
        log(line)
    log(_summary(index, results, k, out, pictures))
    return results


def _summary(index, results: List[dict], k: int, out: str, pictures: bool) -> str:
    """The closing line: what was written, and how many candidates each query really has."""
    most, wanted = max(len(r["candidates"]) for r in results), min(k, len(index.tiles))
    files = f"results.json, results.csv, results.geojson{', one PNG per query' if pictures else ''}"
    if most == wanted:
        return f"{len(results)} queries, top-{most} written to {out} ({files})"
    return (f"{len(results)} queries, up to {most} candidates per query (-k {k}) written to {out} ({files}); the "
            f"{index.spec.kind} index found no more in the {index.spec.nprobe} of its {index.spec.nlist} lists it "
            f"searched: raise --nprobe to search more")
