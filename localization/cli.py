"""The ``localize.py`` command line: ``index`` (build a tile index) and ``query`` (localise panoramas).

Both check their ``--out`` before any work. Ctrl-C (SIGINT) or SIGTERM ends either with one
line on stderr and exit code 128 + the signal (130, 143): ``index`` keeps the tiles embedded
so far (the same command resumes), ``query`` writes nothing (a previous result in ``--out``
stays as it was).
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from typing import Optional, Sequence

from common.errors import UserError
from common.fileio import check_output_dir
from common.system import usable_cpus
from data.vigor_layout import NOMINAL_METRES_PER_PIXEL, TILE_SIDE, TILE_SIDE_M
from helper.config import DEVICES
from localization.index import REFINE_BITS, IndexSpec
from localization.tiles import PROJECTIONS
from localization.prior import PRIORS, QueryView, parse_near


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localize.py", description="Localise street-view panoramas with a trained checkpoint: index "
                                        "geo-tagged satellite tiles once, then query panoramas against them.")
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="embed satellite tiles into a FAISS index folder",
                                description="Embed satellite tiles with the checkpoint's satellite branch and write "
                                            "a FAISS index folder (resumable; refuses to mix checkpoints).")
    index.add_argument("--checkpoint", required=True, help="trained checkpoint (train_vigor.py / train_cvusa.py)")
    index.add_argument("--out", required=True, help="index folder to write (new, empty, or an interrupted build)")
    index.add_argument("--rebuild", action="store_true",
                       help="replace the index in --out when it was built from other tiles, parameters or "
                            "checkpoint (without it such a re-run is refused, naming what differs); the old index "
                            "stays usable until the new one is complete")
    source = index.add_mutually_exclusive_group(required=True)
    source.add_argument("--satellites", nargs="+", metavar="DIR",
                        help="folder(s) of VIGOR-style tiles satellite_<lat>_<lon>.png (centre GPS in the name)")
    source.add_argument("--tiles", metavar="CSV", help="CSV of path,lat,lon rows (tile centre GPS; relative paths "
                                                       "are resolved against the CSV's folder)")
    source.add_argument("--mosaic", metavar="IMAGE", help="north-up orthophoto cut into tiles (needs --bounds, "
                                                          "--tile_m, --stride_m)")
    source.add_argument("--raster", nargs="+", metavar="FILE",
                        help="GeoTIFF / Cloud-Optimised GeoTIFF orthophoto(s) in any CRS, cut into north-up tiles "
                             "of --tile_m every --stride_m metres (several sheets: one tiling each, or pass a "
                             "gdalbuildvrt mosaic to cut across their edges)")
    source.add_argument("--xyz", metavar="DIR", help="slippy-map tiles DIR/z/x/y.png|jpg (Web Mercator) at --zoom, "
                                                     "stitched and re-cut like --raster")
    source.add_argument("--mbtiles", metavar="FILE", help="an MBTiles file (TMS rows) at --zoom (default: its "
                                                          "highest), stitched and re-cut like --raster")
    index.add_argument("--zoom", type=int, help="--xyz / --mbtiles: the zoom level to cut (ground resolution "
                                                "156543.03392 cos(lat) / 2^zoom m/px)")
    index.add_argument("--bounds", metavar="N,W,S,E", help="--mosaic: latitude/longitude of its edges, degrees")
    index.add_argument("--tile_m", type=float,
                       help="tile side in metres: --mosaic cuts tiles of this size; with --satellites / --tiles it "
                            "scales the in-tile offsets of a model with an offset head (default for --satellites: "
                            f"VIGOR's {TILE_SIDE} px x {NOMINAL_METRES_PER_PIXEL} m = "
                            f"{TILE_SIDE_M:.2f} m; --tiles: unknown, no refined positions; "
                            "--raster / --xyz / --mbtiles: the side of the tiles the checkpoint was trained on)")
    index.add_argument("--stride_m", type=float, help="--mosaic / --raster / --xyz / --mbtiles: distance between "
                                                      "tile centres in metres (half the tile side gives VIGOR's "
                                                      "half overlap; default for --raster / --xyz / --mbtiles: "
                                                      "half of --tile_m)")
    index.add_argument("--projection", choices=PROJECTIONS,
                       help="--mosaic: rows linear in latitude (EPSG:4326 export) or in the Mercator ordinate "
                            f"(EPSG:3857 web map export, latitudes within +-85.0511) (default: {PROJECTIONS[0]})")
    index.add_argument("--index", default="flat", choices=("flat", "ivf", "ivfpq"),
                       help="flat = exact inner product; ivf / ivfpq = approximate, for millions of tiles "
                            "(see the README's table) (default: flat)")
    spec = IndexSpec()
    index.add_argument("--nlist", type=int, default=spec.nlist, help="ivf/ivfpq: inverted lists (default: 4 "
                                                                     "sqrt(tiles))")
    index.add_argument("--nprobe", type=int, default=spec.nprobe, help="ivf/ivfpq: lists searched per query "
                                                                       f"(default: {spec.nprobe})")
    index.add_argument("--pq_m", type=int, default=spec.pq_m, help="ivfpq: sub-quantizers, must divide the "
                                                                   "descriptor dimension (default: dimension / 16)")
    index.add_argument("--refine", type=int, default=spec.refine, help="ivfpq: re-score refine x k candidates "
                                                                       f"(default: {spec.refine})")
    index.add_argument("--refine_bits", type=int, default=spec.refine_bits, choices=REFINE_BITS,
                       help="ivfpq: bits per dimension of the re-scoring vectors; 4 halves their memory (1M x "
                            "4096-d: 2 GB instead of 4), 0 = PQ codes only (default: "
                            f"{spec.refine_bits})")
    _common(index, batch_size=64)
    index.add_argument("--workers", type=int, default=min(4, usable_cpus()),
                       help="tile-reading worker processes (0 = main process)")
    index.add_argument("--chunk", type=int, default=2048, help="tiles per saved chunk of an interruptible build "
                                                               "(default: 2048)")

    query = commands.add_parser("query", help="localise panoramas against an index folder",
                                description="Embed panoramas with the street branch, search the index's top k and "
                                            "write results.json, results.csv, results.geojson and one PNG per query.")
    query.add_argument("--index", required=True, help="index folder written by localize.py index")
    query.add_argument("panoramas", nargs="*", metavar="PANORAMA", help="360-degree panorama images")
    query.add_argument("--queries", metavar="DIR", help="query every .jpg/.jpeg/.png image of this folder")
    query.add_argument("-k", type=int, default=5, help="candidates per query (default: 5)")
    query.add_argument("--out", default="localize_results",
                       help="output folder, replaced as a whole by each query (new, empty or holding a previous "
                            "query's outputs) (default: localize_results)")
    query.add_argument("--checkpoint", help="the checkpoint that built the index, when it moved (default: the "
                                            "path recorded in the index)")
    query.add_argument("--nprobe", type=int, help="ivf/ivfpq: lists searched per query (default: the index's)")
    query.add_argument("--no-pictures", dest="pictures", action="store_false", help="skip the PNG per query")
    query.add_argument("--near", metavar="LAT,LON", help="GPS prior: search only the tiles within --radius_m of it")
    query.add_argument("--prior", default="none", choices=PRIORS,
                       help="exif: each photo's EXIF GPS is the prior (an error without one); exif_if_present: "
                            "warn and search every tile for a photo without one (default: none)")
    query.add_argument("--radius_m", type=float, help="--near / --prior: search radius in metres around the prior "
                                                      "(e.g. 200 for a phone's GPS in a city)")
    query.add_argument("--fov", type=float, metavar="DEG",
                       help="the photos cover DEG degrees horizontally (not 360-degree panoramas): each is resized "
                            "to the model's panorama height and DEG / 360 of its width; needs a --head dsm model, "
                            "which also reports heading_deg")
    _common(query, batch_size=16)
    return parser


def _common(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto = cuda when available (default)")
    parser.add_argument("--batch_size", type=int, default=batch_size, help=f"images per batch (default: {batch_size})")


def _positive(value: Optional[float], flag: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UserError(f"{flag} must be a finite number > 0, got {value:g}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    for flag in ("batch_size", "chunk"):
        _positive(getattr(args, flag, None), f"--{flag}")
    check_output_dir(args.out, "--out")
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        if args.command == "index":
            _index(args)
        else:
            _query(args)
    except (KeyboardInterrupt, _Terminated) as stop:
        signum = int(signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT)
        done = (f"the tiles embedded so far are kept in {args.out}: run the same command again to resume"
                if args.command == "index" else f"nothing was written to {args.out}")
        print(f"interrupted by signal {signum}; {done}", file=sys.stderr, flush=True)
        sys.exit(128 + signum)
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Terminated(Exception):
    """SIGTERM, raised where the program is, so that it unwinds like Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _index(args) -> None:
    from localization import tiles as sources
    from localization.embed import load_model
    from localization.index import build_index

    if args.raster or args.xyz or args.mbtiles:
        return _index_geo(args)
    if args.zoom is not None:
        raise UserError("--zoom only applies to --xyz and --mbtiles")
    mosaic_flags = [f for f in ("bounds", "stride_m", "projection") if getattr(args, f) is not None]
    if args.mosaic is None and mosaic_flags:
        raise UserError(f"--{mosaic_flags[0]} only applies to --mosaic")
    _positive(args.tile_m, "--tile_m")
    spec = IndexSpec(args.index, args.nlist, args.nprobe, args.pq_m, args.refine, args.refine_bits)
    if args.satellites:
        tiles = sources.tiles_from_folders(args.satellites)
        source = {"satellites": args.satellites, "tile_m": args.tile_m or TILE_SIDE_M}
    elif args.tiles:
        tiles, source = sources.tiles_from_csv(args.tiles), {"tiles": args.tiles, "tile_m": args.tile_m}
    else:
        if args.bounds is None or args.tile_m is None or args.stride_m is None:
            raise UserError("--mosaic needs --bounds N,W,S,E, --tile_m M and --stride_m M")
        _positive(args.stride_m, "--stride_m")
        bounds = sources.parse_bounds(args.bounds)
        projection = args.projection or PROJECTIONS[0]
        tiles = sources.tiles_from_mosaic(args.mosaic, bounds, args.tile_m, args.stride_m, projection)
        source = {"mosaic": args.mosaic, "bounds": list(bounds), "tile_m": args.tile_m, "stride_m": args.stride_m,
                  "projection": projection}
    print(f"{len(tiles)} tiles", flush=True)
    loaded = load_model(args.checkpoint, args.device)
    build_index(loaded, tiles, args.out, spec, source, args.batch_size, max(0, args.workers), args.chunk,
                args.rebuild)


def _index_geo(args) -> None:
    """``index --raster / --xyz / --mbtiles``: tiles cut on a metric grid (:mod:`localization.geo`)."""
    from localization.embed import load_model
    from localization.geo import training_tile_m, tiles_from_geo
    from localization.index import build_index

    for flag in ("bounds", "projection"):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag} only applies to --mosaic (a georeferenced source carries its own position)")
    kind, paths = next((k, v) for k, v in (("raster", args.raster), ("xyz", args.xyz), ("mbtiles", args.mbtiles)) if v)
    if kind == "raster" and args.zoom is not None:
        raise UserError("--zoom only applies to --xyz and --mbtiles")
    for flag in ("tile_m", "stride_m"):
        _positive(getattr(args, flag), f"--{flag}")
    spec = IndexSpec(args.index, args.nlist, args.nprobe, args.pq_m, args.refine, args.refine_bits)
    loaded = load_model(args.checkpoint, args.device)
    tile_m = args.tile_m or training_tile_m(loaded.run)
    origin = "--tile_m" if args.tile_m else f"the side of the checkpoint's {loaded.run.dataset} training tiles"
    print(f"tile side {tile_m:g} m ({origin})", flush=True)
    tiles, source = tiles_from_geo(kind, paths if kind == "raster" else [paths], tile_m, args.stride_m or tile_m / 2,
                                   args.zoom)
    source["tile_m_from"] = origin
    print(f"{len(tiles)} tiles ({source['skipped']} skipped: nodata or outside the source)", flush=True)
    build_index(loaded, tiles, args.out, spec, source, args.batch_size, max(0, args.workers), args.chunk,
                args.rebuild)


def _query(args) -> None:
    from localization.query import localise, panorama_files

    if args.panoramas and args.queries:
        raise UserError("give panoramas or --queries DIR, not both")
    if args.queries and os.path.realpath(args.out) == os.path.realpath(args.queries):
        raise UserError(f"--out {args.out} is the --queries folder: its result pictures would be queried next "
                        f"time; choose another --out")
    photos = panorama_files(args.panoramas, args.queries)
    view = QueryView(parse_near(args.near) if args.near else None, args.radius_m, args.prior, args.fov)
    view.locate(photos)
    localise(args.index, photos, args.out, args.k, args.checkpoint, args.device, args.batch_size, args.nprobe,
             args.pictures, view=view)
