"""Training and evaluation loops, shared by CVUSA and VIGOR.

The dataset-specific parts (datasets, samplers, the evaluation protocol) live in a
:class:`helper.tasks.Task`; everything else exists once here: the training step body,
descriptor extraction, periodic evaluation, checkpoints, logs and interruption.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.io import normalise, write_bytes_atomic
from helper import distributed
from helper.checkpoint import (CHECKPOINT_VERSION, git_commit, load_model_state,
                               rng_state, save_checkpoint, set_rng_state)
from helper.log import get_logger, setup_logging
from helper.losses import hard_ratio_schedule, l1_guidance_loss, soft_margin_triplet_loss

STN_TRANSFORMS = ("affine", "composed_affine", "tps")


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


def compute_loss(cfg: dict, model: torch.nn.Module, batch: dict, env: distributed.DistEnv,
                 hard_ratio: float):
    """The training objective of one batch: (total, triplet, l1 or None) on the global batch."""
    street = move_images(batch, "street", env.device)
    satellite = move_images(batch, "satellite", env.device)
    with distributed.autocast(env.device, cfg["amp"]):
        street_desc, sat_desc, aux = model(street, satellite, return_aux=True)
    street_all = distributed.gather_with_grad(street_desc.float())
    sat_all = distributed.gather_with_grad(sat_desc.float())
    triplet = soft_margin_triplet_loss(street_all, sat_all, lambda_sm=cfg["lambda_sm"], hard_ratio=hard_ratio)
    l1 = None
    if aux.get("polar_target") is not None and cfg["lambda_l1"] > 0:
        l1 = l1_guidance_loss(aux["transformed"].float(), aux["polar_target"].float())
        return triplet + cfg["lambda_l1"] * l1, triplet, l1
    return triplet, triplet, l1


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (all ranks must skip a step together)."""
    bad = (~torch.isfinite(loss)).float().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad.item())


def train_one_epoch(cfg: dict, model, loader, optimizer, scaler, env, epoch: int,
                    progress: EpochProgress, stop: StopFlag, on_interrupt) -> Dict[str, float]:
    """Run the rest of ``epoch`` from ``progress.step``; returns the epoch's mean losses."""
    model.train()
    hard_ratio = hard_ratio_schedule(epoch, cfg["n_epochs"], cfg["hard_ratios"])
    logger = get_logger()
    total_steps = progress.step + len(loader)
    bar = tqdm(loader, total=len(loader), initial=0, disable=not env.is_main, leave=False,
               desc=f"epoch {epoch + 1}/{cfg['n_epochs']}", unit="batch", dynamic_ncols=True)
    started = time.perf_counter()
    samples = 0
    for batch in bar:
        loss, triplet, l1 = compute_loss(cfg, model, batch, env, hard_ratio)
        if not all_finite(loss.detach()):
            progress.nonfinite += 1
            message = (f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {progress.step + 1} "
                       f"of {total_steps}")
            if progress.nonfinite > cfg["max_nonfinite"]:
                raise NonFiniteLoss(f"{message}; stopping (allowed: --max_nonfinite {cfg['max_nonfinite']}). "
                                    f"last.pth still holds the last good checkpoint; lower --lr, "
                                    f"try --amp bf16 instead of fp16, or check the inputs")
            logger.warning("%s; step skipped (%d of %d allowed)", message, progress.nonfinite,
                           cfg["max_nonfinite"])
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            progress.loss_sum += float(triplet.detach())
            progress.l1_sum += float(l1.detach()) if l1 is not None else 0.0
        progress.step += 1
        samples += batch["street"].shape[0] * env.world_size
        if env.is_main:
            done = max(progress.step - progress.nonfinite, 1)
            bar.set_postfix(loss=f"{progress.loss_sum / done:.4f}",
                            img_s=f"{samples / max(time.perf_counter() - started, 1e-9):.1f}")
        if stop.should_stop(env.device) and progress.step < total_steps:
            on_interrupt(epoch, progress)
    bar.close()
    steps = max(progress.step - progress.nonfinite, 1)
    return {"train_loss": progress.loss_sum / steps, "train_l1": progress.l1_sum / steps,
            "hard_ratio": hard_ratio, "steps": progress.step}


@torch.no_grad()
def extract_features(model, dataset, env, keys: Sequence[str], batch_size: int, workers: int,
                     desc: str = "extract") -> Dict[str, torch.Tensor]:
    """Descriptors of every sample of ``dataset`` for each of ``keys`` ("street", "satellite").

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


def run_dir_of(cfg: dict) -> str:
    return os.path.join(cfg["results_dir"], cfg["name"])


def append_jsonl_atomic(path: str, rows: list) -> None:
    """Rewrite ``path`` with ``rows`` (one JSON object per line) atomically."""
    write_bytes_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode("utf-8"))


def read_jsonl(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_json_atomic(path: str, value) -> None:
    write_bytes_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def evaluation_due(cfg: dict, epoch: int) -> bool:
    return (epoch + 1) % cfg["eval_every"] == 0 or epoch + 1 == cfg["n_epochs"]


def training_state(cfg, model, optimizer, scaler, epoch: int, progress: EpochProgress,
                   best_metric: float, batch_sampler=None) -> dict:
    """The checkpoint dict; ``epoch``/``progress`` say where training continues."""
    state = {
        "version": CHECKPOINT_VERSION,
        "config": cfg,
        "model": distributed.unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "progress": progress.as_dict(),
        "best_metric": best_metric,
        "rng": rng_state(),
        "git": git_commit(),
    }
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    if hasattr(batch_sampler, "state_dict"):
        state["sampler"] = batch_sampler.state_dict()
    return state


def fit(cfg: dict, task, env: distributed.DistEnv, resume: Optional[dict] = None) -> dict:
    """Train ``task`` with ``cfg``; continue from the checkpoint dict ``resume`` if given.

    Per epoch: train, evaluate every ``eval_every`` epochs (and at the end), append a
    ``metrics.jsonl`` row, write ``last.pth`` (and ``best.pth`` on a new best R@1).
    Returns the last metrics row.
    """
    from torch.utils.tensorboard import SummaryWriter

    from helper.visualize import save_transform_grid
    from models import build_model

    train_set = task.train_dataset(cfg)  # validate the data and build the model before writing anything
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg)
    run_dir = run_dir_of(cfg)
    if env.is_main:
        os.makedirs(run_dir, exist_ok=True)
        write_json_atomic(os.path.join(run_dir, "config.json"), cfg)
    distributed.barrier()
    logger = setup_logging(run_dir, env.is_main)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scaler = torch.amp.GradScaler("cuda", enabled=cfg["amp"] == "fp16" and env.device.type == "cuda")
    start_epoch, progress, best_metric = 0, EpochProgress(), -math.inf
    if resume is not None:
        load_model_state(model, resume["model"], os.path.join(run_dir, "last.pth"))
        model.to(env.device)
        optimizer.load_state_dict(resume["optimizer"])
        if "scaler" in resume and scaler.is_enabled():
            scaler.load_state_dict(resume["scaler"])
        start_epoch, best_metric = resume["epoch"], resume["best_metric"]
        progress = EpochProgress(**resume.get("progress", {}))
        set_rng_state(resume["rng"])
        logger.info("resuming %s at epoch %d, step %d", run_dir, start_epoch + 1, progress.step)
        if resume["config"]["n_epochs"] != cfg["n_epochs"]:
            logger.warning("--n_epochs changed from %d to %d: the hard-negative ratio schedule is stretched "
                           "to the new length", resume["config"]["n_epochs"], cfg["n_epochs"])
    model = distributed.wrap_model(model, env)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    batch_sampler = ResumableBatchSampler(task.train_batch_sampler(cfg, train_set, env))
    if resume is not None and "sampler" in resume:
        batch_sampler.batch_sampler.load_state_dict(resume["sampler"])
    loader = make_loader(EpochKeyed(train_set), cfg["batch_size"], cfg["workers"], env, batch_sampler=batch_sampler)
    writer = SummaryWriter(run_dir) if env.is_main else None
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    rows = [row for row in read_jsonl(metrics_path) if row["epoch"] <= start_epoch] if env.is_main else []

    def save(name: str, state: dict) -> str:
        path = os.path.join(run_dir, name)
        if env.is_main:
            save_checkpoint(path, state)
        return path

    def on_interrupt(epoch: int, progress_now: EpochProgress):
        path = save("last.pth", training_state(cfg, model, optimizer, scaler, epoch, progress_now, best_metric,
                                                 batch_sampler.batch_sampler))
        distributed.barrier()
        raise Interrupted(stop.signum, path)

    row: dict = {}
    with StopFlag() as stop:
        logger.info("run folder %s: %d training samples, %d steps per epoch, %d process(es) on %s",
                    run_dir, len(train_set), len(batch_sampler.batch_sampler), env.world_size, env.device)
        for epoch in range(start_epoch, cfg["n_epochs"]):
            batch_sampler.set_epoch(epoch, progress.step)
            started = time.perf_counter()
            stats = train_one_epoch(cfg, model, loader, optimizer, scaler, env, epoch, progress, stop, on_interrupt)
            row = {"epoch": epoch + 1, **stats, "lr": optimizer.param_groups[0]["lr"]}
            logger.info("epoch %d/%d: loss %.4f%s, hard ratio %g, %.0f s", epoch + 1, cfg["n_epochs"],
                        stats["train_loss"], f", l1 {stats['train_l1']:.4f}" if cfg["lambda_l1"] > 0 else "",
                        stats["hard_ratio"], time.perf_counter() - started)
            improved = False
            if evaluation_due(cfg, epoch):
                results = task.evaluate(cfg, model, env)
                row.update({k: results[k] for k in ("street_to_satellite", "satellite_to_street", "top1p_k")})
                for key in ("localization",):
                    if key in results:
                        row[key] = results[key]
                r1 = results["street_to_satellite"]["R@1"]
                improved = r1 > best_metric
                best_metric = max(best_metric, r1)
                logger.info("epoch %d: %s", epoch + 1, format_recalls(results))
                if env.is_main:
                    sample = task.visual_batch(cfg)
                    grid = save_transform_grid(distributed.unwrap(model), sample, cfg,
                                               os.path.join(run_dir, f"transform_epoch{epoch + 1:03d}.png"))
                    writer.add_image("transform", grid, epoch + 1)
            if env.is_main:
                if evaluation_due(cfg, epoch):
                    rows.append(row)
                    append_jsonl_atomic(metrics_path, rows)
                for key in ("train_loss", "train_l1", "hard_ratio", "lr"):
                    writer.add_scalar(f"train/{key}", row[key], epoch + 1)
                for direction in ("street_to_satellite", "satellite_to_street"):
                    for name, value in row.get(direction, {}).items():
                        if isinstance(value, (int, float)):
                            writer.add_scalar(f"{direction}/{name}", value, epoch + 1)
                writer.flush()
            progress = EpochProgress()
            task.after_epoch(cfg, model, env, batch_sampler.batch_sampler)
            state = training_state(cfg, model, optimizer, scaler, epoch + 1, progress, best_metric,
                                   batch_sampler.batch_sampler)
            save("last.pth", state)
            if improved:
                save("best.pth", state)
            if stop.should_stop(env.device) and epoch + 1 < cfg["n_epochs"]:
                raise Interrupted(stop.signum, os.path.join(run_dir, "last.pth"))
    if writer is not None:
        writer.close()
    return row


def format_recalls(results: dict) -> str:
    """One line: street->satellite recalls (and hit rate) for the log."""
    s2a = results["street_to_satellite"]
    text = " ".join(f"{k} {s2a[k]:.2f}" for k in ("R@1", "R@5", "R@10", "R@1%"))
    if "hit_rate" in s2a:
        text += f" hit {s2a['hit_rate']:.2f}"
    return text
