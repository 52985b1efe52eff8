"""Retrieval and localisation metrics: streamed recall@k, R@1%, VIGOR hit rate, metre-level error.

Vocabulary: the **query** is the street-view panorama, the **reference** the satellite image
(the reverse direction swaps the roles and says so in its keys).

Conventions (see ``docs/datasets.md``, "Evaluation rules"):

- Similarity is the dot product of L2-normalised descriptors, computed in float32 (fp16/bf16
  inputs are up-cast; TF32 is switched off for the duration on CUDA), on the tensors' device.
- The rank of the true reference is the number of references **strictly** more similar than
  it: ties count in the query's favour. Recall@k is the percentage of queries with rank < k.
- With several positives per query (``positive`` N x P, -1 padding) the rank is that of the
  most similar positive; the other positives are never strictly more similar than it, so they
  do not count against it.
- ``exclude`` (N x E, -1 padding) lists references ignored when ranking (the VIGOR
  semi-positives): each excluded reference that is strictly more similar than the positive is
  subtracted once, however often it is listed; excluding the positive itself changes nothing.
- A model with its own pairwise similarity (the ``dsm`` head: max over circular column shifts,
  :class:`models.orientation.CircularCorrelation`) passes it as ``similarity``: a callable
  ``(query rows n x Dq, references M x Dr) -> (n x M similarities, n x M best shifts)`` with a
  ``heading(shifts, query_dim)`` method; it replaces the dot product block by block, and the
  best shift of each query's top-1 reference is its heading estimate (``orientation``).
- The similarity matrix is never built whole: queries are processed in blocks of
  ``chunk_size`` rows, so the extra memory is O(chunk_size x M) (one float32 block, the
  temporaries of one row tile and per-row vectors), never N x M. Near-ties closer than float32 round-off may in principle be
  ordered differently by different block sizes (different BLAS kernels); exact ties never are.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from common.errors import UserError
from geometry.earth import haversine_m
from geometry.heading import heading_error

__all__ = [
    "LOCALIZATION_THRESHOLDS_M",
    "RankResult",
    "TOP1P_RULES",
    "evaluate_retrieval",
    "format_recalls",
    "localization_errors",
    "localization_summary",
    "orientation_summary",
    "recall_at_k",
    "recall_from_ranks",
    "retrieval_ranks",
    "streaming_ranks",
    "street_to_satellite_results",
    "top1p_k",
]

#: Thresholds (metres) of the VIGOR meter-level table; "within" uses strict ``<``.
LOCALIZATION_THRESHOLDS_M = (1, 5, 10, 25, 50)
#: Thresholds (degrees) of the heading error table; "within" uses ``<=``.
ORIENTATION_THRESHOLDS_DEG = (10, 30)
#: R@1% rules: "floor" = M // 100 (SAFA, TransGeo, Sample4Geo); "plus1" = int(0.01 M) + 1
#: (official VIGOR, CVM-Net).
TOP1P_RULES = ("floor", "plus1")

# Row tiles of the comparison pass, in elements of the similarity block. CPU: about 4 MB of
# float32 per tile, so compare + count + argmax run while the tile is still in cache. CUDA:
# bounds the temporaries of the count (a bool tile plus its int32 up-cast, 5 bytes/element)
# to ~170 MB instead of 9-10 bytes per element of the whole block.
_CPU_TILE_ELEMENTS = 1 << 20
_CUDA_TILE_ELEMENTS = 1 << 25

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]


class RankResult(NamedTuple):
    """Output of :func:`streaming_ranks` (tensors of length N on the input device; int64 but
    ``topk_similarity``).

    ranks: number of references strictly more similar than the (best) positive.
    ranks_excluding: the same, not counting the ``exclude`` references (None without exclude).
    top1: index of the most similar reference overall (first index among exact ties;
        ``exclude`` is not applied); None unless requested.
    top1_shift: the best shift of the top-1 reference (with a ``similarity`` that has shifts
        and ``return_top1``), else None.
    topk: N x K indices of the K most similar references, most similar first (``top_k`` > 0),
        else None. Taken from the same similarity blocks as ``ranks``.
    topk_similarity: N x K float32 similarities of ``topk`` (with ``topk``, else None).
    """

    ranks: torch.Tensor
    ranks_excluding: Optional[torch.Tensor]
    top1: Optional[torch.Tensor]
    top1_shift: Optional[torch.Tensor] = None
    topk: Optional[torch.Tensor] = None
    topk_similarity: Optional[torch.Tensor] = None


# ----------------------------------------------------------------------------- validation


def _as_descriptors(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise UserError(f"{name} descriptors must be a 2-D (count x dim) tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise UserError(f"{name} descriptors must be floating point, got {t.dtype}")
    return t


def _as_index(x: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise UserError(f"{name} must hold integer indices, got {t.dtype}")
    return t.to(device=device, dtype=torch.long)


def _check_indices(idx: torch.Tensor, name: str, num_references: int, allow_padding: bool) -> None:
    if idx.numel() == 0:
        return
    low = -1 if allow_padding else 0
    lo, hi = int(idx.min()), int(idx.max())
    if lo < low or hi >= num_references:
        valid = f"[{low}, {num_references - 1}]" + (" (-1 = padding)" if allow_padding else "")
        raise UserError(
            f"{name} holds index {lo if lo < low else hi}, outside {valid}: the labels do not match "
            f"the {num_references} references; check that descriptors and labels come from the same split"
        )


def _check_finite_rows(x: torch.Tensor, name: str, chunk: int = 8192) -> None:
    """Raise UserError naming the first row with NaN/Inf. Screens with float32 row sums (a fast
    vectorised pass; NaN/Inf anywhere makes the sum non-finite) and confirms flagged rows with
    ``isfinite`` (a huge but finite row whose sum overflows is not an error)."""
    for s in range(0, x.shape[0], chunk):
        flagged = (~torch.isfinite(x[s:s + chunk].sum(dim=1, dtype=torch.float32))).nonzero()
        for r in flagged[:, 0].tolist():
            if not bool(torch.isfinite(x[s + r]).all()):
                _raise_non_finite(name, s + r)


def _raise_non_finite(name: str, row: int) -> None:
    raise UserError(
        f"{name} descriptor row {row} contains NaN or Inf: the model produced non-finite outputs "
        "(diverged training or a broken checkpoint); ranks would be meaningless"
    )


@contextlib.contextmanager
def _ieee_fp32_matmul(device: torch.device):
    """On CUDA, switch TF32 off for matmuls while evaluating (restored afterwards).

    Uses only the new ``fp32_precision`` API (mixing it with the legacy ``allow_tf32`` flags
    raises in recent torch); touches nothing when TF32 is not enabled or on CPU.
    """
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    try:
        old = matmul.fp32_precision
        effective = old if old != "none" else getattr(torch.backends, "fp32_precision", "ieee")
    except (AttributeError, RuntimeError):  # pragma: no cover - older/newer torch
        yield
        return
    if effective != "tf32":
        yield
        return
    matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = old


# ----------------------------------------------------------------------------- core kernels


def _count_greater(sims: torch.Tensor, pos_sim: torch.Tensor, want_top1: bool):
    """Per row: number of entries of ``sims`` (n x M) strictly greater than ``pos_sim`` (n x 1),
    and optionally the argmax (first index among exact ties). Processed in row tiles so that no
    temporary is as large as the block."""
    n, m = sims.shape
    cuda = sims.device.type == "cuda"
    rows = max(1, (_CUDA_TILE_ELEMENTS if cuda else _CPU_TILE_ELEMENTS) // max(m, 1))
    counts = torch.empty(n, dtype=torch.long, device=sims.device)
    top = None
    if want_top1:
        # on CUDA one argmax over the block is cheapest (no temporary); on CPU per tile, in cache
        top = sims.argmax(dim=1) if cuda else torch.empty(n, dtype=torch.long, device=sims.device)
    for s in range(0, n, rows):
        tile = sims[s:s + rows]
        # uint8 view + int32 accumulation: several times faster than bool.sum() (int64) on CPU
        # and half its temporary on CUDA
        counts[s:s + rows] = torch.gt(tile, pos_sim[s:s + rows]).view(torch.uint8).sum(dim=1, dtype=torch.int32)
        if want_top1 and not cuda:
            top[s:s + rows] = tile.argmax(dim=1)
    return counts, top


def _excluded_greater(sims: torch.Tensor, pos_sim: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """Per row, how many *distinct* excluded references (-1 = padding) are strictly more similar
    than the positive. ``exclude`` is n x E."""
    valid = exclude >= 0
    ex_sims = sims.gather(1, exclude.clamp(min=0))
    greater = ex_sims > pos_sim
    e = exclude.shape[1]
    if e > 1:
        # entry k is a duplicate when an earlier entry j < k names the same reference
        same = exclude.unsqueeze(2) == exclude.unsqueeze(1)  # n x E(j) x E(k)
        earlier = torch.ones(e, e, dtype=torch.bool, device=exclude.device).triu(diagonal=1)
        duplicate = (same & earlier).any(dim=1)
        valid = valid & ~duplicate
    return (valid & greater).sum(dim=1)


def streaming_ranks(
    query: ArrayLike,
    reference: ArrayLike,
    positive: ArrayLike,
    exclude: Optional[ArrayLike] = None,
    chunk_size: int = 1024,
    return_top1: bool = False,
    query_index: Optional[ArrayLike] = None,
    progress: bool = False,
    similarity: Optional[Callable] = None,
    top_k: int = 0,
) -> RankResult:
    """Ranks of the true references, streamed over query blocks (the one pass behind every metric).

    Args:
        query: N x D float descriptors (or the rows ``query_index`` of a larger matrix).
        reference: M x D float descriptors, on the same device as ``query``.
        positive: N long indices into ``reference``, or N x P with -1 padding (several
            positives; the rank is that of the most similar one; every row needs one).
        exclude: optional N x E long indices (-1 = padding) ignored by ``ranks_excluding``.
        chunk_size: queries per block; the block of similarities is chunk_size x M float32.
        return_top1: also return the argmax reference of every query.
        query_index: optional K long row indices: rank only ``query[query_index]`` (in that
            order; ``positive``/``exclude`` then have K rows) without copying those rows.
        progress: show a tqdm bar over blocks.
        similarity: optional pairwise similarity replacing the dot product (module doc); then
            ``query`` and ``reference`` may have different dimensions.
        top_k: also return the ``top_k`` most similar references of every query (at most M).

    Returns:
        :class:`RankResult` with int64 tensors on the descriptors' device.

    Memory: one chunk_size x M float32 block (reused), comparison temporaries of one row tile
    (CPU ~5 MB, CUDA ~170 MB), plus a float32 copy of ``reference`` when it is not float32
    already; a ``similarity`` adds its own temporaries (and a chunk_size x M block of shifts). Runs under ``torch.no_grad`` with autocast disabled and, on CUDA, TF32 off.
    """
    query, reference, query_index, positive, exclude = _rank_inputs(query, reference, positive, exclude,
                                                                     chunk_size, query_index, similarity is None)
    device, n, m = reference.device, positive.shape[0], reference.shape[0]
    ranks = torch.empty(n, dtype=torch.long, device=device)
    ranks_ex = torch.empty(n, dtype=torch.long, device=device) if exclude is not None else None
    top1 = torch.empty(n, dtype=torch.long, device=device) if return_top1 else None
    top1_shift = torch.empty(n, dtype=torch.long, device=device) if return_top1 and similarity is not None else None
    topk = torch.empty(n, top_k, dtype=torch.long, device=device) if top_k else None
    topk_similarity = torch.empty(n, top_k, dtype=torch.float32, device=device) if top_k else None
    finite = torch.empty(n, dtype=torch.bool, device=device)

    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False), _ieee_fp32_matmul(device):
        _check_finite_rows(reference, "reference")
        ref = reference if reference.dtype == torch.float32 else reference.float()
        ref_t = ref.t()
        block = torch.empty(min(chunk_size, n), m, dtype=torch.float32, device=device) if similarity is None else None
        starts = range(0, n, chunk_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="ranking", unit="block", leave=False)
        for s in starts:
            e = min(s + chunk_size, n)
            rows = query[query_index[s:e]] if query_index is not None else query[s:e]
            if similarity is None:
                sims = block[: e - s]
                torch.mm(rows.to(dtype=torch.float32), ref_t, out=sims)
            else:
                sims, shifts = similarity(rows.to(dtype=torch.float32), ref)
            pos_sim = _positive_similarity(sims, positive[s:e])
            # the references are checked above, so a non-finite positive similarity means a
            # non-finite query row (NaN/Inf reaches every similarity of its row): a free check,
            # looked at after the loop (no device sync per block)
            finite[s:e] = torch.isfinite(pos_sim[:, 0])
            counts, top = _count_greater(sims, pos_sim, return_top1)
            ranks[s:e] = counts
            if ranks_ex is not None:
                ranks_ex[s:e] = counts - _excluded_greater(sims, pos_sim, exclude[s:e])
            if top1 is not None:
                top1[s:e] = top
            if top1_shift is not None:
                top1_shift[s:e] = shifts.gather(1, top.unsqueeze(1))[:, 0]
            if topk is not None:
                topk_similarity[s:e], topk[s:e] = sims.topk(top_k, dim=1)
    if not bool(finite.all()):
        _raise_first_non_finite(query, query_index, finite)
    return RankResult(ranks, ranks_ex, top1, top1_shift, topk, topk_similarity)


def _positive_similarity(sims: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``B x 1`` similarity of each row's (most similar) positive; ``pos`` is B or B x P (-1 padding)."""
    if pos.dim() == 1:
        return sims.gather(1, pos.unsqueeze(1))
    g = sims.gather(1, pos.clamp(min=0))
    g.masked_fill_(pos < 0, float("-inf"))
    return g.max(dim=1, keepdim=True).values


def _raise_first_non_finite(query: torch.Tensor, query_index, finite: torch.Tensor) -> None:
    r = int((~finite).nonzero()[0, 0])
    row = int(query_index[r]) if query_index is not None else r
    if bool(torch.isfinite(query[row]).all()):
        raise UserError(f"similarities of query row {row} overflow float32: descriptors must be "
                        "L2-normalised (unit length)")
    _raise_non_finite("query", row)


def _rank_inputs(query, reference, positive, exclude, chunk_size, query_index, dot_product: bool = True):
    """Checked tensors for :func:`streaming_ranks`: (query, reference, query_index, positive, exclude);
    ``dot_product``: the descriptors must have one dimension."""
    query = _as_descriptors(query, "query")
    reference = _as_descriptors(reference, "reference")
    device = reference.device
    if query.device != device:
        raise ValueError(f"query is on {query.device} but reference on {device}; move both to one device")
    if dot_product and query.shape[1] != reference.shape[1]:
        raise UserError(
            f"query descriptors have dimension {query.shape[1]} but reference descriptors {reference.shape[1]}"
        )
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise UserError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    m = reference.shape[0]
    if m == 0:
        raise UserError("there are no reference descriptors to rank against")
    n = query.shape[0]
    if query_index is not None:
        query_index = _as_index(query_index, "query_index", device)
        if query_index.dim() != 1:
            raise UserError(f"query_index must be 1-D, got shape {tuple(query_index.shape)}")
        _check_indices(query_index, "query_index", query.shape[0], allow_padding=False)
        n = query_index.shape[0]
    if n == 0:
        raise UserError("there are no query descriptors to evaluate")
    return query, reference, query_index, _check_positive(positive, n, m, device), _check_exclude(exclude, n, m, device)


def _check_positive(positive, n: int, m: int, device) -> torch.Tensor:
    positive = _as_index(positive, "positive", device)
    if positive.dim() not in (1, 2) or positive.shape[0] != n:
        raise UserError(f"positive must have shape ({n},) or ({n}, P), got {tuple(positive.shape)}")
    multi = positive.dim() == 2
    _check_indices(positive, "positive", m, allow_padding=multi)
    if multi and not bool((positive >= 0).any(dim=1).all()):
        row = int((~(positive >= 0).any(dim=1)).nonzero()[0, 0])
        raise UserError(f"positive row {row} has no valid index (all -1): every query needs a positive")
    return positive


def _check_exclude(exclude, n: int, m: int, device) -> Optional[torch.Tensor]:
    if exclude is None:
        return None
    exclude = _as_index(exclude, "exclude", device)
    if exclude.dim() == 1:
        exclude = exclude.unsqueeze(1)
    if exclude.dim() != 2 or exclude.shape[0] != n:
        raise UserError(f"exclude must have shape ({n}, E), got {tuple(exclude.shape)}")
    _check_indices(exclude, "exclude", m, allow_padding=True)
    return exclude


def retrieval_ranks(
    query: ArrayLike,
    reference: ArrayLike,
    positive: ArrayLike,
    exclude: Optional[ArrayLike] = None,
    chunk_size: int = 1024,
    return_top1: bool = False,
):
    """Rank of each query's true reference (``exclude`` applied), optionally with the top-1.

    Shapes and conventions as :func:`streaming_ranks`. Returns ``ranks`` (N long) or
    ``(ranks, top1)`` when ``return_top1``; ``top1`` is the argmax over all references.
    """
    res = streaming_ranks(query, reference, positive, exclude=exclude, chunk_size=chunk_size,
                          return_top1=return_top1)
    ranks = res.ranks_excluding if exclude is not None else res.ranks
    return (ranks, res.top1) if return_top1 else ranks


def _check_ks(ks: Iterable[int]) -> list:
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UserError(f"recall cut-offs must be positive integers, got {k!r}")
        out.append(int(k))
    if not out:
        raise UserError("no recall cut-offs given (ks is empty)")
    return out


def recall_from_ranks(ranks: torch.Tensor, ks: Iterable[int]) -> Dict[int, float]:
    """``{k: percentage of ranks < k}`` (exact count / N * 100 as a Python float)."""
    ks = _check_ks(ks)
    n = ranks.numel()
    if n == 0:
        raise UserError("no ranks to compute recall from")
    return {k: 100.0 * int((ranks < k).sum()) / n for k in ks}


def recall_at_k(
    query: ArrayLike,
    reference: ArrayLike,
    positive: ArrayLike,
    ks: Iterable[int],
    exclude: Optional[ArrayLike] = None,
    chunk_size: int = 1024,
) -> Dict[int, float]:
    """Recall@k in percent for every k in ``ks``: ``{k: 100 * mean(rank < k)}``.

    ``query`` N x D and ``reference`` M x D L2-normalised float tensors; ``positive`` N long
    indices into ``reference`` (or N x P with -1 padding: best-positive rank); ``exclude``
    optional N x E long (-1 = padding) references ignored when ranking. Rank = number of
    references strictly more similar (ties in the query's favour). Streams over query blocks of
    ``chunk_size`` rows: extra memory O(chunk_size x M).
    """
    ks = _check_ks(ks)
    ranks = retrieval_ranks(query, reference, positive, exclude=exclude, chunk_size=chunk_size)
    return recall_from_ranks(ranks, ks)


def top1p_k(num_references: int, rule: str = "floor") -> int:
    """The k of R@1% for ``num_references`` (M) references, never below 1.

    ``"floor"``: M // 100 (SAFA, TransGeo, Sample4Geo: 88 on CVUSA, 906 / 465 on VIGOR
    same / cross); ``"plus1"``: int(0.01 * M) + 1 (official VIGOR and CVM-Net: 89, 907, 466).
    """
    if rule not in TOP1P_RULES:
        raise UserError(f"unknown R@1% rule {rule!r}; valid rules: {', '.join(TOP1P_RULES)}")
    m = int(num_references)
    if m < 1:
        raise UserError(f"R@1% needs at least one reference, got {num_references}")
    k = m // 100 if rule == "floor" else int(m * 0.01) + 1
    return max(1, k)


# ----------------------------------------------------------------------------- localisation


def localization_errors(query_latlon: ArrayLike, reference_latlon: ArrayLike, top1: ArrayLike) -> np.ndarray:
    """Metres between each query's GPS and the centre of its top-1 reference.

    ``query_latlon`` N x 2 and ``reference_latlon`` M x 2 in degrees, (lat, lon) order;
    ``top1`` N indices into the references. Returns a float64 numpy array of length N.
    """
    q = np.asarray(torch.as_tensor(query_latlon).detach().cpu().double(), dtype=np.float64)
    r = np.asarray(torch.as_tensor(reference_latlon).detach().cpu().double(), dtype=np.float64)
    t = np.asarray(torch.as_tensor(top1).detach().cpu().long())
    if q.ndim != 2 or q.shape[1] != 2 or r.ndim != 2 or r.shape[1] != 2:
        raise UserError(f"lat/lon arrays must be count x 2 (lat, lon), got {q.shape} and {r.shape}")
    if t.shape != (q.shape[0],):
        raise UserError(f"top1 must have one index per query ({q.shape[0]}), got shape {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= r.shape[0]):
        raise UserError(f"top1 holds indices outside [0, {r.shape[0] - 1}] (number of references)")
    hit = r[t]
    return haversine_m(q[:, 0], q[:, 1], hit[:, 0], hit[:, 1])


def localization_summary(distances_m: ArrayLike, thresholds_m: Iterable[float] = LOCALIZATION_THRESHOLDS_M) -> dict:
    """``{"median_m": median, "within_m": {"1": pct, "5": pct, ...}}``.

    ``within_m[t]`` = percentage of queries with distance **strictly** below t metres (as the
    official VIGOR code); keys are the thresholds as strings (integers without ".0").
    """
    d = np.asarray(torch.as_tensor(distances_m).detach().cpu().double(), dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise UserError("no localisation distances to summarise")
    within = {}
    for t in thresholds_m:
        key = str(int(t)) if float(t).is_integer() else str(t)
        within[key] = 100.0 * int(np.count_nonzero(d < t)) / d.size
    return {"median_m": float(np.median(d)), "within_m": within}


def orientation_summary(errors_deg: ArrayLike, thresholds_deg: Iterable[float] = ORIENTATION_THRESHOLDS_DEG) -> dict:
    """``{"median_deg", "within_deg": {"10": pct, "30": pct}, "queries"}`` of heading errors in degrees.

    ``within_deg[t]`` = percentage of errors ``<= t``; with no errors (no correct top-1) the
    median and the percentages are None.
    """
    e = np.asarray(torch.as_tensor(errors_deg).detach().cpu().double(), dtype=np.float64).reshape(-1)
    within = {str(int(t)) if float(t).is_integer() else str(t):
              (100.0 * int(np.count_nonzero(e <= t)) / e.size if e.size else None) for t in thresholds_deg}
    return {"median_deg": float(np.median(e)) if e.size else None, "within_deg": within, "queries": int(e.size)}


# ----------------------------------------------------------------------------- evaluation


def _reverse_positives(positive: torch.Tensor, num_satellites: int):
    """For street->satellite labels ``positive`` (N long), the satellites that are the positive of
    at least one street (Ms, sorted) and, per such satellite, all those streets (Ms x P, -1 pad)."""
    satellites, counts = torch.unique(positive, sorted=True, return_counts=True)
    order = torch.argsort(positive, stable=True)
    group = torch.searchsorted(satellites, positive[order])
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(positive.numel(), device=positive.device) - starts[group]
    table = torch.full((satellites.numel(), int(counts.max())), -1, dtype=torch.long, device=positive.device)
    table[group, slot] = order
    return satellites, table


def _direction_dict(ranks: torch.Tensor, top1p: int, n_queries: int, n_refs: int) -> dict:
    rec = recall_from_ranks(ranks, (1, 5, 10, top1p))
    return {"R@1": rec[1], "R@5": rec[5], "R@10": rec[10], "R@1%": rec[top1p],
            "queries": n_queries, "references": n_refs, "top1p_k": top1p}


def _retrieval_labels(positive, semi_positive, n: int, device):
    """Checked ``positive`` (N,) and optional ``semi_positive`` (N, E) index tensors."""
    positive = _as_index(positive, "positive", device)
    if positive.shape != (n,):
        raise UserError(f"positive must have one satellite index per street image ({n},), got {tuple(positive.shape)}")
    if semi_positive is not None:
        semi_positive = _as_index(semi_positive, "semi_positive", device)
        if semi_positive.dim() != 2 or semi_positive.shape[0] != n:
            raise UserError(f"semi_positive must have shape ({n}, E), got {tuple(semi_positive.shape)}")
    return positive, semi_positive


def evaluate_retrieval(
    street: ArrayLike,
    satellite: ArrayLike,
    positive: ArrayLike,
    top1p: str = "floor",
    semi_positive: Optional[ArrayLike] = None,
    chunk_size: int = 1024,
    *,
    street_latlon: Optional[ArrayLike] = None,
    satellite_latlon: Optional[ArrayLike] = None,
    reverse: bool = True,
    return_top1: bool = False,
    progress: bool = False,
    similarity: Optional[Callable] = None,
    street_heading: Optional[ArrayLike] = None,
    top_k: int = 0,
) -> dict:
    """Recall (both directions), VIGOR hit rate, metre-level localisation and heading error, as
    results-JSON pieces.

    Args:
        street: N x D street (query) descriptors; satellite: M x D satellite descriptors.
        positive: N long, the true satellite of each street image.
        top1p: R@1% rule, "floor" or "plus1" (see :func:`top1p_k`).
        semi_positive: optional N x 3 long (VIGOR): adds ``street_to_satellite["hit_rate"]``,
            the percentage of streets whose rank among all satellites except these three is 0.
        street_latlon / satellite_latlon: optional N x 2 / M x 2 (lat, lon) degrees: adds
            ``"localization"`` (distance street GPS -> centre of the top-1 satellite).
        reverse: also evaluate satellite -> street. Its queries are the satellites that are the
            positive of at least one street (all M for a 1:1 permutation like CVUSA); their
            positives are all those streets (best-positive rank), the references all N streets.
        return_top1: add ``"top1"``: N long tensor (descriptors' device), the most similar
            satellite of every street image (pop it before writing JSON).
        progress: tqdm bars over query blocks.
        similarity: the model's pairwise similarity (module doc), None for the dot product.
        street_heading: optional N true headings in degrees (:mod:`geometry.heading`); with a
            ``similarity`` that estimates headings, adds ``"orientation"``
            (:func:`orientation_summary` of the errors of the streets whose top-1 is correct).
        top_k: add ``"ranking"``: the street->satellite :class:`RankResult` with the ``top_k``
            most similar satellites of every street (re-ranking; pop it before writing JSON).

    Returns:
        ``{"queries": N, "references": M, "top1p_k": k, "top1p_rule": rule,
        "street_to_satellite": {"R@1", "R@5", "R@10", "R@1%", ["hit_rate"], "queries",
        "references", "top1p_k"}, ["satellite_to_street": {... same keys ...}],
        ["localization": {"median_m", "within_m"}], ["orientation": {"median_deg", "within_deg",
        "queries"}], ["top1"], ["ranking"]}``; recalls in percent. Each direction's
        R@1% uses that direction's number of references.
    """
    street = _as_descriptors(street, "street")
    satellite = _as_descriptors(satellite, "satellite")
    n, m = street.shape[0], satellite.shape[0]
    positive, semi_positive = _retrieval_labels(positive, semi_positive, n, satellite.device)
    if (street_latlon is None) != (satellite_latlon is None):
        raise UserError("localisation needs both street_latlon and satellite_latlon (or neither)")
    orientation = similarity is not None and street_heading is not None
    want_top1 = street_latlon is not None or return_top1 or orientation

    k_fwd = top1p_k(m, top1p)
    fwd = streaming_ranks(street, satellite, positive, exclude=semi_positive, chunk_size=chunk_size,
                          return_top1=want_top1, progress=progress, similarity=similarity, top_k=top_k)
    forward = street_to_satellite_results(fwd, k_fwd, m, street_latlon, satellite_latlon)
    out = {"queries": n, "references": m, "top1p_k": k_fwd, "top1p_rule": top1p,
           "street_to_satellite": forward.pop("street_to_satellite")}

    if reverse:
        satellites, street_positives = _reverse_positives(positive, m)
        k_rev = top1p_k(n, top1p)
        reverse_similarity = None if similarity is None else _transposed(similarity)
        rev = streaming_ranks(satellite, street, street_positives, chunk_size=chunk_size,
                              query_index=satellites, progress=progress, similarity=reverse_similarity)
        out["satellite_to_street"] = _direction_dict(rev.ranks, k_rev, int(satellites.numel()), n)

    out.update(forward)
    if orientation:
        correct = (fwd.top1 == positive).cpu()
        estimate = similarity.heading(fwd.top1_shift, street.shape[1]).cpu()
        truth = torch.as_tensor(street_heading, dtype=torch.float64).cpu()
        out["orientation"] = orientation_summary(heading_error(estimate[correct].numpy(), truth[correct].numpy()))
    if return_top1:
        out["top1"] = fwd.top1
    if top_k:
        out["ranking"] = fwd
    return out


def street_to_satellite_results(ranking, top1p: int, num_references: int, street_latlon: Optional[ArrayLike] = None,
                                satellite_latlon: Optional[ArrayLike] = None) -> dict:
    """``{"street_to_satellite": {...}, ["localization"]}`` of :func:`evaluate_retrieval` from the
    ``ranks``, ``ranks_excluding`` (the hit rate, when not None) and ``top1`` (the localisation,
    with GPS) of ``ranking`` (a :class:`RankResult` or the like); ``top1p`` is the k of R@1%."""
    n = ranking.ranks.numel()
    s2s = _direction_dict(ranking.ranks, top1p, n, num_references)
    if ranking.ranks_excluding is not None:
        s2s["hit_rate"] = 100.0 * int((ranking.ranks_excluding < 1).sum()) / n
    out = {"street_to_satellite": s2s}
    if street_latlon is not None:
        out["localization"] = localization_summary(localization_errors(street_latlon, satellite_latlon, ranking.top1))
    return out


def _transposed(similarity: Callable) -> Callable:
    """The reverse direction of a pairwise similarity: satellite rows against all streets."""
    def reverse(rows: torch.Tensor, references: torch.Tensor):
        sims, shifts = similarity(references, rows)
        return sims.t(), shifts.t()

    return reverse


def format_recalls(results: dict) -> str:
    """One line: street->satellite recalls (and the VIGOR hit rate) for the log."""
    recalls = results["street_to_satellite"]
    text = " ".join(f"{k} {recalls[k]:.2f}" for k in ("R@1", "R@5", "R@10", "R@1%"))
    if "hit_rate" in recalls:
        text += f" hit {recalls['hit_rate']:.2f}"
    if results.get("orientation", {}).get("median_deg") is not None:
        text += f" heading {results['orientation']['median_deg']:.1f} deg"
    return text
