"""Training and evaluation loops, shared by CVUSA and VIGOR.

The dataset-specific parts (datasets, samplers, the evaluation protocol, the metrics row)
live in a :class:`helper.tasks.Task`; everything else exists once here: the training step
(:func:`train_step`), descriptor extraction, periodic evaluation, checkpoints, logs and
interruption. :func:`fit` only wires them: restore, then per epoch train
(:func:`train_one_epoch`), evaluate and record (:func:`evaluate_and_record`), save
(:meth:`Training.save`).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Dict, NamedTuple, Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.errors import UserError
from common.fileio import lock_folder, read_jsonl, unlock, write_json_atomic, write_jsonl_atomic
from data.tensors import normalise
from geometry.affine import recentre
from helper import distributed
from helper.checkpoint import (CHECKPOINT_VERSION, git_commit, load_model_state, rng_state, save_checkpoint,
                               set_rng_state)
from helper.config import RunConfig
from helper.log import get_logger, setup_logging
from helper.losses import (LogitScale, hard_ratio_schedule, infonce_loss, infonce_loss_of_similarity,
                           l1_guidance_loss, offset_regression_loss, semi_positive_iou_loss, soft_margin_triplet_loss,
                           triplet_loss_of_similarity)
from helper.metrics import format_recalls
from models.offset import normalise_delta


class NonFiniteLoss(RuntimeError):
    """Training produced a non-finite loss more often than ``--max_nonfinite`` allows."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; ``last.pth`` was saved at a step boundary."""

    def __init__(self, signum: int, checkpoint: str) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum
        self.checkpoint = checkpoint


class ResumableBatchSampler:
    """Wraps a batch sampler (with ``set_epoch``): skips the first ``start_step`` batches and
    yields ``(epoch, index)`` keys, so persistent DataLoader workers see the current epoch."""

    def __init__(self, batch_sampler) -> None:
        self.batch_sampler = batch_sampler
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.batch_sampler.set_epoch(epoch)
        self.epoch = epoch
        self.start_step = start_step

    def __iter__(self):
        for step, batch in enumerate(self.batch_sampler):
            if step >= self.start_step:
                yield [(self.epoch, index) for index in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler) - self.start_step


class EpochKeyed(torch.utils.data.Dataset):
    """Dataset view indexed by ``(epoch, index)``: sets the epoch (augmentation seed) first."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


@dataclass
class EpochProgress:
    """Running sums of the epoch in progress (saved in checkpoints for exact mid-epoch resume)."""

    step: int = 0
    loss_sum: float = 0.0
    l1_sum: float = 0.0
    nonfinite: int = 0

    def as_dict(self) -> Dict[str, float]:
        return {"step": self.step, "loss_sum": self.loss_sum, "l1_sum": self.l1_sum, "nonfinite": self.nonfinite}


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked at step boundaries (all ranks agree)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "StopFlag":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def should_stop(self, device: torch.device) -> bool:
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([self.signum or 0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if int(flag.item()):
                self.signum = self.signum or int(flag.item())
        return self.signum is not None


def move_images(batch: dict, key: str, device: torch.device) -> Optional[torch.Tensor]:
    """``batch[key]`` on ``device``, normalised there when it arrived as uint8, channels_last on CUDA."""
    tensor = batch.get(key)
    if tensor is None:
        return None
    tensor = tensor.to(device, non_blocking=True)
    if tensor.dtype == torch.uint8:
        tensor = normalise(tensor)
    return tensor.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else tensor


@dataclass
class Objective:
    """What the loss of one batch depends on besides the batch (see :mod:`helper.losses`).

    ``logit_scale``: InfoNCE's learned temperature (a :class:`helper.losses.LogitScale`,
    optimised with the model and saved as the checkpoint's ``objective``); None for triplets.
    ``semi_positive``: add VIGOR's semi-positive IOU loss (the batch carries ``semi_satellite``
    images and ``delta`` / ``semi_delta`` labels); ``lambda_offset``: weight of the offset
    regression of a model with an offset head (0 = none); ``lambda_recentre``: weight of the
    retrieval loss of the positives re-centred on their labelled camera point (0 = none);
    ``tile_side``: the side L of the tiles the deltas are measured in (the training dataset's
    ``tile_side``; needed by every offset term); the offset head learns delta / (L/2), the
    normalised delta :func:`geometry.affine.recentre` takes.
    """

    lambda_sm: float
    lambda_l1: float
    amp: str
    loss: str = "triplet"
    label_smoothing: float = 0.0
    logit_scale: Optional[LogitScale] = None
    semi_positive: bool = False
    lambda_offset: float = 0.0
    lambda_recentre: float = 0.0
    tile_side: Optional[float] = None

    def __post_init__(self) -> None:
        if (self.semi_positive or self.lambda_offset or self.lambda_recentre) and not self.tile_side:
            raise ValueError("the offset terms need the tile side the label deltas are measured in (tile_side)")

    @classmethod
    def of(cls, run: RunConfig, tile_side: Optional[float]) -> "Objective":
        infonce = run.train.loss == "infonce"
        lambda_offset = run.data.lambda_offset if run.model.regress_offset else 0.0
        return cls(run.train.lambda_sm, run.model.lambda_l1, run.train.amp, run.train.loss,
                   run.train.label_smoothing or 0.0, LogitScale() if infonce else None, run.semi_positive,
                   lambda_offset, run.train.lambda_recentre, tile_side)

    def normalised_delta(self, batch: dict, device: torch.device) -> torch.Tensor:
        """The batch's label deltas over half the tile side (``B x 2`` float32): the offset head's
        target and the point :func:`geometry.affine.recentre` brings to the centre."""
        return normalise_delta(batch["delta"].to(device, torch.float32), self.tile_side)

    def parameters(self) -> list:
        return [] if self.logit_scale is None else list(self.logit_scale.parameters())


def retrieval_loss(objective: Objective, street: torch.Tensor, satellite: torch.Tensor,
                   hard_ratio: Optional[float], similarity=None) -> torch.Tensor:
    """The retrieval loss of (global) batch descriptors: InfoNCE or SAFA's triplet loss, on the dot
    products, or on the B x B matrix of the model's pairwise ``similarity`` (the ``dsm`` head's)."""
    if similarity is not None:
        matrix = similarity(street, satellite)[0]
        if objective.logit_scale is not None:
            return infonce_loss_of_similarity(matrix, objective.logit_scale(), objective.label_smoothing)
        return triplet_loss_of_similarity(matrix, lambda_sm=objective.lambda_sm, hard_ratio=hard_ratio)
    if objective.logit_scale is not None:
        return infonce_loss(street, satellite, objective.logit_scale(), objective.label_smoothing)
    return soft_margin_triplet_loss(street, satellite, lambda_sm=objective.lambda_sm, hard_ratio=hard_ratio)


def _l1(objective: Objective, aux: dict) -> Optional[torch.Tensor]:
    """The L1 guidance of the STN output towards the polar image (None without it)."""
    if aux.get("polar_target") is None or objective.lambda_l1 <= 0:
        return None
    return l1_guidance_loss(aux["transformed"].float(), aux["polar_target"].float())


def compute_loss(objective: Objective, model: torch.nn.Module, batch: dict, env: distributed.DistEnv,
                 hard_ratio: Optional[float]):
    """The training objective of one batch: (total, retrieval loss, l1 or None) on the global batch."""
    street = move_images(batch, "street", env.device)
    satellite = move_images(batch, "satellite", env.device)
    b = street.shape[0]
    inputs = [satellite]  # one forward pass: the positives, [the semi-positives], [the re-centred positives]
    if objective.semi_positive:
        inputs.append(move_images(batch, "semi_satellite", env.device))
    if objective.lambda_recentre:
        inputs.append(recentre(satellite, objective.normalised_delta(batch, env.device)))
    with distributed.autocast(env.device, objective.amp):
        street_desc, sat_desc, aux = model(street, torch.cat(inputs) if len(inputs) > 1 else satellite,
                                           return_aux=True)
    similarity = getattr(distributed.unwrap(model), "similarity", None)
    street_all = distributed.gather_with_grad(street_desc.float())
    retrieval = retrieval_loss(objective, street_all, distributed.gather_with_grad(sat_desc[:b].float()), hard_ratio,
                               similarity)
    total = retrieval
    if objective.lambda_recentre:
        recentred = distributed.gather_with_grad(sat_desc[-b:].float())
        total = total + objective.lambda_recentre * retrieval_loss(objective, street_all, recentred, hard_ratio,
                                                                   similarity)
    if objective.semi_positive or objective.lambda_offset:
        semi = sat_desc[b:2 * b] if objective.semi_positive else None
        total = total + _offset_terms(objective, street_desc, sat_desc[:b], semi, aux, batch)
    l1 = _l1(objective, aux)
    if l1 is not None:
        return total + objective.lambda_l1 * l1, retrieval, l1
    return total, retrieval, l1


def _offset_terms(objective: Objective, street_desc, positive_desc, semi_desc, aux: dict,
                  batch: dict) -> torch.Tensor:
    """VIGOR's semi-positive IOU loss (``semi_desc``: the semi-positives' descriptors) and the weighted
    offset regression of this process's pairs (per-pair means: DDP's gradient averaging makes them
    the global batch's means)."""
    device = street_desc.device
    delta = batch["delta"].to(device, torch.float32)
    total = street_desc.new_zeros((), dtype=torch.float32)
    if objective.semi_positive:
        total = total + semi_positive_iou_loss(street_desc.float(), positive_desc.float(), semi_desc.float(),
                                               delta, batch["semi_delta"].to(device, torch.float32), objective.tile_side)
    if objective.lambda_offset:
        target = objective.normalised_delta(batch, device)
        total = total + objective.lambda_offset * offset_regression_loss(aux["offset"].float(), target)
    return total


def backward_in_chunks(objective: Objective, model, batch: dict, env, hard_ratio: Optional[float], chunk: int,
                       scale=lambda loss: loss):
    """Gradient caching (Gao et al. 2021): the gradients of :func:`compute_loss` on the whole batch
    with only ``chunk`` samples' activations in memory at once, in one process or under DDP.

    Pass 1 embeds the batch in chunks without gradients; the loss of the whole (global) batch
    gives the gradient of every descriptor; pass 2 re-embeds each chunk with gradients and
    back-propagates those descriptor gradients (plus the chunk's share of the L1 guidance).
    Under DDP the descriptors are gathered as in :func:`compute_loss` and the gradients are
    averaged once, with the last chunk's backward (the others run under ``no_sync``). Equal
    to the unchunked gradients for models without batch statistics (resnet34's BatchNorm sees
    chunks).
    ``scale`` is the AMP loss scaler's ``scale``. Returns ``(total, retrieval, l1, finite)``;
    when not ``finite`` the accumulated gradients must be discarded.
    """
    street = move_images(batch, "street", env.device)
    satellite = move_images(batch, "satellite", env.device)
    starts = range(0, street.shape[0], chunk)
    with torch.no_grad(), distributed.autocast(env.device, objective.amp):
        parts = [model(street[i:i + chunk], satellite[i:i + chunk]) for i in starts]
    street_local = torch.cat([p[0] for p in parts]).float().requires_grad_()
    sat_local = torch.cat([p[1] for p in parts]).float().requires_grad_()
    retrieval = retrieval_loss(objective, distributed.gather_with_grad(street_local),
                               distributed.gather_with_grad(sat_local), hard_ratio,
                               getattr(distributed.unwrap(model), "similarity", None))
    if not all_finite(retrieval.detach()):
        return retrieval.detach(), retrieval.detach(), None, False
    scale(retrieval).backward()
    l1_total = None
    for i in starts:
        last = i == starts[-1]
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with distributed.autocast(env.device, objective.amp):
                street_desc, sat_desc, aux = model(street[i:i + chunk], satellite[i:i + chunk], return_aux=True)
            surrogate = ((street_desc.float() * street_local.grad[i:i + chunk]).sum()
                         + (sat_desc.float() * sat_local.grad[i:i + chunk]).sum())
            l1 = _l1(objective, aux)
            if l1 is not None:
                share = l1 * (street_desc.shape[0] / street.shape[0])
                if not all_finite(share.detach()):
                    return retrieval.detach() + share.detach(), retrieval.detach(), share.detach(), False
                surrogate = surrogate + scale(objective.lambda_l1 * share)
                l1_total = share.detach() if l1_total is None else l1_total + share.detach()
            surrogate.backward()
    total = retrieval.detach() if l1_total is None else retrieval.detach() + objective.lambda_l1 * l1_total
    return total, retrieval.detach(), l1_total, True


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (all ranks must skip a step together)."""
    bad = (~torch.isfinite(loss)).float().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad.item())


class StepResult(NamedTuple):
    loss: torch.Tensor
    retrieval: torch.Tensor
    l1: Optional[torch.Tensor]
    finite: bool  # False: the step was skipped (no update)


def train_step(objective: Objective, model, batch: dict, optimizer, scaler, env, hard_ratio: Optional[float],
               scheduler=None, chunk_size: int = 0) -> StepResult:
    """The one training step: loss, then backward and update unless the loss is non-finite on a rank;
    the learning-rate ``scheduler`` (if any) advances every step, skipped or not. ``chunk_size``
    > 0: the same gradients by :func:`backward_in_chunks`."""
    optimizer.zero_grad(set_to_none=True)
    if chunk_size:
        loss, retrieval, l1, finite = backward_in_chunks(objective, model, batch, env, hard_ratio, chunk_size,
                                                         scaler.scale)
    else:
        loss, retrieval, l1 = compute_loss(objective, model, batch, env, hard_ratio)
        finite = all_finite(loss.detach())
        if finite:
            scaler.scale(loss).backward()
    if finite:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return StepResult(loss, retrieval, l1, finite)


def build_optimizer(run: RunConfig, parameters) -> torch.optim.Optimizer:
    """Adam or AdamW at ``--lr`` with ``--weight_decay``."""
    kind = torch.optim.AdamW if run.train.optimizer == "adamw" else torch.optim.Adam
    return kind(parameters, lr=run.train.lr, weight_decay=run.train.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: float, cosine: bool) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up from 0, then 1 or a cosine decay to 0."""
    if step < warmup_steps:
        return step / warmup_steps
    if not cosine:
        return 1.0
    done = min(1.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1.0))
    return 0.5 * (1.0 + math.cos(math.pi * done))


def build_scheduler(run: RunConfig, optimizer, steps_per_epoch: int):
    """The per-step schedule of ``--scheduler`` / ``--warmup_epochs``; None for a constant rate."""
    train = run.train
    if train.scheduler == "constant" and train.warmup_epochs == 0:
        return None
    total, warmup = train.n_epochs * steps_per_epoch, train.warmup_epochs * steps_per_epoch
    cosine = train.scheduler == "cosine"
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, cosine))


def train_one_epoch(training: "Training", loader, env, epoch: int, stop: StopFlag) -> Dict[str, float]:
    """Run the rest of ``epoch`` from ``training.progress.step``; returns the epoch's mean losses.

    A signal saves ``last.pth`` at the next step boundary and raises :class:`Interrupted`.
    """
    run, model, progress = training.run, training.model, training.progress
    model.train()
    hard_ratio = (hard_ratio_schedule(epoch, run.train.n_epochs, run.train.hard_ratios)
                  if run.train.loss == "triplet" else None)
    objective = training.objective
    total_steps = progress.step + len(loader)
    bar = tqdm(loader, total=len(loader), initial=0, disable=not env.is_main, leave=False,
               desc=f"epoch {epoch + 1}/{run.train.n_epochs}", unit="batch", dynamic_ncols=True)
    started, samples = time.perf_counter(), 0
    for batch in bar:
        result = train_step(objective, model, batch, training.optimizer, training.scaler, env, hard_ratio,
                            training.scheduler, run.train.chunk_size)
        if result.finite:
            progress.loss_sum += float(result.retrieval.detach())
            progress.l1_sum += float(result.l1.detach()) if result.l1 is not None else 0.0
        else:
            _skip_nonfinite(training, result.loss, epoch, total_steps)
        progress.step += 1
        samples += batch["street"].shape[0] * env.world_size
        if env.is_main:
            bar.set_postfix(loss=f"{progress.loss_sum / max(progress.step - progress.nonfinite, 1):.4f}",
                            img_s=f"{samples / max(time.perf_counter() - started, 1e-9):.1f}")
        if stop.should_stop(env.device) and progress.step < total_steps:
            training.epoch = epoch
            raise Interrupted(stop.signum, training.save("last.pth", env))
    bar.close()
    steps = max(progress.step - progress.nonfinite, 1)
    return {"train_loss": progress.loss_sum / steps, "train_l1": progress.l1_sum / steps,
            "hard_ratio": hard_ratio, "steps": progress.step}


def _skip_nonfinite(training: "Training", loss: torch.Tensor, epoch: int, total_steps: int) -> None:
    """Count a skipped non-finite step; raise :class:`NonFiniteLoss` past ``--max_nonfinite``."""
    progress, allowed = training.progress, training.run.train.max_nonfinite
    progress.nonfinite += 1
    message = f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {progress.step + 1} of {total_steps}"
    if progress.nonfinite > allowed:
        last = os.path.join(training.run_dir, "last.pth")
        kept = (f"{last} holds the last good checkpoint" if os.path.exists(last)
                else "no checkpoint was written yet")
        raise NonFiniteLoss(f"{message}; stopping (allowed: --max_nonfinite {allowed}). {kept}; lower --lr, "
                            f"try --amp bf16 instead of fp16, or check the inputs")
    get_logger().warning("%s; step skipped (%d of %d allowed)", message, progress.nonfinite, allowed)


@torch.no_grad()
def extract_features(model, dataset, env, keys: Sequence[str], batch_size: int, workers: int,
                     desc: str = "extract") -> Dict[str, torch.Tensor]:
    """Descriptors of every sample of ``dataset`` for each of ``keys`` ("street", "satellite"), and
    with "heading" the samples' street headings (float64 degrees).

    Each rank embeds its share; rows are gathered by sample ``index`` so the padding of the
    distributed sampler cannot corrupt them. Returns float32 CPU tensors ordered by index.
    """
    from data.samplers import DistributedShuffleSampler

    model.eval()
    sampler = DistributedShuffleSampler(len(dataset), shuffle=False, rank=env.rank, world_size=env.world_size)
    loader = make_loader(dataset, batch_size, workers, env, sampler=sampler)
    parts: Dict[str, list] = {key: [] for key in keys}
    indices = []
    for batch in tqdm(loader, disable=not env.is_main, leave=False, desc=desc, unit="batch", dynamic_ncols=True):
        street = move_images(batch, "street", env.device) if "street" in keys else None
        satellite = move_images(batch, "satellite", env.device) if "satellite" in keys else None
        with distributed.autocast(env.device, "none"):
            street_desc, sat_desc = model(street, satellite)
        if "street" in keys:
            parts["street"].append(street_desc.float())
        if "satellite" in keys:
            parts["satellite"].append(sat_desc.float())
        if "heading" in keys:
            parts["heading"].append(batch["heading"].to(env.device, torch.float64))
        indices.append(batch["index"].to(env.device))
    index = torch.cat(indices)
    return {key: distributed.gather_by_index(torch.cat(parts[key]), index, len(dataset)).cpu() for key in keys}


def make_loader(dataset, batch_size: int, workers: int, env, sampler=None, batch_sampler=None) -> DataLoader:
    """A DataLoader with worker processes and pinned memory on CUDA; the training loader
    (``batch_sampler`` given) keeps its workers alive across epochs."""
    kwargs = dict(num_workers=workers, pin_memory=env.device.type == "cuda",
                  persistent_workers=workers > 0 and batch_sampler is not None)
    if workers > 0:
        kwargs["prefetch_factor"] = 4
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False, **kwargs)


def run_dir_of(run: RunConfig) -> str:
    return os.path.join(run.train.results_dir, run.train.name)


def evaluation_due(run: RunConfig, epoch: int) -> bool:
    return (epoch + 1) % run.train.eval_every == 0 or epoch + 1 == run.train.n_epochs


@dataclass
class Training:
    """A run in progress: what its checkpoints hold and restore, and its folder.

    ``epoch`` is the next epoch to run; ``progress`` the running sums of the epoch in
    progress (empty at an epoch boundary).
    """

    run: RunConfig
    run_dir: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batch_sampler: ResumableBatchSampler
    objective: Objective
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None
    epoch: int = 0
    progress: EpochProgress = field(default_factory=EpochProgress)
    best_metric: float = -math.inf
    lock: Optional[int] = None  # the run folder's lock (main rank)

    def state_dict(self) -> dict:
        """The checkpoint dict (see :mod:`helper.checkpoint`)."""
        state = {"version": CHECKPOINT_VERSION, "config": self.run.to_dict(),
                 "model": distributed.unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "epoch": self.epoch, "progress": self.progress.as_dict(), "best_metric": self.best_metric,
                 "rng": rng_state(), "git": git_commit()}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.objective.logit_scale is not None:
            state["objective"] = self.objective.logit_scale.state_dict()
        if hasattr(self.batch_sampler.batch_sampler, "state_dict"):
            state["sampler"] = self.batch_sampler.batch_sampler.state_dict()
        return state

    def save(self, name: str, env) -> str:
        """Write ``<run_dir>/<name>`` on the main rank (all ranks wait); returns its path."""
        path = os.path.join(self.run_dir, name)
        if env.is_main:
            try:
                save_checkpoint(path, self.state_dict())
            except UserError as exc:  # disk full, folder made read-only or removed: the old file is intact
                kept = os.path.join(self.run_dir, "last.pth")
                kept = f"continue with --resume {kept}" if os.path.exists(kept) else "no checkpoint was kept"
                raise UserError(f"{exc}; then {kept}") from None
        distributed.barrier()
        return path

    def restore(self, checkpoint: dict) -> None:
        """Continue from a checkpoint dict (before the model is wrapped for DDP)."""
        load_model_state(self.model, checkpoint["model"], os.path.join(self.run_dir, "last.pth"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if "scaler" in checkpoint and self.scaler.is_enabled():
            self.scaler.load_state_dict(checkpoint["scaler"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.objective.logit_scale is not None:
            self.objective.logit_scale.load_state_dict(checkpoint["objective"])
        if "sampler" in checkpoint:
            self.batch_sampler.batch_sampler.load_state_dict(checkpoint["sampler"])
        self.epoch, self.best_metric = checkpoint["epoch"], checkpoint["best_metric"]
        self.progress = EpochProgress(**checkpoint.get("progress", {}))
        set_rng_state(checkpoint["rng"])


def file_stamp(path: str) -> Optional[tuple]:
    """(mtime, size) of ``path``, or None when it does not exist: whether a file changed."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_mtime_ns, info.st_size


def claim_run_folder(run_dir: str, fresh: bool, last_stamp: Optional[tuple] = None) -> int:
    """Create and lock ``run_dir`` (:func:`common.fileio.lock_folder`); a ``fresh`` run refuses a
    folder that already holds one; a resumed one refuses a ``last.pth`` that changed since it was
    checked (``last_stamp``: another run wrote it meanwhile). Returns the lock to release at the end."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        lock = lock_folder(run_dir, "run folder")
    except OSError as exc:
        raise UserError(f"cannot create the run folder {run_dir}: {exc.strerror or exc}; check --results_dir") from None
    last = os.path.join(run_dir, "last.pth")
    problem = None
    if fresh and (os.path.exists(last) or os.path.exists(os.path.join(run_dir, "config.json"))):
        advice = (f"continue it with --resume {last}" if os.path.exists(last)
                  else "it wrote no checkpoint: delete the folder")
        problem = f"run folder {run_dir} already holds a run; {advice} or choose another --name"
    elif not fresh and file_stamp(last) != last_stamp:
        problem = f"{last} was rewritten by another process while this one started; resume again from it"
    if problem:
        unlock(lock)
        raise UserError(problem)
    return lock


def start_training(run: RunConfig, task, env, train_set, resume: Optional[dict], fresh: bool = True,
                   last_stamp: Optional[tuple] = None) -> Training:
    """Build the model and batches (before anything is written), claim the run folder
    (:func:`claim_run_folder`), restore ``resume``."""
    from models import build_model

    torch.manual_seed(run.train.seed)
    model = build_model(run.model)
    batch_sampler = ResumableBatchSampler(task.train_batch_sampler(run, train_set, env))
    run_dir, lock = run_dir_of(run), None
    if env.is_main:
        lock = claim_run_folder(run_dir, fresh, last_stamp)
        write_json_atomic(os.path.join(run_dir, "config.json"), {**run.to_dict(), "version": CHECKPOINT_VERSION})
    distributed.barrier()
    logger = setup_logging(run_dir, env.is_main)
    objective = Objective.of(run, train_set.tile_side)
    if objective.logit_scale is not None:
        objective.logit_scale.to(env.device)
    optimizer = build_optimizer(run, list(model.parameters()) + objective.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=run.train.amp == "fp16" and env.device.type == "cuda")
    scheduler = build_scheduler(run, optimizer, len(batch_sampler.batch_sampler))
    training = Training(run, run_dir, model, optimizer, scaler, batch_sampler, objective, scheduler, lock=lock)
    if resume is not None:
        model.to(env.device)
        training.restore(resume)
        logger.info("resuming %s at epoch %d, step %d", run_dir, training.epoch + 1, training.progress.step)
        if resume["config"]["n_epochs"] != run.train.n_epochs:
            logger.warning("--n_epochs changed from %d to %d: the hard-negative ratio schedule is stretched "
                           "to the new length", resume["config"]["n_epochs"], run.train.n_epochs)
    training.model = distributed.wrap_model(model, env)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return training


def evaluate_and_record(training: Training, task, env, epoch: int, row: dict, log: "MetricsLog") -> bool:
    """Evaluate, add the task's metrics to ``row``, log and picture them; whether R@1 improved."""
    from helper.visualize import save_transform_grid

    results = task.evaluate(training.run, training.model, env)
    row.update(task.metrics_row(results))
    r1 = results["street_to_satellite"]["R@1"]
    improved = r1 > training.best_metric
    training.best_metric = max(training.best_metric, r1)
    get_logger().info("epoch %d: %s", epoch + 1, format_recalls(results))
    if env.is_main:
        path = os.path.join(training.run_dir, f"transform_epoch{epoch + 1:03d}.png")
        log.add_image(save_transform_grid(distributed.unwrap(training.model), task.visual_batch(training.run), path),
                      epoch + 1)
    return improved


def write_scalars(writer, row: dict, step: int, prefix: str = "") -> None:
    """Every number of a metrics row (nested dicts flattened as ``a/b``) as a TensorBoard scalar."""
    for key, value in row.items():
        if isinstance(value, dict):
            write_scalars(writer, value, step, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
            writer.add_scalar(f"{prefix}{key}", value, step)


def run_epoch(training: Training, task, loader, env, epoch: int, stop: StopFlag, log: "MetricsLog") -> dict:
    """Train one epoch, evaluate when due, record, save ``last.pth`` (and ``best.pth``); the row."""
    run = training.run
    training.batch_sampler.set_epoch(epoch, training.progress.step)
    started = time.perf_counter()
    stats = train_one_epoch(training, loader, env, epoch, stop)
    row = {"epoch": epoch + 1, **stats, "lr": training.optimizer.param_groups[0]["lr"]}
    extra = (f", l1 {stats['train_l1']:.4f}" if run.model.lambda_l1 > 0 else "") + (
        f", hard ratio {stats['hard_ratio']:g}" if stats["hard_ratio"] is not None else "")
    get_logger().info("epoch %d/%d: loss %.4f%s, %.0f s", epoch + 1, run.train.n_epochs, stats["train_loss"], extra,
                      time.perf_counter() - started)
    improved = evaluation_due(run, epoch) and evaluate_and_record(training, task, env, epoch, row, log)
    log.record(row, evaluated=evaluation_due(run, epoch))
    training.epoch, training.progress = epoch + 1, EpochProgress()
    task.after_epoch(run, training.model, env, training.batch_sampler.batch_sampler)
    training.save("last.pth", env)
    if improved:
        training.save("best.pth", env)
    elif env.is_main and math.isfinite(training.best_metric) and not os.path.exists(
            os.path.join(training.run_dir, "best.pth")):
        get_logger().warning("best.pth was deleted from %s: the best weights (R@1 %.2f) are lost; it is written "
                             "again at the next improvement", training.run_dir, training.best_metric)
    if stop.should_stop(env.device) and epoch + 1 < run.train.n_epochs:
        raise Interrupted(stop.signum, os.path.join(training.run_dir, "last.pth"))
    return row


class MetricsLog:
    """``metrics.jsonl`` (one row per evaluation) and the TensorBoard events of the main rank."""

    def __init__(self, run_dir: str, start_epoch: int, env) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.is_main = env.is_main
        self.rows = [row for row in read_jsonl(self.path) if row["epoch"] <= start_epoch] if env.is_main else []
        self.writer = SummaryWriter(run_dir) if env.is_main else None

    def record(self, row: dict, evaluated: bool) -> None:
        if not self.is_main:
            return
        if evaluated:
            self.rows.append(row)
            write_jsonl_atomic(self.path, self.rows)
        write_scalars(self.writer, {"train": {k: row[k] for k in ("train_loss", "train_l1", "hard_ratio", "lr")},
                                    **{k: v for k, v in row.items() if isinstance(v, dict)}}, row["epoch"])
        self.writer.flush()

    def add_image(self, image: torch.Tensor, epoch: int) -> None:
        self.writer.add_image("transform", image, epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def fit(run: RunConfig, task, env: distributed.DistEnv, resume: Optional[dict] = None,
        fresh: Optional[bool] = None, last_stamp: Optional[tuple] = None) -> dict:
    """Train ``task`` with ``run``; continue from the checkpoint dict ``resume`` if given.
    ``fresh`` (default: no ``resume``): the run folder must not hold a run yet; otherwise its
    ``last.pth`` must still have :func:`file_stamp` ``last_stamp``.

    Every split the run reads and its batch plan are checked before anything is written. Per epoch: train,
    evaluate every ``eval_every`` epochs (and at the end), append a ``metrics.jsonl`` row,
    write ``last.pth`` (and ``best.pth`` on a new best R@1). Returns the last metrics row.
    """
    train_set = task.train_dataset(run)
    task.check_evaluation(run)
    fresh = resume is None if fresh is None else fresh
    training = start_training(run, task, env, train_set, resume, fresh, last_stamp)
    log, row = None, {}
    try:
        loader = make_loader(EpochKeyed(train_set), run.train.batch_size, run.train.workers, env,
                             batch_sampler=training.batch_sampler)
        log = MetricsLog(training.run_dir, training.epoch, env)
        with StopFlag() as stop:
            get_logger().info("run folder %s: %d training samples, %d steps per epoch, %d process(es) on %s",
                              training.run_dir, len(train_set), len(training.batch_sampler.batch_sampler),
                              env.world_size, env.device)
            for epoch in range(training.epoch, run.train.n_epochs):
                row = run_epoch(training, task, loader, env, epoch, stop, log)
    finally:
        if log is not None:
            log.close()
        unlock(training.lock)
    return row
