"""Tile index at scale: build time, memory, query latency and agreement with the exact index.

Synthetic L2-normalised descriptors with the structure of trained ones: references in
clusters (neighbouring tiles look alike: one cluster per 100 tiles, each reference =
centre + noise of the same norm), queries = a random reference + noise (similarity to it
about 0.7, as a panorama to its tile). Dimensions: 1024 (the ``tiny`` backbone: 128 channels
x 8 attention maps) and 4096 (VGG16: 512 x 8). Index kinds and parameters are exactly those of
``localize.py index --index flat|ivf|ivfpq`` (:func:`localization.index.make_index`).

Latency is per panorama: one query at a time (a user's query), FAISS on ``--threads`` threads.
Memory is the index's serialised size (what ``index.faiss`` holds and the query loads) and
the process's peak RSS. Agreement: the share of queries whose approximate top-1 is the exact
top-1, and the overlap of the top-10 sets.

    python benchmarks/bench_index.py                                   # 100k tiles, 1024 dims (3.5 min on 2 cores)
    python benchmarks/bench_index.py --dims 4096                       # VGG16 descriptors
    python benchmarks/bench_index.py --sizes 1000000 --dims 1024       # the 1M case (about 4 GB of descriptors)

Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from localization.index import IndexSpec, make_index, serialise  # noqa: E402


def clustered(count: int, dim: int, rng: np.random.Generator, chunk: int = 65536) -> np.ndarray:
    centres = rng.standard_normal((max(1, count // 100), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, chunk):
        rows = min(chunk, count - start)
        noise = rng.standard_normal((rows, dim), dtype=np.float32) / np.sqrt(dim, dtype=np.float32)
        block = centres[rng.integers(0, len(centres), rows)] + noise
        out[start:start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def queries_near(references: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    dim = references.shape[1]
    noise = rng.standard_normal((count, dim), dtype=np.float32) / np.sqrt(dim, dtype=np.float32)
    out = references[rng.integers(0, len(references), count)] + noise
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def measure(kind: str, references: np.ndarray, queries: np.ndarray, exact_ids, nprobe: int):
    spec = IndexSpec(kind, nprobe=nprobe).resolved(*references.shape)
    started = time.perf_counter()
    index = make_index(spec, references)
    build_s = time.perf_counter() - started
    size_gb = len(serialise(index)) / 2 ** 30
    index.search(queries[:5], 10)  # warm-up
    started = time.perf_counter()
    ids = np.concatenate([index.search(queries[i:i + 1], 10)[1] for i in range(len(queries))])
    latency_ms = 1000 * (time.perf_counter() - started) / len(queries)
    row = {"kind": kind, **{k: v for k, v in vars(spec).items() if k != "kind" and v}, "build_s": round(build_s, 2),
           "index_gb": round(size_gb, 3), "query_ms": round(latency_ms, 3)}
    if exact_ids is not None:
        row["top1_agreement_pct"] = round(100 * float(np.mean(ids[:, 0] == exact_ids[:, 0])), 2)
        row["top10_overlap_pct"] = round(100 * float(np.mean([len(set(a) & set(b)) / 10
                                                               for a, b in zip(ids, exact_ids)])), 2)
    del index
    return row, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000", help="numbers of reference tiles, comma-separated")
    parser.add_argument("--dims", default="1024", help="descriptor dimensions, comma-separated (4096 = VGG16)")
    parser.add_argument("--kinds", default="flat,ivf,ivfpq", help="index kinds (flat first: the reference)")
    parser.add_argument("--queries", type=int, default=200, help="queries, searched one at a time")
    parser.add_argument("--nprobe", type=int, default=IndexSpec().nprobe, help="ivf/ivfpq lists per query")
    parser.add_argument("--threads", type=int, default=2, help="FAISS (OpenMP) threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    results = []
    for size in (int(v) for v in args.sizes.split(",")):
        for dim in (int(v) for v in args.dims.split(",")):
            rng = np.random.default_rng(args.seed)
            references = clustered(size, dim, rng)
            queries = queries_near(references, args.queries, rng)
            exact_ids = None
            for kind in args.kinds.split(","):
                row, ids = measure(kind, references, queries, exact_ids, args.nprobe)
                if kind == "flat":
                    exact_ids = ids
                results.append({"tiles": size, "dim": dim, **row})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            del references
    print(json.dumps({"benchmark": "bench_index", "threads": args.threads, "queries": args.queries,
                      "faiss": faiss.__version__, "peak_rss_gb": round(peak_rss_gb(), 2), "results": results}))


if __name__ == "__main__":
    main()
