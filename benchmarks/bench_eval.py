"""Benchmark: streamed VIGOR-style evaluation vs a bare blocked matmul of the same size.

Claim measured: ranking every query against every reference (recall@1/5/10/1%, the hit rate with
three excluded semi-positives, and the top-1 for metre-level localisation) costs within 2.5x of
the bare similarity matmul and needs under 2 GB beyond the descriptors, because the similarity
matrix is streamed in query blocks instead of being built whole (19 GB in float32 at the VIGOR
same-area size).

Default size = VIGOR same-area test: 52,605 panoramas x 90,618 satellites, dim 4096 (SAFA VGG16:
512 channels x 8 attention maps). Shrink with the flags. Prints ONE JSON line.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated before the
phase; on CPU the resident-set high-water mark (VmHWM, reset per phase through
/proc/self/clear_refs on Linux) minus the RSS before the phase; where the reset is impossible the
process-lifetime ``resource.getrusage`` peak is reported instead (``memory_source`` says which).

    python benchmarks/bench_eval.py --queries 5000 --device cpu
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helper.metrics import evaluate_retrieval  # noqa: E402


def _proc_status_kb(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak extra memory of a phase: CUDA allocator stats or the RSS high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.source = "cuda_max_memory_allocated" if device.type == "cuda" else "VmHWM"

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            except OSError:
                self.source = "ru_maxrss"
            self.base = _proc_status_kb("VmRSS") if self.source == "VmHWM" else _ru_maxrss_bytes()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.extra = torch.cuda.max_memory_allocated() - self.base
        elif self.source == "VmHWM":
            self.extra = _proc_status_kb("VmHWM") - self.base
        else:
            self.extra = _ru_maxrss_bytes() - self.base
        return False


def _ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_descriptors(n: int, dim: int, device: torch.device, gen: torch.Generator, rows: int = 8192):
    """n x dim L2-normalised float32 rows, generated and normalised in row blocks."""
    x = torch.empty(n, dim, dtype=torch.float32, device=device)
    for s in range(0, n, rows):
        blk = x[s:s + rows]
        blk.normal_(generator=gen)
        blk.div_(blk.norm(dim=1, keepdim=True))
    return x


def blocked_matmul(query: torch.Tensor, reference: torch.Tensor, chunk_size: int) -> float:
    """The baseline: every query block times all references, nothing else. Returns a checksum."""
    buf = torch.empty(min(chunk_size, query.shape[0]), reference.shape[0], dtype=torch.float32,
                      device=reference.device)
    ref_t = reference.t()
    check = 0.0
    for s in range(0, query.shape[0], chunk_size):
        out = buf[: min(chunk_size, query.shape[0] - s)]
        torch.mm(query[s:s + chunk_size], ref_t, out=out)
        check += float(out[0, 0])
    return check


def make_problem(n: int, m: int, d: int, device, gen, seed: int):
    """Random unit descriptors, positives, three semi-positives and GPS near Chicago."""
    street = random_descriptors(n, d, device, gen)
    satellite = random_descriptors(m, d, device, gen)
    cpu_gen = torch.Generator().manual_seed(seed)
    positive = torch.randint(0, m, (n,), generator=cpu_gen)
    semi = (positive.unsqueeze(1) + torch.randint(1, m, (n, 3), generator=cpu_gen)) % m
    chicago = torch.tensor([41.8, -87.7], dtype=torch.float64)
    latlon = torch.rand(n, 2, generator=cpu_gen, dtype=torch.float64) * 0.1 + chicago
    sat_latlon = torch.rand(m, 2, generator=cpu_gen, dtype=torch.float64) * 0.1 + chicago
    return street, satellite, positive.to(device), semi.to(device), latlon, sat_latlon


def time_paths(args, street, satellite, positive, semi, latlon, sat_latlon, device):
    """Alternate the two paths ``--repeat`` times: run times, peak extra memory, the last results.

    On a shared machine the minimum is the least noisy estimate; memory is the largest peak seen.
    """
    matmul_times, eval_times, mm_extra, ev_extra = [], [], 0, 0
    for _ in range(args.repeat):
        with PeakMemory(device) as mem_mm:
            t0 = time.perf_counter()
            blocked_matmul(street, satellite, args.chunk_size)
            _sync(device)
            matmul_times.append(time.perf_counter() - t0)
        with PeakMemory(device) as mem_ev:
            t0 = time.perf_counter()
            res = evaluate_retrieval(street, satellite, positive, top1p="floor", semi_positive=semi,
                                     chunk_size=args.chunk_size, street_latlon=latlon,
                                     satellite_latlon=sat_latlon, reverse=False)
            _sync(device)
            eval_times.append(time.perf_counter() - t0)
        mm_extra, ev_extra = max(mm_extra, mem_mm.extra), max(ev_extra, mem_ev.extra)
    return matmul_times, eval_times, mm_extra, ev_extra, res, mem_ev.source


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=52605, help="number of street (query) descriptors")
    p.add_argument("--references", type=int, default=90618, help="number of satellite (reference) descriptors")
    p.add_argument("--dim", type=int, default=4096, help="descriptor dimension (SAFA VGG16: 4096)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    p.add_argument("--chunk_size", type=int, default=1024, help="queries per similarity block")
    p.add_argument("--seed", type=int, default=0, help="random seed of the descriptors and labels")
    p.add_argument("--repeat", type=int, default=1, help="alternating runs of both paths; the fastest of each is reported")
    args = p.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    n, m, d = args.queries, args.references, args.dim

    street, satellite, positive, semi, latlon, sat_latlon = make_problem(n, m, d, device, gen, args.seed)

    # warm-up: BLAS/cuBLAS initialisation and one block of each path
    w = min(n, 64)
    blocked_matmul(street[:w], satellite, args.chunk_size)
    evaluate_retrieval(street[:w], satellite, positive[:w], semi_positive=semi[:w], reverse=False)
    _sync(device)

    matmul_times, eval_times, mm_extra, ev_extra, res, memory_source = time_paths(
        args, street, satellite, positive, semi, latlon, sat_latlon, device)
    matmul_s, eval_s = min(matmul_times), min(eval_times)

    descriptor_bytes = (street.numel() + satellite.numel()) * 4
    out = {
        "benchmark": "eval_streamed_vs_matmul",
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "queries": n, "references": m, "dim": d, "chunk_size": args.chunk_size,
        "dense_matrix_gb_fp32": round(n * m * 4 / 1e9, 2),
        "descriptor_gb": round(descriptor_bytes / 1e9, 3),
        "matmul_s": round(matmul_s, 3),
        "eval_s": round(eval_s, 3),
        "ratio": round(eval_s / matmul_s, 3),
        "repeat": args.repeat,
        "matmul_runs_s": [round(t, 3) for t in matmul_times],
        "eval_runs_s": [round(t, 3) for t in eval_times],
        "matmul_gflops": round(2.0 * n * m * d / matmul_s / 1e9, 1),
        "memory_source": memory_source,
        "matmul_extra_gb": round(mm_extra / 1e9, 3),
        "eval_extra_gb": round(ev_extra / 1e9, 3),
        "peak_rss_gb": round(_ru_maxrss_bytes() / 1e9, 3),
        "cuda_max_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if device.type == "cuda" else None,
        "within_2_5x": eval_s <= 2.5 * matmul_s,
        "extra_under_2gb": ev_extra < 2e9,
        "recall": {k: round(res["street_to_satellite"][k], 4) for k in ("R@1", "R@5", "R@10", "R@1%", "hit_rate")},
        "top1p_k": res["top1p_k"],
        "localization_median_m": round(res["localization"]["median_m"], 1),
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
