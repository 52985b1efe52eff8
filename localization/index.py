"""The tile index on disk: build it (resumable), load it (verified), and the FAISS index kinds.

An index folder holds, once complete::

    manifest.json   format, checkpoint identity (path, SHA-256 of its weights, config), index
                    kind and parameters, count, dimension, source, SHA-256 of the two files below
    tiles.json      one record per tile, in index order (name, path, lat, lon[, box])
    index.faiss     the serialised FAISS index of the satellite-branch descriptors

``manifest.json`` is written last, so a folder without it is never taken for an index. While
building, descriptors are saved chunk by chunk under ``building/`` (each file written
atomically, with ``building/plan.json`` naming the checkpoint and the tiles); an interrupted
build resumes from the chunks it finished, and ``building/`` is removed at the end. A build
refuses a folder that holds (part of) an index from another checkpoint or other tiles.

Index kinds (similarity = inner product of L2-normalised descriptors = cosine):

* ``flat``: ``IndexFlatIP``, exact; the ranking of ``test_vigor.py``.
* ``ivf``: ``IndexIVFFlat`` with ``nlist`` inverted lists (default ``4 sqrt(N)``, at most
  ``N / 39`` so k-means has 39 points per centroid) searched ``nprobe`` at a time; exact
  vectors, approximate candidate set.
* ``ivfpq``: ``IndexIVFPQ`` (``pq_m`` sub-quantizers of 8 bits each, residual encoding) whose
  top ``refine x k`` candidates are re-scored with ``refine_bits``-bit scalar-quantised vectors
  (``IndexRefine`` over ``SQ8`` or ``SQ4``): ``d * refine_bits / 8`` bytes per tile plus ``pq_m``
  bytes of codes; ``refine_bits 0`` keeps the PQ codes only (no re-scoring).

Building never needs all descriptors in memory at once: :func:`make_index` takes them as
:class:`Chunks` read on demand (the training sample, then one chunk at a time).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from common.errors import UserError
from common.fileio import write_bytes_atomic, write_json_atomic
from localization.tiles import Tile

MANIFEST, TILES, INDEX_FILE, BUILDING, PLAN = "manifest.json", "tiles.json", "index.faiss", "building", "plan.json"
FORMAT = 1
INDEX_KINDS = ("flat", "ivf", "ivfpq")
REFINE_BITS = (8, 4, 0)
PQ_CODEBOOK = 256  # centroids of each 8-bit product-quantizer codebook


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is in requirements.txt
        raise UserError("the FAISS library is missing: pip install -r requirements.txt (faiss-cpu)") from None
    return faiss


# --------------------------------------------------------------------------- index kinds
@dataclass(frozen=True)
class IndexSpec:
    """Kind and parameters of a FAISS index (0 = choose from the number of tiles / dimension)."""

    kind: str = "flat"
    nlist: int = 0
    nprobe: int = 32
    pq_m: int = 0
    refine: int = 32
    refine_bits: int = 8

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise UserError(f"unknown --index {self.kind!r}; valid: {', '.join(INDEX_KINDS)}")
        if self.refine_bits not in REFINE_BITS:
            raise UserError(f"--refine_bits must be one of {', '.join(map(str, REFINE_BITS))}, got {self.refine_bits}")
        for name in ("nlist", "nprobe", "pq_m", "refine"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0, got {getattr(self, name)}")

    def check_count(self, count: int) -> int:
        """The number of inverted lists for ``count`` tiles; a UserError when too few tiles."""
        if self.kind == "flat":
            return 0
        nlist = self.nlist or int(max(1, min(round(4 * math.sqrt(count)), count // 39)))
        if nlist > count:
            raise UserError(f"--nlist {nlist} is larger than the {count} tiles; use --index flat for small "
                            f"indexes or a smaller --nlist")
        if self.kind == "ivfpq" and count < PQ_CODEBOOK:
            raise UserError(f"--index ivfpq needs at least {PQ_CODEBOOK} tiles to train its 8-bit codebooks, got "
                            f"{count}; use --index flat (exact, and fast at this size) or ivf")
        return nlist

    def resolved(self, count: int, dim: int) -> "IndexSpec":
        """The parameters actually used for ``count`` tiles of dimension ``dim``."""
        if self.kind == "flat":
            return IndexSpec("flat", 0, 0, 0, 0, 0)
        nlist = self.check_count(count)
        nprobe = max(1, min(self.nprobe or 1, nlist))
        if self.kind == "ivf":
            return IndexSpec("ivf", nlist, nprobe, 0, 0, 0)
        pq_m = self.pq_m or _default_pq_m(dim)
        if dim % pq_m:
            raise UserError(f"--pq_m {pq_m} must divide the descriptor dimension {dim}")
        refine = max(1, self.refine) if self.refine_bits else 0
        return IndexSpec("ivfpq", nlist, nprobe, pq_m, refine, self.refine_bits)

    def with_nprobe(self, nprobe: int) -> "IndexSpec":
        """This (resolved) spec searching ``nprobe`` lists (at most ``nlist``; flat: unchanged)."""
        return replace(self, nprobe=min(nprobe, self.nlist)) if self.nlist else self


def _default_pq_m(dim: int) -> int:
    """dim / 16 sub-quantizers (16 dimensions each), at least 1 and at most 256."""
    for m in range(min(256, max(1, dim // 16)), 0, -1):
        if dim % m == 0:
            return m
    return 1


@dataclass(frozen=True)
class Chunks:
    """N x D float32 descriptors as consecutive row chunks: ``read(i)`` returns chunk ``i``
    (``sizes[i]`` rows) on demand, from memory, a memory-mapped file or a generator."""

    sizes: Sequence[int]
    dim: int
    read: Callable[[int], np.ndarray]

    @classmethod
    def of(cls, arrays: Sequence[np.ndarray]) -> "Chunks":
        return cls([len(a) for a in arrays], int(arrays[0].shape[1]), arrays.__getitem__)

    @property
    def count(self) -> int:
        return int(sum(self.sizes))

    def rows(self, wanted: np.ndarray) -> np.ndarray:
        """The rows of sorted global indices ``wanted``, reading only the chunks that hold them."""
        bounds = np.cumsum([0, *self.sizes])
        parts = []
        for number in range(len(self.sizes)):
            inside = wanted[(wanted >= bounds[number]) & (wanted < bounds[number + 1])]
            if len(inside):
                parts.append(np.asarray(self.read(number))[inside - bounds[number]])
        return np.concatenate(parts)


def training_rows(spec: IndexSpec, count: int) -> int:
    """Descriptors k-means (and PQ) are trained on: 64 per inverted list (PQ: at least 256 x 64)."""
    return min(count, 64 * spec.nlist if spec.kind == "ivf" else max(64 * spec.nlist, PQ_CODEBOOK * 64))


def make_index(spec: IndexSpec, descriptors, seed: int = 0):
    """A trained FAISS index of the resolved ``spec`` holding ``descriptors``: an N x D float32
    array or :class:`Chunks`, read twice (a random training sample, then chunk by chunk), so
    that memory holds the index, the sample and one chunk but never all descriptors."""
    faiss = _faiss()
    chunks = Chunks.of([descriptors]) if isinstance(descriptors, np.ndarray) else descriptors
    count, dim = chunks.count, chunks.dim
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        quantizer = faiss.IndexFlatIP(dim)
        if spec.kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, spec.nlist, spec.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
            if spec.refine_bits:
                bits = {8: faiss.ScalarQuantizer.QT_8bit, 4: faiss.ScalarQuantizer.QT_4bit}[spec.refine_bits]
                index = faiss.IndexRefine(index, faiss.IndexScalarQuantizer(dim, bits, faiss.METRIC_INNER_PRODUCT))
        limit = training_rows(spec, count)
        wanted = np.arange(count) if limit == count else np.sort(
            np.random.default_rng(seed).choice(count, limit, replace=False))
        index.train(np.ascontiguousarray(chunks.rows(wanted), dtype=np.float32))
    for number in range(len(chunks.sizes)):
        index.add(np.ascontiguousarray(chunks.read(number), dtype=np.float32))
    set_search_params(index, spec)
    return index


def set_search_params(index, spec: IndexSpec) -> None:
    """Apply ``nprobe`` (and the refine factor) of ``spec`` to a loaded index."""
    faiss = _faiss()
    if spec.kind == "flat":
        return
    if spec.kind == "ivfpq" and spec.refine_bits:
        refine = faiss.downcast_index(index)
        refine.k_factor = float(spec.refine)
        faiss.extract_index_ivf(refine.base_index).nprobe = spec.nprobe
    else:
        faiss.extract_index_ivf(index).nprobe = spec.nprobe


def serialise(index) -> bytes:
    return _faiss().serialize_index(index).tobytes()


# -------------------------------------------------------------------------------- build
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiles_sha256(tiles: Sequence[Tile]) -> str:
    return _sha256(json.dumps([t.as_dict() for t in tiles], sort_keys=True).encode("utf-8"))


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserError(f"{what} is missing: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} is corrupt: {path} ({exc}); rebuild the index with localize.py index") from None


def _short(sha: str) -> str:
    return sha[:12]


def _check_out_folder(out: str, checkpoint: dict, tiles_sha: str, spec: IndexSpec) -> bool:
    """Whether ``out`` already holds this very index (True: nothing to do); a UserError when it
    holds something else. Never writes."""
    if not os.path.exists(out):
        return False
    if not os.path.isdir(out):
        raise UserError(f"--out {out} exists and is not a folder")
    manifest_path, plan_path = os.path.join(out, MANIFEST), os.path.join(out, BUILDING, PLAN)
    fix = "choose another --out or delete that folder"
    for path, what in ((manifest_path, "an index"), (plan_path, "an interrupted index build")):
        if not os.path.exists(path):
            continue
        stored = _read_json(path, "index manifest" if path == manifest_path else "index build plan")
        other = stored.get("checkpoint", {})
        if other.get("sha256") != checkpoint["sha256"]:
            raise UserError(f"{out} holds {what} of another checkpoint ({other.get('path')}, weights "
                            f"{_short(str(other.get('sha256')))}; this one: {checkpoint['path']}, weights "
                            f"{_short(checkpoint['sha256'])}); refusing to mix checkpoints in one index: {fix}")
        if stored.get("tiles_sha256") != tiles_sha:
            raise UserError(f"{out} holds {what} of other tiles (another source or changed files); refusing to "
                            f"mix them: {fix}")
        if path == manifest_path:
            if stored.get("index", {}).get("kind") != spec.kind:
                raise UserError(f"{out} already holds a complete '{stored['index']['kind']}' index of these "
                                f"tiles; {fix} to build a '{spec.kind}' one")
            return True
        return False
    if os.listdir(out):
        raise UserError(f"--out {out} is not empty and holds no index; choose a new or empty folder")
    return False


def _save_npy(path: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())


def _load_chunk(path: str, rows: int, dim: Optional[int]) -> Optional[np.ndarray]:
    """A finished chunk, or None when absent or unusable (it is then embedded again)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != rows or (dim and array.shape[1] != dim):
        return None
    return array


def build_index(loaded, tiles: List[Tile], out: str, spec: IndexSpec, source: dict, batch_size: int = 32,
                workers: int = 0, chunk: int = 2048, log=print) -> dict:
    """Embed ``tiles`` with the satellite branch of ``loaded`` and write the index folder ``out``.

    Resumes an interrupted build of the same checkpoint and tiles; returns the manifest.
    """
    from localization.embed import TileImages, embed

    started = time.perf_counter()
    spec.check_count(len(tiles))
    checkpoint = loaded.identity()
    tiles_sha = tiles_sha256(tiles)
    if _check_out_folder(out, checkpoint, tiles_sha, spec):
        log(f"{out} already holds this index ({len(tiles)} tiles, {spec.kind}); nothing to do")
        return _read_json(os.path.join(out, MANIFEST), "index manifest")
    building = os.path.join(out, BUILDING)
    os.makedirs(building, exist_ok=True)
    plan = {"format": FORMAT, "checkpoint": checkpoint, "tiles_sha256": tiles_sha, "count": len(tiles),
            "chunk": chunk}
    plan_path = os.path.join(building, PLAN)
    if os.path.exists(plan_path):
        chunk = int(_read_json(plan_path, "index build plan").get("chunk", chunk))
        plan["chunk"] = chunk
    write_json_atomic(plan_path, plan)

    size = loaded.satellite_size
    polar = loaded.run.model.polar_files
    paths, sizes, dim, resumed = [], [], None, 0
    bar = tqdm(total=len(tiles), desc="embedding tiles", unit="tile", dynamic_ncols=True)
    for number, start in enumerate(range(0, len(tiles), chunk)):
        rows = tiles[start:start + chunk]
        path = os.path.join(building, f"chunk_{number:06d}.npy")
        part = _load_chunk(path, len(rows), dim)
        if part is None:
            part = embed(loaded, TileImages(rows, size, polar), "satellite", batch_size, workers, desc="batches")
            _save_npy(path, part)
        else:
            resumed += len(rows)
        dim = part.shape[1]
        paths.append(path)
        sizes.append(len(rows))
        bar.update(len(rows))
    bar.close()
    if resumed:
        log(f"resumed: {resumed} of {len(tiles)} tiles were embedded by the interrupted build")
    spec = spec.resolved(len(tiles), dim)
    descriptors = Chunks(sizes, dim, lambda number: np.load(paths[number], mmap_mode="r", allow_pickle=False))
    index_bytes = serialise(make_index(spec, descriptors))
    tiles_bytes = (json.dumps([t.as_dict() for t in tiles], indent=0) + "\n").encode("utf-8")
    lats, lons = [t.lat for t in tiles], [t.lon for t in tiles]
    manifest = {"format": FORMAT, "checkpoint": checkpoint, "tiles_sha256": tiles_sha, "count": len(tiles),
                "dim": int(dim), "index": asdict(spec), "source": source,
                "extent": {"north": max(lats), "south": min(lats), "west": min(lons), "east": max(lons)},
                "files": {TILES: _sha256(tiles_bytes), INDEX_FILE: _sha256(index_bytes)},
                "faiss": _faiss().__version__}
    write_bytes_atomic(os.path.join(out, TILES), tiles_bytes)
    write_bytes_atomic(os.path.join(out, INDEX_FILE), index_bytes)
    write_json_atomic(os.path.join(out, MANIFEST), manifest)  # last: the folder is now an index
    shutil.rmtree(building, ignore_errors=True)
    log(f"index of {len(tiles)} tiles ({dim}-d descriptors, {spec.kind}) written to {out} in "
        f"{time.perf_counter() - started:.1f} s")
    return manifest


# --------------------------------------------------------------------------------- load
@dataclass
class LoadedIndex:
    folder: str
    manifest: dict
    tiles: List[Tile]
    index: object
    spec: IndexSpec

    def search(self, descriptors: np.ndarray, k: int):
        """``(similarities, tile indices)``, each queries x min(k, count), best first."""
        k = min(int(k), len(self.tiles))
        return self.index.search(np.ascontiguousarray(descriptors, dtype=np.float32), k)


def _verify(folder: str, name: str, manifest: dict) -> str:
    """The path of index file ``name`` once its SHA-256 (read in blocks) matches the manifest."""
    path = os.path.join(folder, name)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    except OSError as exc:
        problem = "is missing" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc.strerror})"
        raise UserError(f"index file {problem}: {path}; rebuild the index with localize.py index") from None
    if digest.hexdigest() != manifest.get("files", {}).get(name):
        raise UserError(f"index file is corrupt (its checksum differs from {MANIFEST}): {path}; rebuild the index "
                        "with localize.py index")
    return path


def load_index(folder: str, nprobe: Optional[int] = None) -> LoadedIndex:
    """Load and verify an index folder (every problem is a UserError saying how to fix it)."""
    if not os.path.isdir(folder):
        raise UserError(f"index folder not found: {folder}; build one with localize.py index")
    manifest_path = os.path.join(folder, MANIFEST)
    if not os.path.exists(manifest_path):
        if os.path.exists(os.path.join(folder, BUILDING, PLAN)):
            raise UserError(f"{folder} holds an unfinished index build; rerun the same localize.py index command "
                            "to finish it")
        raise UserError(f"{folder} is not an index folder (no {MANIFEST}); build one with localize.py index")
    manifest = _read_json(manifest_path, "index manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{manifest_path} is not an index manifest of format {FORMAT}; rebuild the index")
    try:
        rows = json.loads(Path(_verify(folder, TILES, manifest)).read_text(encoding="utf-8"))
        tiles = [Tile.from_dict(row) for row in rows]
        spec = IndexSpec(**manifest["index"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{folder} has an unreadable manifest or tile list ({exc}); rebuild the index") from None
    path = _verify(folder, INDEX_FILE, manifest)
    faiss = _faiss()
    try:
        index = faiss.read_index(path)  # straight from the file: memory holds the index once
    except RuntimeError:
        raise UserError(f"{os.path.join(folder, INDEX_FILE)} is not a readable FAISS index; rebuild it") from None
    if index.ntotal != len(tiles) or index.ntotal != manifest.get("count") or index.d != manifest.get("dim"):
        raise UserError(f"{folder}: the index holds {index.ntotal} {index.d}-d vectors but the manifest lists "
                        f"{manifest.get('count')} {manifest.get('dim')}-d tiles; rebuild the index")
    if nprobe:
        spec = spec.with_nprobe(nprobe)
    set_search_params(index, spec)
    return LoadedIndex(folder, manifest, tiles, index, spec)
