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
from common.settings import shown

#: Settings that may change when a run is resumed; every other setting comes from the checkpoint
#: (it may be repeated on the command line with its stored value).
RESUME_OVERRIDES = ("n_epochs", "device", "workers", "eval_every", "eval_batch_size", "data_root")
#: Flags that branch a resumed run into a new run folder instead of its own.
BRANCH_FLAGS = ("results_dir", "name")


def resume_config(path: str, checkpoint: dict, parsed, dataset: str):
    """The run to continue: the checkpoint's config, its folder (or the ``--results_dir`` /
    ``--name`` given: a branch), and the allowed overrides.

    A flag given with a value other than the stored one (outside :data:`RESUME_OVERRIDES`
    and :data:`BRANCH_FLAGS`) is an error naming both values.
    """
    from helper.config import RunConfig

    stored = RunConfig.from_dict(checkpoint["config"], source=f"checkpoint {path}")
    if stored.dataset != dataset:
        raise UserError(f"--resume {path} is a {stored.dataset} run; use train_{stored.dataset}.py")
    given, kept = parsed.run.to_dict(), stored.to_dict()
    free = set(RESUME_OVERRIDES) | set(BRANCH_FLAGS)
    differ = [key for key in sorted(parsed.explicit - free) if given[key] != kept[key]]
    if differ:
        changes = "; ".join(f"--{key}: stored {shown(kept[key])}, given {shown(given[key])}" for key in differ)
        raise UserError(f"--resume continues a run with its stored settings, but {changes}. Only "
                        f"{', '.join('--' + k for k in RESUME_OVERRIDES)} may change (start a new run with "
                        f"--config <run>/config.json to change others)")
    results_dir, name = os.path.split(os.path.dirname(os.path.abspath(path)))
    overrides = {key: given[key] for key in parsed.explicit & free}
    return stored.replace(**{"results_dir": results_dir, "name": name, **overrides})


def _position(checkpoint: dict) -> tuple:
    return checkpoint["epoch"], checkpoint.get("progress", {}).get("step", 0)


def _described(checkpoint: dict) -> str:
    epoch, step = _position(checkpoint)
    return f"epoch {epoch + 1}, step {step}" if step else f"{epoch} epoch(s) done"


def check_newest(path: str, checkpoint: dict) -> None:
    """Refuse to continue ``path`` in its own folder when that folder's ``last.pth`` is newer:
    resuming would overwrite it and cut its metrics back."""
    last = os.path.join(os.path.dirname(os.path.abspath(path)), "last.pth")
    if os.path.abspath(path) == last or not os.path.exists(last):
        return
    from helper.checkpoint import load_checkpoint

    newest = load_checkpoint(last)
    if _position(newest) > _position(checkpoint):
        raise UserError(f"--resume {path} ({_described(checkpoint)}) is older than {last} "
                        f"({_described(newest)}): continuing it there would overwrite the newer run. Continue "
                        f"the newest with --resume {last}, or branch a new run from {path} with --name NEW_NAME")


def check_epochs(path: str, checkpoint: dict, n_epochs: int) -> bool:
    """Whether ``checkpoint`` has finished all ``n_epochs``; an ``n_epochs`` below the epochs it has
    already started is an error (it would train nothing and record a shorter run)."""
    epoch, step = _position(checkpoint)
    started = epoch + (1 if step else 0)
    if n_epochs < started:
        raise UserError(f"--n_epochs {n_epochs} is below the {started} epoch(s) {path} has already started "
                        f"({_described(checkpoint)}); pass --n_epochs {started} or more")
    return epoch >= n_epochs and not step


def train_main(dataset: str, argv: Optional[Sequence[str]] = None) -> None:
    from common.fileio import check_output_dir
    from helper import distributed
    from helper.checkpoint import check_resumable, load_checkpoint
    from helper.engine import Interrupted, NonFiniteLoss, file_stamp, fit, run_dir_of
    from helper.log import get_logger
    from helper.parser import parse_train_args
    from helper.tasks import get_task

    parsed = parse_train_args(dataset, argv)
    run, resume, fresh, stamp = parsed.run, None, True, None
    if parsed.resume:
        stamp = file_stamp(os.path.join(os.path.dirname(os.path.abspath(parsed.resume)), "last.pth"))
        resume = load_checkpoint(parsed.resume)
        check_resumable(resume, parsed.resume)
        run = resume_config(parsed.resume, resume, parsed, dataset)
        fresh = os.path.abspath(run_dir_of(run)) != os.path.dirname(os.path.abspath(parsed.resume))
        if not fresh:
            check_newest(parsed.resume, resume)
        if check_epochs(parsed.resume, resume, run.train.n_epochs):
            print(f"{parsed.resume} is complete: it finished all {run.train.n_epochs} epochs; nothing to do "
                  f"(pass a larger --n_epochs to train further)", flush=True)
            return
    check_output_dir(run_dir_of(run), "run folder")

    env = distributed.setup(run.train.device)
    if run.train.amp != "none" and env.device.type != "cuda":
        raise UserError(f"--amp {run.train.amp} needs a CUDA device; none is available here")
    exit_code = 0
    try:
        fit(run, get_task(dataset), env, resume, fresh, stamp)
    except Interrupted as stop:
        get_logger().warning("interrupted by signal %d; saved %s. Resume with: python train_%s.py --resume %s",
                             stop.signum, stop.checkpoint, dataset, stop.checkpoint)
        exit_code = 128 + stop.signum
    except NonFiniteLoss as exc:
        get_logger().error("%s", exc)
        exit_code = 3
    distributed.cleanup()  # outside the handlers: their traceback would keep the model alive
    if exit_code:
        sys.exit(exit_code)


def evaluated_view(run, rerank) -> dict:
    """The results JSON's ``view``: what an evaluation tested beyond its split (or VIGOR mode):
    ``test_heading``, ``test_fov`` (of the street images), ``rerank`` (K, 0 = off) and
    ``rerank_score`` (None without re-ranking)."""
    return {"test_heading": run.train.test_heading, "test_fov": run.train.test_fov, "rerank": rerank.rerank,
            "rerank_score": rerank.rerank_score if rerank.rerank else None}


def view_suffix(view: dict) -> str:
    """The results file name's part for ``view``: empty for the plain view (the defaults: north-aligned
    360-degree panoramas, no re-ranking), else one part per setting that differs, e.g.
    ``_heading-random_fov90_rerank10-recentred`` (the default score is not named)."""
    import dataclasses

    from helper.config import TrainConfig
    from helper.rerank import RerankConfig

    plain = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    parts = []
    if view["test_heading"] != plain["test_heading"]:
        parts.append(f"heading-{view['test_heading']}")
    if view["test_fov"] != plain["test_fov"]:
        parts.append(f"fov{view['test_fov']:g}")
    if view["rerank"]:
        score = "" if view["rerank_score"] == RerankConfig().rerank_score else f"-{view['rerank_score']}"
        parts.append(f"rerank{view['rerank']}{score}")
    return "".join(f"_{part}" for part in parts)


def results_path(args, run, task, view: dict) -> str:
    """``--results_json``, or ``results_<checkpoint stem>_<split tag><view suffix>.json`` next to the
    checkpoint (so best/last, each split or VIGOR mode and each view (:func:`view_suffix`) keep
    their own file)."""
    if args.results_json:
        return args.results_json
    stem = os.path.splitext(os.path.basename(args.checkpoint))[0]
    name = f"results_{stem}_{task.split_tag(run)}{view_suffix(view)}.json"
    return os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), name)


def evaluate_main(dataset: str, argv: Optional[Sequence[str]] = None) -> dict:
    from common.fileio import check_output_file, write_json_atomic
    from helper import distributed
    from helper.checkpoint import model_from_checkpoint
    from helper.log import setup_logging
    from helper.parser import parse_test_args
    from helper.rerank import RerankConfig, check_rerank
    from helper.tasks import get_task

    args = parse_test_args(dataset, argv)
    if args.results_json:
        check_output_file(args.results_json, "--results_json")
    stored, model, _ = model_from_checkpoint(args.checkpoint)
    if stored.dataset != dataset:
        raise UserError(f"{args.checkpoint} was trained on {stored.dataset}; use test_{stored.dataset}.py")
    overrides = {key: getattr(args, key) for key in args.explicit | {"device"}}
    run = stored.replace(**overrides, amp="none").resolved()  # evaluation extracts in float32
    run.refuse_inert({key: "" for key in args.explicit})
    check_rerank(run.model, args.rerank, args.rerank_score)
    task = get_task(dataset)
    rerank = RerankConfig(args.rerank, args.rerank_score)
    view = evaluated_view(run, rerank)
    path = results_path(args, run, task, view)
    check_output_file(path, "the results file")
    env = distributed.setup(run.train.device)
    setup_logging(None, env.is_main)
    model = distributed.wrap_model(model, env)
    results = {"dataset": dataset, "checkpoint": os.path.abspath(args.checkpoint),
               "transform": run.model.transform, "view": view, **task.evaluate(run, model, env, rerank=rerank)}
    if env.is_main:
        print(format_table(results), flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # checked before the evaluation
        write_json_atomic(path, results)
        print(f"results written to {path}", flush=True)
    del model  # before the process group goes (distributed.cleanup)
    distributed.cleanup()
    return results


def format_table(results: dict) -> str:
    """A plain-text recall table for both directions (percentages)."""
    header = f"{'direction':<22}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'R@1%':>8}"
    street_to_satellite = results["street_to_satellite"]
    if "hit_rate" in street_to_satellite:
        header += f"{'hit':>8}"
    lines = [f"{results['dataset']} {results.get('split', '')}: {results['queries']} queries, "
             f"{results['references']} references, R@1% uses k = {results['top1p_k']}"]
    if "view" in results:
        lines.append(view_line(results["view"]))
    lines.append(header)
    rerank = results.get("rerank")
    rows = [(direction, results.get(direction)) for direction in ("street_to_satellite", "satellite_to_street")]
    if rerank:
        rows.append((f"re-ranked top {rerank['k']}", rerank["street_to_satellite"]))
    for title, row in rows:
        if row is None:
            continue
        line = f"{title:<22}" + "".join(f"{row[k]:>8.2f}" for k in ("R@1", "R@5", "R@10", "R@1%"))
        if "hit_rate" in row:
            line += f"{row['hit_rate']:>8.2f}"
        lines.append(line)
    lines += _localization_lines(results)
    if rerank:
        lines += [f"re-ranked: {line}" for line in _localization_lines(rerank)]
        how = "matched by the pose head" if rerank["score"] == "pose" else "re-centred and embedded again"
        lines.append(f"re-ranking: {results['queries']} x {rerank['k']} candidates {how} "
                     f"in {rerank['seconds']:.1f} s, scored by {rerank['score']}")
    if "orientation" in results:
        lines.append(orientation_line(results["orientation"]))
    if "pose" in results:
        from helper.pose import pose_line

        lines.append(pose_line(results["pose"]))
    return "\n".join(lines)


def view_line(view: dict) -> str:
    """The line of :func:`format_table` that says which view was tested (:func:`evaluated_view`)."""
    heading = "north-aligned" if view["test_heading"] == "none" else f"{view['test_heading']} headings"
    rerank = f"re-ranked top {view['rerank']} by {view['rerank_score']}" if view["rerank"] else "no re-ranking"
    return f"view: {heading}, {view['test_fov']:g}-degree panoramas; {rerank}"


def _localization_lines(results: dict) -> list:
    """The metre-level lines of :func:`format_table` (VIGOR; with an offset head also the refined ones)."""
    lines = []
    for key, title in (("localization", "localization"), ("localization_refined", "refined by the offset")):
        if key in results:
            loc = results[key]
            within = ", ".join(f"<{k} m {v:.1f}%" for k, v in loc["within_m"].items())
            lines.append(f"{title}: median {loc['median_m']:.1f} m; {within}")
    if "localization_top1_positive" in results:
        hits = results["localization_top1_positive"]
        if hits["queries"]:
            lines.append(f"top-1 = positive ({hits['queries']} queries): median {hits['median_m']:.1f} m at the "
                         f"centre, {hits['median_m_refined']:.1f} m refined")
    return lines


def orientation_line(orientation: dict) -> str:
    """The heading-error line of :func:`format_table` (over the queries whose top-1 is correct)."""
    if orientation["median_deg"] is None:
        return "orientation: no query has a correct top-1"
    within = ", ".join(f"<={k} deg {v:.1f}%" for k, v in orientation["within_deg"].items())
    return (f"orientation ({orientation['queries']} correct top-1): median heading error "
            f"{orientation['median_deg']:.1f} deg; {within}")
