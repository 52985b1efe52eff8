"""helper.metrics against brute-force loops: strict ranks with ties, exclusions, several positives,
chunk-size invariance, R@1% rules, both evaluation directions, hit rate and metre-level errors."""
import math

import numpy as np
import pytest
import torch

from common.errors import UserError
from geometry.earth import EARTH_RADIUS_M, haversine_m
from helper.metrics import (
    evaluate_retrieval,
    localization_errors,
    localization_summary,
    recall_at_k,
    retrieval_ranks,
    streaming_ranks,
    top1p_k,
)


# ----------------------------------------------------------------------------- brute force


def exact_descriptors(n, d=6, seed=0):
    """L2-normalised rows with four entries +-1/2 and zeros elsewhere: every dot product is a
    multiple of 1/4, exact in float32/16 and float64, so exact ties (and duplicate rows) are
    frequent and brute force agrees bit for bit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, d)
    for i in range(n):
        cols = torch.randperm(d, generator=g)[:4]
        signs = torch.randint(0, 2, (4,), generator=g).float() * 2 - 1
        x[i, cols] = 0.5 * signs
    return x


def brute_rank(q, r, positives, excluded=()):
    """Loop over every reference: count those strictly more similar than the best positive,
    skipping excluded ones (a set, so duplicates count once)."""
    sims = [float(np.dot(q.double().numpy(), r[j].double().numpy())) for j in range(r.shape[0])]
    best = max(sims[p] for p in positives)
    excluded = set(excluded)
    return sum(1 for j, s in enumerate(sims) if s > best and j not in excluded)


def brute_ranks(query, reference, positive, exclude=None):
    out = []
    for i in range(query.shape[0]):
        pos = positive[i].tolist()
        pos = [p for p in (pos if isinstance(pos, list) else [pos]) if p >= 0]
        ex = [] if exclude is None else [e for e in exclude[i].tolist() if e >= 0]
        out.append(brute_rank(query[i], reference, pos, ex))
    return torch.tensor(out)


def brute_top1(query, reference):
    sims = query.double() @ reference.double().t()
    return torch.tensor([int(np.argmax(row.numpy())) for row in sims])  # first max, like torch


# ----------------------------------------------------------------------------- ranks / recall


def test_ranks_with_ties_match_brute_force_and_favour_the_query():
    reference = exact_descriptors(40, seed=1)
    reference[7] = reference[3]  # duplicate references: exact ties
    reference[8] = reference[3]
    query = exact_descriptors(25, seed=2)
    query[0] = reference[3]
    positive = torch.randint(0, 40, (25,))
    positive[0] = 7  # its duplicates 3 and 8 tie with it and must not count
    ranks = retrieval_ranks(query, reference, positive)
    assert torch.equal(ranks, brute_ranks(query, reference, positive))
    sims = query @ reference.t()
    assert int(ranks[0]) == int((sims[0] > sims[0, 7]).sum())
    assert int((sims[0] == sims[0, 7]).sum()) >= 3  # the tie really is there
    assert int((ranks == 0).sum()) > 0 and int((ranks > 0).sum()) > 0


def test_recall_is_percent_of_rank_below_k():
    reference = exact_descriptors(30, seed=3)
    query = exact_descriptors(20, seed=4)
    positive = torch.randint(0, 30, (20,))
    ranks = brute_ranks(query, reference, positive)
    rec = recall_at_k(query, reference, positive, ks=[1, 3, 5, 30])
    assert set(rec) == {1, 3, 5, 30}
    for k, v in rec.items():
        assert isinstance(v, float)
        assert v == pytest.approx(100.0 * float((ranks < k).double().mean()), abs=1e-9)
    assert rec[30] == 100.0


def test_perfect_and_random_descriptors():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
    perm = torch.randperm(50)
    reference = torch.empty_like(x)
    reference[perm] = x  # query i's true reference sits at perm[i]
    rec = recall_at_k(x, reference, perm, ks=[1])
    assert rec[1] == 100.0
    rec = recall_at_k(x, reference, torch.roll(perm, 1), ks=[1, 50])
    assert rec[1] == 0.0 and rec[50] == 100.0


@pytest.mark.parametrize("chunk_size", [1, 3, 25, 1000])
def test_chunk_sizes_give_identical_results(chunk_size):
    reference = exact_descriptors(33, seed=5)
    query = exact_descriptors(25, seed=6)
    positive = torch.randint(0, 33, (25,))
    exclude = torch.randint(-1, 33, (25, 4))
    expected = brute_ranks(query, reference, positive, exclude)
    ranks, top1 = retrieval_ranks(query, reference, positive, exclude=exclude, chunk_size=chunk_size,
                                  return_top1=True)
    assert torch.equal(ranks, expected)
    assert torch.equal(top1, brute_top1(query, reference))


def test_cpu_row_tiles_match_brute_force(monkeypatch):
    # tiny tiles: several tiles per block, a last partial tile, and tiles of a single row
    import helper.metrics as metrics

    reference = exact_descriptors(23, seed=30)
    query = exact_descriptors(17, seed=31)
    positive = torch.randint(0, 23, (17,))
    exclude = torch.randint(-1, 23, (17, 3))
    for tile_elements in (1, 50, 23 * 4):
        monkeypatch.setattr(metrics, "_CPU_TILE_ELEMENTS", tile_elements)
        ranks, top1 = retrieval_ranks(query, reference, positive, exclude=exclude, chunk_size=7, return_top1=True)
        assert torch.equal(ranks, brute_ranks(query, reference, positive, exclude))
        assert torch.equal(top1, brute_top1(query, reference))


def test_exclusion_padding_positive_and_duplicates():
    # one query, hand-made similarities: q . r_j = value_j via one-hot style references
    reference = torch.eye(12)
    q = torch.tensor([[0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.05, 0.0, 0.5]])
    # positive 5 (0.5): strictly greater are 1,2,3,4 -> rank 4; 11 ties (0.5) -> not counted
    positive = torch.tensor([5])
    cases = {
        (-1, -1, -1): 4,  # padding only
        (1, -1, 2): 2,  # two excluded, both greater
        (1, 1, 1): 3,  # duplicates count once
        (5, 1, -1): 3,  # excluding the positive itself changes nothing
        (11, 9, 0): 4,  # tie and lower references: not counted before, nothing to subtract
        (4, 3, 2): 1,
    }
    for ex, want in cases.items():
        got = retrieval_ranks(q, reference, positive, exclude=torch.tensor([ex]))
        assert int(got[0]) == want, ex
    assert int(retrieval_ranks(q, reference, positive)[0]) == 4
    # 1-D exclude is one column
    assert int(retrieval_ranks(q, reference, positive, exclude=torch.tensor([1]))[0]) == 3


def test_multi_positive_uses_best_positive_and_padding():
    reference = torch.eye(8)
    q = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],
                      [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]])
    positive = torch.tensor([[6, 2, -1], [7, -1, -1]])
    ranks = retrieval_ranks(q, reference, positive)
    # row 0: best positive 2 (0.7) -> refs 0, 1 above it; positive 6 below it does not count
    assert ranks.tolist() == [2, 7]
    reference = exact_descriptors(30, seed=8)
    query = exact_descriptors(20, seed=9)
    positive = torch.randint(-1, 30, (20, 3))
    positive[:, 0] = torch.randint(0, 30, (20,))
    exclude = torch.randint(-1, 30, (20, 3))
    for chunk in (1, 7, 64):
        got = retrieval_ranks(query, reference, positive, exclude=exclude, chunk_size=chunk)
        assert torch.equal(got, brute_ranks(query, reference, positive, exclude))


def test_half_precision_inputs_rank_in_float32():
    reference = exact_descriptors(30, seed=10)
    query = exact_descriptors(20, seed=11)
    positive = torch.randint(0, 30, (20,))
    want = brute_ranks(query, reference, positive)  # values k/8 are exact in fp16 and bf16
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        got = retrieval_ranks(query.to(dtype), reference.to(dtype), positive, chunk_size=6)
        assert torch.equal(got, want), dtype


def test_inputs_with_grad_and_autocast_are_fine():
    reference = exact_descriptors(10, seed=12).requires_grad_()
    query = exact_descriptors(6, seed=13).requires_grad_()
    positive = torch.arange(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = retrieval_ranks(query, reference, positive)
    assert torch.equal(got, brute_ranks(query.detach(), reference.detach(), positive))


def test_streaming_ranks_query_index_and_both_rank_kinds():
    reference = exact_descriptors(20, seed=14)
    pool = exact_descriptors(30, seed=15)
    index = torch.tensor([29, 3, 3, 10, 0])
    positive = torch.randint(0, 20, (5,))
    exclude = torch.randint(-1, 20, (5, 3))
    res = streaming_ranks(pool, reference, positive, exclude=exclude, chunk_size=2, return_top1=True,
                          query_index=index)
    assert torch.equal(res.ranks, brute_ranks(pool[index], reference, positive))
    assert torch.equal(res.ranks_excluding, brute_ranks(pool[index], reference, positive, exclude))
    assert torch.equal(res.top1, brute_top1(pool[index], reference))
    assert res.ranks.dtype == torch.long
    assert streaming_ranks(pool[:5], reference, positive).ranks_excluding is None


def test_user_errors():
    reference = exact_descriptors(10)
    query = exact_descriptors(4)
    with pytest.raises(UserError, match="outside"):
        recall_at_k(query, reference, torch.tensor([0, 1, 2, 10]), ks=[1])
    with pytest.raises(UserError, match="outside"):
        recall_at_k(query, reference, torch.tensor([0, 1, 2, -1]), ks=[1])  # no padding for 1-D
    with pytest.raises(UserError, match="no valid index"):
        recall_at_k(query, reference, torch.tensor([[0, -1], [-1, -1], [1, 2], [3, -1]]), ks=[1])
    with pytest.raises(UserError, match="exclude"):
        recall_at_k(query, reference, torch.arange(4), ks=[1], exclude=torch.full((4, 3), -2))
    with pytest.raises(UserError, match="dimension"):
        recall_at_k(query[:, :3], reference, torch.arange(4), ks=[1])
    with pytest.raises(UserError, match="shape"):
        recall_at_k(query, reference, torch.arange(3), ks=[1])
    with pytest.raises(UserError, match="positive integers"):
        recall_at_k(query, reference, torch.arange(4), ks=[0])
    with pytest.raises(UserError, match="chunk_size"):
        recall_at_k(query, reference, torch.arange(4), ks=[1], chunk_size=0)
    bad = query.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(UserError, match="query descriptor row 2"):
        recall_at_k(bad, reference, torch.arange(4), ks=[1], chunk_size=2)
    with pytest.raises(UserError, match="query descriptor row 2 "):
        streaming_ranks(bad, reference, torch.arange(2), query_index=torch.tensor([3, 2]))
    with pytest.raises(UserError, match="overflow"):
        recall_at_k(query * 1e30, reference * 1e30, torch.arange(4), ks=[1])
    bad = reference.clone()
    bad[7, 0] = float("inf")
    with pytest.raises(UserError, match="reference descriptor row 7"):
        recall_at_k(query, bad, torch.arange(4), ks=[1])


# ----------------------------------------------------------------------------- R@1%


def test_top1p_k_published_values():
    assert top1p_k(8884, "floor") == 88 and top1p_k(8884, "plus1") == 89
    assert top1p_k(90618, "floor") == 906 and top1p_k(90618, "plus1") == 907
    assert top1p_k(46563, "floor") == 465 and top1p_k(46563, "plus1") == 466
    # int(0.01 M) + 1 exactly as the official code, and never below 1
    for m in (1, 50, 99, 100, 101, 700, 2900, 44055):
        assert top1p_k(m, "plus1") == int(m * 0.01) + 1
        assert top1p_k(m, "floor") == max(1, m // 100)
    assert top1p_k(50, "floor") == 1
    with pytest.raises(UserError, match="floor, plus1"):
        top1p_k(100, "ceil")
    with pytest.raises(UserError):
        top1p_k(0)


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_one_to_one_both_directions():
    street = exact_descriptors(24, seed=20)
    satellite = exact_descriptors(24, seed=21)
    positive = torch.randperm(24)
    res = evaluate_retrieval(street, satellite, positive, top1p="plus1", chunk_size=5)
    assert res["queries"] == 24 and res["references"] == 24 and res["top1p_k"] == 1
    assert res["top1p_rule"] == "plus1"
    fwd = brute_ranks(street, satellite, positive)
    # reverse: satellite j's positive is the street i with positive[i] == j
    inverse = torch.empty_like(positive)
    inverse[positive] = torch.arange(24)
    rev = brute_ranks(satellite, street, inverse)
    for key, ranks in (("street_to_satellite", fwd), ("satellite_to_street", rev)):
        d = res[key]
        assert d["queries"] == 24 and d["references"] == 24 and d["top1p_k"] == 1
        for name, k in (("R@1", 1), ("R@5", 5), ("R@10", 10), ("R@1%", 1)):
            assert d[name] == pytest.approx(100.0 * float((ranks < k).double().mean()), abs=1e-9), (key, name)
    assert "hit_rate" not in res["street_to_satellite"] and "localization" not in res
    assert "satellite_to_street" not in evaluate_retrieval(street, satellite, positive, reverse=False)


def test_evaluate_many_to_one_reverse_uses_all_panoramas_as_positives():
    satellite = exact_descriptors(15, seed=22)
    street = exact_descriptors(30, seed=23)
    positive = torch.randint(0, 10, (30,))  # satellites 10..14 (and maybe some below) have no panorama
    positive[:3] = 4  # satellite 4 has at least three panoramas
    semi = torch.stack([(positive + o) % 15 for o in (1, 2, 3)], dim=1)
    res = evaluate_retrieval(street, satellite, positive, top1p="floor", semi_positive=semi, chunk_size=4)
    fwd = brute_ranks(street, satellite, positive)
    hit = brute_ranks(street, satellite, positive, semi)
    s2s = res["street_to_satellite"]
    assert s2s["R@1"] == pytest.approx(100.0 * float((fwd < 1).double().mean()))
    assert s2s["R@10"] == pytest.approx(100.0 * float((fwd < 10).double().mean()))
    assert s2s["hit_rate"] == pytest.approx(100.0 * float((hit < 1).double().mean()))
    assert s2s["hit_rate"] >= s2s["R@1"]
    used = sorted(set(positive.tolist()))
    rev = res["satellite_to_street"]
    assert rev["queries"] == len(used) and rev["references"] == 30 and rev["top1p_k"] == 1
    brute_rev = []
    for j in used:
        streets = [i for i in range(30) if int(positive[i]) == j]
        brute_rev.append(brute_rank(satellite[j], street, streets))
    brute_rev = torch.tensor(brute_rev)
    for name, k in (("R@1", 1), ("R@5", 5), ("R@10", 10)):
        assert rev[name] == pytest.approx(100.0 * float((brute_rev < k).double().mean()), abs=1e-9)


def test_hit_rate_hand_made():
    # query 0: top-1 is a semi-positive -> hit, not R@1; query 1: top-1 unrelated -> miss;
    # query 2: top-1 is the positive -> both.
    satellite = torch.eye(6)
    street = torch.tensor([[0.5, 0.9, 0.1, 0.0, 0.0, 0.0],
                           [0.5, 0.1, 0.1, 0.0, 0.0, 0.9],
                           [0.1, 0.0, 0.0, 0.8, 0.2, 0.0]])
    positive = torch.tensor([0, 0, 3])
    semi = torch.tensor([[1, 2, 3], [1, 2, 3], [0, 1, 2]])
    res = evaluate_retrieval(street, satellite, positive, semi_positive=semi, reverse=False)
    assert res["street_to_satellite"]["R@1"] == pytest.approx(100.0 / 3)
    assert res["street_to_satellite"]["hit_rate"] == pytest.approx(200.0 / 3)


def test_evaluate_localization_uses_top1_satellite():
    satellite = torch.eye(4)
    street = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.0, 0.2, 0.9, 0.0], [0.0, 0.0, 0.0, 1.0]])
    positive = torch.tensor([0, 1, 3])
    sat_ll = np.array([[40.0, -74.0], [40.001, -74.0], [40.0, -74.001], [41.0, -74.0]])
    street_ll = np.array([[40.0, -74.0], [40.001, -74.0], [41.0, -74.0]])
    res = evaluate_retrieval(street, satellite, positive, street_latlon=street_ll, satellite_latlon=sat_ll)
    # top-1: 0 (0 m), 2 (street 1 vs satellite 2), 3 (0 m)
    d1 = haversine_m(40.001, -74.0, 40.0, -74.001)
    assert res["localization"]["median_m"] == pytest.approx(0.0)
    assert res["localization"]["within_m"]["1"] == pytest.approx(200.0 / 3)
    assert res["localization"]["within_m"]["50"] == pytest.approx(200.0 / 3)
    assert 100 < d1 < 200
    top = evaluate_retrieval(street, satellite, positive, reverse=False, return_top1=True)
    assert top["top1"].tolist() == [0, 2, 3] and "localization" not in top
    with pytest.raises(UserError, match="both"):
        evaluate_retrieval(street, satellite, positive, street_latlon=street_ll)


# ----------------------------------------------------------------------------- localisation


def test_localization_errors_and_summary():
    ref = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    query = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    top1 = torch.tensor([0, 1, 2])
    d = localization_errors(query, ref, top1)
    one_degree = EARTH_RADIUS_M * math.pi / 180.0
    np.testing.assert_allclose(d, [0.0, one_degree, haversine_m(1.0, 0.0, 0.0, 1.0)], rtol=1e-12)
    summary = localization_summary([0.5, 1.0, 4.9, 5.0, 30.0, 100.0])
    assert summary["median_m"] == pytest.approx(4.95)
    assert summary["within_m"] == pytest.approx({"1": 100 / 6, "5": 50.0, "10": 400 / 6, "25": 400 / 6,
                                                 "50": 500 / 6})
    assert list(summary["within_m"]) == ["1", "5", "10", "25", "50"]
    with pytest.raises(UserError, match="top1"):
        localization_errors(query, ref, torch.tensor([0, 1, 3]))


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_ignores_tf32():
    reference = exact_descriptors(300, seed=40).cuda()
    query = exact_descriptors(200, seed=41).cuda()
    positive = torch.randint(0, 300, (200,)).cuda()
    exclude = torch.randint(-1, 300, (200, 3)).cuda()
    want = brute_ranks(query.cpu(), reference.cpu(), positive.cpu(), exclude.cpu())
    for chunk in (1, 64, 1000):
        ranks, top1 = retrieval_ranks(query, reference, positive, exclude=exclude, chunk_size=chunk, return_top1=True)
        assert ranks.is_cuda and torch.equal(ranks.cpu(), want)
        assert torch.equal(top1.cpu(), brute_top1(query.cpu(), reference.cpu()))
    # random 4096-d descriptors: TF32 (10-bit mantissa) would reorder many near neighbours
    g = torch.Generator().manual_seed(0)
    ref = torch.nn.functional.normalize(torch.randn(4000, 4096, generator=g), dim=1)
    qry = torch.nn.functional.normalize(ref[:500] + 40.0 * torch.randn(500, 4096, generator=g), dim=1)
    pos = torch.arange(500)
    sims = qry.double() @ ref.double().t()
    exact = (sims > sims.gather(1, pos[:, None])).sum(1)
    old = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        got = retrieval_ranks(qry.cuda(), ref.cuda(), pos.cuda(), chunk_size=128).cpu()
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # restored
    finally:
        torch.backends.cuda.matmul.fp32_precision = old
    assert int((got != exact).sum()) <= 2  # only float32 round-off near-ties may differ
