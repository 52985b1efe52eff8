"""The built-in synthetic world: CVUSA- and VIGOR-layout datasets without downloads.

A procedural 3D world (ground cover with grass, dry grass, soil, fields, water, asphalt,
concrete, parking lots; roads with sidewalks and lane markings; buildings with flat,
gable or hip roofs, facades and windows; round and conical trees) is rendered twice:
as a north-up aerial orthophoto (row 0 = north, column 0 = west) with cast shadows,
and as a north-aligned panorama ray cast from a camera about 2 m above a road (South at
column 0, West at W/4, North at W/2, East at 3W/4). The two views differ the way real
ones do: another sun, colour balance, haze, blur and sensor noise; occlusion by
buildings and trees.

Command line::

    python -m data.synthetic --layout cvusa --out DIR --train N --test N --seed S \\
        [--size demo|full] [--max_offset F] [--heading none|random] [--fov DEG] [--workers N]
    python -m data.synthetic --layout vigor --out DIR --cities A,B --train N --test N --seed S \\
        [--size demo|full] [--workers N]

Sizes (``--size``): ``full`` = the real pixel sizes (CVUSA aerial 750 x 750, panorama
1232 x 224; VIGOR tile 640 x 640, panorama 2048 x 1024); ``demo`` = aerial 256, panorama
512 x 93 (CVUSA), tile 256 and panorama 512 x 256 (VIGOR) covering the same metres.
The files, names and label formats are those of the real datasets (see
``data/synth/layouts.py`` and docs/datasets.md); CVUSA also gets ``offsets.csv``
(``id,dx_px,dy_px``: the camera sits at aerial pixel (row S/2 + dy_px, column S/2 + dx_px);
x east, y south, pixels of the written aerial), ``gps.csv`` (``id,lat,lon`` of every location on
one map where nearby places are of the same district kind; for ``--sampling gps --gps_csv
gps.csv``) and panorama annotations with 0 sky,
1 ground, 2 building, 3 vegetation. Output is byte-identical for a given seed, whatever
the number of workers.

Python API: :func:`generate_cvusa`, :func:`generate_vigor`, the in-memory renderers
:func:`cvusa_pair`, :func:`cvusa_positions`, :func:`plan_city`, :func:`vigor_tile`, :func:`vigor_panorama`, and the
scene / rendering functions re-exported below.
"""
from __future__ import annotations

import argparse
import os

from common.errors import UserError, run_main
from common.fileio import check_output_dir
from data.synth.layouts import (CVUSA_AERIAL_M, SIZES, VIGOR_M_PER_PX, VIGOR_STRIDE_M, VIGOR_TILE_M, CityPlan,
                                cvusa_pair, cvusa_positions, generate_cvusa, generate_vigor, gps_to_metres,
                                metres_to_gps, parse_cities, plan_city, tile_centre, tile_grid_origin, vigor_panorama,
                                vigor_tile)
from data.synth.render import (LABEL_BUILDING, LABEL_GROUND, LABEL_NAMES, LABEL_SKY, LABEL_VEGETATION,
                               NEUTRAL, Look, aerial_look, panorama_angles, render_aerial, render_panorama,
                               street_look)
from data.synth.scene import (Scene, add_building, add_tree, blank_scene, make_city_scene,
                              make_location_scene)
from data.vigor_layout import SAME_AREA_CITIES

__all__ = [
    "generate_cvusa", "generate_vigor", "cvusa_pair", "cvusa_positions", "plan_city", "vigor_tile", "vigor_panorama", "CityPlan",
    "tile_centre", "tile_grid_origin", "metres_to_gps", "gps_to_metres", "parse_cities", "SIZES", "CVUSA_AERIAL_M",
    "VIGOR_M_PER_PX", "VIGOR_TILE_M", "VIGOR_STRIDE_M", "render_aerial", "render_panorama", "panorama_angles",
    "Look", "NEUTRAL", "aerial_look", "street_look", "LABEL_SKY", "LABEL_GROUND", "LABEL_BUILDING",
    "LABEL_VEGETATION", "LABEL_NAMES", "Scene", "blank_scene", "add_building", "add_tree", "make_location_scene",
    "make_city_scene", "build_parser", "main",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data.synthetic",
        description="Write a synthetic cross-view dataset in the exact CVUSA or VIGOR layout.")
    parser.add_argument("--layout", required=True, choices=("cvusa", "vigor"),
                        help="on-disk layout to write: cvusa (pairs) or vigor (cities of tiles + panoramas)")
    parser.add_argument("--out", required=True, help="output directory: new or empty (created)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out (files of the same names are replaced, others kept)")
    parser.add_argument("--train", type=int, required=True,
                        help="training items: CVUSA pairs, or VIGOR panoramas per city (e.g. 200)")
    parser.add_argument("--test", type=int, required=True,
                        help="test items: CVUSA pairs in val-19zl.csv, or VIGOR panoramas per city (e.g. 100)")
    parser.add_argument("--seed", type=int, default=0,
                        help="world seed; the same seed writes the same bytes (default 0)")
    parser.add_argument("--size", default="demo", choices=tuple(SIZES),
                        help="demo: small images for CPU runs (default); full: the real datasets' pixel sizes")
    parser.add_argument("--max_offset", type=float, default=0.0,
                        help="CVUSA only: move the panorama off the aerial centre by a random vector of length "
                             "uniform in [0, F] x (aerial half side), F in [0, 1] (default 0: centred)")
    parser.add_argument("--heading", default="none", choices=("none", "random"),
                        help="CVUSA only: random = turn each panorama to a random heading (a circular roll), "
                             "recorded in headings.csv (default none: north-aligned)")
    parser.add_argument("--fov", type=float, default=360.0,
                        help="CVUSA only: keep the centred window of this many degrees of each panorama "
                             "(e.g. 90; recorded in headings.csv; default 360: full panoramas)")
    parser.add_argument("--cities", default=",".join(SAME_AREA_CITIES),
                        help=f"VIGOR only: comma-separated city names, one world each "
                             f"(default {','.join(SAME_AREA_CITIES)})")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes; 0 = the main process only (default: all CPU cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.workers < 0:
        raise UserError(f"--workers must be 0 (the main process) or more, got {args.workers}")
    check_output_dir(args.out, "--out")
    entries = sorted(os.listdir(args.out)) if os.path.isdir(args.out) else []
    if entries and not args.overwrite:
        raise UserError(f"--out {args.out} is not empty (it holds {len(entries)} entries, e.g. {entries[0]}): "
                        f"a dataset written over another mixes their files; pass a new or empty folder, or "
                        f"--overwrite to write into it anyway")
    if args.layout == "cvusa":
        summary = generate_cvusa(args.out, args.train, args.test, args.seed, args.size, args.max_offset,
                                 args.workers, progress=not args.quiet, heading=args.heading, fov=args.fov)
        print(f"wrote CVUSA layout: {args.train} train + {args.test} test pairs "
              f"({summary['aerial_px']} px aerials, {summary['m_per_px']:.3f} m/px) into {args.out}")
    else:
        if args.max_offset != 0.0:
            raise UserError("--max_offset applies to --layout cvusa only (VIGOR panoramas are never centred)")
        if args.heading != "none" or args.fov != 360.0:
            raise UserError("--heading and --fov apply to --layout cvusa only for now")
        summary = generate_vigor(args.out, parse_cities(args.cities), args.train, args.test, args.seed, args.size,
                                 args.workers, progress=not args.quiet)
        for city, info in summary["cities"].items():
            print(f"wrote VIGOR city {city}: {info['satellites']} satellites ({info['grid']} x {info['grid']}), "
                  f"{info['panoramas']} panoramas into {os.path.join(args.out, city)}")


if __name__ == "__main__":
    run_main(main)
