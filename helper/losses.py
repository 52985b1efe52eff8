"""Training losses: SAFA's soft-margin weighted triplet loss (with in-batch hard-negative mining),
its hard-ratio schedule, symmetric InfoNCE (Sample4Geo) with a learnable logit scale, the
L1 guidance of an STN output towards the polar image, and VIGOR's semi-positive IOU loss and
in-tile offset regression.

All losses are pure functions of the tensors they get (no state, no process-group calls): under
DDP the engine all-gathers the descriptors (with gradients) and calls the same function on the
global batch. They compute in float32 with autocast disabled (float64 inputs stay float64).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from common.errors import UserError

__all__ = ["LogitScale", "hard_ratio_schedule", "infonce_loss", "infonce_loss_of_similarity", "iou_score",
           "l1_guidance_loss", "num_hard_triplets", "offset_regression_loss", "semi_positive_iou_loss",
           "soft_margin_triplet_loss", "triplet_loss_of_similarity"]

#: SAFA's soft-margin scale of the triplet loss.
LAMBDA_SM = 10.0
#: Toker et al.'s hard-negative ratio schedule (the default for ImageNet-pretrained runs).
DEFAULT_HARD_RATIOS = (1.0, 0.1, 0.05, 0.01)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def num_hard_triplets(batch_size: int, hard_ratio: float) -> int:
    """Triplets kept per direction: ``max(1, floor(hard_ratio * B * (B - 1)))``.

    The floor is the rule of Toker et al.'s code (``int(ratio * N * (N - 1))``); a 1e-9 guard
    keeps float round-off (e.g. 0.29 * 100 = 28.999...) from dropping a triplet, and at least
    one triplet is always kept.
    """
    total = batch_size * (batch_size - 1)
    return max(1, min(total, int(math.floor(hard_ratio * total + 1e-9))))


def _mined_mean(losses: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` largest entries of the off-diagonal of a B x B matrix."""
    b = losses.shape[0]
    # off-diagonal entries without a mask: drop the first element, the diagonal then sits at
    # the start of every (B + 1)-long row of the remaining B*B - 1 elements.
    off = losses.flatten()[1:].view(b - 1, b + 1)[:, :-1].reshape(-1)
    if k < off.numel():
        off = torch.topk(off, k, sorted=False).values
    return off.mean()


def soft_margin_triplet_loss(
    street: torch.Tensor,
    satellite: torch.Tensor,
    lambda_sm: float = LAMBDA_SM,
    hard_ratio: float = 1.0,
) -> torch.Tensor:
    """SAFA's soft-margin weighted triplet loss over all in-batch negatives, both directions.

    ``street`` and ``satellite`` are B x D L2-normalised descriptors; pair i is
    (street[i], satellite[i]). With distances ``d = 2 - 2 * street @ satellite^T`` (B x B, fp32):

    - street -> satellite, anchor street i: triplets ``t_ij = d_ii - d_ij`` for j != i;
    - satellite -> street, anchor satellite j: triplets ``t_ij = d_jj - d_ij`` for i != j;
    - per triplet ``log(1 + exp(lambda_sm * t))`` (computed as softplus, stable for any lambda);
    - each direction is averaged over its kept triplets; the loss is the mean of the two.

    This is ``compute_loss`` of SAFA / CVM-Net (``loss_weight = 10``, sum / (B*(B-1)),
    ``(loss_g2s + loss_s2g) / 2``) except that the B diagonal terms, which there add the
    gradient-free constant log(2) / (B - 1), are left out, as in Toker et al.'s PyTorch port.

    Hard-negative mining (Toker et al.): with ``hard_ratio < 1`` only the
    :func:`num_hard_triplets` largest triplet losses of each direction (over the whole batch,
    not per anchor) are kept and averaged. ``hard_ratio = 1`` keeps all B*(B-1).

    Returns a 0-dim float32 tensor (float64 for float64 inputs).
    """
    if street.dim() != 2 or satellite.shape != street.shape:
        raise ValueError(f"street and satellite must both be B x D, got {tuple(street.shape)} and {tuple(satellite.shape)}")
    dtype = _compute_dtype(street, satellite)
    with torch.autocast(device_type=street.device.type, enabled=False):
        return triplet_loss_of_similarity(street.to(dtype) @ satellite.to(dtype).t(), lambda_sm, hard_ratio)


def triplet_loss_of_similarity(similarity: torch.Tensor, lambda_sm: float = LAMBDA_SM,
                               hard_ratio: float = 1.0) -> torch.Tensor:
    """:func:`soft_margin_triplet_loss` of a B x B similarity matrix (row i: street i, column j:
    satellite j; pair i on the diagonal), e.g. the DSM head's max over circular shifts."""
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"the similarity matrix must be B x B, got {tuple(similarity.shape)}")
    b = similarity.shape[0]
    if b < 2:
        raise UserError(
            f"the triplet loss needs at least 2 pairs per (global) batch to have negatives, got {b}; "
            "use --batch_size >= 2 (the training loader should drop a last batch of 1)"
        )
    if not 0.0 < float(hard_ratio) <= 1.0:
        raise UserError(f"hard_ratio must be in (0, 1], got {hard_ratio}")
    with torch.autocast(device_type=similarity.device.type, enabled=False):
        dist = 2.0 - 2.0 * similarity.to(_compute_dtype(similarity))
        pos = dist.diagonal()
        street_to_sat = F.softplus(lambda_sm * (pos.unsqueeze(1) - dist))  # row i: anchor street i
        sat_to_street = F.softplus(lambda_sm * (pos.unsqueeze(0) - dist))  # column j: anchor satellite j
        k = num_hard_triplets(b, float(hard_ratio))
        return 0.5 * (_mined_mean(street_to_sat, k) + _mined_mean(sat_to_street, k))


def hard_ratio_schedule(epoch: int, n_epochs: int, ratios: Sequence[float] = DEFAULT_HARD_RATIOS) -> float:
    """Hard-mining ratio of 0-based ``epoch``: the ratios split the run into equal fractions.

    ``ratios[floor(epoch * len(ratios) / n_epochs)]``: with the default 4 ratios,
    [0, n/4) -> 1.0, [n/4, n/2) -> 0.1, [n/2, 3n/4) -> 0.05, [3n/4, n) -> 0.01 (Toker et al.
    switch at epochs 20/40/60 by hand; here the milestones scale with ``n_epochs``). It always
    starts at ``ratios[0]`` and its last epoch is in the last fraction; with fewer epochs than
    ratios some ratios are skipped (n=2: 1.0, 0.05; n=1: 1.0). Epochs past the end (an
    extended resume) keep the last ratio.
    """
    if not ratios:
        raise UserError("the hard-ratio schedule needs at least one ratio")
    for r in ratios:
        if not 0.0 < float(r) <= 1.0:
            raise UserError(f"hard-mining ratios must be in (0, 1], got {r}")
    if not isinstance(n_epochs, int) or n_epochs < 1:
        raise UserError(f"n_epochs must be a positive integer, got {n_epochs!r}")
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer (0-based), got {epoch!r}")
    index = min(epoch * len(ratios) // n_epochs, len(ratios) - 1)
    return float(ratios[index])


def l1_guidance_loss(transformed: torch.Tensor, polar_target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between the STN output and the polar image of the same satellite.

    Both B x C x H x W (same shape); the target is detached (it guides, it does not learn).
    Computed in float32 with autocast disabled (float64 stays float64); returns a 0-dim tensor.
    """
    if transformed.shape != polar_target.shape:
        raise ValueError(
            f"L1 guidance needs equal shapes, got {tuple(transformed.shape)} and {tuple(polar_target.shape)}"
        )
    dtype = _compute_dtype(transformed, polar_target)
    with torch.autocast(device_type=transformed.device.type, enabled=False):
        return F.l1_loss(transformed.to(dtype), polar_target.detach().to(dtype))


#: InfoNCE temperature at initialisation (Sample4Geo, CLIP: 0.07) and the cap of the learned
#: logit scale (CLIP's 100, i.e. a temperature of at least 0.01).
INFONCE_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


class LogitScale(torch.nn.Module):
    """The learnable InfoNCE logit scale ``exp(log_scale)``, started at ``1 / 0.07``, capped at 100.

    Kept outside the model (its state goes into the checkpoint's ``objective``): the model's
    weights and state_dict are the same whatever the loss.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / INFONCE_TEMPERATURE)))

    def forward(self) -> torch.Tensor:
        return self.log_scale.float().clamp(max=math.log(MAX_LOGIT_SCALE)).exp()


def infonce_loss(street: torch.Tensor, satellite: torch.Tensor, logit_scale: torch.Tensor,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE over the batch (Sample4Geo's loss), both directions averaged.

    ``street`` / ``satellite``: B x D L2-normalised descriptors, pair i = (street[i],
    satellite[i]); logits ``= logit_scale * street @ satellite^T`` (float32, autocast off);
    the loss is ``(CE(logits, i) + CE(logits^T, i)) / 2`` with cross-entropy label smoothing
    ``label_smoothing`` (the true class gets ``1 - s + s / B``, every other ``s / B``).
    Returns a 0-dim float32 tensor (float64 for float64 inputs).
    """
    if street.dim() != 2 or satellite.shape != street.shape:
        raise ValueError(f"street and satellite must both be B x D, got {tuple(street.shape)} and {tuple(satellite.shape)}")
    dtype = _compute_dtype(street, satellite)
    with torch.autocast(device_type=street.device.type, enabled=False):
        return infonce_loss_of_similarity(street.to(dtype) @ satellite.to(dtype).t(), logit_scale, label_smoothing)


def infonce_loss_of_similarity(similarity: torch.Tensor, logit_scale: torch.Tensor,
                               label_smoothing: float = 0.0) -> torch.Tensor:
    """:func:`infonce_loss` of a B x B similarity matrix (pair i on the diagonal)."""
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"the similarity matrix must be B x B, got {tuple(similarity.shape)}")
    if similarity.shape[0] < 2:
        raise UserError(f"InfoNCE needs at least 2 pairs per (global) batch to have negatives, "
                        f"got {similarity.shape[0]}")
    dtype = _compute_dtype(similarity)
    with torch.autocast(device_type=similarity.device.type, enabled=False):
        logits = logit_scale.to(dtype) * similarity.to(dtype)
        target = torch.arange(similarity.shape[0], device=similarity.device)
        return 0.5 * (F.cross_entropy(logits, target, label_smoothing=label_smoothing)
                      + F.cross_entropy(logits.t(), target, label_smoothing=label_smoothing))


def iou_score(delta: torch.Tensor, tile_side: float) -> torch.Tensor:
    """VIGOR's IOU score of a tile for a panorama (``distance_score(mode='IOU')`` of the official code).

    ``delta`` ``... x 2`` label deltas ``(d0, d1)`` in pixels of a tile of side ``tile_side``
    (VIGOR: 640); ``IOU(d) = 1 / (1 - (1 - |d0|/L) (1 - |d1|/L) / 2) - 1``: the overlap of the
    tile with the tile centred on the panorama over their union (1 at the centre). It depends on
    ``|d|`` only, so flips and quarter turns leave it unchanged.
    """
    overlap = (1.0 - delta[..., 0].abs() / tile_side) * (1.0 - delta[..., 1].abs() / tile_side)
    return 1.0 / (1.0 - overlap / 2.0) - 1.0


#: VIGOR's scale of the semi-positive loss (``mean(error ** 2) / 10``).
SEMI_POSITIVE_SCALE = 0.1


def semi_positive_iou_loss(street: torch.Tensor, positive: torch.Tensor, semi: torch.Tensor,
                           positive_delta: torch.Tensor, semi_delta: torch.Tensor,
                           tile_side: float) -> torch.Tensor:
    """VIGOR's semi-positive loss: ``mean((sim_semi / sim_pos - r) ** 2) / 10``.

    ``street``, ``positive``, ``semi``: B x D L2-normalised descriptors of each panorama, its
    positive and one of its semi-positive satellites; ``sim`` is the dot product of a row pair;
    ``r = IOU(semi_delta) / IOU(positive_delta)`` (:func:`iou_score`, deltas B x 2 in pixels of
    a tile of side ``tile_side``), a constant target. Float32 (float64 stays float64), autocast off.
    """
    dtype = _compute_dtype(street, positive, semi)
    with torch.autocast(device_type=street.device.type, enabled=False):
        s = street.to(dtype)
        ratio = (iou_score(semi_delta.to(dtype), tile_side) / iou_score(positive_delta.to(dtype), tile_side)).detach()
        error = (s * semi.to(dtype)).sum(1) / (s * positive.to(dtype)).sum(1) - ratio
        return SEMI_POSITIVE_SCALE * (error * error).mean()


def offset_regression_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the squared error summed over both axes (B x 2 inputs; VIGOR's
    delta loss before its 1/100 weight). Float32 (float64 stays float64), autocast off."""
    dtype = _compute_dtype(predicted, target)
    with torch.autocast(device_type=predicted.device.type, enabled=False):
        error = predicted.to(dtype) - target.to(dtype)
        return (error * error).sum(1).mean()
