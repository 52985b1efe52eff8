"""Peak memory of ``localize.py index --raster`` on rasters of growing size, as one JSON line.

Writes GeoTIFFs of ``--sizes`` pixels a side (UTM 18N, 0.114 m/px, RGB, tiled 512 x 512 and
JPEG-compressed, written block row by block row so the writer never holds the raster) into a
temporary directory, then indexes each with a random-weights tiny checkpoint in a fresh process
and reports that process's peak resident memory (``VmHWM``), the tiles and the wall time.
Windowed reads keep the peak flat: it does not grow with the raster's size.

    python benchmarks/bench_raster_memory.py [--sizes 5000,20000] [--tile_m 300] [--stride_m 300]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

METRES_PER_PIXEL = 0.114
BLOCK = 512


def write_raster(path: str, side: int) -> None:
    """A ``side`` x ``side`` RGB GeoTIFF of smooth random texture, written one block row at a time."""
    import cv2
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint8", crs="EPSG:32618",
                   transform=from_origin(583000.0, 4515000.0, METRES_PER_PIXEL, METRES_PER_PIXEL), tiled=True,
                   blockxsize=BLOCK, blockysize=BLOCK, compress="jpeg", photometric="ycbcr", jpeg_quality=80)
    with rasterio.open(path, "w", **profile) as dataset:
        for row in range(0, side, BLOCK):
            height = min(BLOCK, side - row)
            coarse = rng.uniform(0, 255, (max(2, height // 32), max(2, side // 32), 3)).astype(np.float32)
            strip = cv2.resize(coarse, (side, height), interpolation=cv2.INTER_LINEAR)
            strip += 12 * rng.standard_normal(strip.shape, dtype=np.float32)
            dataset.write(np.clip(strip, 0, 255).astype(np.uint8).transpose(2, 0, 1), window=Window(0, row, side, height))


def index_in_child(checkpoint: str, raster: str, out: str, tile_m: float, stride_m: float) -> dict:
    """Run the index command in a fresh process; its peak RSS (MiB), tiles and wall seconds."""
    # VmHWM: the peak of this process's own memory (ru_maxrss would carry over the parent's at fork)
    code = ("import json, sys, time; from common.errors import run_main; from localization.cli import main; "
            "start = time.perf_counter(); run_main(lambda: main(sys.argv[1:])); "
            "peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')); "
            "print(json.dumps({'peak_rss_mib': peak / 1024, 'seconds': time.perf_counter() - start}))")
    argv = ["index", "--checkpoint", checkpoint, "--out", out, "--raster", raster, "--tile_m", str(tile_m),
            "--stride_m", str(stride_m), "--device", "cpu", "--workers", "0"]
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(proc.stderr)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["tiles"] = json.load(open(os.path.join(out, "manifest.json")))["count"]
    return result


def make_checkpoint(path: str) -> str:
    import torch

    from helper.checkpoint import CHECKPOINT_VERSION, save_checkpoint
    from helper.config import RunConfig
    from models import build_model

    run = RunConfig.from_dict({"dataset": "vigor", "backbone": "tiny", "pretrained": False, "sate_size": [64, 64],
                               "pano_size": [32, 64], "device": "cpu", "workers": 0})
    torch.manual_seed(0)
    save_checkpoint(path, {"version": CHECKPOINT_VERSION, "config": run.to_dict(),
                           "model": build_model(run.model).state_dict(), "epoch": 0, "best_metric": 0.0})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000", help="raster sides in pixels (default: 5000,20000)")
    parser.add_argument("--tile_m", type=float, default=300.0, help="tile side in metres (default: 300)")
    parser.add_argument("--stride_m", type=float, default=300.0, help="tile stride in metres (default: 300)")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = make_checkpoint(os.path.join(folder, "tiny.pth"))
        for side in (int(v) for v in args.sizes.split(",")):
            raster = os.path.join(folder, f"raster_{side}.tif")
            start = time.perf_counter()
            write_raster(raster, side)
            written = time.perf_counter() - start
            result = index_in_child(checkpoint, raster, os.path.join(folder, f"index_{side}"), args.tile_m,
                                    args.stride_m)
            runs.append({"side_px": side, "uncompressed_mib": round(side * side * 3 / 2 ** 20),
                         "file_mib": round(os.path.getsize(raster) / 2 ** 20, 1), "write_s": round(written, 1),
                         "index_s": round(result["seconds"], 1), "tiles": result["tiles"],
                         "peak_rss_mib": round(result["peak_rss_mib"])})
            os.remove(raster)
    print(json.dumps({"benchmark": "raster_memory", "tile_m": args.tile_m, "stride_m": args.stride_m,
                      "metres_per_pixel": METRES_PER_PIXEL, "runs": runs, "python": platform.python_version()}))


if __name__ == "__main__":
    main()
