"""The training objective: its settings (:class:`ObjectiveConfig`), its loss terms and how they combine.

The loss of one batch (:func:`compute_loss`) is the retrieval loss of the (global) batch of pairs, plus,
each only when it is on:

==================  =========================================  ==========================================
term                weight (flag)                              on when
==================  =========================================  ==========================================
``retrieval``       1 (``--loss`` triplet: ``--lambda_sm``,    always
                    ``--hard_ratios``; infonce:
                    ``--label_smoothing``)
``l1``              ``--lambda_l1``                            > 0 (STN transforms only)
``recentre``        ``--lambda_recentre``                      > 0 (needs offset labels)
``semi_positive``   1                                          ``--semi_positive iou`` (VIGOR)
``offset``          ``--lambda_offset``                        ``--regress_offset``
``pose``            ``--lambda_pose``                          ``--pose dense`` (:mod:`helper.pose`; with
                                                               ``--train_heading random`` it also learns
                                                               the heading)
==================  =========================================  ==========================================

Each term is logged unweighted per epoch as ``train_<term>`` (``retrieval`` as ``train_loss``; ``l1``
always, 0 when off), in ``metrics.jsonl`` and TensorBoard.

Labels come from the training samples (:mod:`data.cvusa`, :mod:`data.vigor`): ``delta`` (the camera's
offset from the tile centre in the tile's label pixels, VIGOR's convention), and for the semi-positive
term ``semi_satellite`` / ``semi_delta``; the engine names none of them.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Dict, NamedTuple, Optional, Tuple

import torch

from common.errors import UserError
from common.settings import check_settings, setting
from geometry.affine import recentre
from helper import distributed
from helper.losses import (DEFAULT_HARD_RATIOS, LAMBDA_SM, LogitScale, infonce_loss, infonce_loss_of_similarity, l1_guidance_loss,
                           offset_regression_loss, semi_positive_iou_loss, soft_margin_triplet_loss,
                           triplet_loss_of_similarity)
from helper.pose import pose_loss
from models.offset import normalise_delta
from models.polar import PolarTransform
from models.pose import PoseEmbedding
from models.transforms import STN_TRANSFORMS

LOSSES = ("triplet", "infonce")
#: InfoNCE's label smoothing when none is given (Sample4Geo's).
INFONCE_LABEL_SMOOTHING = 0.1
#: ``--hard_ratios`` of the triplet loss when none are given, by ``pretrained``: Toker et al.'s for ImageNet
#: weights, and a schedule that learns from random weights (with :data:`helper.config.LEARNING_RATES`).
HARD_RATIOS = {True: DEFAULT_HARD_RATIOS, False: (1.0, 0.5)}
#: ``--lambda_offset`` when none is given, on either dataset: the official VIGOR weight (1/100).
LAMBDA_OFFSET = 0.01
#: ``--lambda_pose`` when none is given.
LAMBDA_POSE = 1.0


@dataclass(frozen=True)
class ObjectiveConfig:
    """The loss and the weights of its terms (flat in ``config.json`` under the flag names)."""

    loss: str = setting("triplet", "training loss: SAFA's soft-margin weighted triplet loss, or symmetric InfoNCE "
                                   "with a learned temperature (Sample4Geo)", choices=lambda: LOSSES)
    lambda_sm: float = setting(LAMBDA_SM, "triplet loss: soft-margin scale (SAFA's)", above=0.0)
    hard_ratios: Optional[Tuple[float, ...]] = setting(
        None, "triplet loss: hard-negative ratio schedule; changes at equal fractions of --n_epochs", above=0.0,
        maximum=1.0, default_text=f"{','.join(map(str, HARD_RATIOS[True]))} with --pretrained, "
                                 f"{','.join(map(str, HARD_RATIOS[False]))} with --no-pretrained")
    label_smoothing: Optional[float] = setting(None, "InfoNCE: label smoothing of the cross-entropy", minimum=0.0,
                                               maximum=0.99,
                                               default_text=f"{INFONCE_LABEL_SMOOTHING} with --loss infonce")
    lambda_l1: float = setting(0.0, "weight of the L1 loss pulling the STN output towards the polar image "
                                    "(STN transforms only; 0 = off)", minimum=0.0)
    lambda_offset: float = setting(LAMBDA_OFFSET, "weight of the offset regression loss of --regress_offset: mean "
                                                  "over panoramas of the squared error of delta / (L/2) summed over "
                                                  "both axes, L the aerial side in label pixels (VIGOR: 640; "
                                                  "CVUSA: the aerial file's) (official VIGOR: 1/100)", minimum=0.0)
    lambda_recentre: float = setting(0.0, "weight of the re-centred retrieval loss: each positive satellite is also "
                                          "embedded translated so its labelled camera point is at the centre (as "
                                          "--rerank re-centres a candidate), and that batch takes the retrieval loss "
                                          "too; needs offset labels (VIGOR; CVUSA: --offsets_csv) and raw satellite "
                                          "images (0 = off)", minimum=0.0)
    lambda_pose: float = setting(LAMBDA_POSE, "weight of the pose head's loss (--pose dense): the cross-entropy of "
                                              "its cell distribution against the labelled camera point, of its "
                                              "tile scores over the batch and, with --train_heading random, of "
                                              "its heading", minimum=0.0)

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def triplet(self) -> bool:
        return self.loss == "triplet"

    def resolved(self, pretrained: bool) -> "ObjectiveConfig":
        """The derived defaults filled in: the triplet loss's ``hard_ratios`` (:data:`HARD_RATIOS`), InfoNCE's
        ``label_smoothing`` (:data:`INFONCE_LABEL_SMOOTHING`)."""
        if self.triplet:
            return self if self.hard_ratios is not None else replace(self, hard_ratios=HARD_RATIOS[pretrained])
        smoothing = INFONCE_LABEL_SMOOTHING if self.label_smoothing is None else self.label_smoothing
        return replace(self, label_smoothing=smoothing)

    def check(self, model_cfg, semi_positive: bool, chunk_size: int) -> None:
        """The combination rules with the model (:class:`models.config.ModelConfig`), VIGOR's semi-positive
        term and gradient caching: a :class:`UserError` for a combination that cannot train."""
        if self.lambda_l1 > 0 and model_cfg.transform not in STN_TRANSFORMS:
            raise UserError(f"lambda_l1 > 0 (L1 guidance towards the polar image) needs an STN transform "
                            f"({', '.join(STN_TRANSFORMS)}), not {model_cfg.transform!r}; set --lambda_l1 0")
        if chunk_size and (model_cfg.regress_offset or semi_positive or self.lambda_recentre
                           or model_cfg.pose != "none"):
            raise UserError("--chunk_size (gradient caching) does not support --regress_offset, --semi_positive iou, "
                            "--lambda_recentre or --pose yet; drop --chunk_size")
        if self.lambda_recentre and model_cfg.polar_files:
            raise UserError("--lambda_recentre re-centres the raw satellite image, but --polar_files reads polar "
                            "images already centred on the tile; drop one of them")

    def inert(self, transform: str, regress_offset: bool, pose: str = "none") -> Dict[str, str]:
        """``{setting: the flag that would make it act}`` for the settings that do nothing in a run of this
        objective with this ``transform`` and offset head (see :meth:`helper.config.RunConfig.inert`)."""
        loss_flag = "--loss infonce" if self.triplet else "--loss triplet"
        rules = {"lambda_sm": not self.triplet, "hard_ratios": not self.triplet, "label_smoothing": self.triplet}
        out = {name: loss_flag for name, idle in rules.items() if idle}
        if transform not in STN_TRANSFORMS:
            out["lambda_l1"] = f"--transform {'|'.join(STN_TRANSFORMS)}"
        if not regress_offset:
            out["lambda_offset"] = "--regress_offset"
        if pose == "none":
            out["lambda_pose"] = "--pose dense"
        return out


class Loss(NamedTuple):
    """The loss of one batch: ``total`` (what is back-propagated) and each term that is on, unweighted,
    by name (``retrieval`` always); non-finite ``total`` makes every rank skip the step."""

    total: torch.Tensor
    terms: Dict[str, torch.Tensor]


@dataclass
class Objective:
    """A run's objective, ready to compute losses: its settings plus what the loss depends on besides the batch.

    ``regress_offset``: the model has an offset head (the ``offset`` term is on); ``pose``: it has a pose head
    (the ``pose`` term is on), ``heading``: the panoramas are turned to random headings (the pose term also
    learns the heading from the batch's ``heading``); ``semi_positive``: VIGOR's
    semi-positive IOU loss is on (the batch carries ``semi_satellite`` / ``semi_delta``); ``tile_side``: the
    side L of the tiles the label deltas are measured in (the training dataset's ``tile_side``; needed by every
    term that reads ``delta``), the offset head learns delta / (L/2), the normalised delta that
    :func:`geometry.affine.recentre` takes; ``polar_target``: the fixed polar transform the ``l1`` term pulls
    the STN output towards (None when the term is off); ``logit_scale``: InfoNCE's learned temperature
    (optimised with the model, saved as the checkpoint's ``objective``; None for triplets).
    """

    config: ObjectiveConfig
    amp: str = "none"
    regress_offset: bool = False
    semi_positive: bool = False
    tile_side: Optional[float] = None
    polar_target: Optional[PolarTransform] = None
    logit_scale: Optional[LogitScale] = None
    pose: bool = False
    heading: bool = False

    def __post_init__(self) -> None:
        if self.logit_scale is None and not self.config.triplet:
            self.logit_scale = LogitScale()
        if self.reads_deltas and not self.tile_side:
            raise ValueError("the offset terms need the tile side the label deltas are measured in (tile_side)")

    @classmethod
    def build(cls, config: ObjectiveConfig, model_cfg, amp: str = "none", semi_positive: bool = False,
              tile_side: Optional[float] = None, heading: bool = False) -> "Objective":
        """The objective of ``config`` for a model of :class:`models.config.ModelConfig` ``model_cfg``
        (``heading``: the training panoramas are turned to random headings)."""
        l1 = config.lambda_l1 > 0 and model_cfg.transform in STN_TRANSFORMS
        polar = PolarTransform(model_cfg.sate_size, model_cfg.pano_size, polar_files=model_cfg.polar_files)
        return cls(config, amp, model_cfg.regress_offset, semi_positive, tile_side, polar if l1 else None,
                   pose=model_cfg.pose != "none", heading=heading)

    @classmethod
    def of(cls, run, tile_side: Optional[float]) -> "Objective":
        """The objective of a :class:`helper.config.RunConfig` trained on tiles of side ``tile_side``."""
        return cls.build(run.objective, run.model, run.train.amp, run.semi_positive, tile_side,
                         run.train.train_heading == "random")

    @property
    def reads_deltas(self) -> bool:
        return self.semi_positive or self.offset_weight > 0 or self.config.lambda_recentre > 0 or self.pose_weight > 0

    @property
    def offset_weight(self) -> float:
        """The offset term's weight: ``--lambda_offset`` with an offset head, else 0."""
        return self.config.lambda_offset if self.regress_offset else 0.0

    @property
    def pose_weight(self) -> float:
        """The pose term's weight: ``--lambda_pose`` with a pose head, else 0."""
        return self.config.lambda_pose if self.pose else 0.0

    def to(self, device: torch.device) -> "Objective":
        for module in (self.polar_target, self.logit_scale):
            if module is not None:
                module.to(device)
        return self

    def parameters(self) -> list:
        return [] if self.logit_scale is None else list(self.logit_scale.parameters())

    def normalised_delta(self, batch: dict, device: torch.device, key: str = "delta") -> torch.Tensor:
        """The batch's label deltas (``key``: ``delta``, or ``semi_delta`` of the semi-positives) over half
        the tile side (``B x 2`` float32): the offset and pose heads' target and the point
        :func:`geometry.affine.recentre` brings to the centre."""
        return normalise_delta(batch[key].to(device, torch.float32), self.tile_side)

    def l1(self, satellite: torch.Tensor, aux: dict) -> Optional[torch.Tensor]:
        """The L1 guidance of the STN output (``aux["transformed"]``) towards the polar image of ``satellite``
        (None when the term is off)."""
        if self.polar_target is None:
            return None
        with torch.no_grad():
            target = self.polar_target(satellite)
        return l1_guidance_loss(aux["transformed"].float(), target.float())


def retrieval_loss(objective: Objective, street: torch.Tensor, satellite: torch.Tensor,
                   hard_ratio: Optional[float], similarity=None) -> torch.Tensor:
    """The retrieval loss of (global) batch descriptors: InfoNCE or SAFA's triplet loss, on the dot
    products, or on the B x B matrix of the model's pairwise ``similarity`` (the ``dsm`` head's)."""
    config = objective.config
    smoothing = config.label_smoothing or 0.0
    if similarity is not None:
        matrix = similarity(street, satellite)[0]
        if objective.logit_scale is not None:
            return infonce_loss_of_similarity(matrix, objective.logit_scale(), smoothing)
        return triplet_loss_of_similarity(matrix, lambda_sm=config.lambda_sm, hard_ratio=hard_ratio)
    if objective.logit_scale is not None:
        return infonce_loss(street, satellite, objective.logit_scale(), smoothing)
    return soft_margin_triplet_loss(street, satellite, lambda_sm=config.lambda_sm, hard_ratio=hard_ratio)


def _similarity(model):
    return getattr(distributed.unwrap(model), "similarity", None)


def compute_loss(objective: Objective, model: torch.nn.Module, batch: dict, env: distributed.DistEnv,
                 hard_ratio: Optional[float]) -> Loss:
    """The objective of one batch on the global batch (the table of the module doc)."""
    street = distributed.move_images(batch, "street", env.device)
    satellite = distributed.move_images(batch, "satellite", env.device)
    b = street.shape[0]
    config = objective.config
    inputs = [satellite]  # one forward pass: the positives, [the semi-positives], [the re-centred positives]
    if objective.semi_positive:
        inputs.append(distributed.move_images(batch, "semi_satellite", env.device))
    delta = objective.normalised_delta(batch, env.device) if "delta" in batch else None
    if config.lambda_recentre:
        inputs.append(recentre(satellite, delta))
    satellites = torch.cat(inputs) if len(inputs) > 1 else satellite
    with distributed.autocast(env.device, objective.amp):  # the pose head: the positives [and semi-positives]
        street_desc, sat_desc, aux = model(street, satellites, return_aux=True,
                                           pose_tiles=b * (2 if objective.semi_positive else 1))
        l1 = objective.l1(satellites, aux)  # every satellite the model saw
    similarity = _similarity(model)
    street_all = distributed.gather_with_grad(street_desc.float())
    terms = {"retrieval": retrieval_loss(objective, street_all, distributed.gather_with_grad(sat_desc[:b].float()),
                                         hard_ratio, similarity)}
    weights = {"retrieval": 1.0}
    if config.lambda_recentre:
        recentred = distributed.gather_with_grad(sat_desc[-b:].float())
        terms["recentre"] = retrieval_loss(objective, street_all, recentred, hard_ratio, similarity)
        weights["recentre"] = config.lambda_recentre
    # per-pair means of this process's pairs: DDP's gradient averaging makes them the global batch's means
    if objective.semi_positive:
        device = street_desc.device
        terms["semi_positive"] = semi_positive_iou_loss(
            street_desc.float(), sat_desc[:b].float(), sat_desc[b:2 * b].float(), batch["delta"].to(device, torch.float32),
            batch["semi_delta"].to(device, torch.float32), objective.tile_side)
        weights["semi_positive"] = 1.0
    if objective.offset_weight:
        terms["offset"] = offset_regression_loss(aux["offset"].float(), delta)
        weights["offset"] = objective.offset_weight
    if objective.pose_weight:
        heading = batch["heading"].to(env.device, torch.float32) if objective.heading else None
        street_pose, tiles_pose = aux["pose"]
        semi = None
        if objective.semi_positive:
            semi = (PoseEmbedding(tiles=tiles_pose.tiles[b:]), objective.normalised_delta(batch, env.device, "semi_delta"))
        terms["pose"] = pose_loss(distributed.unwrap(model).pose_head, street_pose,
                                  PoseEmbedding(tiles=tiles_pose.tiles[:b]), delta, heading,
                                  distributed.gather_with_grad, semi)
        weights["pose"] = objective.pose_weight
    if l1 is not None:
        terms["l1"] = l1
        weights["l1"] = config.lambda_l1
    return Loss(_weighted_sum(terms, weights), terms)


def _weighted_sum(terms: Dict[str, torch.Tensor], weights: Dict[str, float]) -> torch.Tensor:
    """``sum(weights[k] * terms[k])`` in the order of ``terms`` (a weight of 1 adds the term itself)."""
    total = None
    for name, term in terms.items():
        weighted = term if weights[name] == 1.0 else weights[name] * term
        total = weighted if total is None else total + weighted
    return total


def backward_in_chunks(objective: Objective, model, batch: dict, env, hard_ratio: Optional[float], chunk: int,
                       scale=lambda loss: loss) -> Tuple[Loss, bool]:
    """Gradient caching (Gao et al. 2021): the gradients of :func:`compute_loss` on the whole batch
    with only ``chunk`` samples' activations in memory at once, in one process or under DDP.

    Pass 1 embeds the batch in chunks without gradients; the loss of the whole (global) batch
    gives the gradient of every descriptor; pass 2 re-embeds each chunk with gradients and
    back-propagates those descriptor gradients (plus the chunk's share of the L1 guidance).
    Under DDP the descriptors are gathered as in :func:`compute_loss` and the gradients are
    averaged once, with the last chunk's backward (the others run under ``no_sync``). Equal
    to the unchunked gradients for models without batch statistics (resnet34's BatchNorm sees
    chunks). Supports the retrieval and ``l1`` terms (the others are refused with ``--chunk_size``).
    ``scale`` is the AMP loss scaler's ``scale``. Returns ``(loss, finite)``; when not ``finite`` the
    accumulated gradients must be discarded.
    """
    street = distributed.move_images(batch, "street", env.device)
    satellite = distributed.move_images(batch, "satellite", env.device)
    starts = range(0, street.shape[0], chunk)
    with torch.no_grad(), distributed.autocast(env.device, objective.amp):
        parts = [model(street[i:i + chunk], satellite[i:i + chunk]) for i in starts]
    street_local = torch.cat([p[0] for p in parts]).float().requires_grad_()
    sat_local = torch.cat([p[1] for p in parts]).float().requires_grad_()
    retrieval = retrieval_loss(objective, distributed.gather_with_grad(street_local),
                               distributed.gather_with_grad(sat_local), hard_ratio, _similarity(model))
    terms = {"retrieval": retrieval.detach()}
    if not distributed.all_finite(retrieval.detach()):
        return Loss(retrieval.detach(), terms), False
    scale(retrieval).backward()
    l1_total = None
    for i in starts:
        last = i == starts[-1]
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with distributed.autocast(env.device, objective.amp):
                street_desc, sat_desc, aux = model(street[i:i + chunk], satellite[i:i + chunk], return_aux=True)
                l1 = objective.l1(satellite[i:i + chunk], aux)
            surrogate = ((street_desc.float() * street_local.grad[i:i + chunk]).sum()
                         + (sat_desc.float() * sat_local.grad[i:i + chunk]).sum())
            if l1 is not None:
                share = l1 * (street_desc.shape[0] / street.shape[0])
                if not distributed.all_finite(share.detach()):
                    terms["l1"] = share.detach()
                    return Loss(retrieval.detach() + share.detach(), terms), False
                surrogate = surrogate + scale(objective.config.lambda_l1 * share)
                l1_total = share.detach() if l1_total is None else l1_total + share.detach()
            surrogate.backward()
    if l1_total is None:
        return Loss(retrieval.detach(), terms), True
    terms["l1"] = l1_total
    return Loss(retrieval.detach() + objective.config.lambda_l1 * l1_total, terms), True
