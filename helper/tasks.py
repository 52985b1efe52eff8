"""Dataset-specific pieces of training and evaluation, behind the :class:`Task` protocol.

A task provides the training dataset and batch sampler, the evaluation protocol, the
metrics it records, and a few samples to visualise; :mod:`helper.engine` does everything
else and names no dataset's keys.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Protocol

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset

from common.errors import UserError
from helper import distributed
from helper.config import TEST_HEADING_SEED, RunConfig
from helper.engine import extract_features
from helper.log import get_logger
from helper.metrics import evaluate_retrieval
from helper.pose_eval import embed_panoramas, pose_of_pairs, positives_known
from helper.rerank import RerankConfig, check_rerank_size, rerank_candidates, rerank_results
from data.vigor_layout import TILE_SIDE
from models.offset import delta_pixels

VISUAL_SAMPLES = 4
#: A training plan that leaves out more than this share of the panoramas is logged.
DROPPED_WARNING_FRACTION = 0.05


class Task(Protocol):
    """What :func:`helper.engine.fit` and the test scripts need from a dataset."""

    name: str

    def train_dataset(self, run: RunConfig) -> Dataset:
        """The training samples (their files checked up front), with ``tile_side``: the side of the
        tiles their ``delta`` labels are measured in (:class:`helper.engine.Objective`)."""

    def check_evaluation(self, run: RunConfig) -> None:
        """Check the evaluation split's files (before training writes anything)."""

    def train_batch_sampler(self, run: RunConfig, dataset: Dataset, env):
        """Batches of this rank, with ``set_epoch(epoch)`` (and ``state_dict`` where it has state)."""

    def split_tag(self, run: RunConfig) -> str:
        """A short name of the evaluation split (for the default results file name)."""

    def evaluate(self, run: RunConfig, model, env, rerank: RerankConfig = RerankConfig()) -> dict:
        """The results JSON's dataset part: ``split``, ``queries``, recalls in both directions...;
        with ``rerank.rerank`` K also ``rerank`` (:mod:`helper.rerank`, the model has an offset head)."""

    def metrics_row(self, results: dict) -> dict:
        """The entries of ``results`` recorded per evaluation in ``metrics.jsonl``."""

    def visual_batch(self, run: RunConfig) -> Dict[str, torch.Tensor]:
        """A few evaluation pairs (``street``/``satellite`` batches) for the transform pictures."""

    def after_epoch(self, run: RunConfig, model, env, batch_sampler) -> None:
        """Work between epochs (VIGOR --mining, --sampling similarity: the next epoch's neighbours)."""


RETRIEVAL_KEYS = ("street_to_satellite", "satellite_to_street", "top1p_k")
#: Results of a model with an offset head (:func:`helper.offsets.refined_localization`).
REFINED_KEYS = ("localization_refined", "localization_top1_positive")


def _pose_labels(run: RunConfig) -> bool:
    """Whether a CVUSA evaluation reads ``--offsets_csv``: the model has a pose head and the file exists."""
    return run.model.pose == "dense" and os.path.exists(os.path.join(run.data.data_root, run.data.offsets_csv))


def _stack(samples: list) -> dict:
    return {key: torch.stack([s[key] for s in samples]) for key in ("street", "satellite")}


def _neighbour_table(vectors: torch.Tensor, k: int, env) -> torch.Tensor:
    """Each row's ``k`` nearest other rows (:func:`data.samplers.topk_neighbours`), computed on the
    main rank: every rank gets the same table, hence the same batches."""
    from data.samplers import topk_neighbours

    table = topk_neighbours(vectors.to(env.device), k).cpu() if env.is_main else None
    return distributed.broadcast_object(table)


def _satellite_neighbours(run: RunConfig, model, env, satellites, k: int) -> torch.Tensor:
    """The ``k`` nearest training satellites of each in descriptor space (mining, similarity sampling)."""
    desc = extract_features(model, satellites, env, ("satellite",), run.train.eval_batch_size, run.train.workers,
                            desc="neighbours")["satellite"]
    return _neighbour_table(desc, k, env)


def _gps_batches(run: RunConfig, batch_sampler, latlon, env) -> None:
    """``--sampling gps``: the sampler's neighbour pools are the nearest positions of the satellites
    (``latlon``, one row per satellite); rebuilt from the data on resume, so not stored."""
    from data.samplers import gps_vectors

    table = _neighbour_table(gps_vectors(latlon), run.train.sampling_pool, env)
    batch_sampler.set_batch_neighbours(table, persistent=False)


def _similarity_batches(run: RunConfig, model, env, batch_sampler, satellites) -> None:
    """``--sampling similarity``, after an epoch: the next epoch's pools from the training satellites
    (stored in checkpoints: they depend on the weights of that moment)."""
    batch_sampler.set_batch_neighbours(_satellite_neighbours(run, model, env, satellites, run.train.sampling_pool))


class CVUSATask:
    """CVUSA: training pairs from ``--train_csv``; evaluation on ``--val_csv`` (1:1 pairs)."""

    name = "cvusa"

    def __init__(self) -> None:
        self._datasets: dict = {}

    def _dataset(self, run: RunConfig, csv: str, train: bool):
        """The split's dataset, built (and its files checked) once per task. Evaluation turns the
        street images with :data:`helper.config.TEST_HEADING_SEED` (it has no other random draws);
        training with an offset term reads ``--offsets_csv`` (:attr:`RunConfig.offset_labels`), so does
        the evaluation of a model with a pose head when that file exists (:func:`_pose_labels`)."""
        from data.cvusa import CVUSA

        options = run.train
        heading, fov = (options.train_heading, options.train_fov) if train else (options.test_heading, options.test_fov)
        offsets = run.data.offsets_csv if (run.offset_labels if train else _pose_labels(run)) else None
        key = (run.data.data_root, csv, train, heading, fov, offsets)
        if key not in self._datasets:
            model = run.model
            self._datasets[key] = CVUSA(
                run.data.data_root, csv, sate_size=model.sate_size, pano_size=model.pano_size,
                augment=train and options.augment, rotate=train and options.rotate,
                polar_files=model.polar_files, seed=options.seed if train else TEST_HEADING_SEED, normalise=False,
                heading=heading, fov=fov, pad_fov=not model.takes_windows, offsets_csv=offsets)
        return self._datasets[key]

    def train_dataset(self, run: RunConfig):
        return self._dataset(run, run.data.train_csv, train=True)

    def check_evaluation(self, run: RunConfig) -> None:
        self._dataset(run, run.data.val_csv, train=False)

    def train_batch_sampler(self, run: RunConfig, dataset, env):
        from data.samplers import DistributedShuffleSampler, VigorBatchSampler

        if run.train.sampling == "random":
            sampler = DistributedShuffleSampler(len(dataset), seed=run.train.seed, shuffle=True,
                                                rank=env.rank, world_size=env.world_size)
            return _EpochBatchSampler(sampler, run.train.batch_size)
        # neighbour batches: pair i is satellite i, nothing conflicts
        batch_sampler = VigorBatchSampler(np.arange(len(dataset)), None, run.train.batch_size, seed=run.train.seed,
                                          rank=env.rank, world_size=env.world_size,
                                          neighbour_select=run.train.sampling_select)
        if run.train.sampling == "gps":
            from data.cvusa_layout import pair_positions

            path = os.path.join(run.data.data_root, run.data.gps_csv)
            _gps_batches(run, batch_sampler, pair_positions(path, dataset.satellite_paths, dataset.csv), env)
        return batch_sampler

    def split_tag(self, run: RunConfig) -> str:
        return os.path.splitext(os.path.basename(run.data.val_csv))[0]

    def evaluate(self, run: RunConfig, model, env, rerank: RerankConfig = RerankConfig()) -> dict:
        from data.cvusa import CVUSASatellites

        dataset = self._dataset(run, run.data.val_csv, train=False)
        check_rerank_size(rerank.rerank, len(dataset))
        workers, batch_size = run.train.workers, run.train.eval_batch_size
        desc = extract_features(model, dataset, env, ("street", "satellite", "heading"), batch_size, workers,
                                desc="evaluate")
        street, satellite = desc["street"].to(env.device), desc["satellite"].to(env.device)
        positive = torch.arange(len(dataset), device=env.device)
        results = evaluate_retrieval(street, satellite, positive, top1p=run.train.top1p, progress=env.is_main,
                                     similarity=distributed.unwrap(model).similarity, street_heading=desc["heading"],
                                     top_k=rerank.rerank)
        satellites, street_pose = CVUSASatellites(dataset), None
        if run.model.pose == "dense":
            street_pose = embed_panoramas(model, dataset, env, batch_size, workers)
            if dataset.deltas is None:
                get_logger().warning("no offset labels (%s) in %s: the pose block (positives known) is left out",
                                     run.data.offsets_csv, run.data.data_root)
            else:
                heading = desc["heading"].numpy() if run.train.test_heading == "random" else None
                results["pose"] = positives_known(model, street_pose, satellites, positive, dataset.deltas,
                                                  dataset.tile_side, 1.0, "px", env, batch_size, workers, heading)
        if rerank.rerank:
            reranked = rerank_candidates(model, street, satellite, results.pop("ranking"), positive, satellites, env,
                                         batch_size, workers, rerank.rerank_score, street_pose=street_pose)
            results["rerank"] = rerank_results(reranked, rerank, results["top1p_k"], len(dataset))
        return {"split": run.data.val_csv, **results}

    def metrics_row(self, results: dict) -> dict:
        return {key: results[key] for key in RETRIEVAL_KEYS + ("orientation", "pose") if key in results}

    def visual_batch(self, run: RunConfig) -> dict:
        dataset = self._dataset(run, run.data.val_csv, train=False)
        return _stack([dataset[i] for i in range(min(VISUAL_SAMPLES, len(dataset)))])

    def after_epoch(self, run: RunConfig, model, env, batch_sampler) -> None:
        """With ``--sampling similarity``: the next epoch's neighbours from the training satellites."""
        from data.cvusa import CVUSASatellites

        if run.train.sampling == "similarity":
            satellites = CVUSASatellites(self._dataset(run, run.data.train_csv, train=False))
            _similarity_batches(run, model, env, batch_sampler, satellites)


class _EpochBatchSampler(BatchSampler):
    """A BatchSampler (drop_last) that forwards ``set_epoch`` to its sampler."""

    def __init__(self, sampler, batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=True)
        if len(self) == 0:
            raise UserError(f"--batch_size {batch_size} is larger than the {len(sampler)} training "
                            f"samples of this process; lower it to at most {len(sampler)}")

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def _unproven(exhaustive: bool) -> str:
    """The caveat for a batch plan whose search was cut short (:data:`data.samplers.SEARCH_NODES`)."""
    from data.samplers import SEARCH_NODES

    return "" if exhaustive else f" (as far as a search of {SEARCH_NODES} branches per panorama tells)"


class VigorTask:
    """VIGOR: same-area or cross-area; conflict-free batches; hit rate and metre-level error."""

    name = "vigor"

    def __init__(self) -> None:
        self._indices: dict = {}

    def _index(self, run: RunConfig, split: str):
        """The parsed split, built (and its files checked) once per task."""
        data = run.data
        key = (data.data_root, data.split_cities(split), split, data.mode)
        if key not in self._indices:
            self._indices[key] = data.index(split)
        return self._indices[key]

    def _pairs(self, run: RunConfig, split: str, train: bool):
        from data.vigor import VigorPairs

        model = run.model
        return VigorPairs(self._index(run, split), sate_size=model.sate_size, pano_size=model.pano_size,
                          augment=train and run.train.augment, rotate=train and run.train.rotate,
                          polar_files=model.polar_files, seed=run.train.seed, normalise=False,
                          semi_positive=train and run.semi_positive,
                          heading=run.train.train_heading if train else "none")

    def _satellites(self, run: RunConfig, split: str):
        from data.vigor import VigorSatellites

        model = run.model
        return VigorSatellites(self._index(run, split), sate_size=model.sate_size, polar_files=model.polar_files,
                               pano_size=model.pano_size, normalise=False)

    def train_dataset(self, run: RunConfig):
        return self._pairs(run, "train", train=True)

    def check_evaluation(self, run: RunConfig) -> None:
        self._satellites(run, "test")

    def train_batch_sampler(self, run: RunConfig, dataset, env):
        from data.samplers import VigorBatchSampler

        index = dataset.index
        fraction = run.data.mining_fraction if run.data.mining else 0.0

        def sampler(batch_size: int) -> VigorBatchSampler:
            return VigorBatchSampler(index.positive, index.semi, batch_size, seed=run.train.seed, rank=env.rank,
                                     world_size=env.world_size, mining_fraction=fraction,
                                     neighbour_select=run.train.sampling_select or 0)

        batch_sampler = sampler(run.train.batch_size)
        plan = batch_sampler.plan(0)
        size, exhaustive = batch_sampler.global_batch_size, plan.exhaustive
        if not plan.batches:
            fits = None
            for smaller in range(run.train.batch_size - 1, 1, -1):
                smaller_plan = sampler(smaller).plan(0)
                exhaustive &= smaller_plan.exhaustive
                if smaller_plan.batches:
                    fits = smaller
                    break
            advice = f"use --batch_size {fits} or less" if fits else "no batch size of 2 or more fits"
            raise UserError(f"--batch_size {run.train.batch_size} forms no training batch: the "
                            f"{index.num_panoramas} training panoramas cannot fill a global batch of {size} without "
                            f"two sharing a satellite{_unproven(exhaustive)}; {advice}")
        if plan.dropped:
            many = len(plan.dropped) > DROPPED_WARNING_FRACTION * index.num_panoramas
            get_logger().log(logging.WARNING if many else logging.INFO,
                             "each epoch leaves out about %d of %d training panoramas: they cannot fill another "
                             "global batch of %d without two sharing a satellite%s", len(plan.dropped),
                             index.num_panoramas, size, _unproven(exhaustive))
        if run.train.sampling == "gps":
            _gps_batches(run, batch_sampler, index.satellite_gps, env)
        return batch_sampler

    def split_tag(self, run: RunConfig) -> str:
        return run.data.mode

    def evaluate(self, run: RunConfig, model, env, rerank: RerankConfig = RerankConfig()) -> dict:
        """With ``rerank.rerank`` K (the model has an offset head): also ``rerank``
        (:func:`helper.rerank.rerank_results` plus ``localization_refined`` /
        ``localization_top1_positive`` of the re-ranked top-1)."""
        from data.vigor import VigorPanoramas
        from helper.offsets import city_metres_per_pixel, predict_offsets, refined_localization

        index = self._index(run, "test")
        check_rerank_size(rerank.rerank, index.num_satellites)
        workers, batch_size = run.train.workers, run.train.eval_batch_size
        turned = run.train.test_heading == "random"
        panoramas = VigorPanoramas(index, pano_size=run.model.pano_size, normalise=False,
                                   heading=run.train.test_heading, seed=TEST_HEADING_SEED)
        satellites = self._satellites(run, "test")
        queries = extract_features(model, panoramas, env, ("street", "heading") if turned else ("street",), batch_size,
                                   workers, desc="panoramas")
        satellite = extract_features(model, satellites, env, ("satellite",), batch_size,
                                     workers, desc="satellites")["satellite"]
        positive = torch.as_tensor(index.positive, dtype=torch.long, device=env.device)
        semi = torch.as_tensor(index.semi, dtype=torch.long, device=env.device)
        street, satellite = queries["street"].to(env.device), satellite.to(env.device)
        pose = run.model.pose == "dense"
        refine = run.model.regress_offset or pose
        results = evaluate_retrieval(street, satellite, positive, top1p=run.train.top1p, semi_positive=semi,
                                     street_latlon=index.street_gps, satellite_latlon=index.satellite_gps,
                                     return_top1=refine, progress=env.is_main,
                                     similarity=distributed.unwrap(model).similarity, top_k=rerank.rerank,
                                     street_heading=queries.get("heading"))
        street_pose = None
        if pose:
            street_pose = embed_panoramas(model, panoramas, env, batch_size, workers)
            heading = queries["heading"].numpy() if turned else None
            results["pose"] = positives_known(model, street_pose, satellites, positive, index.deltas[:, 0], TILE_SIDE,
                                              city_metres_per_pixel(index)[index.street_city], "m", env, batch_size,
                                              workers, heading)
        if refine:
            top1 = results.pop("top1")
            if pose:  # the pose head refines when the model has one
                offset = pose_of_pairs(model, street_pose, satellites, top1, env, batch_size, workers)[0]
            else:
                offset = predict_offsets(distributed.unwrap(model), street, satellite, top1)
            results.update(refined_localization(index, top1, delta_pixels(offset, TILE_SIDE).cpu().numpy()))
        if rerank.rerank:
            reranked = rerank_candidates(model, street, satellite, results.pop("ranking"), positive, satellites,
                                         env, batch_size, workers, rerank.rerank_score, exclude=semi,
                                         street_pose=street_pose)
            block = rerank_results(reranked, rerank, results["top1p_k"], index.num_satellites, index.street_gps,
                                   index.satellite_gps)
            offset = delta_pixels(reranked.top1_offset, TILE_SIDE)
            block.update(refined_localization(index, reranked.top1, offset.cpu().numpy()))
            results["rerank"] = block
        split = "same_area_balanced_test" if run.data.mode == "same" else "pano_label_balanced"
        return {"split": split, "mode": run.data.mode, "cities": list(run.data.split_cities("test")), **results}

    def metrics_row(self, results: dict) -> dict:
        return {key: results[key] for key in RETRIEVAL_KEYS + ("localization", "pose") + REFINED_KEYS
                if key in results}

    def visual_batch(self, run: RunConfig) -> dict:
        dataset = self._pairs(run, "test", train=False)
        return _stack([dataset[i] for i in range(min(VISUAL_SAMPLES, len(dataset)))])

    def after_epoch(self, run: RunConfig, model, env, batch_sampler) -> None:
        """With ``--mining`` or ``--sampling similarity``: embed the training satellites and hand their
        neighbours to the sampler."""
        if run.data.mining:
            batch_sampler.set_hard_neighbours(_satellite_neighbours(run, model, env, self._satellites(run, "train"),
                                                                    run.data.mining_k))
        if run.train.sampling == "similarity":
            _similarity_batches(run, model, env, batch_sampler, self._satellites(run, "train"))


TASKS = {"cvusa": CVUSATask, "vigor": VigorTask}


def get_task(dataset: str) -> Task:
    return TASKS[dataset]()
