"""The SAFA polar transform of aerial images.

Reference definition (datasets.md), for a square aerial of side S and an output of
``height x width``::

    r   = (S/2) / height * (height - 1 - i)      # row 0 = outer ring, last row = centre
    row = S/2 + r * cos(2*pi*j/width)            # source row    (axis 0)
    col = S/2 - r * sin(2*pi*j/width)            # source column (axis 1)

The value is the bilinear sample at (row, col) using the neighbours floor(.) and
floor(.)+1; a neighbour outside [0, S) contributes 0. Column 0 looks South, W/4
West, W/2 North, 3W/4 East: the same layout as CVUSA/VIGOR panoramas.

Command line (writes uint8 3-channel PNGs; existing files are skipped unless --overwrite)::

    python -m data.convert_polar --data_root CVUSA [--height 112 --width 616] [--workers N]
    python -m data.convert_polar --data_root VIGOR --dataset vigor [--cities NewYork,Seattle]

* CVUSA: the aerials listed in ``splits/train-19zl.csv`` and ``splits/val-19zl.csv`` (or
  ``--csv``; all of ``bingmap/19/`` when no CSV exists) -> ``polarmap/19/<id>.png``
  (S = 750, default 112 x 616, SAFA's size).
* VIGOR: every ``<City>/satellite/satellite_<lat>_<lon>.png`` of the cities present (or
  ``--cities``) -> ``<City>/polarmap/satellite_<lat>_<lon>.png`` (S = 640, default
  320 x 640: the official VIGOR panorama size and the seed's polar size; loaders resize).

Pixel values are ``clip(rint(polar_transform(aerial)), 0, 255)`` exactly (round half to
even). SAFA's own polar files were min-max stretched per image by an old scipy save
function; ours are not. The converter precomputes the bilinear taps once per
(S, height, width) (:func:`polar_gather_table`), runs in worker processes and writes each
file to a temporary name then renames it, so no half-written PNG is ever left behind.
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from data.cvusa import (AERIAL_DIR, DEFAULT_TRAIN_CSV, DEFAULT_VAL_CSV, layout_hints, list_subdirs,
                        missing_files_error, polar_rel_path, read_split_csv, resolve_csv)
from data.io import find_missing, read_image, write_image_atomic
from helper.errors import UserError, run_main


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


# ----------------------------------------------------------------------------------------
# Fast exact converter and the command line
# ----------------------------------------------------------------------------------------

#: PNG settings of the converter: zlib level 1 with the RLE strategy and the SUB filter
#: (OpenCV 4.13's default, spelled out): ~3x faster to write than zlib level 6, files ~5% larger.
PNG_PARAMS = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB)
DEFAULT_SIZES = {"cvusa": (112, 616), "vigor": (320, 640)}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


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
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"polar_transform expects a square H x W x C image, got shape {image.shape}")
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
    return [(aerial, polar_rel_path(aerial)) for aerial in aerials]


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
            jobs.append((f"{city}/satellite/{name}", f"{city}/polarmap/{os.path.splitext(name)[0]}.png"))
    if not jobs:
        folders = ", ".join(f"{city}/satellite/" for city in cities)
        raise UserError(f"no satellite images in {folders} under {data_root}")
    return jobs


def default_workers() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def png_size(path: str) -> Optional[Tuple[int, int]]:
    """(height, width) from a PNG file's IHDR chunk, or None when it is not a PNG."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or not head.startswith(b"\x89PNG\r\n\x1a\n") or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


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

    Existing outputs of another size than ``height x width`` are an error (use ``overwrite``).

    ``workers`` > 1 uses a process pool fed in chunks. Outputs are written to a temporary
    file and renamed, so an interrupted run never leaves a half-written PNG.
    Returns ``{"converted": n, "skipped": m}``.
    """
    if overwrite:
        todo = list(jobs)
    else:
        absent = set(find_missing(data_root, [dst for _, dst in jobs]))
        todo = [job for job in jobs if job[1] in absent]
        _check_existing(data_root, [dst for _, dst in jobs if dst not in absent], height, width)
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
            with multiprocessing.Pool(min(workers, len(tasks))) as pool:
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
                        help="polar image height (default 112 for cvusa, 320 for vigor)")
    parser.add_argument("--width", type=int, default=None,
                        help="polar image width (default 616 for cvusa, 640 for vigor)")
    parser.add_argument("--workers", type=int, default=default_workers(),
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
    if height <= 0 or width <= 0:
        raise UserError(f"--height and --width must be positive, got {height} x {width}")
    if args.dataset == "cvusa":
        jobs = cvusa_jobs(args.data_root, args.csv)
    else:
        jobs = vigor_jobs(args.data_root, args.cities)
    params = list(PNG_PARAMS)
    params[1] = args.png_compression
    summary = convert(args.data_root, jobs, height, width, workers=args.workers, overwrite=args.overwrite,
                      params=params, progress=not args.no_progress)
    print(f"polar images {height}x{width}: {summary['converted']} written, {summary['skipped']} already "
          f"present (use --overwrite to rewrite) under {args.data_root}", flush=True)
    return summary


if __name__ == "__main__":
    run_main(main)
