"""Dataset-specific pieces of training and evaluation, behind one small interface.

A task provides the training dataset and batch sampler, the evaluation protocol and a
few samples to visualise; :mod:`helper.engine` does everything else.
"""
from __future__ import annotations

import torch
from torch.utils.data import BatchSampler

from helper import distributed
from helper.engine import extract_features
from helper.metrics import evaluate_retrieval

VISUAL_SAMPLES = 4


def _stack(samples: list) -> dict:
    return {key: torch.stack([s[key] for s in samples]) for key in ("street", "satellite")}


class CVUSATask:
    """CVUSA: training pairs from ``--train_csv``; evaluation on ``--val_csv`` (1:1 pairs)."""

    name = "cvusa"

    def __init__(self) -> None:
        self._datasets: dict = {}

    def _dataset(self, cfg: dict, csv: str, train: bool):
        """The split's dataset, built (and its files checked) once per task."""
        from data.cvusa import CVUSA

        key = (cfg["data_root"], csv, train)
        if key not in self._datasets:
            self._datasets[key] = CVUSA(
                cfg["data_root"], csv, sate_size=cfg["sate_size"], pano_size=cfg["pano_size"],
                augment=train and cfg.get("augment", False), rotate=train and cfg.get("rotate", False),
                polar_files=cfg["polar_files"], seed=cfg.get("seed", 0), normalise=False)
        return self._datasets[key]

    def train_dataset(self, cfg: dict):
        return self._dataset(cfg, cfg["train_csv"], train=True)

    def train_batch_sampler(self, cfg: dict, dataset, env):
        from data.samplers import DistributedShuffleSampler

        sampler = DistributedShuffleSampler(len(dataset), seed=cfg["seed"], shuffle=True,
                                            rank=env.rank, world_size=env.world_size)
        return _EpochBatchSampler(sampler, cfg["batch_size"])

    def evaluate(self, cfg: dict, model, env) -> dict:
        dataset = self._dataset(cfg, cfg["val_csv"], train=False)
        desc = extract_features(model, dataset, env, ("street", "satellite"), cfg["eval_batch_size"],
                                cfg["workers"], desc="evaluate")
        positive = torch.arange(len(dataset))
        results = evaluate_retrieval(desc["street"].to(env.device), desc["satellite"].to(env.device),
                                     positive.to(env.device), top1p=cfg["top1p"])
        return {"split": cfg["val_csv"], **results}

    def visual_batch(self, cfg: dict) -> dict:
        dataset = self._dataset(cfg, cfg["val_csv"], train=False)
        return _stack([dataset[i] for i in range(min(VISUAL_SAMPLES, len(dataset)))])

    def after_epoch(self, cfg, model, env, batch_sampler) -> None:
        return None


class _EpochBatchSampler(BatchSampler):
    """A BatchSampler (drop_last) that forwards ``set_epoch`` to its sampler."""

    def __init__(self, sampler, batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=True)
        if len(self) == 0:
            from helper.errors import UserError

            raise UserError(f"--batch_size {batch_size} is larger than the {len(sampler)} training "
                            f"samples of this process; lower it")

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


class VigorTask:
    """VIGOR: same-area or cross-area; conflict-free batches; hit rate and metre-level error."""

    name = "vigor"

    @staticmethod
    def _cities(cfg: dict, split: str) -> list:
        if cfg["mode"] == "same":
            return list(cfg["cities"])
        return list(cfg["train_cities"] if split == "train" else cfg["test_cities"])

    def __init__(self) -> None:
        self._indices: dict = {}

    def _index(self, cfg: dict, split: str):
        """The parsed split, built (and its files checked) once per task."""
        from data.vigor import VigorIndex

        key = (cfg["data_root"], tuple(self._cities(cfg, split)), split, cfg["mode"])
        if key not in self._indices:
            self._indices[key] = VigorIndex(cfg["data_root"], list(key[1]), split, cfg["mode"])
        return self._indices[key]

    def train_dataset(self, cfg: dict):
        from data.vigor import VigorPairs

        return VigorPairs(self._index(cfg, "train"), sate_size=cfg["sate_size"], pano_size=cfg["pano_size"],
                          augment=cfg.get("augment", False), rotate=cfg.get("rotate", False),
                          polar_files=cfg["polar_files"], seed=cfg["seed"], normalise=False)

    def train_batch_sampler(self, cfg: dict, dataset, env):
        from data.samplers import VigorBatchSampler

        index = dataset.index
        return VigorBatchSampler(index.positive, index.semi, cfg["batch_size"], seed=cfg["seed"],
                                 rank=env.rank, world_size=env.world_size,
                                 mining_fraction=cfg.get("mining_fraction", 0.0) if cfg.get("mining") else 0.0)

    def evaluate(self, cfg: dict, model, env) -> dict:
        from data.vigor import VigorPanoramas, VigorSatellites

        index = self._index(cfg, "test")
        panoramas = VigorPanoramas(index, pano_size=cfg["pano_size"], normalise=False)
        street = extract_features(model, panoramas, env, ("street",), cfg["eval_batch_size"], cfg["workers"],
                                  desc="panoramas")["street"]
        satellites = VigorSatellites(index, sate_size=cfg["sate_size"], polar_files=cfg["polar_files"],
                                     pano_size=cfg["pano_size"], normalise=False)
        satellite = extract_features(model, satellites, env, ("satellite",), cfg["eval_batch_size"],
                                     cfg["workers"], desc="satellites")["satellite"]
        positive = torch.as_tensor(index.positive, dtype=torch.long)
        semi = torch.as_tensor(index.semi, dtype=torch.long)
        results = evaluate_retrieval(street.to(env.device), satellite.to(env.device), positive.to(env.device),
                                     top1p=cfg["top1p"], semi_positive=semi.to(env.device),
                                     street_latlon=index.pano_gps, satellite_latlon=index.sat_gps)
        split = "same_area_balanced_test" if cfg["mode"] == "same" else "pano_label_balanced"
        return {"split": split, "mode": cfg["mode"], "cities": self._cities(cfg, "test"), **results}

    def visual_batch(self, cfg: dict) -> dict:
        from data.vigor import VigorPairs

        dataset = VigorPairs(self._index(cfg, "test"), sate_size=cfg["sate_size"], pano_size=cfg["pano_size"],
                             polar_files=cfg["polar_files"], normalise=False)
        return _stack([dataset[i] for i in range(min(VISUAL_SAMPLES, len(dataset)))])

    def after_epoch(self, cfg: dict, model, env, batch_sampler) -> None:
        """With ``--mining``: embed the training satellites and hand their neighbours to the sampler."""
        if not cfg.get("mining"):
            return
        from data.samplers import topk_neighbours
        from data.vigor import VigorSatellites

        index = self._index(cfg, "train")
        satellites = VigorSatellites(index, sate_size=cfg["sate_size"], polar_files=cfg["polar_files"],
                                     pano_size=cfg["pano_size"], normalise=False)
        desc = extract_features(model, satellites, env, ("satellite",), cfg["eval_batch_size"], cfg["workers"],
                                desc="mining")["satellite"]
        neighbours = topk_neighbours(desc.to(env.device), cfg["mining_k"]).cpu() if env.is_main else None
        batch_sampler.set_hard_neighbours(distributed.broadcast_object(neighbours))  # every rank: the same plan


TASKS = {"cvusa": CVUSATask, "vigor": VigorTask}


def get_task(dataset: str):
    return TASKS[dataset]()
