"""The dense pose head's training loss, its evaluation passes and the results' ``pose`` block.

Loss (:func:`pose_loss`, weighted by ``--lambda_pose``) of a batch of pairs (panorama i, its
positive tile i), the sum of:

* **position**: the cross-entropy of each pair's cell distribution against the soft target of
  its labelled point (:meth:`models.pose.PoseHead.position_target`); mean over the pairs;
* **tile**: the cross-entropy, over the tiles of the (global) batch, of the joint softmax over
  every cell of every tile (:meth:`models.pose.PoseHead.tile_logits`): the panorama must match
  its own tile better than any other tile *anywhere* (what ``--rerank_score pose`` ranks by);
* **heading** (only with headings given, i.e. ``--train_heading random``): the cross-entropy of
  the shift logits at the labelled point against the soft target of the true heading.

Evaluation (positives known): every query's pose is estimated on its positive tile; errors are
measured against the label delta, in metres (VIGOR: label pixels times the city's metres per
pixel) or in aerial pixels (CVUSA layout, ``_px``). Thresholds: percentage **strictly** below.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from geometry.heading import heading_error
from models.pose import PoseEmbedding, PoseHead

#: ``within_<unit>`` thresholds of the ``pose`` block (metres, or aerial pixels).
POSE_THRESHOLDS = (1, 3, 5, 10)
#: ``heading_within_deg`` thresholds (degrees, percentage at or below, as the orientation block).
HEADING_THRESHOLDS_DEG = (5, 10)


def _soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def pose_loss(head: PoseHead, street: PoseEmbedding, tiles: PoseEmbedding, delta: torch.Tensor,
              heading: Optional[torch.Tensor] = None,
              gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """The pose loss (module doc) of the pairs (street i, tile i); ``delta`` ``B x 2`` normalised label
    deltas, ``heading`` ``B`` degrees or None; ``gather`` joins every process's rows (with gradients)
    for the tile term (per-pair terms are local means: DDP's averaging makes them global)."""
    position = _soft_cross_entropy(head.position_logits(street.street, tiles.cells), head.position_target(delta))
    street_all, cells_all = gather(street.street), gather(tiles.cells)
    rows = torch.arange(street_all.shape[0], device=street_all.device)
    tile = torch.nn.functional.cross_entropy(head.tile_logits(street_all, cells_all), rows)
    total = position + tile
    if heading is not None:
        width = street.columns.shape[-1]
        aerial = head.aerial_panorama(tiles.heading, delta, width)
        total = total + _soft_cross_entropy(head.heading_logits(street.columns, aerial),
                                            head.heading_target(heading, width))
    return total


def pose_block(error: np.ndarray, centre_error: np.ndarray, unit: str,
               heading_errors: Optional[np.ndarray] = None) -> Dict[str, object]:
    """The results JSON's ``pose`` block of per-query position errors, the tile centre's errors (both
    in ``unit``: ``"m"`` or ``"px"``) and, with an unknown heading, the heading errors in degrees."""
    error = np.asarray(error, dtype=np.float64).reshape(-1)
    centre = np.asarray(centre_error, dtype=np.float64).reshape(-1)
    block: Dict[str, object] = {
        "queries": int(error.size), f"mean_{unit}": float(error.mean()), f"median_{unit}": float(np.median(error)),
        f"within_{unit}": {str(t): 100.0 * int(np.count_nonzero(error < t)) / error.size for t in POSE_THRESHOLDS},
        f"centre_mean_{unit}": float(centre.mean()), f"centre_median_{unit}": float(np.median(centre))}
    if heading_errors is not None:
        h = np.asarray(heading_errors, dtype=np.float64).reshape(-1)
        block.update({"heading_mean_deg": float(h.mean()), "heading_median_deg": float(np.median(h)),
                      "heading_within_deg": {str(t): 100.0 * int(np.count_nonzero(h <= t)) / h.size
                                             for t in HEADING_THRESHOLDS_DEG}})
    return block


def pose_errors(predicted: np.ndarray, truth: np.ndarray, scale) -> tuple:
    """``(error, centre error)`` per query: distances of predicted and zero label deltas (``N x 2``
    pixels) to the true ones, times ``scale`` (units per pixel, scalar or ``N``)."""
    truth = np.asarray(truth, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    error = np.hypot(*(np.asarray(predicted, dtype=np.float64) - truth).T) * scale
    return error, np.hypot(*truth.T) * scale


def pose_results(predicted_px: np.ndarray, truth_px: np.ndarray, scale, unit: str,
                 heading: Optional[np.ndarray] = None, true_heading: Optional[np.ndarray] = None) -> dict:
    """The ``pose`` block of predicted and true label deltas (pixels) and, with an unknown heading,
    the predicted and true headings (degrees)."""
    error, centre = pose_errors(predicted_px, truth_px, scale)
    headings = None if true_heading is None else heading_error(heading, true_heading)
    return pose_block(error, centre, unit, headings)


# ----------------------------------------------------------------------------- evaluation passes


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
        street = net.pose_street(images)
        return street.street, street.columns

    street, columns = _stream(model, panoramas, "street", env, batch_size, workers, compute, "pose panoramas")
    return PoseEmbedding(street=street, columns=columns)


def pose_of_pairs(model, street: PoseEmbedding, satellites: Dataset, tiles: torch.Tensor, env, batch_size: int,
                  workers: int):
    """``(delta N x K x 2 normalised, heading N x K degrees, score N x K)`` of every query i with each
    of its tiles ``tiles[i]`` (``N x K`` indices into ``satellites``, or ``N``: one tile each, then
    the results are ``N x 2`` / ``N``), on ``env.device``."""
    n = tiles.shape[0]
    k = tiles.numel() // max(n, 1)

    def compute(net, images, index):
        query = index // k
        mine = PoseEmbedding(street=street.street[query], columns=street.columns[query])
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


def pose_line(block: dict) -> str:
    """The ``pose`` block as one line of the printed table."""
    unit = "m" if "median_m" in block else "px"
    within = ", ".join(f"<{k} {unit} {v:.1f}%" for k, v in block[f"within_{unit}"].items())
    line = (f"pose, positives known ({block['queries']} queries): median {block[f'median_{unit}']:.2f} {unit} "
            f"(tile centre {block[f'centre_median_{unit}']:.2f}), mean {block[f'mean_{unit}']:.2f}; {within}")
    if "heading_median_deg" in block:
        line += (f"; heading median {block['heading_median_deg']:.1f} deg, <=10 deg "
                 f"{block['heading_within_deg']['10']:.1f}%")
    return line
