"""Re-ranking bookkeeping (helper.rerank) against a brute-force re-ordered list, and its checks."""
import pytest
import torch

from common.errors import UserError
from helper.metrics import streaming_ranks
from helper.rerank import candidates_of, check_rerank, check_rerank_size, reranked_ranks
from models.config import ModelConfig


def _world(seed: int, n: int = 60, m: int = 40, dim: int = 8):
    """Descriptors with exact ties: references 20..39 repeat 0..19."""
    g = torch.Generator().manual_seed(seed)
    half = torch.nn.functional.normalize(torch.randn(m // 2, dim, generator=g), dim=1)
    reference = torch.cat([half, half])
    query = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    return query, reference, g


def _brute_force(sims, candidates, scores, positive, exclude):
    """Ranks in the explicit re-ranked list: each candidate keyed (1, new score), every other reference
    (0, original similarity); rank = references with a strictly greater key (ties in the query's favour)."""
    n, m = sims.shape
    ranks, excluding, top1 = [], [], []
    for i in range(n):
        key = {j: (0, float(sims[i, j])) for j in range(m)}
        key.update({int(c): (1, float(s)) for c, s in zip(candidates[i], scores[i])})
        p = int(positive[i])
        ahead = [j for j in range(m) if key[j] > key[p]]
        ranks.append(len(ahead))
        excluding.append(len([j for j in ahead if j not in set(exclude[i].tolist())]))
        best = max(float(s) for s in scores[i])
        top1.append(next(int(c) for c, s in zip(candidates[i], scores[i]) if float(s) == best))
    return torch.tensor(ranks), torch.tensor(excluding), torch.tensor(top1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_reranked_ranks_match_the_explicit_reordered_list(seed, k):
    query, reference, g = _world(seed)
    n, m = query.shape[0], reference.shape[0]
    sims = query @ reference.t()
    positive = torch.randint(0, m, (n,), generator=g)
    first = streaming_ranks(query, reference, positive, chunk_size=7, top_k=k)
    # a positive tied with the K-th candidate but left out of the top-K (its twin is in)
    kth, twin = first.topk[:, -1], (first.topk[:, -1] + m // 2) % m
    tied = ~(first.topk == twin[:, None]).any(dim=1)
    positive = torch.where(tied & (torch.arange(n) % 2 == 0), twin, positive)
    exclude = torch.randint(-1, m, (n, 4), generator=g)
    exclude[:, 3] = exclude[:, 2]  # a duplicate
    exclude[::5, 0] = positive[::5]  # the positive itself
    ranking = streaming_ranks(query, reference, positive, exclude=exclude, chunk_size=7, top_k=k)
    assert torch.equal(ranking.topk, first.topk)
    candidates = candidates_of(ranking.topk, ranking.ranks, positive)
    # new similarities with ties, so that positives move both ways
    scores = torch.randint(0, 4, candidates.shape, generator=g).float() / 4
    ranks, excluding, slot = reranked_ranks(ranking.ranks, ranking.ranks_excluding, candidates, positive, scores,
                                            exclude)
    want_ranks, want_excluding, want_top1 = _brute_force(sims, candidates, scores, positive, exclude)
    assert torch.equal(ranks, want_ranks)
    assert torch.equal(excluding, want_excluding)
    assert torch.equal(candidates.gather(1, slot[:, None])[:, 0], want_top1)
    inside = (candidates == positive[:, None]).any(dim=1)
    assert bool((~inside).any()) or k == m  # positives outside the K keep their original ranks
    assert torch.equal(ranks[~inside], ranking.ranks[~inside])
    if k < m:
        assert bool((tied & inside & (ranking.ranks < k)).any())  # the tie rule was exercised


def test_candidates_take_in_a_positive_tied_at_the_kth_place():
    topk = torch.tensor([[3, 1, 4], [0, 2, 5]])
    ranks = torch.tensor([2, 3])  # query 0: only two references are strictly more similar than its positive
    positive = torch.tensor([7, 9])
    assert torch.equal(candidates_of(topk, ranks, positive), torch.tensor([[3, 1, 7], [0, 2, 5]]))


def test_identical_scores_reproduce_the_original_ranks():
    query, reference, g = _world(3)
    positive = torch.randint(0, reference.shape[0], (query.shape[0],), generator=g)
    ranking = streaming_ranks(query, reference, positive, top_k=6, return_top1=True)
    candidates = candidates_of(ranking.topk, ranking.ranks, positive)
    scores = (query[:, None, :] * reference[candidates]).sum(dim=2)
    ranks, _, _ = reranked_ranks(ranking.ranks, None, candidates, positive, scores)
    assert torch.equal(ranks, ranking.ranks)


def test_rerank_needs_an_offset_head_and_raw_satellites():
    check_rerank(ModelConfig(), 0)
    with pytest.raises(UserError, match="offset head"):
        check_rerank(ModelConfig(), 5)
    with pytest.raises(UserError, match="polar_files"):
        check_rerank(ModelConfig(transform="polar", polar_files=True, regress_offset=True), 5)
    check_rerank_size(10, 10)
    with pytest.raises(UserError, match="at most 10"):
        check_rerank_size(11, 10)


def test_rerank_by_pose_needs_a_pose_head_only():
    with pytest.raises(UserError, match="pose head"):
        check_rerank(ModelConfig(regress_offset=True), 5, "pose")
    check_rerank(ModelConfig(pose="dense", sate_size=(64, 64)), 5, "pose")
    with pytest.raises(UserError, match="offset head"):
        check_rerank(ModelConfig(pose="dense", sate_size=(64, 64)), 5, "sum")
