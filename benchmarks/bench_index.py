"""Tile index at scale: build time, memory, query latency and agreement with the exact index.

Synthetic L2-normalised descriptors with the structure of trained ones: references in
clusters (neighbouring tiles look alike: one cluster per 100 tiles, each reference =
centre + noise of the same norm), queries = a random reference + noise (similarity to it
about 0.7, as a panorama to its tile). Dimensions: 1024 (the ``tiny`` backbone: 128 channels
x 8 attention maps) and 4096 (VGG16: 512 x 8). Index kinds and parameters are exactly those of
``localize.py index --index flat|ivf|ivfpq`` (:func:`localization.index.make_index`).

The descriptors are generated chunk by chunk from seeds (:class:`localization.index.Chunks`), so
no size needs them all in memory: building holds the index, the training sample and one chunk.
The exact reference is a streamed scan of all chunks (exact inner products, top 10), not an index.

Latency is per panorama: one query at a time (a user's query), FAISS on ``--threads`` threads,
in a fresh process that loads the written ``index.faiss`` the way ``localize.py query`` does
(``faiss.read_index``). Memory: the file's size, and that process's peak RSS (``query_rss_gb``,
``VmHWM``; ``index_rss_gb`` = peak minus the RSS before loading, i.e. what the index costs on top
of the Python, torch and FAISS libraries); ``peak_rss_gb`` is the building process's.
Agreement: the share of queries whose approximate top-1 is
the exact top-1, and the overlap of the top-10 sets.

    python benchmarks/bench_index.py                                   # 100k tiles, 1024 dims (3.5 min on 2 cores)
    python benchmarks/bench_index.py --dims 4096                       # VGG16 descriptors
    python benchmarks/bench_index.py --sizes 1000000 --dims 1024       # the 1M case
    python benchmarks/bench_index.py --sizes 1000000 --dims 4096 --kinds ivfpq --refine_bits 4   # 1M VGG16 in < 4 GB

Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from localization.index import Chunks, IndexSpec, make_index, set_search_params  # noqa: E402

CHUNK = 65536  # descriptors generated per chunk


def clustered(count: int, dim: int, seed: int) -> Chunks:
    """One cluster per 100 tiles; each tile = its cluster's centre + noise of the same norm,
    normalised. Chunk ``i`` is drawn from the seed ``(seed, i)``: the same rows on every read."""
    centres = np.random.default_rng((seed, 0)).standard_normal((max(1, count // 100), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = [min(CHUNK, count - start) for start in range(0, count, CHUNK)]

    def read(number: int) -> np.ndarray:
        rng = np.random.default_rng((seed, 1, number))
        rows = sizes[number]
        block = centres[rng.integers(0, len(centres), rows)]
        block += rng.standard_normal((rows, dim), dtype=np.float32) / np.sqrt(dim, dtype=np.float32)
        return block / np.linalg.norm(block, axis=1, keepdims=True)

    return Chunks(sizes, dim, read)


def queries_near(references: Chunks, count: int, seed: int) -> np.ndarray:
    """Random tiles + noise of the same norm (similarity to their tile about 0.7), normalised."""
    rng = np.random.default_rng((seed, 2))
    picked = rng.integers(0, references.count, count)
    order = np.argsort(picked)
    sources = np.empty((count, references.dim), dtype=np.float32)
    sources[order] = references.rows(picked[order])
    out = sources + rng.standard_normal(sources.shape, dtype=np.float32) / np.sqrt(references.dim, dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def exact_top(references: Chunks, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices of each query's ``k`` largest inner products, best first, by a streamed scan."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    offset = 0
    for number, size in enumerate(references.sizes):
        scores = np.concatenate([best_scores, queries @ references.read(number).T], axis=1)
        ids = np.concatenate([best_ids, np.broadcast_to(np.arange(offset, offset + size), (len(queries), size))],
                             axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
        offset += size
    return best_ids


def memory_gb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process image, from /proc/self/status. Unlike
    ``ru_maxrss``, the peak starts afresh in a spawned process (``ru_maxrss`` keeps the RSS of
    the parent it was forked from)."""
    with open("/proc/self/status") as handle:
        kib = next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))
    return kib / 2 ** 20


def query_process(path: str, spec: IndexSpec, queries: np.ndarray, threads: int, answer) -> None:
    """In a fresh process: load the index file, search each query alone; report ids, time, memory."""
    import faiss

    faiss.omp_set_num_threads(threads)
    before = memory_gb("VmRSS")
    index = faiss.read_index(path)
    set_search_params(index, spec)
    index.search(queries[:5], 10)  # warm-up
    started = time.perf_counter()
    ids = np.concatenate([index.search(queries[i:i + 1], 10)[1] for i in range(len(queries))])
    latency_ms = 1000 * (time.perf_counter() - started) / len(queries)
    answer.put((ids, latency_ms, memory_gb("VmHWM"), memory_gb("VmHWM") - before))


def measure(spec: IndexSpec, references: Chunks, queries: np.ndarray, exact_ids: np.ndarray, threads: int,
            folder: str) -> dict:
    import faiss

    spec = spec.resolved(references.count, references.dim)
    started = time.perf_counter()
    index = make_index(spec, references)
    build_s = time.perf_counter() - started
    path = os.path.join(folder, f"{spec.kind}.faiss")
    faiss.write_index(index, path)
    del index
    context = multiprocessing.get_context("spawn")
    answer = context.Queue()
    worker = context.Process(target=query_process, args=(path, spec, queries, threads, answer))
    worker.start()
    ids, latency_ms, query_rss, index_rss = answer.get()
    worker.join()
    size_gb = os.path.getsize(path) / 2 ** 30
    os.remove(path)
    return {"kind": spec.kind, **{k: v for k, v in vars(spec).items() if k != "kind" and v},
            "build_s": round(build_s, 2), "index_gb": round(size_gb, 3), "query_rss_gb": round(query_rss, 2),
            "index_rss_gb": round(index_rss, 2), "query_ms": round(latency_ms, 3),
            "top1_agreement_pct": round(100 * float(np.mean(ids[:, 0] == exact_ids[:, 0])), 2),
            "top10_overlap_pct": round(100 * float(np.mean([len(set(a) & set(b)) / 10
                                                             for a, b in zip(ids, exact_ids)])), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000", help="numbers of reference tiles, comma-separated")
    parser.add_argument("--dims", default="1024", help="descriptor dimensions, comma-separated (4096 = VGG16)")
    parser.add_argument("--kinds", default="flat,ivf,ivfpq", help="index kinds, comma-separated")
    parser.add_argument("--queries", type=int, default=200, help="queries, searched one at a time")
    parser.add_argument("--nprobe", type=int, default=IndexSpec().nprobe, help="ivf/ivfpq lists per query")
    parser.add_argument("--refine_bits", type=int, default=IndexSpec().refine_bits, help="ivfpq re-scoring bits")
    parser.add_argument("--threads", type=int, default=2, help="FAISS (OpenMP) threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=tempfile.gettempdir(), help="folder for the index files while measured")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    results = []
    for size in (int(v) for v in args.sizes.split(",")):
        for dim in (int(v) for v in args.dims.split(",")):
            references = clustered(size, dim, args.seed)
            queries = queries_near(references, args.queries, args.seed)
            started = time.perf_counter()
            exact_ids = exact_top(references, queries)
            print(f"exact scan of {size} x {dim}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
            for kind in args.kinds.split(","):
                spec = IndexSpec(kind, nprobe=args.nprobe, refine_bits=args.refine_bits)
                results.append({"tiles": size, "dim": dim, **measure(spec, references, queries, exact_ids,
                                                                     args.threads, args.work)})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "bench_index", "threads": args.threads, "queries": args.queries,
                      "faiss": faiss.__version__, "peak_rss_gb": round(memory_gb("VmHWM"), 2), "results": results}))


if __name__ == "__main__":
    main()
