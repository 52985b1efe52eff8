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

from helper.errors import UserError

#: Flags that may change when a run is resumed; every other setting comes from the checkpoint.
RESUME_OVERRIDES = ("n_epochs", "device", "workers", "eval_every", "eval_batch_size", "data_root")


def train_main(dataset: str, argv: Optional[Sequence[str]] = None) -> None:
    from helper import distributed
    from helper.checkpoint import load_checkpoint
    from helper.engine import Interrupted, NonFiniteLoss, fit, run_dir_of
    from helper.log import get_logger
    from helper.parser import explicit_flags, parse_train_config
    from helper.tasks import get_task

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_train_config(dataset, argv)
    resume = None
    if cfg["resume"]:
        ignored = sorted(explicit_flags(argv) - set(RESUME_OVERRIDES) - {"resume"})
        if ignored:
            raise UserError(f"--resume continues a run with its stored settings; only "
                            f"{', '.join('--' + k for k in RESUME_OVERRIDES)} may change, not "
                            f"{', '.join('--' + k for k in ignored)} (start a new run with --config "
                            f"<run>/config.json to change others)")
        resume = load_checkpoint(cfg["resume"])
        stored = dict(resume["config"])
        if stored.get("dataset") != dataset:
            raise UserError(f"--resume {cfg['resume']} is a {stored.get('dataset')} run; "
                            f"use train_{stored.get('dataset')}.py")
        for key in RESUME_OVERRIDES:
            if key in explicit_flags(argv):
                stored[key] = cfg[key]
        stored["results_dir"], stored["name"] = os.path.split(os.path.dirname(os.path.abspath(cfg["resume"])))
        path, cfg = cfg["resume"], stored
        if resume["epoch"] >= cfg["n_epochs"] and not resume.get("progress", {}).get("step"):
            raise UserError(f"{path} already finished {resume['epoch']} of {cfg['n_epochs']} epochs; "
                            f"pass a larger --n_epochs to train further")
    elif os.path.exists(os.path.join(run_dir_of(cfg), "last.pth")):
        raise UserError(f"run folder {run_dir_of(cfg)} already holds a run; continue it with "
                        f"--resume {os.path.join(run_dir_of(cfg), 'last.pth')} or choose another --name")

    env = distributed.setup(cfg["device"])
    if cfg["amp"] != "none" and env.device.type != "cuda":
        raise UserError(f"--amp {cfg['amp']} needs a CUDA device; none is available here")
    task = get_task(dataset)
    try:
        fit(cfg, task, env, resume)
    except Interrupted as stop:
        script = f"train_{dataset}.py"
        get_logger().warning("interrupted by signal %d; saved %s. Resume with: python %s --resume %s",
                             stop.signum, stop.checkpoint, script, stop.checkpoint)
        distributed.cleanup()
        sys.exit(128 + stop.signum)
    except NonFiniteLoss as exc:
        get_logger().error("%s", exc)
        distributed.cleanup()
        sys.exit(3)
    distributed.cleanup()


def evaluate_main(dataset: str, argv: Optional[Sequence[str]] = None) -> dict:
    from helper import distributed
    from helper.checkpoint import load_checkpoint, load_model_state
    from helper.engine import write_json_atomic
    from helper.log import setup_logging
    from helper.parser import parse_test_args
    from helper.tasks import get_task
    from models import build_model

    args = parse_test_args(dataset, argv)
    state = load_checkpoint(args.checkpoint)
    cfg = dict(state["config"])
    if cfg.get("dataset") != dataset:
        raise UserError(f"{args.checkpoint} was trained on {cfg.get('dataset')}; use test_{cfg.get('dataset')}.py")
    for key in args.explicit:
        cfg[key] = getattr(args, key)
    cfg["eval_batch_size"] = args.batch_size if "batch_size" in args.explicit else cfg.get("eval_batch_size", 64)
    env = distributed.setup(args.device)
    setup_logging(None, env.is_main)
    task = get_task(dataset)
    model = build_model(dict(cfg, pretrained=False))  # the weights come from the checkpoint
    load_model_state(model, state["model"], args.checkpoint)
    model = distributed.wrap_model(model, env)
    results = {"dataset": dataset, "checkpoint": os.path.abspath(args.checkpoint),
               "transform": cfg["transform"], **task.evaluate(cfg, model, env)}
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
    s2a = results["street_to_satellite"]
    if "hit_rate" in s2a:
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
