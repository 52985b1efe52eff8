"""What the four entry scripts do; they only choose the dataset.

``train_main("cvusa")`` parses the shared command line, prepares the run folder (or
resumes one) and calls :func:`helper.engine.fit`. ``evaluate_main("cvusa")`` rebuilds the
model from a checkpoint's stored config, loads its weights strictly, evaluates, prints
a recall table and writes the results JSON.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from common.errors import UserError

#: Settings that may change when a run is resumed; every other setting comes from the checkpoint
#: (it may be repeated on the command line with its stored value).
RESUME_OVERRIDES = ("n_epochs", "device", "workers", "eval_every", "eval_batch_size", "data_root")


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def resume_config(path: str, checkpoint: dict, parsed, dataset: str):
    """The run to continue: the checkpoint's config, its folder, and the allowed overrides.

    A flag given with a value other than the stored one (outside :data:`RESUME_OVERRIDES`)
    is an error naming both values.
    """
    from helper.config import RunConfig

    stored = RunConfig.from_dict(checkpoint["config"], source=f"checkpoint {path}")
    if stored.dataset != dataset:
        raise UserError(f"--resume {path} is a {stored.dataset} run; use train_{stored.dataset}.py")
    given, kept = parsed.run.to_dict(), stored.to_dict()
    differ = [key for key in sorted(parsed.explicit - set(RESUME_OVERRIDES)) if given[key] != kept[key]]
    if differ:
        changes = "; ".join(f"--{key}: stored {_shown(kept[key])}, given {_shown(given[key])}" for key in differ)
        raise UserError(f"--resume continues a run with its stored settings, but {changes}. Only "
                        f"{', '.join('--' + k for k in RESUME_OVERRIDES)} may change (start a new run with "
                        f"--config <run>/config.json to change others)")
    results_dir, name = os.path.split(os.path.dirname(os.path.abspath(path)))
    overrides = {key: given[key] for key in parsed.explicit & set(RESUME_OVERRIDES)}
    return stored.replace(results_dir=results_dir, name=name, **overrides)


def train_main(dataset: str, argv: Optional[Sequence[str]] = None) -> None:
    from helper import distributed
    from helper.checkpoint import load_checkpoint
    from helper.engine import Interrupted, NonFiniteLoss, fit, run_dir_of
    from helper.log import get_logger
    from helper.parser import parse_train_args
    from helper.tasks import get_task

    parsed = parse_train_args(dataset, argv)
    run, resume = parsed.run, None
    if parsed.resume:
        resume = load_checkpoint(parsed.resume)
        run = resume_config(parsed.resume, resume, parsed, dataset)
        if resume["epoch"] >= run.train.n_epochs and not resume.get("progress", {}).get("step"):
            print(f"{parsed.resume} is complete: it finished all {run.train.n_epochs} epochs; nothing to do "
                  f"(pass a larger --n_epochs to train further)", flush=True)
            return
    elif os.path.exists(os.path.join(run_dir_of(run), "last.pth")):
        raise UserError(f"run folder {run_dir_of(run)} already holds a run; continue it with "
                        f"--resume {os.path.join(run_dir_of(run), 'last.pth')} or choose another --name")

    env = distributed.setup(run.train.device)
    if run.train.amp != "none" and env.device.type != "cuda":
        raise UserError(f"--amp {run.train.amp} needs a CUDA device; none is available here")
    try:
        fit(run, get_task(dataset), env, resume)
    except Interrupted as stop:
        get_logger().warning("interrupted by signal %d; saved %s. Resume with: python train_%s.py --resume %s",
                             stop.signum, stop.checkpoint, dataset, stop.checkpoint)
        distributed.cleanup()
        sys.exit(128 + stop.signum)
    except NonFiniteLoss as exc:
        get_logger().error("%s", exc)
        distributed.cleanup()
        sys.exit(3)
    distributed.cleanup()


def evaluate_main(dataset: str, argv: Optional[Sequence[str]] = None) -> dict:
    from common.fileio import write_json_atomic
    from helper import distributed
    from helper.checkpoint import load_checkpoint, load_model_state
    from helper.config import RunConfig
    from helper.log import setup_logging
    from helper.parser import parse_test_args
    from helper.tasks import get_task
    from models import build_model

    args = parse_test_args(dataset, argv)
    state = load_checkpoint(args.checkpoint)
    stored = RunConfig.from_dict(state["config"], source=f"checkpoint {args.checkpoint}")
    if stored.dataset != dataset:
        raise UserError(f"{args.checkpoint} was trained on {stored.dataset}; use test_{stored.dataset}.py")
    overrides = {key: getattr(args, key) for key in args.explicit | {"device"}}
    run = stored.replace(**overrides, amp="none").resolved()  # evaluation extracts in float32
    env = distributed.setup(run.train.device)
    setup_logging(None, env.is_main)
    task = get_task(dataset)
    model = build_model(run.model.replace(pretrained=False))  # the weights come from the checkpoint
    load_model_state(model, state["model"], args.checkpoint)
    model = distributed.wrap_model(model, env)
    results = {"dataset": dataset, "checkpoint": os.path.abspath(args.checkpoint),
               "transform": run.model.transform, **task.evaluate(run, model, env)}
    if env.is_main:
        print(format_table(results), flush=True)
        path = args.results_json or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                                 f"results_{dataset}.json")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_json_atomic(path, results)
        print(f"results written to {path}", flush=True)
    distributed.cleanup()
    return results


def format_table(results: dict) -> str:
    """A plain-text recall table for both directions (percentages)."""
    header = f"{'direction':<22}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'R@1%':>8}"
    street_to_satellite = results["street_to_satellite"]
    if "hit_rate" in street_to_satellite:
        header += f"{'hit':>8}"
    lines = [f"{results['dataset']} {results.get('split', '')}: {results['queries']} queries, "
             f"{results['references']} references, R@1% uses k = {results['top1p_k']}", header]
    for direction in ("street_to_satellite", "satellite_to_street"):
        if direction not in results:
            continue
        row = results[direction]
        line = f"{direction:<22}" + "".join(f"{row[k]:>8.2f}" for k in ("R@1", "R@5", "R@10", "R@1%"))
        if "hit_rate" in row:
            line += f"{row['hit_rate']:>8.2f}"
        lines.append(line)
    if "localization" in results:
        loc = results["localization"]
        within = ", ".join(f"<{k} m {v:.1f}%" for k, v in loc["within_m"].items())
        lines.append(f"localization: median {loc['median_m']:.1f} m; {within}")
    return "\n".join(lines)
