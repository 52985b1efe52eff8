"""Benchmark (issue 7): polar conversion of CVUSA-size aerials, typical converter vs ours.

Writes ``--images`` smooth-noise 750 x 750 JPEG aerials (realistic file sizes) into a temp
folder with the CVUSA layout, then converts them all to 112 x 616 PNGs twice, timing the
whole process (read, transform, write):

* baseline: a typical vectorised numpy converter in the main process: PIL decode, the SAFA
  formula recomputed per image (coordinates + 4-neighbour gather, i.e. ``polar_transform``),
  PIL PNG save with default settings;
* ours: ``python -m data.convert_polar`` as a whole process (start-up included) with
  ``--workers`` processes (precomputed gather table, OpenCV decode, fast PNG settings), and
  again with 1 worker; its start-up alone is timed with ``--help``.

Both write identical pixels up to JPEG decoder differences (reported). Prints ONE JSON line.
Usage: ``python benchmarks/bench_polar.py [--images 200 --workers 2]``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.fake_images import smooth_noise_image  # noqa: E402
from common.system import usable_cpus  # noqa: E402
from geometry.polar import polar_transform  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_aerials(root: str, count: int, side: int, quality: int) -> list:
    folder = os.path.join(root, "bingmap", "19")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"{i + 1:07d}.jpg")
        cv2.imwrite(path, smooth_noise_image(rng, side, side), [cv2.IMWRITE_JPEG_QUALITY, quality])
        paths.append(path)
    return paths


def whole_process(argv: list, expect: str = "") -> float:
    """Wall seconds of ``python -m data.convert_polar ARGV`` as a whole process."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "data.convert_polar", *argv], cwd=REPO, capture_output=True,
                         text=True, check=True)
    elapsed = time.perf_counter() - start
    assert expect in out.stdout, out.stdout
    return elapsed


def baseline_convert(paths: list, out_dir: str, height: int, width: int) -> None:
    """The typical converter: PIL in, SAFA formula per image, PIL PNG (default settings) out."""
    os.makedirs(out_dir, exist_ok=True)
    for path in paths:
        aerial = np.asarray(Image.open(path).convert("RGB"))
        polar = polar_transform(aerial, height, width)
        out = np.clip(np.rint(polar), 0, 255).astype(np.uint8)
        stem = os.path.splitext(os.path.basename(path))[0]
        Image.fromarray(out).save(os.path.join(out_dir, f"{stem}.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200, help="aerials to convert")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of our converter")
    parser.add_argument("--side", type=int, default=750, help="aerial side (CVUSA: 750)")
    parser.add_argument("--height", type=int, default=112, help="polar height")
    parser.add_argument("--width", type=int, default=616, help="polar width")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality of the generated aerials")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_polar_") as root:
        paths = make_aerials(root, args.images, args.side, args.quality)
        jpeg_kb = float(np.mean([os.path.getsize(p) for p in paths]) / 1024)

        start = time.perf_counter()
        baseline_convert(paths, os.path.join(root, "baseline"), args.height, args.width)
        baseline_s = time.perf_counter() - start

        timings = {"startup": whole_process(["--help"])}
        for workers in (args.workers, 1):
            timings[workers] = whole_process(["--data_root", root, "--height", str(args.height), "--width",
                                              str(args.width), "--workers", str(workers), "--overwrite",
                                              "--no_progress"], expect=f"{args.images} written")

        diffs, png_kb = [], []
        for path in paths[:20]:
            stem = os.path.splitext(os.path.basename(path))[0]
            ours_path = os.path.join(root, "polarmap", "19", f"{stem}.png")
            ours = cv2.imread(ours_path, cv2.IMREAD_UNCHANGED)[:, :, ::-1]
            base = np.asarray(Image.open(os.path.join(root, "baseline", f"{stem}.png")))
            diffs.append(np.abs(ours.astype(np.int16) - base.astype(np.int16)).max())
            png_kb.append(os.path.getsize(ours_path) / 1024)

    result = {
        "bench": "polar",
        "images": args.images,
        "aerial": [args.side, args.side],
        "polar": [args.height, args.width],
        "mean_jpeg_kb": round(jpeg_kb, 1),
        "mean_png_kb": round(float(np.mean(png_kb)), 1),
        "baseline_images_per_s": round(args.images / baseline_s, 2),
        "ours_images_per_s": round(args.images / timings[args.workers], 2),
        "ours_workers": args.workers,
        "speedup": round(baseline_s / timings[args.workers], 2),
        "ours_1worker_images_per_s": round(args.images / timings[1], 2),
        "speedup_1worker": round(baseline_s / timings[1], 2),
        "max_abs_diff_vs_baseline": int(max(diffs)),
        "ours_startup_s": round(timings["startup"], 3),
        "cpus": usable_cpus(),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
