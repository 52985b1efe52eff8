"""The training settings and the whole run's configuration, typed and validated once.

A run is ``RunConfig(dataset, model, data, train, objective)``: the model's
:class:`models.config.ModelConfig`, the dataset's :class:`data.cvusa_layout.CVUSAConfig`
or :class:`data.vigor_layout.VigorConfig`, the :class:`TrainConfig` below and the loss's
:class:`helper.objective.ObjectiveConfig`. Plain dicts
exist only at the boundaries: :meth:`RunConfig.to_dict` is the flat ``config.json`` /
checkpoint ``config`` (every field once, under its flag name, plus ``dataset``), and
:meth:`RunConfig.from_dict` reads one back (migrating older layouts first, see
:data:`MIGRATIONS`).

Derived defaults are resolved once, by :meth:`RunConfig.resolved`, and recorded in
``config.json``: ``lr`` follows ``pretrained`` (:data:`LEARNING_RATES`), and so do the triplet loss's
``hard_ratios``; InfoNCE's ``label_smoothing`` has a default (:meth:`ObjectiveConfig.resolved`),
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
from geometry.heading import FULL_CIRCLE
from data import cvusa_layout, vigor_layout
from helper.objective import LAMBDA_OFFSET, LAMBDA_POSE, ObjectiveConfig
from models.config import ModelConfig

AMP_MODES = ("none", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("constant", "cosine")
SAMPLINGS = ("random", "gps", "similarity")


class Neighbours(NamedTuple):
    """Neighbours drawn per anchor, out of a pool of the nearest (Sample4Geo's 64 of 128)."""

    select: int
    pool: int


#: ``--sampling_select`` / ``--sampling_pool`` when none are given.
SAMPLING_NEIGHBOURS = Neighbours(64, 128)
DEVICES = ("auto", "cpu", "cuda")
TOP1P_RULES = ("floor", "plus1")
HEADINGS = ("none", "random")
#: The field-of-view flags of CVUSA only for now (``datasets`` of :func:`common.settings.setting`).
CVUSA_ONLY = ("cvusa",)
#: Seed of the random headings of ``--test_heading random``: the same turns in every evaluation.
TEST_HEADING_SEED = 20200614


#: ``--lr`` when none is given, by ``pretrained``: SAFA's Adam 1e-5 for ImageNet weights, and with
#: :data:`helper.objective.HARD_RATIOS` a schedule that learns from random weights (measured on the
#: synthetic world: 4% R@1 with SAFA's schedule, 100% with this one).
LEARNING_RATES = {True: 1e-5, False: 1e-3}


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
                                  default_text=f"{LEARNING_RATES[True]:g} with --pretrained (SAFA), "
                                               f"{LEARNING_RATES[False]:g} with --no-pretrained")
    weight_decay: float = setting(0.0, "Adam weight decay", minimum=0.0)
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
                               above=0.0, maximum=360.0, datasets=CVUSA_ONLY)
    test_heading: str = setting("none", "evaluation street images: random = turned to a random heading (fixed "
                                        "seed: the same in every evaluation)", choices=lambda: HEADINGS,
                                evaluation=True)
    test_fov: float = setting(360.0, "evaluation street images: field of view in degrees", above=0.0,
                              maximum=360.0, evaluation=True, datasets=CVUSA_ONLY)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.sampling == "random" and (self.sampling_select, self.sampling_pool) != (None, None):
            raise UserError("--sampling_select and --sampling_pool apply to --sampling gps or similarity only; "
                            "drop them or pass --sampling gps|similarity")
        select, pool = self.sampling_neighbours()
        if select > pool and self.sampling != "random":
            raise UserError(f"--sampling_select {select} is more than --sampling_pool {pool}: the neighbours "
                            f"drawn per anchor come out of the pool; lower it or raise --sampling_pool")
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
SECTIONS = (("model", ModelConfig), ("objective", ObjectiveConfig), ("train", TrainConfig))

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
        defaults.update(semi_positive="none", lambda_offset=LAMBDA_OFFSET)
    if cfg.get("dataset") == "cvusa":
        defaults["gps_csv"] = None
    return {**defaults, **cfg}


def _from_version_3(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Version 3 had no CVUSA offset labels: CVUSA runs had no offset head, hence no ``offsets_csv``
    (the default file, never read without ``--regress_offset``) nor offset weight."""
    if cfg.get("dataset") != "cvusa":
        return cfg
    return {"offsets_csv": cvusa_layout.DEFAULT_OFFSETS_CSV, "lambda_offset": LAMBDA_OFFSET, **cfg}


def _from_version_4(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Version 4 had no re-centred retrieval loss."""
    return {"lambda_recentre": 0.0, **cfg}


def _from_version_5(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Version 5 had no pose head (nor its loss weight)."""
    return {"pose": "none", "lambda_pose": LAMBDA_POSE, **cfg}


def _from_version_6(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Version 6's pose head matched a pooled descriptor of the street backbone's features; the
    current one (its own encoders, models/pose.py) has other weights, so such a model cannot load."""
    if cfg.get("pose", "none") != "none":
        raise UserError(f"this run's pose head (--pose {cfg['pose']}, config version 6) is the earlier design, "
                        "whose weights the current pose head cannot load; retrain it with --pose dense, or "
                        "train without a pose head")
    return cfg


#: Version of the stored config (``config.json``'s ``version`` key, a checkpoint's ``version``).
CONFIG_VERSION = 7
#: ``{version: migration}``: a stored config of ``version`` becomes one of ``version + 1``
#: (a config.json without ``version`` is version 1).
MIGRATIONS = {1: _from_version_1, 2: _from_version_2, 3: _from_version_3, 4: _from_version_4,
              5: _from_version_5, 6: _from_version_6}


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
    """One training run: dataset name and the four settings sections."""

    dataset: str
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    objective: ObjectiveConfig = ObjectiveConfig()

    def __post_init__(self) -> None:
        if self.model.polar_files and self.model.transform != "polar":
            raise UserError("--polar_files needs --transform polar (an STN learns from the raw satellite image)")
        self.objective.check(self.model, self.semi_positive, self.train.chunk_size)
        self.data.check_sampling(self.train.sampling)
        train = self.train
        fovs = (("train_fov", train.train_fov), ("test_fov", train.test_fov))
        width = self.model.pano_size[1]
        for name, value in fovs:
            if round(width * value / FULL_CIRCLE) < 1:
                raise UserError(f"--{name} {value:g} covers less than one column of the {width}-column panorama "
                                f"({FULL_CIRCLE / width:.3g} degrees a column); pass at least {FULL_CIRCLE / width:.3g}")
        narrow = [f"--{name} {value:g}" for name, value in fovs if value < FULL_CIRCLE]
        heads = [flag for flag, on in (("--regress_offset", self.model.regress_offset),
                                       (f"--pose {self.model.pose}", self.model.pose != "none")) if on]
        if heads and narrow:
            raise UserError(f"{heads[0]} reads full panoramas, but {' and '.join(narrow)} gives street "
                            f"windows narrower than 360 degrees; drop one of them")
        if self.dataset != "cvusa" and narrow:
            raise UserError(f"--train_fov and --test_fov apply to CVUSA only for now, not {self.dataset}; drop them")

    @property
    def semi_positive(self) -> bool:
        """Whether training adds VIGOR's semi-positive IOU loss (``--semi_positive iou``)."""
        return getattr(self.data, "semi_positive", "none") != "none"

    @property
    def offset_labels(self) -> bool:
        """Whether training reads the offset labels (``--regress_offset``, ``--lambda_recentre`` or ``--pose``)."""
        return self.model.regress_offset or self.objective.lambda_recentre > 0 or self.model.pose != "none"

    def inert(self) -> Dict[str, str]:
        """``{setting: the flag that would make it act}`` for every setting that does nothing in this run
        (each section states its own: ``inert`` of the model, objective and data settings)."""
        return {**self.model.inert(), **self.objective.inert(self.model.transform, self.model.regress_offset, self.model.pose),
                **self.data.inert(self.offset_labels)}

    def refuse_inert(self, given: Mapping[str, str]) -> None:
        """A :class:`UserError` for the first of the ``given`` settings (``{name: where it was set}``) that
        does nothing in this run: a flag the user set must act."""
        inert = self.inert()
        for name, where in given.items():
            if name in inert:
                raise UserError(f"--{name}{where} does nothing without {inert[name]}; pass {inert[name]} or "
                                f"drop --{name}")

    def refuse_untrained_heads(self) -> None:
        """A :class:`UserError` for a training run with an in-tile head whose loss weight is 0: the head would
        be saved at its random start and evaluated as if trained."""
        heads = ((self.model.regress_offset, "--regress_offset", "lambda_offset"),
                 (self.model.pose != "none", f"--pose {self.model.pose}", "lambda_pose"))
        for on, flag, weight in heads:
            if on and getattr(self.objective, weight) == 0:
                raise UserError(f"{flag} with --{weight} 0 never trains its head; pass a --{weight} above 0 or "
                                f"drop {flag}")

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
            return cls(dataset, model, spec.config(**pick(spec.config, cfg)), TrainConfig(**pick(TrainConfig, cfg)),
                       ObjectiveConfig(**pick(ObjectiveConfig, cfg)))
        except UserError as exc:
            raise UserError(f"{source}: {exc}" if source else str(exc)) from None

    def to_dict(self) -> Dict[str, Any]:
        """The flat, JSON-able dict stored in checkpoints (``config.json`` adds ``version``)."""
        return {"dataset": self.dataset, **self.model.to_dict(), **as_plain(self.data), **as_plain(self.train),
                **as_plain(self.objective)}

    def resolved(self) -> "RunConfig":
        """This config with every derived default filled in (see the module doc)."""
        train = self.train
        train = dataclasses.replace(
            train,
            lr=LEARNING_RATES[self.model.pretrained] if train.lr is None else train.lr,
            **({} if train.sampling == "random" else
               dict(zip(("sampling_select", "sampling_pool"), train.sampling_neighbours()))),
            eval_batch_size=2 * train.batch_size if train.eval_batch_size is None else train.eval_batch_size,
            name=f"{self.dataset}_{self.model.transform}_{self.model.backbone}" if train.name is None else train.name)
        return dataclasses.replace(self, train=train, objective=self.objective.resolved(self.model.pretrained))

    def replace(self, **flat: Any) -> "RunConfig":
        """A copy with some flat settings changed (validated like any config)."""
        return RunConfig.from_dict({**self.to_dict(), **flat})
