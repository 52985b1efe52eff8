"""The training settings and the whole run's configuration, typed and validated once.

A run is ``RunConfig(dataset, model, data, train)``: the model's
:class:`models.config.ModelConfig`, the dataset's :class:`data.cvusa_layout.CVUSAConfig`
or :class:`data.vigor_layout.VigorConfig`, and the :class:`TrainConfig` below. Plain dicts
exist only at the boundaries: :meth:`RunConfig.to_dict` is the flat ``config.json`` /
checkpoint ``config`` (every field once, under its flag name, plus ``dataset``), and
:meth:`RunConfig.from_dict` reads one back (migrating older layouts first, see
:data:`MIGRATIONS`).

Derived defaults are resolved once, by :meth:`RunConfig.resolved`, and recorded in
``config.json``: ``lr`` and ``hard_ratios`` (triplet loss) follow ``pretrained`` (:data:`SCHEDULES`),
``label_smoothing`` is :data:`INFONCE_LABEL_SMOOTHING` for InfoNCE,
``sampling_select`` / ``sampling_pool`` are :data:`SAMPLING_NEIGHBOURS` for GPS and similarity sampling,
``eval_batch_size`` is twice ``batch_size``, ``name`` is ``<dataset>_<transform>_<backbone>``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple, Union

from common.errors import UserError
from common.settings import as_plain, check_settings, fields_of, pick, setting
from common.system import usable_cpus
from data import cvusa_layout, vigor_layout
from helper.losses import DEFAULT_HARD_RATIOS
from models.config import ModelConfig

AMP_MODES = ("none", "bf16", "fp16")
LOSSES = ("triplet", "infonce")
OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("constant", "cosine")
SAMPLINGS = ("random", "gps", "similarity")


class Neighbours(NamedTuple):
    """Neighbours drawn per anchor, out of a pool of the nearest (Sample4Geo's 64 of 128)."""

    select: int
    pool: int


#: ``--sampling_select`` / ``--sampling_pool`` when none are given.
SAMPLING_NEIGHBOURS = Neighbours(64, 128)
#: InfoNCE's label smoothing when none is given (Sample4Geo's).
INFONCE_LABEL_SMOOTHING = 0.1
DEVICES = ("auto", "cpu", "cuda")
TOP1P_RULES = ("floor", "plus1")
HEADINGS = ("none", "random")
#: Seed of the random headings of ``--test_heading random``: the same turns in every evaluation.
TEST_HEADING_SEED = 20200614


class Schedule(NamedTuple):
    """Default optimisation schedule of a run."""

    lr: float
    hard_ratios: Tuple[float, ...]


#: Default schedule by ``pretrained``: SAFA's for ImageNet weights (Adam 1e-5; hard-negative
#: ratios of Toker et al.), and one that learns from random weights (measured on the
#: synthetic world: 4% R@1 with SAFA's schedule, 100% with this one).
SCHEDULES = {True: Schedule(1e-5, DEFAULT_HARD_RATIOS), False: Schedule(1e-3, (1.0, 0.5))}


@dataclass(frozen=True)
class TrainConfig:
    """How a run trains, evaluates and where it writes."""

    device: str = setting("auto", "auto = cuda when available, else cpu", choices=lambda: DEVICES, evaluation=True)
    batch_size: int = setting(32, "batch size per process (the triplet loss sees all processes' batches)",
                              minimum=1, evaluation=True)
    workers: int = setting(min(8, usable_cpus()), "DataLoader worker processes per process (0 = load in the "
                                                  "main process)", minimum=0, evaluation=True)
    top1p: str = setting("floor", "R@1% rule: floor = M//100 (SAFA, TransGeo, Sample4Geo); plus1 = "
                                  "int(0.01 M)+1 (official VIGOR, CVM-Net)", choices=lambda: TOP1P_RULES,
                         evaluation=True)
    n_epochs: int = setting(30, "training epochs", minimum=1)
    lr: Optional[float] = setting(None, "Adam learning rate", above=0.0,
                                  default_text=f"{SCHEDULES[True].lr:g} with --pretrained (SAFA), "
                                               f"{SCHEDULES[False].lr:g} with --no-pretrained")
    weight_decay: float = setting(0.0, "Adam weight decay", minimum=0.0)
    lambda_sm: float = setting(10.0, "soft-margin triplet loss scale (SAFA: 10)", above=0.0)
    hard_ratios: Optional[Tuple[float, ...]] = setting(
        None, "hard-negative ratio schedule; changes at equal fractions of --n_epochs", above=0.0, maximum=1.0,
        default_text=f"{','.join(map(str, SCHEDULES[True].hard_ratios))} with --pretrained, "
                     f"{','.join(map(str, SCHEDULES[False].hard_ratios))} with --no-pretrained")
    augment: bool = setting(True, "paired horizontal flips of panorama and satellite")
    rotate: bool = setting(False, "paired 90-degree rotations of the satellite with panorama rolls")
    amp: str = setting("none", "mixed precision on CUDA (bf16 recommended on Ampere and newer)",
                       choices=lambda: AMP_MODES)
    max_nonfinite: int = setting(0, "non-finite losses to skip before aborting (0 = abort at the first)", minimum=0)
    seed: int = setting(0, "seed of weights, data order and augmentation", minimum=0, maximum=2 ** 32 - 1)
    eval_every: int = setting(1, "evaluate every N epochs", minimum=1)
    eval_batch_size: Optional[int] = setting(None, "batch size for descriptor extraction", minimum=1,
                                             default_text="2 x --batch_size")
    results_dir: str = setting("results", "folder holding run folders")
    name: Optional[str] = setting(None, "run folder name", default_text="<dataset>_<transform>_<backbone>")
    loss: str = setting("triplet", "training loss: SAFA's soft-margin weighted triplet loss, or symmetric InfoNCE "
                                   "with a learned temperature (Sample4Geo)", choices=lambda: LOSSES)
    label_smoothing: Optional[float] = setting(None, "InfoNCE: label smoothing of the cross-entropy", minimum=0.0,
                                               maximum=0.99,
                                               default_text=f"{INFONCE_LABEL_SMOOTHING} with --loss infonce")
    lambda_recentre: float = setting(0.0, "weight of the re-centred retrieval loss: each positive satellite is also "
                                          "embedded translated so its labelled camera point is at the centre (as "
                                          "--rerank re-centres a candidate), and that batch takes the retrieval loss "
                                          "too; needs offset labels (VIGOR; CVUSA: --offsets_csv) and raw satellite "
                                          "images (0 = off)", minimum=0.0)
    optimizer: str = setting("adam", "optimizer (adamw: decoupled weight decay)", choices=lambda: OPTIMIZERS)
    scheduler: str = setting("constant", "learning-rate schedule over the run's steps: constant, or cosine decay "
                                         "to 0", choices=lambda: SCHEDULERS)
    warmup_epochs: float = setting(0.0, "linear learning-rate warm-up from 0 over this many epochs", minimum=0.0)
    chunk_size: int = setting(0, "gradient caching: the loss sees the whole batch while only this many samples "
                                 "are embedded with gradients at once (same gradients, less memory; also under "
                                 "torchrun); 0 = off", minimum=0)
    sampling: str = setting("random", "batch composition: random; gps = anchors from the random order, each "
                                      "followed by geographic neighbours (CVUSA: --gps_csv, VIGOR: the file "
                                      "names); similarity = the same with the training satellites nearest in "
                                      "descriptor space, recomputed after every epoch (the first epoch is random) "
                                      "(Sample4Geo)", choices=lambda: SAMPLINGS)
    sampling_select: Optional[int] = setting(
        None, "gps/similarity: neighbours drawn per anchor: the nearest half, then a random draw from the rest "
              "of the pool", minimum=1, default_text=f"{SAMPLING_NEIGHBOURS.select} with --sampling gps or similarity")
    sampling_pool: Optional[int] = setting(
        None, "gps/similarity: the anchor's nearest neighbours drawn from (at most the training satellites)",
        minimum=1, default_text=f"{SAMPLING_NEIGHBOURS.pool} with --sampling gps or similarity")
    train_heading: str = setting("none", "training street images: random = turned to a random heading (a "
                                         "circular roll of the panorama; the satellite stays north-up)",
                                 choices=lambda: HEADINGS)
    train_fov: float = setting(360.0, "training street images: field of view in degrees (the centred window "
                                      "of the panorama; heads safa/pool see it zero-padded to full width)",
                               above=0.0, maximum=360.0)
    test_heading: str = setting("none", "evaluation street images: random = turned to a random heading (fixed "
                                        "seed: the same in every evaluation)", choices=lambda: HEADINGS,
                                evaluation=True)
    test_fov: float = setting(360.0, "evaluation street images: field of view in degrees", above=0.0,
                              maximum=360.0, evaluation=True)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.sampling == "random" and (self.sampling_select, self.sampling_pool) != (None, None):
            raise UserError("--sampling_select and --sampling_pool apply to --sampling gps or similarity only; "
                            "drop them or pass --sampling gps|similarity")
        select, pool = self.sampling_neighbours()
        if select > pool and self.sampling != "random":
            raise UserError(f"--sampling_select {select} is more than --sampling_pool {pool}: the neighbours "
                            f"drawn per anchor come out of the pool; lower it or raise --sampling_pool")
        if self.loss != "infonce" and self.label_smoothing is not None:
            raise UserError("--label_smoothing applies to --loss infonce only; drop it or pass --loss infonce")
        if self.loss != "triplet" and self.hard_ratios is not None:
            raise UserError("--hard_ratios (hard-negative mining of triplets) applies to --loss triplet only")
        if self.warmup_epochs >= self.n_epochs:
            raise UserError(f"--warmup_epochs {self.warmup_epochs:g} must be below --n_epochs {self.n_epochs}")
        if self.name is not None and (self.name.strip() in ("", ".", "..") or "/" in self.name
                                      or (os.altsep or os.sep) in self.name or os.sep in self.name):
            raise UserError(f"--name {self.name!r} must be a plain folder name (no '/', not '', '.' or '..'): "
                            f"the run is written to <--results_dir>/<--name>")
        if self.batch_size < 2:
            raise UserError("--batch_size must be >= 2 for training: the triplet loss needs at least 2 pairs "
                            "per batch to have negatives")
        if self.amp != "none" and self.device == "cpu":
            raise UserError(f"--amp {self.amp} needs a CUDA device; drop --amp or use --device cuda")

    def sampling_neighbours(self) -> Neighbours:
        """``(select, pool)`` of GPS / similarity sampling, defaults filled in."""
        select, pool = self.sampling_select, self.sampling_pool
        return Neighbours(SAMPLING_NEIGHBOURS.select if select is None else select,
                          SAMPLING_NEIGHBOURS.pool if pool is None else pool)


#: The dataset settings class and input sizes of each dataset.
class DatasetSpec(NamedTuple):
    config: type
    sate_size: Tuple[int, int]
    pano_size: Tuple[int, int]


DATASETS: Dict[str, DatasetSpec] = {
    "cvusa": DatasetSpec(cvusa_layout.CVUSAConfig, cvusa_layout.SATE_SIZE, cvusa_layout.PANO_SIZE),
    "vigor": DatasetSpec(vigor_layout.VigorConfig, vigor_layout.SATE_SIZE, vigor_layout.PANO_SIZE),
}

#: Sections of a run, in the order of the command line's help.
SECTIONS = (("model", ModelConfig), ("train", TrainConfig))

DataConfig = Union[cvusa_layout.CVUSAConfig, vigor_layout.VigorConfig]


def _from_version_1(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Version 1 stored the ``--resume`` path (an action, not a setting) in the config, and
    knew only SAFA's head on two backbones, the triplet loss, Adam and a constant learning rate."""
    cfg.pop("resume", None)
    defaults = {"head": "safa", "shared_backbone": False, "loss": "triplet", "label_smoothing": None,
                "optimizer": "adam", "scheduler": "constant", "warmup_epochs": 0.0, "chunk_size": 0}
    return {**defaults, **cfg}


def _from_version_2(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Version 2 had no offset head, only random batches, no CVUSA ``gps_csv``, only north-aligned
    full panoramas, and VIGOR runs no semi-positive loss (nor its offset weight)."""
    defaults = {"regress_offset": False, "sampling": "random", "sampling_select": None, "sampling_pool": None,
                "train_heading": "none", "train_fov": 360.0, "test_heading": "none", "test_fov": 360.0}
    if cfg.get("dataset") == "vigor":
        defaults.update(semi_positive="none", lambda_offset=vigor_layout.LAMBDA_OFFSET)
    if cfg.get("dataset") == "cvusa":
        defaults["gps_csv"] = None
    return {**defaults, **cfg}


def _from_version_3(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Version 3 had no CVUSA offset labels: CVUSA runs had no offset head, hence no ``offsets_csv``
    (the default file, never read without ``--regress_offset``) nor offset weight."""
    if cfg.get("dataset") != "cvusa":
        return cfg
    return {"offsets_csv": cvusa_layout.DEFAULT_OFFSETS_CSV, "lambda_offset": vigor_layout.LAMBDA_OFFSET, **cfg}


def _from_version_4(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Version 4 had no re-centred retrieval loss."""
    return {"lambda_recentre": 0.0, **cfg}


#: Version of the stored config (``config.json``'s ``version`` key, a checkpoint's ``version``).
CONFIG_VERSION = 5
#: ``{version: migration}``: a stored config of ``version`` becomes one of ``version + 1``
#: (a config.json without ``version`` is version 1).
MIGRATIONS = {1: _from_version_1, 2: _from_version_2, 3: _from_version_3, 4: _from_version_4}


def migrate_config(cfg: Mapping[str, Any], version: int) -> Dict[str, Any]:
    """The flat config dict of checkpoint/config ``version``, brought to :data:`CONFIG_VERSION`."""
    out = dict(cfg)
    for step in range(int(version), CONFIG_VERSION):
        out = MIGRATIONS[step](out)
    return out


def model_defaults(dataset: str) -> Dict[str, Any]:
    """The model settings a dataset overrides: its input sizes."""
    spec = DATASETS[dataset]
    return {"sate_size": spec.sate_size, "pano_size": spec.pano_size}


@dataclass(frozen=True)
class RunConfig:
    """One training run: dataset name and the three settings sections."""

    dataset: str
    model: ModelConfig
    data: DataConfig
    train: TrainConfig

    def __post_init__(self) -> None:
        if self.model.polar_files and self.model.transform != "polar":
            raise UserError("--polar_files needs --transform polar (an STN learns from the raw satellite image)")
        if self.train.chunk_size and (self.model.regress_offset or self.semi_positive or self.train.lambda_recentre):
            raise UserError("--chunk_size (gradient caching) does not support --regress_offset, --semi_positive iou "
                            "or --lambda_recentre yet; drop --chunk_size")
        if self.train.lambda_recentre and self.model.polar_files:
            raise UserError("--lambda_recentre re-centres the raw satellite image, but --polar_files reads polar "
                            "images already centred on the tile; drop one of them")
        self.data.check_sampling(self.train.sampling)
        train = self.train
        views = (train.train_heading, train.train_fov, train.test_heading, train.test_fov)
        if self.dataset != "cvusa" and views != ("none", 360.0, "none", 360.0):
            raise UserError(f"--train_heading, --train_fov, --test_heading and --test_fov apply to CVUSA only for "
                            f"now, not {self.dataset}; drop them")

    @property
    def semi_positive(self) -> bool:
        """Whether training adds VIGOR's semi-positive IOU loss (``--semi_positive iou``)."""
        return getattr(self.data, "semi_positive", "none") != "none"

    @property
    def offset_labels(self) -> bool:
        """Whether training reads the offset labels (``--regress_offset`` or ``--lambda_recentre``)."""
        return self.model.regress_offset or self.train.lambda_recentre > 0

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], dataset: Optional[str] = None, source: Optional[str] = None,
                  strict: bool = True, complete: bool = False) -> "RunConfig":
        """Validate a flat dict (``config.json``, a checkpoint's ``config``, a ``--config`` file).

        ``dataset`` defaults to ``cfg["dataset"]``. Errors name ``source`` (a file; None for
        the command line, whose flags name themselves). With ``strict`` an unknown key is an
        error; missing keys take the defaults, unless ``complete`` (a checkpoint's config,
        which records every setting): then a missing key is an error.
        """
        where = source or "the settings"
        if not isinstance(cfg, Mapping):
            raise UserError(f"{where} must be a JSON object of settings, got {type(cfg).__name__}")
        if complete and "dataset" not in cfg:
            raise UserError(f"{where} lacks the setting 'dataset'; it was not written by this code or is damaged")
        dataset = dataset or cfg.get("dataset")
        if dataset not in DATASETS:
            raise UserError(f"{where} names dataset {dataset!r}; valid: {', '.join(DATASETS)}")
        spec = DATASETS[dataset]
        settings = set(fields_of(spec.config)) | {n for _, c in SECTIONS for n in fields_of(c)}
        unknown = sorted(set(cfg) - settings - {"dataset", "version"})
        if strict and unknown:
            raise UserError(f"{where} has unknown keys: {', '.join(unknown)}")
        missing = sorted(settings - set(cfg)) if complete else []
        if missing:
            raise UserError(f"{where} lacks the setting(s) {', '.join(missing)}; it was not written by this code "
                            f"or is damaged (a checkpoint records every setting)")
        try:
            model = ModelConfig(**{**model_defaults(dataset), **pick(ModelConfig, cfg)})
            return cls(dataset, model, spec.config(**pick(spec.config, cfg)), TrainConfig(**pick(TrainConfig, cfg)))
        except UserError as exc:
            raise UserError(f"{source}: {exc}" if source else str(exc)) from None

    def to_dict(self) -> Dict[str, Any]:
        """The flat, JSON-able dict stored in checkpoints (``config.json`` adds ``version``)."""
        return {"dataset": self.dataset, **self.model.to_dict(), **as_plain(self.data), **as_plain(self.train)}

    def resolved(self) -> "RunConfig":
        """This config with every derived default filled in (see the module doc)."""
        schedule = SCHEDULES[self.model.pretrained]
        train = self.train
        triplet = train.loss == "triplet"
        train = dataclasses.replace(
            train,
            lr=schedule.lr if train.lr is None else train.lr,
            hard_ratios=schedule.hard_ratios if triplet and train.hard_ratios is None else train.hard_ratios,
            label_smoothing=(INFONCE_LABEL_SMOOTHING if not triplet and train.label_smoothing is None
                             else train.label_smoothing),
            **({} if train.sampling == "random" else
               dict(zip(("sampling_select", "sampling_pool"), train.sampling_neighbours()))),
            eval_batch_size=2 * train.batch_size if train.eval_batch_size is None else train.eval_batch_size,
            name=f"{self.dataset}_{self.model.transform}_{self.model.backbone}" if train.name is None else train.name)
        return dataclasses.replace(self, train=train)

    def replace(self, **flat: Any) -> "RunConfig":
        """A copy with some flat settings changed (validated like any config)."""
        return RunConfig.from_dict({**self.to_dict(), **flat})
