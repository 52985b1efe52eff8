"""Throughput of the synthetic-world generator, as one JSON line.

Generates a CVUSA-layout set (pairs per second: aerial + panorama + annotation written)
and one VIGOR city (panoramas per second, the city's tiles included in the time, and
images per second) with ``--workers`` processes in a temporary directory.

Besides wall-clock rates the line reports CPU seconds per item (parent + workers) and
the rate those imply for ``--workers`` otherwise idle cores (``*_per_s_on_idle_cores``):
on a shared machine the wall-clock rate is lower than what the same cores give alone.

    python benchmarks/bench_synthetic.py [--workers 2] [--cvusa_pairs 48] [--vigor_panos 40]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.synth.layouts import generate_cvusa, generate_vigor  # noqa: E402


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(func, *args, **kwargs):
    cpu, wall = _cpu_seconds(), time.perf_counter()
    result = func(*args, **kwargs)
    return result, time.perf_counter() - wall, _cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2: the claim is for 2 cores)")
    parser.add_argument("--cvusa_pairs", type=int, default=48, help="CVUSA pairs to generate (default 48)")
    parser.add_argument("--vigor_panos", type=int, default=40, help="VIGOR panoramas in one city (default 40)")
    parser.add_argument("--size", default="demo", choices=("demo", "full"), help="size preset (default demo)")
    args = parser.parse_args()

    result = {"benchmark": "synthetic", "size": args.size, "workers": args.workers,
              "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
              "python": platform.python_version()}
    with tempfile.TemporaryDirectory() as tmp:
        generate_cvusa(os.path.join(tmp, "warm"), 2, 0, seed=99, size=args.size, workers=1)  # imports, caches
        _, wall, cpu = _timed(generate_cvusa, os.path.join(tmp, "cvusa"), args.cvusa_pairs, 0, seed=0,
                              size=args.size, workers=args.workers)
        n = args.cvusa_pairs
        result.update(cvusa_pairs=n, cvusa_seconds=round(wall, 3), cvusa_pairs_per_s=round(n / wall, 2),
                      cvusa_cpu_s_per_pair=round(cpu / n, 4),
                      cvusa_pairs_per_s_on_idle_cores=round(args.workers * n / cpu, 2))
        summary, wall, cpu = _timed(generate_vigor, os.path.join(tmp, "vigor"), ["NewYork"], args.vigor_panos, 0,
                                    seed=0, size=args.size, workers=args.workers)
        n = args.vigor_panos
        tiles = summary["cities"]["NewYork"]["satellites"]
        result.update(vigor_panoramas=n, vigor_tiles=tiles, vigor_seconds=round(wall, 3),
                      vigor_panos_per_s=round(n / wall, 2), vigor_images_per_s=round((n + tiles) / wall, 2),
                      vigor_cpu_s_per_pano=round(cpu / n, 4),
                      vigor_panos_per_s_on_idle_cores=round(args.workers * n / cpu, 2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
