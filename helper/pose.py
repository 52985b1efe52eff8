"""The dense pose head's training loss, its evaluation passes and the results' ``pose`` block.

Loss (:func:`pose_loss`, weighted by ``--lambda_pose``) of a batch of pairs (panorama i, its
positive tile i), the sum of:

* **pose**: the cross-entropy of each pair's joint distribution over cells and headings
  (:meth:`models.pose.PoseHead.cell_logits`) against the soft target of its labelled point and
  heading (0 for north-aligned panoramas); mean over the pairs;
* **tile**: the cross-entropy, over the tiles of the (global) batch, of the joint softmax over
  every cell of every tile at the panorama's heading (:meth:`models.pose.PoseHead.tile_logits`):
  the panorama must match its own tile better than any other tile *anywhere* (what
  ``--rerank_score pose`` ranks by);
* **heading**: the cross-entropy of the shift logits at the labelled point (where the estimate
  reads the heading) against the soft target of the heading;
* **semi-positive** (VIGOR with ``--semi_positive iou``): the pose term of the pairs (panorama i,
  its semi-positive tile i) at their labelled points; the panorama is in that tile too.

Evaluation (positives known, :mod:`helper.pose_eval`): every query's pose is estimated on its
positive tile; errors are measured against the label delta, in metres (VIGOR: label pixels times
the city's metres per pixel) or in aerial pixels (CVUSA layout, ``_px``). Thresholds: percentage
**strictly** below.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from geometry.heading import heading_error
from models.pose import PoseEmbedding, PoseHead

#: ``within_<unit>`` thresholds of the ``pose`` block (metres, or aerial pixels).
POSE_THRESHOLDS = (1, 3, 5, 10)
#: ``heading_within_deg`` thresholds (degrees, percentage at or below, as the orientation block).
HEADING_THRESHOLDS_DEG = (5, 10)


def _soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def pair_loss(head: PoseHead, street: PoseEmbedding, aerial: torch.Tensor, delta: torch.Tensor,
               shifts: torch.Tensor) -> torch.Tensor:
    """The pose term: the joint distribution of each pair (strip i, the aerial panoramas ``aerial`` i of
    its tile's cells) against its point's and heading's soft target."""
    target = head.position_target(delta)[:, :, None] * shifts[:, None, :]
    return _soft_cross_entropy(head.pair_logits(street.strip, aerial).flatten(1), target.flatten(1))


def pose_loss(head: PoseHead, street: PoseEmbedding, tiles: PoseEmbedding, delta: torch.Tensor,
              heading: Optional[torch.Tensor] = None,
              gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
              semi: Optional[Tuple[PoseEmbedding, torch.Tensor]] = None) -> torch.Tensor:
    """The pose loss (module doc) of the pairs (street i, tile i); ``delta`` ``B x 2`` normalised label
    deltas, ``heading`` ``B`` degrees (None: north-aligned, 0); ``gather`` joins every process's rows
    (with gradients) for the tile term: the north-turned strips, and each process's block of tile
    columns (per-pair terms are local means: DDP's averaging makes them global); ``semi``: the
    semi-positive tiles and their normalised deltas."""
    if heading is None:
        heading = delta.new_zeros(delta.shape[0])
    shifts = head.heading_target(heading)
    aerial = head.cell_panoramas(tiles)
    north = gather(head.rolled(street.strip, heading))
    matrix = gather(head.tile_logits(north, aerial).t()).t()  # every strip x every process's tiles
    rows = torch.arange(matrix.shape[0], device=matrix.device)
    total = (pair_loss(head, street, aerial, delta, shifts)
             + torch.nn.functional.cross_entropy(matrix, rows)
             + _soft_cross_entropy(head.point_logits(street, tiles, delta), shifts))
    if semi is not None:
        semi_tiles, semi_delta = semi
        total = total + pair_loss(head, street, head.cell_panoramas(semi_tiles), semi_delta, shifts)
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
