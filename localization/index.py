"""The tile index on disk: build it (resumable), load it (verified), and the FAISS index kinds.

An index folder holds, once complete::

    manifest.json   format, checkpoint identity (path, SHA-256 of its weights, config), index
                    kind and parameters, count, dimension, source, SHA-256 of the two files below
    tiles.json      one record per tile, in index order (name, path, lat, lon[, box], size,
                    mtime_ns: the stamp of its file when indexed)
    index.faiss     the serialised FAISS index of the satellite-branch descriptors

``manifest.json`` is written last, so a folder without it is never taken for an index. A
build locks the folder (``.lock``), so a second build into it is refused while the first
runs. While building, descriptors are saved chunk by chunk under ``building/`` (each file
written atomically with the keys of its tiles, :func:`tile_key`; ``building/plan.json``
names the checkpoint); an interrupted or failed build resumes from every tile it finished
whose record and file stamp are unchanged, and ``building/`` is removed at the end.

Re-running a build into a finished index: the same checkpoint, tiles (file stamps included),
source settings and resolved index parameters leave it as it is ("nothing to do"); anything
else is refused, naming each difference (old and new value, which tile files changed), unless
``--rebuild`` replaces it (the old index stays usable until the new manifest is written).

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
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from common.errors import UserError, user_message
from common.fileio import lock_folder, unlock, write_bytes_atomic, write_json_atomic
from localization.geo import GEO_KINDS, tile_from_dict
from localization.tiles import Tile

MANIFEST, TILES, INDEX_FILE, BUILDING, PLAN = "manifest.json", "tiles.json", "index.faiss", "building", "plan.json"
LOCK = ".lock"  # held by the build writing the folder (common.fileio.lock_folder)
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
        raise UserError(f"{what} is corrupt: {path} ({exc}); rebuild the index with localize.py index "
                        f"--rebuild") from None


def _short(sha: str) -> str:
    return sha[:12]


def _describe(names: Sequence[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def tile_changes(old: Sequence[Tile], new: Sequence[Tile]) -> Optional[str]:
    """What differs between the tiles of an index and ``new`` (changed files, added, removed, order),
    or None when they are the same. Stamps unknown to an index of an earlier release are not compared."""
    before = {t.place: t for t in old}
    after = {t.place for t in new}
    changed = [t.path for t in new if t.place in before and t.size is not None and before[t.place].size is not None
               and (t.size, t.mtime_ns) != (before[t.place].size, before[t.place].mtime_ns)]
    added = [t.path for t in new if t.place not in before]
    removed = [t.path for t in old if t.place not in after]
    parts = []
    if changed:
        parts.append(f"{len(changed)} of {len(new)} tile files changed since the index was built (other size or "
                     f"modification time: {_describe(changed)})")
    if added:
        parts.append(f"{len(added)} tiles added ({_describe(added)})")
    if removed:
        parts.append(f"{len(removed)} tiles removed ({_describe(removed)})")
    if not parts and [t.place for t in old] != [t.place for t in new]:
        parts.append("the same tiles in another order")
    return "; ".join(parts) or None


#: How the index parameters and the source settings are named on the command line.
_FLAGS = {"kind": "--index", "nlist": "--nlist", "nprobe": "--nprobe", "pq_m": "--pq_m", "refine": "--refine",
          "refine_bits": "--refine_bits", "tile_m": "--tile_m", "stride_m": "--stride_m", "bounds": "--bounds",
          "projection": "--projection"}
_SOURCES = ("satellites", "tiles", "mosaic", *GEO_KINDS)


def _value(value) -> str:
    if isinstance(value, list):
        return ",".join(_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _differences(out: str, manifest: dict, checkpoint: dict, tiles: Sequence[Tile], spec: IndexSpec,
                 source: dict) -> List[str]:
    """What the finished index in ``out`` was built with that differs from this build ([] = the same)."""
    found = []
    other = manifest["checkpoint"]
    if other["sha256"] != checkpoint["sha256"]:
        found.append(f"it was built by another checkpoint ({other['path']}, weights {_short(other['sha256'])}; "
                     f"this one: {checkpoint['path']}, weights {_short(checkpoint['sha256'])}: refusing to mix "
                     f"checkpoints in one index)")
    old_kind = next((k for k in _SOURCES if k in manifest["source"]), None)
    new_kind = next(k for k in _SOURCES if k in source)
    if old_kind != new_kind:
        found.append(f"--{old_kind} (this build: --{new_kind})")
    for key in ("tile_m", "stride_m", "bounds", "projection"):
        old, new = manifest["source"].get(key), source.get(key)
        if old != new and not (isinstance(old, float) and isinstance(new, float) and math.isclose(old, new)):
            found.append(f"{_FLAGS[key]} {_value(old) if old is not None else '(none)'} (this build: "
                         f"{_value(new) if new is not None else '(none)'})")
    built = IndexSpec(**manifest["index"])
    if built.kind != spec.kind:
        found.append(f"--index {built.kind} (this build: {spec.kind})")
    else:
        wanted = spec.resolved(len(tiles), manifest["dim"])
        found += [f"{_FLAGS[key]} {old} (this build: {new})" for key, old in asdict(built).items()
                  if old != (new := getattr(wanted, key))]
    changes = tile_changes(_stored_tiles(out, manifest), tiles)
    if changes:
        found.append(changes)
    return found


def _stored_tiles(out: str, manifest: dict) -> List[Tile]:
    path = Path(_verify(out, TILES, manifest))  # outside the try: its UserError is a ValueError too
    try:
        return [tile_from_dict(row) for row in json.loads(path.read_text(encoding="utf-8"))]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{os.path.join(out, TILES)} is not a tile list ({exc}); rebuild the index with "
                        f"localize.py index --rebuild") from None


def _finished(out: str, checkpoint: dict, tiles: Sequence[Tile], spec: IndexSpec, source: dict,
              rebuild: bool, log) -> bool:
    """Whether ``out`` already holds this very index (True: nothing to do). Another finished index
    there is a UserError naming what differs, or (``rebuild``) is to be replaced; a folder that holds
    neither an index nor a build is refused. Never writes."""
    manifest_path = os.path.join(out, MANIFEST)
    if os.path.exists(manifest_path):
        manifest = _checked_manifest(manifest_path)
        found = _differences(out, manifest, checkpoint, tiles, spec, source)
        if not found:
            return True
        if not rebuild:
            raise UserError(f"{out} already holds an index that differs from this build: {'; '.join(found)}; pass "
                            f"--rebuild to replace it (it stays usable until the new one is complete), or choose "
                            f"another --out")
        log(f"rebuilding {out}, whose index differs from this build: {'; '.join(found)}")
    elif [name for name in os.listdir(out) if name not in (BUILDING, LOCK)]:
        raise UserError(f"--out {out} is not empty and holds no index; choose a new or empty folder")
    return False


def _save_chunk(path: str, keys: Sequence[str], array: np.ndarray) -> None:
    """Descriptors with the keys of their tiles (:func:`tile_key`), one atomic ``.npz`` file."""
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(keys, dtype="S64"), descriptors=array)
    write_bytes_atomic(path, buffer.getvalue())


def _read_chunk(path: str):
    """``(keys, descriptors)`` of a saved chunk, or None when it is unusable (embedded again then)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            keys, array = [k.decode("ascii") for k in stored["keys"]], stored["descriptors"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != len(keys):
        return None
    return keys, array


def tile_key(tile: Tile) -> str:
    """A tile's identity in a build: SHA-256 of its record, file stamp included."""
    return _sha256(json.dumps(tile.as_dict(), sort_keys=True).encode("utf-8"))


class _Embedded:
    """The descriptors finished by earlier (interrupted or failed) builds in ``building``, by tile key."""

    def __init__(self, building: str) -> None:
        self.where = {}
        for name in sorted(os.listdir(building)):
            if name.startswith("chunk_") and name.endswith(".npz"):
                path = os.path.join(building, name)
                for row, key in enumerate((_read_chunk(path) or ([], None))[0]):
                    self.where[key] = (path, row)
        self._cached = (None, None)

    def get(self, key: str) -> Optional[np.ndarray]:
        if key not in self.where:
            return None
        path, row = self.where[key]
        if self._cached[0] != path:
            self._cached = (path, _read_chunk(path)[1])
        return self._cached[1][row]


def _start_building(building: str, checkpoint: dict, chunk: int, rebuild: bool, out: str) -> int:
    """Create ``building/`` with its plan (or adopt an interrupted build's: its chunk size); returns the
    chunk size. An interrupted build of another checkpoint is refused (``rebuild``: discarded)."""
    plan_path = os.path.join(building, PLAN)
    if os.path.exists(plan_path):
        plan = _read_json(plan_path, "index build plan")
        other = plan.get("checkpoint", {}) if isinstance(plan, dict) else {}
        if other.get("sha256") != checkpoint["sha256"] or plan.get("format") != FORMAT:
            if not rebuild:
                raise UserError(f"{out} holds an interrupted index build of another checkpoint ({other.get('path')}, "
                                f"weights {_short(str(other.get('sha256')))}; this one: {checkpoint['path']}, "
                                f"weights {_short(checkpoint['sha256'])}); refusing to mix checkpoints in one "
                                f"index: pass --rebuild to discard it, or choose another --out")
            shutil.rmtree(building)
        else:
            chunk = int(plan.get("chunk", chunk))
    os.makedirs(building, exist_ok=True)
    write_json_atomic(plan_path, {"format": FORMAT, "checkpoint": checkpoint, "chunk": chunk})
    return chunk


def build_index(loaded, tiles: List[Tile], out: str, spec: IndexSpec, source: dict, batch_size: int = 32,
                workers: int = 0, chunk: int = 2048, rebuild: bool = False, log=print) -> dict:
    """Embed ``tiles`` with the satellite branch of ``loaded`` and write the index folder ``out``.

    ``out`` is locked while building (:func:`common.fileio.lock_folder`). Resumes from the tiles
    that interrupted or failed builds of the same checkpoint embedded (by tile key: unchanged
    tiles keep their descriptors even when others were added, removed or changed). A finished
    index of this very build is left as it is; another is refused, naming what differs, unless
    ``rebuild``. Returns the manifest.
    """
    spec.check_count(len(tiles))
    checkpoint = loaded.identity()
    created = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)
    lock = lock_folder(out, "index folder", "choose another --out")
    try:
        if _finished(out, checkpoint, tiles, spec, source, rebuild, log):
            log(f"{out} already holds this index ({len(tiles)} tiles, {spec.kind}, the same parameters and "
                f"unchanged tile files); nothing to do")
            return _read_json(os.path.join(out, MANIFEST), "index manifest")
        return _build(loaded, tiles, out, spec, source, batch_size, workers, chunk, rebuild, log)
    finally:
        os.remove(os.path.join(out, LOCK))
        unlock(lock)
        if created and not os.listdir(out):
            os.rmdir(out)


def _embed_chunks(loaded, tiles: List[Tile], building: str, chunk: int, batch_size: int, workers: int, bar):
    """Save the descriptors of ``tiles`` in ``building``, ``chunk`` tiles a file named by their keys,
    embedding only the tiles no earlier build finished. Returns ``(chunk paths, their sizes, tiles
    resumed)``. A tile that cannot be read is a UserError that says the finished chunks are kept."""
    from localization.embed import TileImages, embed

    embedded = _Embedded(building)
    keys = [tile_key(t) for t in tiles]
    paths, sizes, resumed = [], [], 0
    for start in range(0, len(tiles), chunk):
        rows, row_keys = tiles[start:start + chunk], keys[start:start + chunk]
        path = os.path.join(building, f"chunk_{_sha256(''.join(row_keys).encode('ascii'))[:16]}.npz")
        stored = _read_chunk(path) if os.path.exists(path) else None
        if stored is not None and stored[0] == row_keys:
            resumed += len(rows)
        else:
            known = [embedded.get(key) for key in row_keys]
            missing = [i for i, vector in enumerate(known) if vector is None]
            resumed += len(rows) - len(missing)
            try:
                new = embed(loaded, TileImages([rows[i] for i in missing], loaded.satellite_size,
                                               loaded.run.model.polar_files), "satellite", batch_size, workers,
                            desc="batches") if missing else None
            except UserError as exc:
                raise UserError(f"{user_message(exc)} ({start} of {len(tiles)} tiles embedded so far are kept in "
                                f"{building}: fix or remove that tile and run the command again)") from None
            width = new.shape[1] if new is not None else len(next(v for v in known if v is not None))
            part = np.empty((len(rows), width), dtype=np.float32)
            for i, vector in enumerate(known):
                if vector is not None:
                    part[i] = vector
            if missing:
                part[missing] = new
            _save_chunk(path, row_keys, part)
        paths.append(path)
        sizes.append(len(rows))
        bar.update(len(rows))
    return paths, sizes, resumed


def _build(loaded, tiles: List[Tile], out: str, spec: IndexSpec, source: dict, batch_size: int, workers: int,
           chunk: int, rebuild: bool, log) -> dict:
    started = time.perf_counter()
    checkpoint = loaded.identity()
    building = os.path.join(out, BUILDING)
    chunk = _start_building(building, checkpoint, chunk, rebuild, out)
    with tqdm(total=len(tiles), desc="embedding tiles", unit="tile", dynamic_ncols=True) as bar:
        paths, sizes, resumed = _embed_chunks(loaded, tiles, building, chunk, batch_size, workers, bar)
    if resumed:
        log(f"resumed: {resumed} of {len(tiles)} tiles were embedded by the interrupted build")
    dim = _read_chunk(paths[0])[1].shape[1]
    spec = spec.resolved(len(tiles), dim)
    descriptors = Chunks(sizes, dim, lambda number: _read_chunk(paths[number])[1])
    index_bytes = serialise(make_index(spec, descriptors))
    tiles_bytes = (json.dumps([t.as_dict() for t in tiles], indent=0) + "\n").encode("utf-8")
    lats, lons = [t.lat for t in tiles], [t.lon for t in tiles]
    manifest = {"format": FORMAT, "checkpoint": checkpoint, "tiles_sha256": tiles_sha256(tiles), "count": len(tiles),
                "dim": int(dim), "index": asdict(spec), "source": source,
                "extent": {"north": max(lats), "south": min(lats), "west": min(lons), "east": max(lons)},
                "files": {TILES: _sha256(tiles_bytes), INDEX_FILE: _sha256(index_bytes)},
                "faiss": _faiss().__version__}
    if os.path.exists(os.path.join(out, MANIFEST)):  # --rebuild: an unfinished build until the new manifest
        os.remove(os.path.join(out, MANIFEST))
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
        raise UserError(f"index file {problem}: {path}; rebuild the index with localize.py index --rebuild") from None
    if digest.hexdigest() != manifest.get("files", {}).get(name):
        raise UserError(f"index file is corrupt (its checksum differs from {MANIFEST}): {path}; rebuild the index "
                        "with localize.py index --rebuild")
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
    manifest = _checked_manifest(manifest_path)
    tiles = _stored_tiles(folder, manifest)
    spec = IndexSpec(**manifest["index"])
    path = _verify(folder, INDEX_FILE, manifest)
    faiss = _faiss()
    try:
        index = faiss.read_index(path)  # straight from the file: memory holds the index once
    except RuntimeError:
        raise UserError(f"{path} is not a readable FAISS index; rebuild the index with localize.py index "
                        f"--rebuild") from None
    if index.ntotal != len(tiles) or index.ntotal != manifest["count"] or index.d != manifest["dim"]:
        raise UserError(f"{folder}: the index holds {index.ntotal} {index.d}-d vectors but the manifest lists "
                        f"{manifest['count']} {manifest['dim']}-d tiles; rebuild the index with localize.py index "
                        f"--rebuild")
    kind = _KIND_OF_CLASS.get(type(faiss.downcast_index(index)).__name__)
    if kind != spec.kind:
        raise UserError(f"{path} holds a '{kind}' index but {manifest_path} says '{spec.kind}': the manifest was "
                        f"edited; rebuild the index with localize.py index --rebuild")
    if nprobe:
        spec = spec.with_nprobe(nprobe)
    set_search_params(index, spec)
    return LoadedIndex(folder, manifest, tiles, index, spec)


#: The index kind of each FAISS class :func:`make_index` builds.
_KIND_OF_CLASS = {"IndexFlatIP": "flat", "IndexIVFFlat": "ivf", "IndexIVFPQ": "ivfpq", "IndexRefine": "ivfpq"}
#: What a manifest must hold (key, type); ``index`` holds :class:`IndexSpec`'s fields.
_MANIFEST_KEYS = ((("checkpoint",), dict), (("checkpoint", "path"), str), (("checkpoint", "sha256"), str),
                  (("count",), int), (("dim",), int), (("index",), dict), (("index", "kind"), str),
                  (("source",), dict), (("files",), dict), (("files", TILES), str), (("files", INDEX_FILE), str))


def _checked_manifest(path: str) -> dict:
    """The manifest at ``path`` after checking its format and the keys and types the tools read; a
    UserError naming the file and the first problem (a damaged or hand-edited manifest) otherwise."""
    manifest = _read_json(path, "index manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not an index manifest of format {FORMAT}; rebuild the index with localize.py "
                        f"index --rebuild")
    problem = None
    for keys, kind in _MANIFEST_KEYS:
        key, name = ".".join(keys), keys[-1]
        holder = manifest[keys[0]] if len(keys) > 1 else manifest
        if name not in holder:
            problem = f"has no '{key}'"
        elif not isinstance(holder[name], kind) or isinstance(holder[name], bool):
            problem = f"'{key}' must be a {kind.__name__ if kind is not dict else 'JSON object'}"
        if problem:
            break
    if problem is None:
        try:
            IndexSpec(**manifest["index"])
        except (TypeError, UserError) as exc:
            problem = f"has unusable index parameters ({user_message(exc) if isinstance(exc, UserError) else exc})"
    if problem:
        raise UserError(f"index manifest {path} {problem}: it was edited or damaged; rebuild the index with "
                        f"localize.py index --rebuild")
    return manifest
