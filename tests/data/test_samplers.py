"""Samplers: distributed shuffling, VIGOR conflict-free global batches, mining, top-k."""
import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from data.samplers import DistributedShuffleSampler, VigorBatchSampler, gps_vectors, topk_neighbours
from common.errors import UserError
from geometry.earth import north_east_to_gps


def grid_labels(n, gx, gy, seed=0):
    """VIGOR-like labels: tiles on a half-overlap grid (centres at integer points, index
    y * gx + x); a panorama at a random point is covered by its 4 surrounding tiles; the
    nearest is the positive, the other three the semi-positives."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.01, gx - 1.01, n)
    y = rng.uniform(0.01, gy - 1.01, n)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    cx = x0[:, None] + np.array([0, 1, 0, 1])
    cy = y0[:, None] + np.array([0, 0, 1, 1])
    order = np.argsort((cx - x[:, None]) ** 2 + (cy - y[:, None]) ** 2, axis=1)
    cells = np.take_along_axis(cy * gx + cx, order, axis=1)
    return cells[:, 0], cells[:, 1:]


def sat_sets(positive, semi):
    return [set([int(p), *(int(s) for s in row if s >= 0)]) for p, row in zip(positive, semi)]


def assert_conflict_free(batch, sets):
    seen = set()
    for i in batch:
        assert seen.isdisjoint(sets[i]), f"panorama {i} shares a satellite within its global batch"
        seen |= sets[i]


def global_batches(positive, semi, batch_size, world_size, epoch=0, neighbours=None, batch_neighbours=None,
                   persistent=True, **kwargs):
    """Run one sampler per rank and join their batches step by step (rank order)."""
    ranks = [VigorBatchSampler(positive, semi, batch_size, rank=r, world_size=world_size, **kwargs)
             for r in range(world_size)]
    for sampler in ranks:
        sampler.set_epoch(epoch)
        if neighbours is not None:
            sampler.set_hard_neighbours(neighbours)
        if batch_neighbours is not None:
            sampler.set_batch_neighbours(batch_neighbours, persistent=persistent)
    assert len({len(s) for s in ranks}) == 1
    per_rank = [list(s) for s in ranks]
    assert all(len(batches) == len(ranks[0]) for batches in per_rank)
    joined = []
    for step in zip(*per_rank):
        assert all(len(part) == batch_size for part in step)
        joined.append([i for part in step for i in part])
    return joined, ranks[0]


# ---------------------------------------------------------------- DistributedShuffleSampler
@pytest.mark.parametrize("n,world,drop_last", [(10, 3, False), (10, 3, True), (2, 5, False), (12, 4, False)])
def test_distributed_shuffle_unshuffled_matches_torch(n, world, drop_last):
    for rank in range(world):
        ours = DistributedShuffleSampler(n, shuffle=False, rank=rank, world_size=world, drop_last=drop_last)
        ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False, drop_last=drop_last)
        assert list(ours) == list(ref) and len(ours) == len(ref)


def test_distributed_shuffle_partition_and_determinism():
    n, world = 23, 4
    samplers = [DistributedShuffleSampler(n, seed=5, rank=r, world_size=world) for r in range(world)]
    parts = [list(s) for s in samplers]
    assert all(len(p) == 6 == len(s) for p, s in zip(parts, samplers))
    flat = sum(parts, [])
    assert set(flat) == set(range(n)) and len(flat) == 24  # one wrapped repeat
    order = samplers[0].global_order()
    assert sorted(order[:n].tolist()) == list(range(n)) and order[n] == order[0]
    assert [order[r::world].tolist() for r in range(world)] == parts
    again = DistributedShuffleSampler(n, seed=5, rank=2, world_size=world)
    assert list(again) == parts[2]
    samplers[2].set_epoch(1)
    assert list(samplers[2]) != parts[2]
    assert list(DistributedShuffleSampler(n, seed=6, rank=2, world_size=world)) != parts[2]
    dropped = [list(DistributedShuffleSampler(n, seed=5, rank=r, world_size=world, drop_last=True)) for r in range(4)]
    flat = sum(dropped, [])
    assert all(len(p) == 5 for p in dropped) and len(set(flat)) == 20
    with pytest.raises(ValueError):
        DistributedShuffleSampler(5, rank=2, world_size=2)


# ------------------------------------------------------------------------ VigorBatchSampler
@pytest.mark.parametrize("world_size,batch_size", [(1, 16), (4, 4), (3, 5)])
def test_vigor_batches_conflict_free_and_complete(world_size, batch_size):
    positive, semi = grid_labels(1500, 40, 40)
    sets = sat_sets(positive, semi)
    size = world_size * batch_size
    joined, sampler = global_batches(positive, semi, batch_size, world_size, epoch=2, seed=1)
    plan = sampler.plan()
    assert joined == plan.batches
    seen = []
    for batch in joined:
        assert len(batch) == size
        assert_conflict_free(batch, sets)
        seen += batch
    assert len(seen) == len(set(seen))                                  # at most once
    assert sorted(seen + plan.dropped) == list(range(len(positive)))    # the rest is accounted for
    assert len(plan.dropped) < size and plan.exhaustive                 # sparse overlaps: < one batch


def test_vigor_batches_without_drop_last_cover_everything_once():
    positive, semi = grid_labels(700, 20, 20, seed=3)
    sets = sat_sets(positive, semi)
    sampler = VigorBatchSampler(positive, semi, 32, drop_last=False)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(700))
    for b in batches:
        assert_conflict_free(b, sets)
    sizes = [len(b) for b in batches]
    first_short = next(k for k, s in enumerate(sizes + [0]) if s < 32)
    assert all(s < 32 for s in sizes[first_short:])  # only trailing batches may be short
    assert sampler.plan().dropped == []


def test_vigor_batches_adversarial_all_share_one_satellite():
    n = 9
    positive = np.zeros(n, dtype=np.int64)
    semi = np.arange(1, 3 * n + 1).reshape(n, 3)
    dropping = VigorBatchSampler(positive, semi, 4)
    assert len(dropping) == 0 and list(dropping) == []
    assert sorted(dropping.plan().dropped) == list(range(n)) and dropping.plan().exhaustive
    keeping = VigorBatchSampler(positive, semi, 4, drop_last=False)
    assert sorted(b[0] for b in keeping) == list(range(n)) and all(len(b) == 1 for b in keeping)
    with pytest.raises(ValueError, match="drop_last"):
        VigorBatchSampler(positive, semi, 4, world_size=2, drop_last=False)
    with pytest.raises(UserError, match="lower --batch_size"):
        VigorBatchSampler(positive, semi, 5, world_size=2)


def _has_batch(panoramas, size, sets):
    """Brute force: whether ``size`` of ``panoramas`` can form a conflict-free batch."""
    return any(all(sets[a].isdisjoint(sets[b]) for a, b in itertools.combinations(group, 2))
               for group in itertools.combinations(panoramas, size))


@pytest.mark.parametrize("case", range(60))
def test_vigor_plan_leaves_out_no_formable_batch(case):
    """Small crowded worlds (a few tiles, many panoramas): the plan's batches are full, conflict-free and
    disjoint, and no conflict-free global batch can be formed from the panoramas it leaves out (checked by
    brute force over every subset) -- the plan keeps going past a batch the greedy pass cannot fill."""
    rng = np.random.default_rng(case)
    grid = int(rng.integers(3, 6))
    n = int(rng.integers(4, 13))
    batch_size, world_size = (int(rng.integers(2, 5)), 1) if case % 3 else (int(rng.integers(1, 3)), 2)
    size = batch_size * world_size
    if n < size:
        n = size
    positive, semi = grid_labels(n, grid, grid, seed=case)
    sets = sat_sets(positive, semi)
    joined, sampler = global_batches(positive, semi, batch_size, world_size, epoch=case % 4, seed=case)
    plan = sampler.plan()
    assert joined == plan.batches and plan.exhaustive
    flat = [i for b in plan.batches for i in b]
    assert len(flat) == len(set(flat)) and sorted(flat + plan.dropped) == list(range(n))
    for batch in plan.batches:
        assert len(batch) == size
        assert_conflict_free(batch, sets)
    assert not _has_batch(plan.dropped, size, sets)
    # in particular: no batch at all only when no conflict-free global batch exists
    assert bool(plan.batches) == _has_batch(range(n), size, sets)


def test_vigor_plan_sets_aside_the_panorama_that_blocks_the_tail():
    """Panorama 0 conflicts with 1, 2 and 3, which are mutually free. Whichever comes first in the random
    order, every epoch forms the batch {1, 2, 3} and leaves out 0 (the greedy pass starting at 0 cannot
    fill a batch of 3)."""
    positive = np.array([0, 1, 2, 3])
    semi = np.array([[1, 2, 3], [-1, -1, -1], [-1, -1, -1], [-1, -1, -1]])
    sampler = VigorBatchSampler(positive, semi, 3)
    for epoch in range(12):
        plan = sampler.plan(epoch)
        assert sorted(plan.batches[0]) == [1, 2, 3] and plan.dropped == [0] and plan.exhaustive


def test_vigor_plan_says_when_a_search_was_cut_short(monkeypatch):
    """With a search limit of one branch, some crowded plans cannot prove their left-outs fit no batch:
    they say so (``exhaustive`` False) and still hold only full, conflict-free, disjoint batches."""
    monkeypatch.setattr("data.samplers.SEARCH_NODES", 1)
    cut = 0
    for seed in range(20):
        positive, semi = grid_labels(12, 4, 4, seed=seed)
        sets = sat_sets(positive, semi)
        plan = VigorBatchSampler(positive, semi, 3, seed=seed).plan()
        cut += not plan.exhaustive
        flat = [i for b in plan.batches for i in b]
        assert len(flat) == len(set(flat)) and sorted(flat + plan.dropped) == list(range(12))
        for batch in plan.batches:
            assert len(batch) == 3
            assert_conflict_free(batch, sets)
        if plan.exhaustive:
            assert not _has_batch(plan.dropped, 3, sets)
    assert cut > 0


def test_vigor_semi_padding_is_ignored():
    positive = np.arange(6)
    semi = np.full((6, 3), -1)
    semi[1, 0] = 0  # panorama 1 touches panorama 0's positive
    sampler = VigorBatchSampler(positive, semi, 6, drop_last=False)
    batches = list(sampler)
    assert len(batches) == 2 and sorted(map(len, batches)) == [1, 5]
    assert not any({0, 1} <= set(b) for b in batches)


def test_vigor_batches_deterministic_per_seed_and_epoch():
    positive, semi = grid_labels(800, 30, 30, seed=2)
    a = VigorBatchSampler(positive, semi, 8, seed=7, rank=1, world_size=2)
    b = VigorBatchSampler(positive, semi, 8, seed=7, rank=1, world_size=2)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(4)
    assert list(a) != first
    assert list(VigorBatchSampler(positive, semi, 8, seed=8, rank=1, world_size=2)) != \
        list(VigorBatchSampler(positive, semi, 8, seed=7, rank=1, world_size=2))
    assert a.plan(3).batches == b.plan().batches  # plan(epoch) is independent of the cache


def _cluster_world(clusters=8, per=8):
    """One panorama per satellite; satellites in clusters; semi-positives are private."""
    m = clusters * per
    positive = np.arange(m)
    semi = m + np.arange(3 * m).reshape(m, 3)
    neighbours = np.full((m + 3 * m, per), -1)
    for s in range(m):
        c = s // per
        mates = [t for t in range(c * per, (c + 1) * per) if t != s]
        neighbours[s, : len(mates)] = mates
    return positive, semi, neighbours, per


def _same_cluster_pairs(batch, per):
    clusters = [i // per for i in batch]
    return sum(a == b for a, b in itertools.combinations(clusters, 2))


def test_hard_negative_mining_groups_neighbours():
    positive, semi, neighbours, per = _cluster_world()
    sets = sat_sets(positive, semi)
    plain = VigorBatchSampler(positive, semi, 4, world_size=2, mining_fraction=1.0)
    baseline = np.mean([_same_cluster_pairs(b, per) for b in plain.plan().batches])
    mined = VigorBatchSampler(positive, semi, 4, world_size=2, mining_fraction=1.0)
    before = mined.plan().batches
    mined.set_hard_neighbours(torch.from_numpy(neighbours))
    batches = mined.plan().batches
    assert batches != before  # cache invalidated
    assert sorted(i for b in batches for i in b) == list(range(len(positive)))
    # each global batch of 8 is exactly one cluster: 28 same-cluster pairs vs ~3 at random
    assert all(_same_cluster_pairs(b, per) == 28 for b in batches)
    assert baseline < 8
    half = VigorBatchSampler(positive, semi, 4, world_size=2, mining_fraction=0.5)
    half.set_hard_neighbours(neighbours)
    half_batches = half.plan().batches
    for b in half_batches:
        assert_conflict_free(b, sets)
    # the first batch draws from intact clusters: its seed + round(0.5 * 8) mined mates
    assert np.bincount([i // per for i in half_batches[0]]).max() >= 1 + 4
    half_pairs = np.mean([_same_cluster_pairs(b, per) for b in half_batches])
    assert baseline < half_pairs < 28
    mined.set_hard_neighbours(None)
    assert mined.plan().batches == before


def test_mining_keeps_invariants_on_conflicting_neighbours():
    """Neighbours = spatially adjacent tiles, which mostly conflict: rules still hold."""
    gx = gy = 25
    positive, semi = grid_labels(900, gx, gy, seed=4)
    sets = sat_sets(positive, semi)
    m = gx * gy
    neighbours = np.full((m, 8), -1)
    for s in range(m):
        y, x = divmod(s, gx)
        adj = [(y + dy) * gx + x + dx for dy in (-2, -1, 0, 1, 2) for dx in (-2, -1, 0, 1, 2)
               if (dy or dx) and 0 <= y + dy < gy and 0 <= x + dx < gx]
        neighbours[s, : min(8, len(adj))] = adj[:8]
    joined, sampler = global_batches(positive, semi, 4, 4, epoch=1, neighbours=neighbours, mining_fraction=0.75)
    assert_valid_epoch(joined, sampler.plan(), 900, 16, 16, sets)
    unmined, _ = global_batches(positive, semi, 4, 4, epoch=1, mining_fraction=0.75)

    def near_pairs(batches):
        """Mean number of pairs per batch whose positives are within 2 tiles."""
        total = 0
        for b in batches:
            cells = [divmod(int(positive[i]), gx) for i in b]
            total += sum(max(abs(p[0] - q[0]), abs(p[1] - q[1])) <= 2 for p, q in itertools.combinations(cells, 2))
        return total / len(batches)

    assert near_pairs(joined) > 2 * near_pairs(unmined)


# ------------------------------------------------------- neighbour batches (gps / similarity)
def pair_batches(table, n, batch_size, select, epoch=0, seed=0, world_size=1, persistent=True):
    """CVUSA-style neighbour batches (pair i = satellite i) joined over the ranks, and rank 0's sampler."""
    joined, sampler = global_batches(np.arange(n), None, batch_size, world_size, epoch, batch_neighbours=table,
                                     persistent=persistent, seed=seed, neighbour_select=select)
    assert joined == sampler.plan().batches
    return joined, sampler


def assert_valid_epoch(joined, plan, n, global_batch, max_dropped, sets):
    """The joined rank batches are the plan: full, conflict-free, each panorama once, few dropped."""
    assert joined == plan.batches
    flat = [i for b in joined for i in b]
    assert len(flat) == len(set(flat)) and sorted(flat + plan.dropped) == list(range(n))
    assert len(plan.dropped) < max_dropped
    for b in joined:
        assert len(b) == global_batch
        assert_conflict_free(b, sets)


def _mean_batch_distance(batches, points):
    return np.mean([np.linalg.norm(points[b][:, None] - points[b][None], axis=-1).sum() / (len(b) * (len(b) - 1))
                    for b in batches])


def test_gps_batches_are_geographic_neighbours_and_cover_the_epoch():
    rng = np.random.default_rng(0)
    n = 403
    latlon = np.stack([rng.uniform(40.0, 40.2, n), rng.uniform(-74.2, -74.0, n)], axis=1)
    table = topk_neighbours(gps_vectors(latlon), 128)
    batches, sampler = pair_batches(table, n, 8, select=64, world_size=2)
    plain = VigorBatchSampler(np.arange(n), None, 8, world_size=2).plan().batches
    flat = [i for b in batches for i in b]
    # every pair once per epoch, except the last n mod 16 (drop_last), which plan().dropped names
    assert len(batches) == n // 16 and all(len(b) == 16 for b in batches)
    assert len(set(flat)) == len(flat) and sorted(flat + sampler.plan().dropped) == list(range(n))
    assert len(sampler.plan().dropped) == n % 16
    points = latlon * [1.0, np.cos(np.radians(40.1))]
    assert _mean_batch_distance(batches, points) < 0.35 * _mean_batch_distance(plain, points)
    # a batch starts with an anchor followed by its nearest neighbours (the nearest half of 64 > 15)
    first = batches[0]
    assert first[1:] == table[first[0], :15].tolist()


def test_neighbour_batches_deterministic_per_seed_and_epoch():
    rng = np.random.default_rng(1)
    desc = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(200, 16))), dim=1)
    table = topk_neighbours(desc, 32)
    a, _ = pair_batches(table, 200, 10, select=12, epoch=3, seed=5)
    assert a == pair_batches(table, 200, 10, select=12, epoch=3, seed=5)[0]
    assert a != pair_batches(table, 200, 10, select=12, epoch=4, seed=5)[0]
    assert a != pair_batches(table, 200, 10, select=12, epoch=3, seed=6)[0]


def test_similarity_batches_draw_near_half_then_the_rest_of_the_pool():
    rng = np.random.default_rng(2)
    desc = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(300, 8))), dim=1)
    table = topk_neighbours(desc, 16)
    batches, _ = pair_batches(table, 300, 5, select=4, seed=1)  # anchor + 2 nearest + 2 of the next 14

    def mean_similarity(b):
        return float((desc[b] @ desc[b].T).sum() - len(b)) / (len(b) * (len(b) - 1))

    first = batches[0]  # nothing is used yet: exactly the anchor's draws
    pool = table[first[0]].tolist()
    assert first[1:3] == pool[:2] and set(first[3:]) <= set(pool[2:])
    # later, a drawn neighbour already used is skipped and the next anchor fills the batch
    whole = [b for b in batches[:20] if b[1:3] == table[b[0], :2].tolist() and set(b[3:]) <= set(table[b[0], 2:].tolist())]
    assert len(whole) >= 10
    assert len({tuple(sorted(set(b[3:]) & set(table[b[0], 2:4].tolist()))) for b in whole}) > 1  # not always the next
    sims = [mean_similarity(b) for b in batches[:20]]
    random = VigorBatchSampler(np.arange(300), None, 5).plan().batches[:20]
    assert np.mean(sims) > np.mean([mean_similarity(b) for b in random]) + 0.3


def test_neighbour_batches_state_restores_the_plan():
    table = topk_neighbours(torch.nn.functional.normalize(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)),
                                                          dim=1), 16)
    batches, sampler = pair_batches(table, 64, 8, select=8, epoch=2)
    state = sampler.state_dict()
    assert state["batch_neighbours"].dtype == torch.int32 and state["batch_neighbours"].shape == (64, 16)
    fresh = VigorBatchSampler(np.arange(64), None, 8, neighbour_select=8)
    fresh.load_state_dict(state)
    fresh.set_epoch(2)
    assert fresh.plan().batches == batches
    _, gps = pair_batches(table, 64, 8, select=8, epoch=2, persistent=False)
    assert gps.state_dict() == {}  # rebuilt from the positions on resume
    gps.load_state_dict({})
    assert gps.plan().batches == batches


@pytest.mark.parametrize("similarity", [False, True])
def test_vigor_neighbour_batches_stay_conflict_free(similarity):
    """GPS neighbours are adjacent tiles, which mostly share satellites: the rule still holds."""
    gx = gy = 25
    positive, semi = grid_labels(900, gx, gy, seed=5)
    sets = sat_sets(positive, semi)
    cells = np.array([divmod(s, gx) for s in range(gx * gy)], dtype=np.float64)
    if similarity:
        desc = torch.nn.functional.normalize(torch.from_numpy(np.concatenate(
            [cells / gx, np.random.default_rng(0).normal(0, 0.05, (len(cells), 4))], axis=1)), dim=1)
        table = topk_neighbours(desc, 64)
    else:
        table = topk_neighbours(gps_vectors(40.0 + cells * 3e-4), 64)
    joined, sampler = global_batches(positive, semi, 4, 4, epoch=1, batch_neighbours=table, seed=2,
                                     neighbour_select=32)
    assert_valid_epoch(joined, sampler.plan(), 900, 16, 32, sets)
    plain = VigorBatchSampler(positive, semi, 4, seed=2, world_size=4).plan(1).batches

    def near_pairs(batches):
        """Mean number of pairs per batch whose positives are within 3 tiles."""
        return np.mean([sum(np.abs(cells[positive[i]] - cells[positive[j]]).max() <= 3
                            for i, j in itertools.combinations(b, 2)) for b in batches])

    assert near_pairs(joined) > 2 * near_pairs(plain)


def test_gps_vectors_rank_by_great_circle_distance_to_the_metre():
    base = np.array([47.6, -122.3])
    metres = np.array([0.0, 3.0, 1.0, 2.0, 500.0])  # east of base
    latlon = np.stack(north_east_to_gps(base[0], base[1], np.zeros(5), metres), 1)
    assert topk_neighbours(gps_vectors(latlon), 4)[0].tolist() == [2, 3, 1, 4]


def test_neighbour_batches_need_a_selection():
    sampler = VigorBatchSampler(np.arange(8), None, 2)
    with pytest.raises(ValueError, match="neighbour_select"):
        sampler.set_batch_neighbours(np.zeros((8, 2), dtype=np.int64))


# --------------------------------------------------------------------------- topk_neighbours
def _brute_force(desc, k, exclude_self=True):
    sim = desc @ desc.T
    if exclude_self:
        sim.fill_diagonal_(float("-inf"))
    return sim.topk(k, dim=1).indices


@pytest.mark.parametrize("chunk_size", [1, 7, 50, 4096])
def test_topk_neighbours_matches_brute_force(chunk_size):
    desc = torch.nn.functional.normalize(torch.randn(50, 8, dtype=torch.float64), dim=1)
    got = topk_neighbours(desc, 5, chunk_size=chunk_size)
    assert got.shape == (50, 5) and got.dtype == torch.long
    assert torch.equal(got, _brute_force(desc, 5))
    assert not (got == torch.arange(50)[:, None]).any()
    with_self = topk_neighbours(desc, 3, chunk_size=chunk_size, exclude_self=False)
    assert torch.equal(with_self, _brute_force(desc, 3, exclude_self=False))
    assert torch.equal(with_self[:, 0], torch.arange(50))  # unit vectors: self is the most similar


def test_topk_neighbours_padding_and_half_precision():
    desc = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    got = topk_neighbours(desc, 6, chunk_size=2)
    assert got.shape == (4, 6)
    assert (got[:, 3:] == -1).all()
    for row in range(4):
        assert sorted(got[row, :3].tolist()) == [i for i in range(4) if i != row]
    half = topk_neighbours(desc.half(), 2, chunk_size=3)
    assert half.shape == (4, 2) and half.dtype == torch.long
    assert torch.equal(topk_neighbours(desc, 0), torch.empty(4, 0, dtype=torch.long))
    with pytest.raises(ValueError):
        topk_neighbours(desc[0], 2)
