"""The one command-line definition shared by every entry script.

Precedence: command line > ``--config FILE`` (a JSON object of flag names, e.g. a
previous run's ``config.json``) > the defaults below. The resolved settings form the
plain ``cfg`` dict that is written to ``<results_dir>/<name>/config.json`` and stored in
every checkpoint; ``models.build_model(cfg)`` rebuilds the model from it.

Edit ``DATA_ROOTS`` to point at your copies of the datasets (or pass ``--data_root``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

from helper.errors import UserError
from models import resolve_config

#: Default dataset locations; edit these or pass --data_root.
DATA_ROOTS: Dict[str, str] = {
    "cvusa": os.environ.get("CVUSA_ROOT", "/data/CVUSA"),
    "vigor": os.environ.get("VIGOR_ROOT", "/data/VIGOR"),
}

#: Per-dataset input sizes (H, W): SAFA/Toker sizes for CVUSA, official VIGOR sizes.
DEFAULT_SIZES = {
    "cvusa": {"sate_size": (256, 256), "pano_size": (112, 616)},
    "vigor": {"sate_size": (320, 320), "pano_size": (320, 640)},
}

VIGOR_CITIES = ("NewYork", "Seattle", "SanFrancisco", "Chicago")
VIGOR_CROSS_TRAIN = ("NewYork", "Seattle")
VIGOR_CROSS_TEST = ("SanFrancisco", "Chicago")

#: Keys of the train-time cfg that a test script may override from its own command line.
EVAL_KEYS = ("data_root", "device", "batch_size", "workers", "val_csv", "mode", "cities",
             "train_cities", "test_cities", "top1p")


def size_pair(text: str) -> List[int]:
    """Parse ``H,W`` (or a single ``S`` for a square) into ``[H, W]``."""
    try:
        parts = [int(p) for p in str(text).split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W integers, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 32:
        raise argparse.ArgumentTypeError(f"expected H,W with both >= 32, got {text!r}")
    return parts


def int_pair(text: str) -> List[int]:
    try:
        parts = [int(p) for p in str(text).split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers A,B, got {text!r}") from None
    if len(parts) != 2 or min(parts) < 2:
        raise argparse.ArgumentTypeError(f"expected A,B with both >= 2, got {text!r}")
    return parts


def name_list(text: str) -> List[str]:
    names = [p.strip() for p in str(text).split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def float_list(text: str) -> List[float]:
    try:
        return [float(p) for p in str(text).split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def explicit_flags(argv: Sequence[str]) -> set:
    """The option names (without ``--``) that appear on a command line."""
    return {arg[2:].split("=")[0] for arg in argv if arg.startswith("--")}


def default_workers() -> int:
    """DataLoader workers from the CPUs this process may use (at most 8)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus))


def _add_common(parser: argparse.ArgumentParser, dataset: str) -> None:
    parser.add_argument("--data_root", default=DATA_ROOTS[dataset],
                        help=f"dataset folder (default {DATA_ROOTS[dataset]}; edit helper/parser.py "
                             f"or set {dataset.upper()}_ROOT)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto = cuda when available, else cpu")
    parser.add_argument("--batch_size", type=positive_int, default=32,
                        help="batch size per process (the triplet loss sees all processes' batches)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="DataLoader worker processes per process (0 = load in the main process)")
    parser.add_argument("--top1p", choices=("floor", "plus1"), default="floor",
                        help="R@1%% rule: floor = M//100 (SAFA, TransGeo, Sample4Geo); "
                             "plus1 = int(0.01 M)+1 (official VIGOR, CVM-Net)")
    if dataset == "cvusa":
        parser.add_argument("--val_csv", default="splits/val-19zl.csv",
                            help="evaluation split, relative to data_root (the literature's test split)")
    else:
        parser.add_argument("--mode", choices=("same", "cross"), default="same",
                            help="VIGOR protocol: same-area or cross-area")
        parser.add_argument("--cities", type=name_list, default=list(VIGOR_CITIES),
                            help="same-area cities, in official order (default all four)")
        parser.add_argument("--train_cities", type=name_list, default=list(VIGOR_CROSS_TRAIN),
                            help="cross-area training cities")
        parser.add_argument("--test_cities", type=name_list, default=list(VIGOR_CROSS_TEST),
                            help="cross-area evaluation cities")


def build_train_parser(dataset: str) -> argparse.ArgumentParser:
    """The training command line for ``dataset`` in {cvusa, vigor}."""
    from models.backbones import BACKBONES
    from models.transforms import TRANSFORMS

    parser = argparse.ArgumentParser(
        prog=f"train_{dataset}.py", allow_abbrev=False,
        description=f"Train the SAFA cross-view model on {dataset.upper()}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="JSON file of flag values (e.g. a run's config.json); the command line wins")
    _add_common(parser, dataset)
    sizes = DEFAULT_SIZES[dataset]

    group = parser.add_argument_group("model")
    group.add_argument("--transform", choices=TRANSFORMS.names(), default="polar",
                       help="satellite transformation block")
    group.add_argument("--backbone", choices=BACKBONES.names(), default="vgg16",
                       help="feature extractor of both branches (tiny = small CNN for CPU demos)")
    group.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                       help="ImageNet weights through torchvision (needs them downloaded or cached)")
    group.add_argument("--sate_size", type=size_pair, default=list(sizes["sate_size"]),
                       help="satellite input size H,W")
    group.add_argument("--pano_size", type=size_pair, default=list(sizes["pano_size"]),
                       help="panorama input size H,W (also the transformation block's output size)")
    group.add_argument("--polar_files", action="store_true",
                       help="read precomputed polar images (python -m data.convert_polar) instead of "
                            "computing the polar transform on the fly; needs --transform polar")
    group.add_argument("--attention_maps", type=positive_int, default=8,
                       help="SAFA spatial-aware attention maps per branch")
    group.add_argument("--stn_stages", type=positive_int, default=3,
                       help="composed_affine: number of affine stages")
    group.add_argument("--tps_grid", type=int_pair, default=[6, 10],
                       help="tps: control points GH,GW")
    group.add_argument("--tps_span", type=float, default=0.9,
                       help="tps: control points span [-span, span] of the output frame")
    group.add_argument("--tps_bounded", action="store_true",
                       help="tps: bound the predicted source points with tanh")
    group.add_argument("--stn_init", choices=("identity", "polar"), default="identity",
                       help="tps: start at the identity or at the polar mapping")

    group = parser.add_argument_group("optimisation")
    group.add_argument("--n_epochs", type=positive_int, default=30, help="training epochs")
    group.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate (SAFA: 1e-5)")
    group.add_argument("--weight_decay", type=float, default=0.0, help="Adam weight decay")
    group.add_argument("--lambda_sm", type=float, default=10.0,
                       help="soft-margin triplet loss scale (SAFA: 10)")
    group.add_argument("--lambda_l1", type=float, default=0.0,
                       help="weight of the L1 loss pulling the STN output towards the polar image "
                            "(STN transforms only; 0 = off)")
    group.add_argument("--hard_ratios", type=float_list, default=[1.0, 0.1, 0.05, 0.01],
                       help="hard-negative ratio schedule; changes at equal fractions of --n_epochs")
    group.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                       help="paired horizontal flips of panorama and satellite")
    group.add_argument("--rotate", action="store_true",
                       help="paired 90-degree rotations of the satellite with panorama rolls")
    group.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                       help="mixed precision on CUDA (bf16 recommended on Ampere and newer)")
    group.add_argument("--max_nonfinite", type=int, default=0,
                       help="non-finite losses to skip before aborting (0 = abort at the first)")
    group.add_argument("--seed", type=int, default=0, help="seed of weights, data order and augmentation")

    group = parser.add_argument_group("evaluation and output")
    group.add_argument("--eval_every", type=positive_int, default=1, help="evaluate every N epochs")
    group.add_argument("--eval_batch_size", type=positive_int, default=None,
                       help="batch size for descriptor extraction (default: 2 x --batch_size)")
    group.add_argument("--results_dir", default="results", help="folder holding run folders")
    group.add_argument("--name", default=None,
                       help="run folder name (default <dataset>_<transform>_<backbone>)")
    group.add_argument("--resume", default=None,
                       help="continue the run of this last.pth in its own folder")
    if dataset == "cvusa":
        group.add_argument("--train_csv", default="splits/train-19zl.csv",
                           help="training split, relative to data_root")
    else:
        group.add_argument("--mining", action="store_true",
                           help="fill part of each batch with panoramas of similar satellites "
                                "(mined after each epoch)")
        group.add_argument("--mining_k", type=positive_int, default=16,
                           help="mining: neighbours kept per satellite")
        group.add_argument("--mining_fraction", type=float, default=0.5,
                           help="mining: fraction of each batch drawn from neighbours")
    return parser


def build_test_parser(dataset: str) -> argparse.ArgumentParser:
    """The evaluation command line: the model comes from the checkpoint's stored config."""
    parser = argparse.ArgumentParser(
        prog=f"test_{dataset}.py", allow_abbrev=False,
        description=f"Evaluate a trained checkpoint on {dataset.upper()}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a best.pth/last.pth written by training")
    parser.add_argument("--results_json", default=None,
                        help="write the results here (default: next to the checkpoint, results_<split>.json)")
    _add_common(parser, dataset)
    return parser


def _load_config_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except FileNotFoundError:
        raise UserError(f"--config file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--config file {path} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise UserError(f"--config file {path} must hold a JSON object of flag values")
    return values


def parse_train_config(dataset: str, argv: Optional[Sequence[str]] = None) -> dict:
    """Parse a training command line into the plain ``cfg`` dict (validated)."""
    parser = build_train_parser(dataset)
    args = parser.parse_args(argv)
    if args.config:
        known = {action.dest for action in parser._actions}
        values = _load_config_file(args.config)
        unknown = sorted(set(values) - known - {"dataset", "version"})
        if unknown:
            raise UserError(f"--config file {args.config} has unknown keys: {', '.join(unknown)}")
        values.pop("resume", None)  # a run's config.json never resumes that run
        parser.set_defaults(**{k: v for k, v in values.items() if k in known})
        args = parser.parse_args(argv)
        for action in parser._actions:
            value = getattr(args, action.dest, None)
            if action.choices is not None and value not in action.choices:
                raise UserError(f"--config file {args.config}: {action.dest} = {value!r} is not one of "
                                f"{', '.join(map(str, action.choices))}")
    cfg = vars(args)
    cfg.pop("config")
    cfg["dataset"] = dataset
    if cfg["name"] is None:
        cfg["name"] = f"{dataset}_{cfg['transform']}_{cfg['backbone']}"
    if cfg["eval_batch_size"] is None:
        cfg["eval_batch_size"] = 2 * cfg["batch_size"]
    validate_train_config(cfg)
    return cfg


def validate_train_config(cfg: dict) -> None:
    """Reject flag combinations that cannot work, with a message that says how to fix them."""
    if cfg["polar_files"] and cfg["transform"] != "polar":
        raise UserError("--polar_files needs --transform polar (an STN learns from the raw satellite image)")
    resolve_config(cfg)  # the model's own rules (stn_init, tps_bounded, lambda_l1, ...)
    if cfg["amp"] != "none" and cfg["device"] == "cpu":
        raise UserError(f"--amp {cfg['amp']} needs a CUDA device; drop --amp or use --device cuda")
    if not cfg["hard_ratios"] or not all(0 < r <= 1 for r in cfg["hard_ratios"]):
        raise UserError("--hard_ratios must be numbers in (0, 1], e.g. 1.0,0.1,0.05,0.01")
    if cfg["max_nonfinite"] < 0:
        raise UserError("--max_nonfinite must be >= 0")
    if cfg["workers"] < 0:
        raise UserError("--workers must be >= 0")
    if cfg.get("mining_fraction") is not None and not 0 <= cfg["mining_fraction"] <= 1:
        raise UserError("--mining_fraction must be in [0, 1]")
    if cfg["dataset"] == "vigor":
        _check_cross_area(cfg)


def _check_cross_area(cfg: dict) -> None:
    """Cross-area VIGOR must not train and test on a common city."""
    common = set(cfg["train_cities"]) & set(cfg["test_cities"])
    if cfg["mode"] == "cross" and common:
        raise UserError(f"cross-area VIGOR trains and tests on different cities, but {', '.join(sorted(common))} "
                        f"is in both --train_cities and --test_cities")


def parse_test_args(dataset: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse an evaluation command line; ``explicit`` lists the flags the user actually gave."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_test_parser(dataset).parse_args(argv)
    args.explicit = {k for k in EVAL_KEYS if hasattr(args, k)} & explicit_flags(argv)
    if args.explicit & {"mode", "cities", "train_cities", "test_cities"}:
        _check_cross_area(vars(args))
    return args
