"""The command lines of the four entry scripts, generated from the typed settings.

Every settings flag is a field of :class:`models.config.ModelConfig`, the dataset's config
(:mod:`data.cvusa_layout`, :mod:`data.vigor_layout`) or :class:`helper.config.TrainConfig`
(:func:`common.settings.add_settings`), so a flag cannot drift from its field. Precedence:
command line > ``--config FILE`` (a JSON object of flag names, e.g. a previous run's
``config.json``) > the defaults. The result is a validated, resolved
:class:`helper.config.RunConfig`.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, NamedTuple, Optional, Sequence, Set

from common.errors import UserError
from common.settings import add_settings, fields_of
from helper.config import CONFIG_VERSION, DATASETS, SECTIONS, RunConfig, TrainConfig, migrate_config, model_defaults
from helper.rerank import RerankConfig

#: Keys a config file may carry besides settings (a run's config.json holds them).
_FILE_ONLY_KEYS = ("dataset", "version", "resume")


def explicit_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> Set[str]:
    """The destinations of the options that appear on a command line (``--no-x`` counts as ``x``)."""
    by_option = {option: action.dest for action in parser._actions for option in action.option_strings}
    given = set()
    for arg in argv:
        if arg.startswith("--"):
            option = arg.split("=", 1)[0]
            if option in by_option:
                given.add(by_option[option])
    return given


def entry_point_fields(cls, dataset: str) -> list:
    """Names of the fields of ``cls`` that the entry points of ``dataset`` take (the ``datasets`` of
    :func:`common.settings.setting`)."""
    return [name for name, (field, _, _) in fields_of(cls).items()
            if field.metadata["datasets"] is None or dataset in field.metadata["datasets"]]


def evaluation_fields(cls, dataset: Optional[str] = None) -> list:
    """Names of the fields of ``cls`` that the test scripts (of ``dataset``) take too."""
    names = fields_of(cls) if dataset is None else entry_point_fields(cls, dataset)
    return [name for name in names if fields_of(cls)[name][0].metadata["evaluation"]]


def build_train_parser(dataset: str) -> argparse.ArgumentParser:
    """The training command line for ``dataset`` in {cvusa, vigor}."""
    parser = argparse.ArgumentParser(prog=f"train_{dataset}.py", allow_abbrev=False,
                                     description=f"Train the SAFA cross-view model on {dataset.upper()}.")
    parser.add_argument("--config", default=None,
                        help="JSON file of flag values (e.g. a run's config.json); the command line wins")
    parser.add_argument("--resume", default=None,
                        help="continue the run of this last.pth in its own folder (flags equal to the stored "
                             "values may be repeated)")
    add_settings(parser.add_argument_group("data"), DATASETS[dataset].config)
    groups = {"model": ("model", model_defaults(dataset)), "objective": ("training objective", {}),
              "train": ("training, evaluation and output", {})}
    for key, cls in SECTIONS:
        title, defaults = groups[key]
        add_settings(parser.add_argument_group(title), cls, defaults, names=entry_point_fields(cls, dataset))
    return parser


def build_test_parser(dataset: str) -> argparse.ArgumentParser:
    """The evaluation command line: the model comes from the checkpoint's stored config, and so
    does every setting not given here except ``--device`` (default auto: the machine that
    evaluates is rarely the one that trained). ``--batch_size`` sets the extraction batch. ``--rerank``
    (:class:`helper.rerank.RerankConfig`) is a test-only setting, not stored with the run."""
    parser = argparse.ArgumentParser(prog=f"test_{dataset}.py", allow_abbrev=False,
                                     description=f"Evaluate a trained checkpoint on {dataset.upper()}.")
    parser.add_argument("--checkpoint", required=True, help="a best.pth/last.pth written by training")
    parser.add_argument("--results_json", default=None,
                        help="write the results here (default: next to the checkpoint, results_<checkpoint stem>_<split>.json, "
                             "e.g. results_best_val-19zl.json or results_last_same.json for VIGOR same-area)")
    spec = DATASETS[dataset].config
    stored = "the checkpoint's"
    data_names = evaluation_fields(spec)
    add_settings(parser, spec, names=data_names, default_text={name: stored for name in data_names})
    train_names = [name for name in evaluation_fields(TrainConfig, dataset) if name != "batch_size"] + ["eval_batch_size"]
    add_settings(parser, TrainConfig, names=train_names, flags={"eval_batch_size": "batch_size"},
                 default_text={**{name: stored for name in train_names if name != "device"},
                               "eval_batch_size": "the checkpoint's --eval_batch_size"})
    add_settings(parser, RerankConfig)
    return parser


def load_config_file(path: str) -> Dict[str, Any]:
    """The JSON object of a ``--config`` file (a :class:`UserError` for anything else)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a byte-order mark is fine
            values = json.load(handle)
    except FileNotFoundError:
        raise UserError(f"--config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"--config {path} is a directory; pass a JSON file such as <run>/config.json") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--config file {path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot read --config file {path}: {exc.strerror}") from None
    if not isinstance(values, dict):
        raise UserError(f"--config file {path} must hold a JSON object of flag values")
    return values


class TrainArgs(NamedTuple):
    """A parsed training command line."""

    run: RunConfig  # validated and resolved
    resume: Optional[str]
    explicit: Set[str]  # settings given on the command line


def parse_train_args(dataset: str, argv: Optional[Sequence[str]] = None) -> TrainArgs:
    """Parse a training command line (and its ``--config`` file) into a :class:`TrainArgs`.

    Every setting the user set (on the command line, or in the ``--config`` file with a value other than
    the default: a run's config.json records every setting) must act in this run
    (:meth:`RunConfig.refuse_inert`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_train_parser(dataset)
    args = vars(parser.parse_args(argv))
    config_path, resume = args.pop("config"), args.pop("resume")
    explicit = explicit_flags(argv, parser) - {"config", "resume"}
    values = dict(args)
    given = {}
    source = None
    if config_path:
        source = f"--config file {config_path}"
        stored = load_config_file(config_path)
        if stored.get("dataset", dataset) != dataset:
            raise UserError(f"{source} is a {stored['dataset']} config; use train_{stored['dataset']}.py")
        stored = migrate_config(stored, _config_version(stored, source))
        settings = {k: v for k, v in stored.items() if k not in _FILE_ONLY_KEYS}
        values.update(settings)
        given = {k: f" (in {source})" for k, v in settings.items()
                 if k in args and _plain(v) != _plain(parser.get_default(k))}
        values.update({k: args[k] for k in explicit})
    run = RunConfig.from_dict(values, dataset, source=source)
    run.refuse_inert({**given, **{k: "" for k in explicit}})
    run.refuse_untrained_heads()
    return TrainArgs(run.resolved(), resume, explicit)


def _config_version(stored: Dict[str, Any], source: str) -> int:
    """The ``version`` of a ``--config`` file's settings (1 without the key); a :class:`UserError` for one this
    code cannot read, and for a ``resume`` path, which a config file does not act on."""
    version = stored.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= CONFIG_VERSION:
        raise UserError(f"{source} has version {version!r}; this code reads config versions 1 to {CONFIG_VERSION} "
                        f"(a newer one: update the code)")
    if stored.get("resume") is not None:
        raise UserError(f"{source} holds 'resume': {stored['resume']!r}, but --config only reads settings and starts "
                        f"a new run; to continue that run pass --resume {stored['resume']}, or delete the key")
    return version


def _plain(value: Any) -> Any:
    """A setting's value as JSON holds it (tuples as lists), to compare a file's value with a default."""
    return list(value) if isinstance(value, tuple) else value


def parse_train_config(dataset: str, argv: Optional[Sequence[str]] = None) -> dict:
    """A training command line as the flat dict of :meth:`RunConfig.to_dict` plus its ``resume`` path."""
    parsed = parse_train_args(dataset, argv)
    return {**parsed.run.to_dict(), "resume": parsed.resume}


def parse_test_args(dataset: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse an evaluation command line; ``explicit`` lists the stored settings the user actually gave."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_test_parser(dataset)
    args = parser.parse_args(argv)
    given = explicit_flags(argv, parser)
    if "rerank_score" in given and not args.rerank:
        parser.error("--rerank_score scores the candidates of --rerank K; pass --rerank K too, or drop it")
    args.explicit = given - {"checkpoint", "results_json"} - set(fields_of(RerankConfig))
    spec = DATASETS[dataset].config
    if args.explicit & set(fields_of(spec)):
        spec(**{name: getattr(args, name) for name in evaluation_fields(spec)})  # e.g. the cross-area rule
    return args
