"""Training and evaluation loops, shared by CVUSA and VIGOR.

The dataset-specific parts (datasets, samplers, the evaluation protocol, the metrics row)
live in a :class:`helper.tasks.Task`; everything else exists once here: the training step
(:func:`train_step`), descriptor extraction, periodic evaluation, checkpoints, logs and
interruption. :func:`fit` only wires them: restore, then per epoch train
(:func:`train_one_epoch`), evaluate and record (:func:`evaluate_and_record`), save
(:meth:`Training.save`).
"""
from __future__ import annotations

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
from helper import distributed
from helper.checkpoint import (CHECKPOINT_VERSION, git_commit, load_model_state, rng_state, save_checkpoint,
                               set_rng_state)
from helper.config import RunConfig
from helper.log import get_logger, setup_logging
from helper.losses import hard_ratio_schedule
from helper.metrics import format_recalls
from helper.objective import Loss, Objective, backward_in_chunks, compute_loss


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
    """Running sums of the epoch in progress (saved in checkpoints for exact mid-epoch resume):
    ``loss_sum`` of the retrieval term, ``l1_sum`` of the ``l1`` term, ``term_sums`` of the other
    terms that are on (:mod:`helper.objective`), over the finite steps."""

    step: int = 0
    loss_sum: float = 0.0
    l1_sum: float = 0.0
    nonfinite: int = 0
    term_sums: Dict[str, float] = field(default_factory=dict)

    def add(self, terms: Dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = float(value.detach())
            if name == "retrieval":
                self.loss_sum += value
            elif name == "l1":
                self.l1_sum += value
            else:
                self.term_sums[name] = self.term_sums.get(name, 0.0) + value

    def means(self) -> Dict[str, float]:
        """The epoch's mean of each term as ``train_<term>`` (``train_loss``: the retrieval term)."""
        steps = max(self.step - self.nonfinite, 1)
        return {"train_loss": self.loss_sum / steps, "train_l1": self.l1_sum / steps,
                **{f"train_{name}": total / steps for name, total in self.term_sums.items()}}

    def as_dict(self) -> dict:
        return {"step": self.step, "loss_sum": self.loss_sum, "l1_sum": self.l1_sum, "nonfinite": self.nonfinite,
                "term_sums": dict(self.term_sums)}


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


class StepResult(NamedTuple):
    loss: Loss
    finite: bool  # False: the step was skipped (no update)


def train_step(objective: Objective, model, batch: dict, optimizer, scaler, env, hard_ratio: Optional[float],
               scheduler=None, chunk_size: int = 0) -> StepResult:
    """The one training step: loss, then backward and update unless the loss is non-finite on a rank;
    the learning-rate ``scheduler`` (if any) advances every step, skipped or not. ``chunk_size``
    > 0: the same gradients by :func:`backward_in_chunks`."""
    optimizer.zero_grad(set_to_none=True)
    if chunk_size:
        loss, finite = backward_in_chunks(objective, model, batch, env, hard_ratio, chunk_size, scaler.scale)
    else:
        loss = compute_loss(objective, model, batch, env, hard_ratio)
        finite = distributed.all_finite(loss.total.detach())
        if finite:
            scaler.scale(loss.total).backward()
    if finite:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return StepResult(loss, finite)


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
    hard_ratio = (hard_ratio_schedule(epoch, run.train.n_epochs, run.objective.hard_ratios)
                  if run.objective.triplet else None)
    objective = training.objective
    total_steps = progress.step + len(loader)
    bar = tqdm(loader, total=len(loader), initial=0, disable=not env.is_main, leave=False,
               desc=f"epoch {epoch + 1}/{run.train.n_epochs}", unit="batch", dynamic_ncols=True)
    started, samples = time.perf_counter(), 0
    for batch in bar:
        result = train_step(objective, model, batch, training.optimizer, training.scaler, env, hard_ratio,
                            training.scheduler, run.train.chunk_size)
        if result.finite:
            progress.add(result.loss.terms)
        else:
            _skip_nonfinite(training, result.loss.total, epoch, total_steps)
        progress.step += 1
        samples += batch["street"].shape[0] * env.world_size
        if env.is_main:
            bar.set_postfix(loss=f"{progress.loss_sum / max(progress.step - progress.nonfinite, 1):.4f}",
                            img_s=f"{samples / max(time.perf_counter() - started, 1e-9):.1f}")
        if stop.should_stop(env.device) and progress.step < total_steps:
            training.epoch = epoch
            raise Interrupted(stop.signum, training.save("last.pth", env))
    bar.close()
    return {**progress.means(), "hard_ratio": hard_ratio, "steps": progress.step}


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
        street = distributed.move_images(batch, "street", env.device) if "street" in keys else None
        satellite = distributed.move_images(batch, "satellite", env.device) if "satellite" in keys else None
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
    objective = Objective.of(run, train_set.tile_side).to(env.device)
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
    terms = [f", {key[len('train_'):]} {value:.4f}" for key, value in stats.items()
             if key.startswith("train_") and key != "train_loss" and (key != "train_l1" or run.objective.lambda_l1 > 0)]
    extra = "".join(terms) + (f", hard ratio {stats['hard_ratio']:g}" if stats["hard_ratio"] is not None else "")
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
        train = {k: v for k, v in row.items() if k.startswith("train_") or k in ("hard_ratio", "lr")}
        write_scalars(self.writer, {"train": train,
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
