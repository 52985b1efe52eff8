"""Command line: write SAFA polar images of CVUSA aerials or VIGOR satellites (uint8 PNG).

The formula and its fast exact evaluation live in :mod:`geometry.polar`; this module is a
thin CLI over them (it imports neither torch nor the datasets)::

    python -m data.convert_polar --data_root CVUSA [--height 112 --width 616] [--workers N]
    python -m data.convert_polar --data_root VIGOR --dataset vigor [--cities NewYork,Seattle]

* CVUSA: the aerials listed in ``splits/train-19zl.csv`` and ``splits/val-19zl.csv`` (or
  ``--csv``; all of ``bingmap/19/`` when no CSV exists) -> ``polarmap/19/<id>.png``
  (S = 750, default 112 x 616, SAFA's size).
* VIGOR: every ``<City>/satellite/satellite_<lat>_<lon>.png`` of the cities present (or
  ``--cities``) -> ``<City>/polarmap/satellite_<lat>_<lon>.png`` (S = 640, default
  320 x 640: the official VIGOR panorama size and the seed's polar size; loaders resize).

Pixel values are :func:`geometry.polar.polar_image_uint8`, i.e.
``clip(rint(polar_transform(aerial)), 0, 255)`` exactly (round half to even). SAFA's own
polar files were min-max stretched per image by an old scipy save function; ours are not.
Existing files are skipped unless ``--overwrite``; each file is written to a temporary
name then renamed, so no half-written PNG is ever left behind.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
from tqdm import tqdm

from common.errors import UserError, run_main
from common.system import usable_cpus
from data import cvusa_layout, vigor_layout
from data.cvusa_layout import (AERIAL_DIR, DEFAULT_TRAIN_CSV, DEFAULT_VAL_CSV, layout_hints, missing_files_error,
                               read_split_csv, resolve_csv)
from data.io import find_missing, list_subdirs, png_complete, png_size, read_image, write_image_atomic
from geometry.polar import polar_image_uint8, polar_transform  # noqa: F401  (polar_transform: fixed interface)


#: PNG settings of the converter: zlib level 1 with the RLE strategy and the SUB filter
#: (OpenCV 4.13's default, spelled out): ~3x faster to write than zlib level 6, files ~5% larger.
PNG_PARAMS = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB)
#: Default polar image size per layout: the panorama input size of that dataset.
DEFAULT_SIZES = {"cvusa": cvusa_layout.PANO_SIZE, "vigor": vigor_layout.PANO_SIZE}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: Bounds of --height / --width (a 4096 x 4096 polar image is already 200 MB of float32 per worker).
MIN_SIDE, MAX_SIDE = 8, 4096


class Stopped(Exception):
    """SIGTERM arrived; finished images are kept, the rest remain to do."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signum)


def _worker_init() -> None:
    """Pool workers leave Ctrl-C to the main process, and SIGTERM (``pool.terminate``, or a kill of
    the process group) ends them at once, silently: the default action, not the handler inherited
    from the main process (raising from a signal handler can deadlock a worker inside the pool's
    queue locks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _convert_one(task: Tuple[str, str, int, int, Tuple[int, ...]]) -> str:
    """Worker: read one aerial (full resolution), polar-transform it, write the PNG atomically."""
    src, dst, height, width, params = task
    image = read_image(src)
    if image.shape[0] != image.shape[1]:
        raise UserError(f"aerial is not square ({image.shape[0]} x {image.shape[1]}): {src}; "
                        f"the polar transform needs a square image")
    write_image_atomic(dst, polar_image_uint8(image, height, width), params)
    return dst


def _image_files(folder: str) -> List[str]:
    return sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))


def cvusa_jobs(data_root: str, csvs: Optional[Sequence[str]] = None) -> List[Tuple[str, str]]:
    """``(aerial, polar)`` relative paths for CVUSA: ``bingmap/19/<id>.jpg`` -> ``polarmap/19/<id>.png``.

    Aerials come from ``csvs`` (relative to ``data_root``), by default from whichever of the
    two standard split CSVs exist, else from every image in ``bingmap/19``.
    """
    if csvs is None:
        csvs = [csv for csv in (DEFAULT_TRAIN_CSV, DEFAULT_VAL_CSV) if os.path.isfile(os.path.join(data_root, csv))]
    if csvs:
        aerials = [aerial for csv in csvs for aerial, _, _ in read_split_csv(resolve_csv(data_root, csv))]
        source = ", ".join(csvs)
    else:
        folder = os.path.join(data_root, AERIAL_DIR)
        if not os.path.isdir(folder):
            hints = "".join(f"\nhint: {hint}" for hint in layout_hints(data_root, ["splits", AERIAL_DIR]))
            raise UserError(f"no CVUSA aerials found: neither {DEFAULT_TRAIN_CSV} / {DEFAULT_VAL_CSV} nor "
                            f"{AERIAL_DIR}/ exist under {data_root}{hints}")
        aerials = [f"{AERIAL_DIR}/{name}" for name in _image_files(folder)]
        source = f"{AERIAL_DIR}/"
    aerials = list(dict.fromkeys(aerials))
    if not aerials:
        raise UserError(f"no CVUSA aerials listed in {source} under {data_root}")
    missing = find_missing(data_root, aerials)
    if missing:
        raise missing_files_error(data_root, missing, len(aerials), source)
    return [(aerial, cvusa_layout.polar_path(aerial)) for aerial in aerials]


def vigor_jobs(data_root: str, cities: Optional[Sequence[str]] = None) -> List[Tuple[str, str]]:
    """``(satellite, polar)`` relative paths for VIGOR:
    ``<City>/satellite/satellite_<lat>_<lon>.png`` -> ``<City>/polarmap/satellite_<lat>_<lon>.png``.

    ``cities`` default: every sub-folder of ``data_root`` that holds a ``satellite/`` folder.
    """
    present = [name for name in list_subdirs(data_root) if os.path.isdir(os.path.join(data_root, name, "satellite"))]
    if cities is None:
        if not present:
            nested = [sub for sub in list_subdirs(data_root)
                      if any(os.path.isdir(os.path.join(data_root, sub, city, "satellite"))
                             for city in list_subdirs(os.path.join(data_root, sub)))]
            hint = (f"; they exist under {os.path.join(data_root, nested[0])}: pass that as --data_root"
                    if nested else "")
            raise UserError(f"no VIGOR city folders (<City>/satellite/) under {data_root}{hint}")
        cities = present
    absent = [city for city in cities if city not in present]
    if absent:
        raise UserError(f"VIGOR city folder(s) {', '.join(absent)} not found under {data_root} "
                        f"(need <City>/satellite/); present: {', '.join(present) or 'none'}")
    jobs = []
    for city in cities:
        for name in _image_files(os.path.join(data_root, city, "satellite")):
            satellite = f"{city}/satellite/{name}"
            jobs.append((satellite, vigor_layout.polar_path(satellite)))
    if not jobs:
        folders = ", ".join(f"{city}/satellite/" for city in cities)
        raise UserError(f"no satellite images in {folders} under {data_root}")
    return jobs


def _check_existing(data_root: str, outputs: Sequence[str], height: int, width: int) -> None:
    """Refuse to skip existing outputs of another size (a mixed folder); --overwrite rewrites them."""
    wrong = []
    for rel in outputs:
        size = png_size(os.path.join(data_root, rel))
        if size != (height, width):
            wrong.append((rel, size))
    if wrong:
        rel, size = wrong[0]
        found = f"{size[0]}x{size[1]}" if size else "not a PNG"
        raise UserError(f"{len(wrong)} existing polar images are not {height}x{width} PNGs (e.g. "
                        f"{os.path.join(data_root, rel)}: {found}); pass --overwrite to rewrite them, or "
                        f"--height/--width matching them")


def convert(data_root: str, jobs: Sequence[Tuple[str, str]], height: int, width: int, workers: int = 1,
            overwrite: bool = False, params: Sequence[int] = PNG_PARAMS, progress: bool = True) -> Dict[str, int]:
    """Run ``jobs`` (relative (source, output) paths): skip existing outputs unless ``overwrite``.

    Existing outputs of another size than ``height x width`` are an error (use ``overwrite``);
    empty or truncated ones (no PNG end marker) are rewritten.

    ``workers`` > 1 uses a process pool fed in chunks. Outputs are written to a temporary
    file and renamed, so an interrupted run never leaves a half-written PNG.
    Returns ``{"converted": n, "skipped": m}``.
    """
    if overwrite:
        todo = list(jobs)
    else:
        absent = set(find_missing(data_root, [dst for _, dst in jobs]))
        broken = {dst for _, dst in jobs if dst not in absent and not png_complete(os.path.join(data_root, dst))}
        todo = [job for job in jobs if job[1] in absent | broken]
        _check_existing(data_root, [dst for _, dst in jobs if dst not in absent | broken], height, width)
        if broken and progress:
            print(f"{len(broken)} existing polar images are truncated (no PNG end marker); rewriting them, e.g. "
                  f"{os.path.join(data_root, sorted(broken)[0])}", flush=True)
    for folder in sorted({os.path.dirname(os.path.join(data_root, dst)) for _, dst in todo}):
        os.makedirs(folder, exist_ok=True)
    tasks = [(os.path.join(data_root, src), os.path.join(data_root, dst), int(height), int(width), tuple(params))
             for src, dst in todo]
    bar = tqdm(total=len(tasks), unit="img", desc="polar", disable=not progress or not tasks, dynamic_ncols=True)
    with bar:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                _convert_one(task)
                bar.update()
        else:
            chunksize = max(1, min(32, len(tasks) // (workers * 8)))
            with multiprocessing.Pool(min(workers, len(tasks)), initializer=_worker_init) as pool:
                for _ in pool.imap_unordered(_convert_one, tasks, chunksize):
                    bar.update()
    return {"converted": len(tasks), "skipped": len(jobs) - len(tasks)}


def _comma_list(text: str) -> List[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data.convert_polar",
        description="Write SAFA polar images of CVUSA aerials (polarmap/19/<id>.png) or VIGOR "
                    "satellites (<City>/polarmap/<name>.png) as uint8 PNGs.")
    parser.add_argument("--data_root", required=True, help="the CVUSA or VIGOR folder")
    parser.add_argument("--dataset", choices=("cvusa", "vigor"), default="cvusa", help="dataset layout")
    parser.add_argument("--height", type=int, default=None,
                        help=f"polar image height (default {DEFAULT_SIZES['cvusa'][0]} for cvusa, "
                             f"{DEFAULT_SIZES['vigor'][0]} for vigor)")
    parser.add_argument("--width", type=int, default=None,
                        help=f"polar image width (default {DEFAULT_SIZES['cvusa'][1]} for cvusa, "
                             f"{DEFAULT_SIZES['vigor'][1]} for vigor)")
    parser.add_argument("--workers", type=int, default=usable_cpus(),
                        help="worker processes (default: all usable CPUs; 1 = in this process)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite polar images that already exist")
    parser.add_argument("--csv", type=_comma_list, default=None,
                        help=f"cvusa: split CSVs listing the aerials, relative to data_root (default: "
                             f"{DEFAULT_TRAIN_CSV},{DEFAULT_VAL_CSV} where present, else all of {AERIAL_DIR}/)")
    parser.add_argument("--cities", type=_comma_list, default=None,
                        help="vigor: cities to convert, e.g. NewYork,Seattle (default: every city folder present)")
    parser.add_argument("--png_compression", type=int, default=1, choices=range(10), metavar="0-9",
                        help="zlib level of the PNGs (default 1: fast; 9: smallest)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, int]:
    """CLI entry point; returns ``{"converted": n, "skipped": m}`` (also printed)."""
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.data_root):
        raise UserError(f"data root not found: {args.data_root}; pass --data_root pointing at the "
                        f"{args.dataset.upper()} folder")
    height = args.height if args.height is not None else DEFAULT_SIZES[args.dataset][0]
    width = args.width if args.width is not None else DEFAULT_SIZES[args.dataset][1]
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise UserError(f"--height and --width must be in [{MIN_SIDE}, {MAX_SIDE}], got {height} x {width}; "
                        f"use the --pano_size you train with (default {DEFAULT_SIZES[args.dataset][0]} x "
                        f"{DEFAULT_SIZES[args.dataset][1]})")
    if args.dataset == "cvusa":
        jobs = cvusa_jobs(args.data_root, args.csv)
    else:
        jobs = vigor_jobs(args.data_root, args.cities)
    params = list(PNG_PARAMS)
    params[1] = args.png_compression
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        summary = convert(args.data_root, jobs, height, width, workers=args.workers, overwrite=args.overwrite,
                          params=params, progress=not args.no_progress)
    except (Stopped, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
        print(f"interrupted by signal {int(signum)}; the polar images written so far are complete: run the same "
              f"command again to convert the rest", file=sys.stderr, flush=True)
        sys.exit(128 + int(signum))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"polar images {height}x{width}: {summary['converted']} written, {summary['skipped']} already "
          f"present (use --overwrite to rewrite) under {args.data_root}", flush=True)
    return summary


if __name__ == "__main__":
    run_main(main)
