"""Samplers: distributed shuffling, conflict-free batches of neighbours, nearest-neighbour tables.

Every order is a function of ``(seed, epoch)`` only (``numpy.random.default_rng([seed,
epoch])``), so all ranks of a distributed run build the same global order and each
takes its own part; call ``set_epoch(epoch)`` before each epoch.
"""
from __future__ import annotations

from collections import deque
from typing import Iterator, List, NamedTuple, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

from common.errors import UserError


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


class DistributedShuffleSampler(Sampler[int]):
    """Indices ``0..n-1`` for one rank, like ``torch.utils.data.DistributedSampler``.

    The global order is a permutation drawn from ``(seed, epoch)`` (identity when
    ``shuffle=False``). It is truncated to a multiple of ``world_size`` when ``drop_last``,
    else padded by wrapping around to the start; rank ``r`` takes positions
    ``r, r + world_size, ...``. Every rank gets the same number of indices; together they
    cover each index exactly once, plus the wrapped padding (< world_size indices).
    For evaluation use ``shuffle=False`` and gather features by index (padding repeats).
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        _check_rank(rank, world_size)
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        self.epoch = 0
        if self.drop_last:
            self.num_samples = self.n // self.world_size
        else:
            self.num_samples = -(-self.n // self.world_size)
        self.total_size = self.num_samples * self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_order(self) -> np.ndarray:
        """The padded/truncated order of all ranks for the current epoch (``total_size``,)."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.total_size <= self.n:
            return order[: self.total_size]
        return np.resize(order, self.total_size)  # repeats from the start as often as needed

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples


SEARCH_NODES = 100_000
"""Most branches one search for a batch through the end-of-epoch panoramas may visit (see
:class:`VigorBatchSampler`); far beyond what VIGOR-like overlaps need."""


class EpochPlan(NamedTuple):
    """One epoch of :class:`VigorBatchSampler`: global batches and what was left out.

    ``batches``: global batches (lists of panorama indices). ``dropped``: the panoramas not in
    ``batches`` (with ``drop_last``; empty otherwise), in the order they were set aside.
    ``exhaustive``: whether every search for a batch through them ran to the end (see
    :class:`VigorBatchSampler`); when True, no conflict-free global batch can be formed from
    ``dropped``.
    """

    batches: List[List[int]]
    dropped: List[int]
    exhaustive: bool = True


class VigorBatchSampler(Sampler[List[int]]):
    """Batches of training pairs with no shared satellite in any global batch (VIGOR's rule),
    optionally grouped around neighbours (hard-negative mining, GPS or similarity sampling).

    CVUSA uses it too for ``--sampling gps|similarity``: pair ``i`` is panorama ``i`` with
    satellite ``i`` and no semi-positives, so nothing conflicts.

    Args:
        positive: (N,) global satellite index of each panorama's positive.
        semi: (N, 3) semi-positive satellite indices (negative values are ignored); None or
            an empty array for none.
        batch_size: panoramas per rank; a global batch holds ``world_size * batch_size``.
        seed, rank, world_size: every rank must pass the same seed and data.
        drop_last: drop the final global batch the greedy procedure cannot complete
            (required when ``world_size > 1`` so every rank gets full, equal batches).
        mining_fraction: with :meth:`set_hard_neighbours`, the share of each global batch
            filled with panoramas whose positives are hard neighbours (see below).
        neighbour_select: with :meth:`set_batch_neighbours`, how many neighbours each anchor
            draws (see below).

    Guarantees for every epoch (see :meth:`plan`):

    * no global batch holds two panoramas sharing any of their four satellites
      (positive or semi-positives) -- the official VIGOR rule;
    * no panorama appears twice; with ``drop_last=False`` every panorama appears exactly
      once (the last batches may then be smaller); with ``drop_last=True`` every emitted
      global batch is full, and no conflict-free global batch can be formed from the
      panoramas left out (``plan().dropped``; exact unless ``plan().exhaustive`` is False, see
      below): with VIGOR's sparse overlaps fewer than a batch, without conflicts the last
      ``N mod global batch``, and no batch at all only when no conflict-free global batch exists;
    * rank ``r`` receives ``global_batch[r * batch_size:(r + 1) * batch_size]``;
    * the batches depend only on ``(seed, epoch)`` and the neighbour tables.

    Greedy construction, O(N) per epoch when conflicts are rare: walk a random permutation;
    a panorama that conflicts with the batch being built goes to a deferred queue, which is
    retried first when the next batch starts. With ``drop_last``, once the permutation is
    exhausted and a batch cannot be completed, the remaining panoramas (that batch first, then
    the deferred queue) are the *tail*: its first panorama gets a depth-first search through the
    rest of the tail for a conflict-free global batch holding it (its first branch is the greedy
    fill); a batch found is emitted and the search goes on with the next first panorama, else
    that panorama is set aside (left out of the epoch). Hence no left-out panorama fits a batch
    with other left-out ones. A search visiting more than :data:`SEARCH_NODES` branches stops and
    sets its panorama aside with ``plan().exhaustive`` False.

    Hard-negative mining (after :meth:`set_hard_neighbours`): each global batch starts with
    the next unused panorama; then, breadth-first over the hard neighbours of the positive
    satellites already in the batch (most similar first), the unused panorama whose positive
    is that neighbour is added when conflict-free, up to ``round(mining_fraction * global
    batch)`` panoramas; the rest is filled as without mining.

    Neighbour batches (after :meth:`set_batch_neighbours`, Sample4Geo's GPS and similarity
    sampling): every panorama taken from the random order is an *anchor*; right after it, of
    the neighbours of its positive satellite (a pool, nearest first), the nearest
    ``neighbour_select // 2`` and then a random draw of the remaining ``neighbour_select -
    neighbour_select // 2`` from the rest of the pool are visited in that order, and for each
    the unused panorama whose positive it is joins when conflict-free, until the batch is
    full; then the next anchor. The draws come from a generator of ``(seed, epoch)``.
    """

    def __init__(self, positive, semi, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, mining_fraction: float = 0.5, neighbour_select: int = 0):
        positive = np.asarray(positive, dtype=np.int64).reshape(-1)
        semi = np.asarray([] if semi is None else semi, dtype=np.int64)
        semi = semi.reshape(len(positive), -1) if semi.size else semi.reshape(len(positive), 0)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _check_rank(rank, world_size)
        if world_size > 1 and not drop_last:
            raise ValueError("VigorBatchSampler needs drop_last=True when world_size > 1 "
                             "(every rank must receive full batches)")
        if not 0.0 <= mining_fraction <= 1.0:
            raise ValueError(f"mining_fraction must be in [0, 1], got {mining_fraction}")
        if neighbour_select < 0:
            raise ValueError(f"neighbour_select must be >= 0, got {neighbour_select}")
        if drop_last and len(positive) < batch_size * world_size:
            raise UserError(f"--batch_size {batch_size} x {world_size} process(es) = {batch_size * world_size} "
                            f"panoramas per global batch, but the training split has only {len(positive)}; "
                            "lower --batch_size")
        self.positive = positive
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        self.global_batch_size = self.batch_size * self.world_size
        self.mining_fraction = float(mining_fraction)
        self.neighbour_select = int(neighbour_select)
        self.epoch = 0
        all_sats = np.concatenate([positive[:, None], semi], axis=1)
        self._sats = [tuple(int(s) for s in row if s >= 0) for row in all_sats.tolist()]
        # panoramas grouped by positive satellite (CSR): _by_pos[_starts[s]:_starts[s+1]]
        num_sats = int(all_sats.max()) + 1 if all_sats.size else 0
        self._by_pos = np.argsort(positive, kind="stable")
        self._starts = np.searchsorted(positive[self._by_pos], np.arange(num_sats + 1))
        self._num_sats = num_sats
        self._neighbours: Optional[np.ndarray] = None  # mining
        self._batch_neighbours: Optional[np.ndarray] = None  # neighbour batches
        self._persistent = True  # whether state_dict holds _batch_neighbours
        self._cache: Optional[tuple] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _table(self, neighbours) -> Optional[np.ndarray]:
        """A satellite -> neighbours table as an M x K int64 array (M >= the satellites), or None."""
        self._cache = None
        if neighbours is None:
            return None
        if isinstance(neighbours, torch.Tensor):
            neighbours = neighbours.detach().cpu().numpy()
        neighbours = np.asarray(neighbours, dtype=np.int64)
        if neighbours.ndim != 2 or neighbours.shape[0] < self._num_sats:
            raise ValueError(f"neighbours must be M x K with M >= {self._num_sats} satellites, "
                             f"got shape {neighbours.shape}")
        return neighbours

    def set_hard_neighbours(self, neighbours) -> None:
        """Enable mining with ``neighbours`` M x K (satellite -> its K most similar others,
        -1 padding), e.g. :func:`topk_neighbours` of the satellite descriptors; ``None``
        disables it. All ranks must set the same array."""
        self._neighbours = self._table(neighbours)

    def set_batch_neighbours(self, neighbours, persistent: bool = True) -> None:
        """Enable neighbour batches with the pool table ``neighbours`` M x P (satellite -> its
        P nearest others, nearest first, -1 padding), e.g. :func:`topk_neighbours` of satellite
        descriptors or :func:`gps_vectors`; ``None`` disables them. ``persistent``: whether
        :meth:`state_dict` stores the table (False for one rebuilt identically from the data,
        such as GPS). All ranks must set the same array."""
        if neighbours is not None and not self.neighbour_select:
            raise ValueError("neighbour batches need neighbour_select >= 1")
        self._batch_neighbours = self._table(neighbours)
        self._persistent = bool(persistent)

    def state_dict(self) -> dict:
        """What a checkpoint must hold to replay the current epoch's batches (the neighbour tables
        computed during training, as int32)."""
        state = {}
        if self._neighbours is not None:
            state["hard_neighbours"] = torch.from_numpy(self._neighbours)
        if self._batch_neighbours is not None and self._persistent:
            state["batch_neighbours"] = torch.from_numpy(self._batch_neighbours.astype(np.int32))
        return state

    def load_state_dict(self, state: dict) -> None:
        self.set_hard_neighbours(state.get("hard_neighbours"))
        if "batch_neighbours" in state:
            self.set_batch_neighbours(state["batch_neighbours"])

    # -- construction
    def plan(self, epoch: Optional[int] = None) -> EpochPlan:
        """The global batches of ``epoch`` (default: the current one), cached."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        plan = self._build(epoch)
        self._cache = (epoch, plan)
        return plan

    def _build(self, epoch: int) -> EpochPlan:
        n, size = len(self._sats), self.global_batch_size
        sats = self._sats
        order = np.random.default_rng([self.seed, epoch]).permutation(n).tolist()
        used = bytearray(n)
        deferred: deque = deque()
        neighbours = self._neighbours
        quota = int(round(self.mining_fraction * size)) if neighbours is not None else 0
        draws = np.random.default_rng([self.seed, epoch, 1]) if self._batch_neighbours is not None else None
        batches: List[List[int]] = []
        pos = 0
        while True:
            batch: List[int] = []
            taken: set = set()

            def add(i: int) -> None:
                batch.append(i)
                taken.update(sats[i])
                used[i] = 1
                if quota and len(batch) == 1:
                    self._mine(i, batch, taken, used, quota)
                if draws is not None:
                    self._group(i, batch, taken, used, draws)

            def offer(i: int) -> None:
                """Add panorama ``i`` if unused and conflict-free; defer it on a conflict."""
                if used[i]:
                    return
                if taken.isdisjoint(sats[i]):
                    add(i)
                else:
                    deferred.append(i)

            for _ in range(len(deferred)):
                if len(batch) == size:
                    break
                offer(deferred.popleft())
            while len(batch) < size and pos < n:
                offer(order[pos])
                pos += 1
            if len(batch) == size:
                batches.append(batch)
            elif not batch:
                return EpochPlan(batches, [])
            elif self.drop_last:
                return self._tail(batches, batch + [i for i in deferred if not used[i]])
            else:
                batches.append(batch)

    def _tail(self, batches: List[List[int]], tail: List[int]) -> EpochPlan:
        """The plan completed from the end-of-epoch panoramas ``tail`` (see the class doc)."""
        size = self.global_batch_size
        dropped: List[int] = []
        exhaustive = True
        hopeless = set()  # satellite sets proven to fit no batch (the tail only shrinks)
        while len(tail) >= size:
            key = frozenset(self._sats[tail[0]])
            batch, complete = (None, True) if key in hopeless else self._search(tail[0], tail[1:])
            exhaustive &= complete
            if batch is None:
                if complete:
                    hopeless.add(key)
                dropped.append(tail[0])
                tail = tail[1:]
            else:
                batches.append(batch)
                members = set(batch)
                tail = [i for i in tail if i not in members]
        return EpochPlan(batches, dropped + tail, exhaustive)

    def _search(self, first: int, others: List[int]) -> tuple:
        """A conflict-free global batch of ``first`` and panoramas of ``others`` (depth-first,
        in their order, so the first branch is the greedy fill), or None; and whether the search
        ran to the end (at most :data:`SEARCH_NODES` branches).

        Of panoramas with the same satellites only the first is tried (they are interchangeable
        and conflict). A branch is pruned when its candidates (the later panoramas free of
        conflict with the batch so far) are fewer than the panoramas missing or cannot supply
        them (:meth:`_may_supply`)."""
        size = self.global_batch_size
        sets = {}
        for i in [first, *others]:
            sets.setdefault(frozenset(self._sats[i]), i)
        sats = {i: key for key, i in sets.items()}
        batch = [first]
        stack = [([i for i in others if i in sats and sats[first].isdisjoint(sats[i])], 0)]
        nodes = 0
        while stack:
            if len(batch) == size:
                return batch, True
            candidates, k = stack[-1]
            need = size - len(batch)
            if k == 0:
                nodes += 1
                if nodes > SEARCH_NODES:
                    return None, False
            if len(candidates) - k < need or (k == 0 and not self._may_supply(candidates, need, sats)):
                stack.pop()
                if stack:
                    batch.pop()
                continue
            chosen = candidates[k]
            stack[-1] = (candidates, k + 1)
            batch.append(chosen)
            stack.append(([i for i in candidates[k + 1:] if sats[chosen].isdisjoint(sats[i])], 0))
        return None, True

    def _may_supply(self, candidates: List[int], need: int, sats: dict) -> bool:
        """Whether ``candidates`` (at least ``need``, satellite sets ``sats``) may hold ``need``
        conflict-free panoramas: as many distinct positives (panoramas with the same positive
        conflict) and satellites for ``need`` disjoint sets of their smallest size."""
        if len({int(self.positive[i]) for i in candidates}) < need:
            return False
        return len(frozenset().union(*(sats[i] for i in candidates))) >= need * min(len(sats[i]) for i in candidates)

    def _take_with_positive(self, sat: int, batch: List[int], taken: set, used: bytearray) -> bool:
        """Add the first unused, conflict-free panorama whose positive is ``sat``; whether one was
        (panoramas with the same positive conflict anyway, so at most one joins)."""
        if not 0 <= sat < self._num_sats:
            return False
        for p in self._by_pos[self._starts[sat]:self._starts[sat + 1]].tolist():
            if not used[p] and taken.isdisjoint(self._sats[p]):
                batch.append(p)
                taken.update(self._sats[p])
                used[p] = 1
                return True
        return False

    def _mine(self, seed_pano: int, batch: List[int], taken: set, used: bytearray, quota: int) -> None:
        """Breadth-first over hard neighbours of the batch's positives (see the class doc)."""
        size = self.global_batch_size
        neighbours = self._neighbours
        frontier = deque([int(self.positive[seed_pano])])
        seen = {frontier[0]}
        mined = 0
        while frontier and mined < quota and len(batch) < size:
            sat = frontier.popleft()
            if sat >= len(neighbours):
                continue
            for other in neighbours[sat].tolist():
                if other < 0 or other in seen or other >= self._num_sats:
                    continue
                seen.add(other)
                if self._take_with_positive(other, batch, taken, used):
                    mined += 1
                    frontier.append(other)
                if mined >= quota or len(batch) >= size:
                    return

    def _group(self, anchor: int, batch: List[int], taken: set, used: bytearray, draws: np.random.Generator) -> None:
        """The anchor's drawn neighbours join the batch (see the class doc)."""
        sat = int(self.positive[anchor])
        if len(batch) >= self.global_batch_size or sat >= len(self._batch_neighbours):
            return
        pool = self._batch_neighbours[sat]
        pool = pool[pool >= 0]
        near = self.neighbour_select // 2
        rest = pool[near:]
        chosen = np.concatenate([pool[:near], rest[draws.permutation(len(rest))[:self.neighbour_select - near]]])
        for other in chosen.tolist():
            if len(batch) >= self.global_batch_size:
                return
            self._take_with_positive(other, batch, taken, used)

    # -- Sampler API
    def __iter__(self) -> Iterator[List[int]]:
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for batch in self.plan().batches:
            yield batch[lo:hi]

    def __len__(self) -> int:
        return len(self.plan().batches)


@torch.no_grad()
def topk_neighbours(desc: torch.Tensor, k: int, chunk_size: int = 1024, exclude_self: bool = True) -> torch.Tensor:
    """For each row of ``desc`` (M x D), the indices of its ``k`` most similar rows.

    Similarity is the dot product (cosine for L2-normalised descriptors), computed in
    float32 (float64 inputs stay float64) over row blocks: peak extra memory
    O(chunk_size x M), never M x M. Returns M x k long on ``desc``'s device, most similar
    first; ``exclude_self`` leaves each row out of its own list; columns beyond the
    available rows are -1.
    """
    if desc.ndim != 2:
        raise ValueError(f"desc must be M x D, got shape {tuple(desc.shape)}")
    if k < 0 or chunk_size < 1:
        raise ValueError(f"need k >= 0 and chunk_size >= 1, got k={k}, chunk_size={chunk_size}")
    m = desc.shape[0]
    if desc.dtype != torch.float64:
        desc = desc.float()
    out = torch.full((m, k), -1, dtype=torch.long, device=desc.device)
    kk = min(k, m - 1 if exclude_self else m)
    if kk <= 0:
        return out
    for start in range(0, m, chunk_size):
        stop = min(start + chunk_size, m)
        sim = desc[start:stop] @ desc.T
        if exclude_self:
            rows = torch.arange(stop - start, device=desc.device)
            sim[rows, rows + start] = float("-inf")
        out[start:stop, :kk] = sim.topk(kk, dim=1).indices
    return out


def gps_vectors(latlon) -> torch.Tensor:
    """(N, 2) latitude, longitude in degrees -> (N, 3) float64 unit vectors on the sphere.

    Their dot product is the cosine of the great-circle angle, so :func:`topk_neighbours` of
    them lists the geographically nearest points first (float64: at float32 precision points
    closer than about 2 km would tie).
    """
    lat, lon = np.radians(np.asarray(latlon, dtype=np.float64).reshape(-1, 2)).T
    return torch.from_numpy(np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1))
