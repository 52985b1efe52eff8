"""The pose head's evaluation passes (positives known, the candidates of ``--rerank_score pose``, the
refined top-1, ``localize.py``): streamed over datasets, each rank its share, gathered by index.
Conventions and the ``pose`` block: :mod:`helper.pose`."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from helper.pose import pose_results
from models.pose import PoseEmbedding


class _Pairs(Dataset):
    """Item ``p``: ``images[tiles[p]]``'s ``key`` image with index ``p``."""

    def __init__(self, images: Dataset, tiles: torch.Tensor, key: str) -> None:
        self.images, self.tiles, self.key = images, tiles.reshape(-1).cpu(), key

    def __len__(self) -> int:
        return self.tiles.numel()

    def __getitem__(self, p: int) -> dict:
        return {self.key: self.images[int(self.tiles[p])][self.key], "index": int(p)}


def _stream(model, dataset: Dataset, key: str, env, batch_size: int, workers: int, compute, desc: str):
    """``compute(net, images on the device, index)`` over ``dataset``'s ``key`` images, each rank its
    share, gathered by index: a tuple of tensors with one row per item."""
    from tqdm import tqdm

    from data.samplers import DistributedShuffleSampler
    from helper import distributed
    from helper.engine import make_loader

    net = distributed.unwrap(model)
    net.eval()
    sampler = DistributedShuffleSampler(len(dataset), shuffle=False, rank=env.rank, world_size=env.world_size)
    loader = make_loader(dataset, batch_size, workers, env, sampler=sampler)
    parts, indices = [], []
    with torch.no_grad(), distributed.autocast(env.device, "none"):
        for batch in tqdm(loader, disable=not env.is_main, leave=False, desc=desc, unit="batch", dynamic_ncols=True):
            index = batch["index"].to(env.device)
            parts.append(compute(net, distributed.move_images(batch, key, env.device), index))
            indices.append(index)
    index = torch.cat(indices)
    return tuple(distributed.gather_by_index(torch.cat([p[i] for p in parts]), index, len(dataset))
                 for i in range(len(parts[0])))


def embed_panoramas(model, panoramas: Dataset, env, batch_size: int, workers: int) -> PoseEmbedding:
    """The pose embeddings of every ``"street"`` image of ``panoramas`` (on ``env.device``)."""
    def compute(net, images, index):
        return (net.pose_street(images).strip,)

    strip, = _stream(model, panoramas, "street", env, batch_size, workers, compute, "pose panoramas")
    return PoseEmbedding(strip=strip)


def pose_of_pairs(model, street: PoseEmbedding, satellites: Dataset, tiles: torch.Tensor, env, batch_size: int,
                  workers: int):
    """``(delta N x K x 2 normalised, heading N x K degrees, score N x K)`` of every query i with each
    of its tiles ``tiles[i]`` (``N x K`` indices into ``satellites``, or ``N``: one tile each, then
    the results are ``N x 2`` / ``N``), on ``env.device``."""
    n = tiles.shape[0]
    k = tiles.numel() // max(n, 1)

    def compute(net, images, index):
        query = index // k
        mine = PoseEmbedding(strip=street.strip[query])
        delta, heading, score = net.pose_head.predict(mine, net.pose_head.embed_satellite(images))
        return delta, heading, score

    delta, heading, score = _stream(model, _Pairs(satellites, tiles, "satellite"), "satellite", env, batch_size,
                                    workers, compute, "pose tiles")
    shape = tuple(tiles.shape)
    return delta.view(*shape, 2), heading.view(shape), score.view(shape)


def positives_known(model, street: PoseEmbedding, satellites: Dataset, positive: torch.Tensor, truth_px: np.ndarray,
                    tile_side: float, scale, unit: str, env, batch_size: int, workers: int,
                    true_heading: Optional[np.ndarray] = None) -> dict:
    """The ``pose`` block (module doc): every query's pose estimated on its ``positive`` tile of
    ``satellites``, against the true label deltas ``truth_px`` (``N x 2`` pixels of tiles of side
    ``tile_side``) at ``scale`` units per pixel; with ``true_heading`` (an unknown heading) also the
    heading errors."""
    from models.offset import delta_pixels

    delta, heading, _ = pose_of_pairs(model, street, satellites, positive, env, batch_size, workers)
    predicted = delta_pixels(delta.double(), tile_side).cpu().numpy()
    estimate = None if true_heading is None else heading.cpu().numpy()
    return pose_results(predicted, truth_px, scale, unit, estimate, true_heading)


