"""Re-centred re-ranking: ``test_vigor.py --rerank K`` and ``test_cvusa.py --rerank K``.

Each query's K most similar references (the candidates) are scored again: for every pair
(query, candidate) the model's offset head predicts where the camera is in the candidate's
satellite input (a normalised delta, :mod:`models.offset`); the input is translated so that
point comes to the centre (:func:`geometry.affine.recentre`) and embedded again by the
unchanged satellite branch (for ``polar`` this is the polar transform around the predicted
point, an STN sees a centred input); the pair's new score re-orders the K candidates: with
``--rerank_score sum`` (the default) its original similarity (the one the ranking computed)
plus the re-centred one, with ``recentred`` the re-centred similarity alone (similarities: the
dot product, or the head's own pairwise similarity). A zero offset leaves every rank as it was
under either score (up to float noise in the re-embedding). With ``--rerank_score pose`` (a model
with a pose head, :mod:`models.pose`) nothing is re-centred: a candidate's new score is its original
similarity plus the pose head's centre-free score of the pair (how well the panorama matches
anywhere in the tile), and the re-ranked top-1's position is the pose head's estimate.

Rank bookkeeping (the conventions of :mod:`helper.metrics`): the re-ranked list is the K
candidates ordered by the new similarity followed by the other M - K references in their
original order. A positive among the candidates gets the number of candidates strictly more
similar under the new score; a positive outside them keeps its original rank (every
candidate was strictly more similar, so they and the M - K others count as before). Ties count
in the query's favour: a positive tied with the K-th candidate takes that slot
(:func:`candidates_of`). ``ranks_excluding`` (the VIGOR hit rate) counts the candidates that
are not excluded (semi-positives) alike. The re-ranked top-1 is the candidate of highest new
score (the first slot among exact ties); the localisation uses it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch.utils.data import Dataset

from common.errors import UserError
from common.settings import check_settings, setting


#: Scores of candidates re-centred on an offset (see the module doc).
RECENTRED_SCORES = ("sum", "recentred")
#: ``--rerank_score``: a candidate's new score (see the module doc).
RERANK_SCORES = RECENTRED_SCORES + ("pose",)


@dataclass(frozen=True)
class RerankConfig:
    """The test scripts' re-ranking settings (not stored with a run)."""

    rerank: int = setting(0, "re-rank each query's N most similar references: re-centre each one's satellite "
                             "input on the offset the offset head predicts for the pair, embed it again and re-order "
                             "the N by the new score (needs a checkpoint with an offset head, or with --rerank_score "
                             "pose a pose head, which scores the N without re-centring; at most the number "
                             "of references; 0 = off)", minimum=0)
    rerank_score: str = setting("sum", "--rerank: a candidate's new score: sum = its original similarity plus the "
                                       "re-centred one (the safer: see the README's off-centre study); recentred = "
                                       "the re-centred similarity alone; pose = the original similarity plus the "
                                       "pose head's centre-free score of the pair (a checkpoint with --pose dense)",
                                choices=lambda: RERANK_SCORES)

    def __post_init__(self) -> None:
        check_settings(self)


class Reranked(NamedTuple):
    """The street->satellite outcome of re-ranking (tensors of length N, on the descriptors' device).

    ranks / ranks_excluding / top1: as in :class:`helper.metrics.RankResult`, after re-ranking
    (``ranks_excluding`` None without ``exclude``); top1_offset: ``N x 2`` normalised offset
    predicted for each (query, re-ranked top-1) pair; seconds: wall time of the re-scoring.
    """

    ranks: torch.Tensor
    ranks_excluding: Optional[torch.Tensor]
    top1: torch.Tensor
    top1_offset: torch.Tensor
    seconds: float


def check_rerank(model_cfg, k: int, score: str = "sum") -> None:
    """A :class:`UserError` when ``--rerank k --rerank_score score`` cannot run with the model of ``model_cfg``."""
    if not k:
        return
    if score == "pose":
        if model_cfg.pose == "none":
            raise UserError(f"--rerank {k} --rerank_score pose scores candidates by the model's pose head, but this "
                            "checkpoint has none; evaluate a checkpoint trained with --pose dense or choose another "
                            "--rerank_score")
        return
    if not model_cfg.regress_offset:
        raise UserError(f"--rerank {k} re-centres each candidate on the offset predicted by the model's offset "
                        "head, but this checkpoint has none; evaluate a checkpoint trained with --regress_offset "
                        "or drop --rerank")
    if model_cfg.polar_files:
        raise UserError(f"--rerank {k} re-centres the raw satellite image, but this checkpoint reads precomputed "
                        "polar images (polar_files), centred on the tile; drop --rerank")


def check_rerank_size(k: int, num_references: int) -> None:
    """A :class:`UserError` when ``--rerank k`` asks for more candidates than there are references."""
    if k > num_references:
        raise UserError(f"--rerank {k} is more than the {num_references} references of this split; "
                        f"use at most {num_references}")


def candidates_of(topk: torch.Tensor, ranks: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """The K candidates of each query (``N x K``): its ``topk`` (most similar first), except that a
    positive with rank below K that ``topk`` left out (an exact tie at the K-th place) replaces
    the last one (ties in the query's favour; its similarity is the K-th one, so the ranking's
    ``topk_similarity`` stays the candidates' similarities). ``ranks``: the strict original ranks (N,)."""
    k = topk.shape[1]
    missing = (ranks < k) & ~(topk == positive[:, None]).any(dim=1)
    out = topk.clone()
    out[missing, -1] = positive[missing]
    return out


def reranked_ranks(ranks: torch.Tensor, ranks_excluding: Optional[torch.Tensor], candidates: torch.Tensor,
                   positive: torch.Tensor, scores: torch.Tensor, exclude: Optional[torch.Tensor] = None):
    """``(ranks, ranks_excluding, top1_slot)`` after re-ordering ``candidates`` (``N x K``) by ``scores``
    (``N x K`` new similarities); ``ranks``/``ranks_excluding`` the original ones, ``exclude``
    ``N x E`` (-1 padding) the references ``ranks_excluding`` ignores. See the module doc."""
    slot = candidates == positive[:, None]
    inside = slot.any(dim=1)
    positive_score = scores.masked_fill(~slot, float("-inf")).max(dim=1, keepdim=True).values
    greater = scores > positive_score
    new_ranks = torch.where(inside, greater.sum(dim=1), ranks)
    new_excluding = None
    if exclude is not None:
        counted = greater & ~(candidates[:, :, None] == exclude[:, None, :]).any(dim=2)
        new_excluding = torch.where(inside, counted.sum(dim=1), ranks_excluding)
    return new_ranks, new_excluding, scores.argmax(dim=1)


class _CandidateImages(Dataset):
    """The satellite input of every (query, candidate) pair: item ``p`` is candidate ``p % K`` of
    query ``p // K``, ``{"satellite", "index": p}`` from the references' dataset."""

    def __init__(self, satellites: Dataset, candidates: torch.Tensor) -> None:
        self.satellites = satellites
        self.flat = candidates.reshape(-1).cpu()

    def __len__(self) -> int:
        return self.flat.numel()

    def __getitem__(self, p: int) -> dict:
        return {"satellite": self.satellites[int(self.flat[p])]["satellite"], "index": int(p)}


def pair_similarity(net, query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Similarity of each pair (``query[i]``, ``reference[i]``), float32: the dot product, or the
    diagonal of the head's pairwise similarity (``dsm``)."""
    if net.similarity is None:
        return (query.float() * reference.float()).sum(dim=1)
    return net.similarity(query.float(), reference.float())[0].diagonal()


def rescore(model, street: torch.Tensor, satellite: torch.Tensor, candidates: torch.Tensor, satellites: Dataset,
            env, batch_size: int, workers: int, query_offsets: Optional[torch.Tensor] = None):
    """``(similarities, offsets)``: the re-centred similarity (``N x K``) and the normalised offset
    (``N x K x 2``) each (query, candidate) pair was re-centred on, float32 on the descriptors'
    device: the offset head's prediction, or with ``query_offsets`` (``N x 2``, e.g. the true
    ones) query i's for all of its candidates.

    ``street`` N x D and ``satellite`` M x D are the original descriptors (on ``env.device``),
    ``satellites`` the references' dataset (its ``"satellite"`` images, index j = reference j).
    Pairs are streamed in batches of ``batch_size`` images, shared over the ranks of a
    distributed run and gathered by pair index (as :func:`helper.engine.extract_features`).
    """
    from tqdm import tqdm

    from data.samplers import DistributedShuffleSampler
    from geometry.affine import recentre
    from helper import distributed
    from helper.engine import make_loader

    net = distributed.unwrap(model)
    net.eval()
    n, k = candidates.shape
    pairs = _CandidateImages(satellites, candidates)
    sampler = DistributedShuffleSampler(len(pairs), shuffle=False, rank=env.rank, world_size=env.world_size)
    loader = make_loader(pairs, batch_size, workers, env, sampler=sampler)
    flat = candidates.reshape(-1).to(env.device)
    if query_offsets is not None:
        query_offsets = query_offsets.to(env.device, torch.float32)
    scores, offsets, indices = [], [], []
    with torch.no_grad(), distributed.autocast(env.device, "none"):
        for batch in tqdm(loader, disable=not env.is_main, leave=False, desc="re-rank", unit="batch",
                          dynamic_ncols=True):
            index = batch["index"].to(env.device)
            query, reference = street[index // k], satellite[flat[index]]
            if query_offsets is None:
                offset = net.predict_offset(query, reference).float()
            else:
                offset = query_offsets[index // k]
            desc, _ = net.encode_satellite(recentre(distributed.move_images(batch, "satellite", env.device), offset))
            scores.append(pair_similarity(net, query, desc))
            offsets.append(offset)
            indices.append(index)
    index = torch.cat(indices)
    scores = distributed.gather_by_index(torch.cat(scores), index, n * k).view(n, k)
    offsets = distributed.gather_by_index(torch.cat(offsets), index, n * k).view(n, k, 2)
    return scores, offsets


def rerank_candidates(model, street: torch.Tensor, satellite: torch.Tensor, ranking, positive: torch.Tensor,
                      satellites: Dataset, env, batch_size: int, workers: int, score: str,
                      exclude: Optional[torch.Tensor] = None,
                      query_offsets: Optional[torch.Tensor] = None, street_pose=None) -> Reranked:
    """Re-rank the street->satellite ``ranking`` (a :class:`helper.metrics.RankResult` with ``topk``,
    from the descriptors ``street``/``satellite``) by re-centred re-embedding (module doc), the
    candidates' new score by ``score`` of :data:`RERANK_SCORES`.

    ``positive`` (N,) and ``exclude`` (N x E, -1 padding, or None) as for the ranking, on the
    descriptors' device; ``satellites``, ``batch_size``, ``workers``, ``query_offsets``: see
    :func:`rescore`; ``street_pose``: the queries' :class:`models.pose.PoseEmbedding` (score ``pose``).
    """
    from helper.pose_eval import pose_of_pairs

    start = time.perf_counter()
    candidates = candidates_of(ranking.topk, ranking.ranks, positive)
    if score == "pose":
        offsets, _, scores = pose_of_pairs(model, street_pose, satellites, candidates, env, batch_size, workers)
    else:
        scores, offsets = rescore(model, street, satellite, candidates, satellites, env, batch_size, workers,
                                  query_offsets)
    if score in ("sum", "pose"):
        scores = scores + ranking.topk_similarity
    ranks, excluding, slot = reranked_ranks(ranking.ranks, ranking.ranks_excluding, candidates, positive, scores,
                                            exclude)
    top1 = candidates.gather(1, slot[:, None])[:, 0]
    top1_offset = offsets[torch.arange(offsets.shape[0], device=offsets.device), slot]
    return Reranked(ranks, excluding, top1, top1_offset, time.perf_counter() - start)


def rerank_results(reranked: Reranked, settings: RerankConfig, top1p: int, num_references: int, street_latlon=None,
                   satellite_latlon=None) -> dict:
    """The results JSON's ``rerank`` block: ``{"k", "score", "seconds", "street_to_satellite": {the
    keys of the original direction, recomputed from the re-ranked ranks}, ["localization"] (with GPS:
    from the re-ranked top-1)}``; ``top1p`` is the k of R@1%."""
    from helper.metrics import street_to_satellite_results

    return {"k": settings.rerank, "score": settings.rerank_score, "seconds": reranked.seconds,
            **street_to_satellite_results(reranked, top1p, num_references, street_latlon, satellite_latlon)}
