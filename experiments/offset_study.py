"""The off-centre study: what recovers retrieval when the panorama is not at the aerial's centre.

Every cell is trained for several seeds (each seed is the world's and the run's) and reported
as street->satellite R@1 per seed, their mean and a 95% Student-t interval. Cells:

CVUSA layout (``python -m data.synthetic --max_offset F``; ``--offsets``, default 0.4; the
centred world, max offset 0, trains ``--centred_cells``, default polar and offcentre, the
recipe's control):

* ``polar``: SAFA's polar transform, the baseline;
* ``tps_l1``: the seed's setting, an identity-initialised TPS guided to the polar image by the
  L1 loss (``--transform tps --lambda_l1 1``);
* ``polar_offset``, ``tps_l1_offset``: the same with the offset head (``--regress_offset``,
  trained on the world's ``offsets.csv``), evaluated as they rank and re-ranked
  (``--rerank K``: the top K aerials re-centred at the predicted camera position), with each
  ``--rerank_score`` (``+rerank``: sum, the default; ``+rerank_recentred``);
* ``offcentre``: the shipped off-centre recipe (``--config configs/cvusa_offcentre.json``);
* ``polar_offset_l1``, ``offcentre_offset_l1``: polar and the recipe with the offset head at
  ``--lambda_offset 1`` (100x the official weight), also re-ranked;
* ``polar_recentred``: polar with the re-centred loss (``--lambda_recentre 1``: the positives also
  embedded re-centred on their labelled camera point), no offset head;
* ``polar_offset_recentred``, ``offcentre_offset_recentred``: ``polar_offset_l1`` and
  ``offcentre_offset_l1`` with the re-centred loss, also re-ranked.

On the off-centre worlds every CVUSA-layout cell, and every VIGOR cell, is also re-ranked on the
TRUE offsets (``experiments/rerank_true_offsets.py``, scored by the re-centred similarity): an
oracle, what a perfect offset head would give.

Pose head cells (``--pose dense``, :mod:`models.pose`), on either layout: ``polar_pose`` and
``polar_pose_heading`` (the same trained and tested with panoramas turned to random headings,
``--train_heading random --test_heading random``), ranked and re-ranked by the pose score
(``--rerank K --rerank_score pose``: ``+rerank_pose``). Every cell with an in-tile head also
reports its positives-known errors (``positives_known``: the test script's ``pose`` block for the
pose head; ``rerank_true_offsets.py``'s ``offset_positives`` for the MLP offset head), metres on
VIGOR and aerial pixels on the CVUSA layout, with the tile centre's and, with unknown headings, the
heading errors; ``pose_vs_mlp`` pairs them per seed.

VIGOR layout (synthetic; its panoramas are off-centre by construction): ``polar``,
``polar_iou_offset`` (``--semi_positive iou --regress_offset``, also re-ranked),
``polar_iou_offset_l1`` (the same with ``--lambda_offset 1``, 100x the official weight) and
``polar_iou_offset_recentred`` (that with ``--lambda_recentre 1``), the pose cells and
``polar_iou_pose`` / ``polar_iou_pose_heading`` (the pose head also trained on the semi-positives,
the MLP head's training data); with an offset head a cell also
reports the metre-level error of the queries whose top-1 is their positive, at the tile centre
and refined by the offset.

Writes the JSON file (``--out``), prints it as one JSON line and a Markdown table on stderr, and
with ``--plot`` draws the means with their intervals.

    python experiments/offset_study.py --keep /tmp/study --plot docs/images/offset_study.png  # the whole study
    python experiments/offset_study.py --cells polar,offcentre --offsets 0.4 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.harness import (ROOT, add_common_arguments, cvusa_world, finish, interval_text,  # noqa: E402
                                 mean_interval, names, train, vigor_world, work_folder, write_json)

RECIPE = os.path.join(ROOT, "configs", "cvusa_offcentre.json")
TPS_L1 = ["--transform", "tps", "--lambda_l1", "1"]
HEAD_L1 = ["--regress_offset", "--lambda_offset", "1"]
RECENTRED = ["--lambda_recentre", "1"]
POSE = ["--transform", "polar", "--pose", "dense"]
UNKNOWN_HEADING = ["--train_heading", "random", "--test_heading", "random"]
#: In-tile head kinds of a cell (None: no head): an ``offset`` head (re-ranked by the re-centred
#: scores) or a ``pose`` head (re-ranked by the pose score).
OFFSET, POSE_HEAD = "offset", "pose"
POSE_CELLS = {"polar_pose": (POSE, POSE_HEAD), "polar_pose_heading": ([*POSE, *UNKNOWN_HEADING], POSE_HEAD)}
#: CVUSA-layout cells: flags, and the model's in-tile head kind (then also re-ranked).
CVUSA_CELLS = {
    "polar": (["--transform", "polar"], None),
    "tps_l1": (TPS_L1, None),
    "polar_offset": (["--transform", "polar", "--regress_offset"], OFFSET),
    "tps_l1_offset": ([*TPS_L1, "--regress_offset"], OFFSET),
    "polar_offset_l1": (["--transform", "polar", *HEAD_L1], OFFSET),
    "polar_recentred": (["--transform", "polar", *RECENTRED], None),
    "polar_offset_recentred": (["--transform", "polar", *HEAD_L1, *RECENTRED], OFFSET),
    "offcentre": (["--config", RECIPE], None),
    "offcentre_offset_l1": (["--config", RECIPE, *HEAD_L1], OFFSET),
    "offcentre_offset_recentred": (["--config", RECIPE, *HEAD_L1, *RECENTRED], OFFSET),
    **POSE_CELLS,
}
VIGOR_IOU = ["--transform", "polar", "--semi_positive", "iou"]
VIGOR_CELLS = {
    "polar": (["--transform", "polar"], None),
    "polar_iou_offset": ([*VIGOR_IOU, "--regress_offset"], OFFSET),
    "polar_iou_offset_l1": ([*VIGOR_IOU, *HEAD_L1], OFFSET),
    "polar_iou_offset_recentred": ([*VIGOR_IOU, *HEAD_L1, *RECENTRED], OFFSET),
    **POSE_CELLS,
    "polar_iou_pose": ([*VIGOR_IOU, "--pose", "dense"], POSE_HEAD),
    "polar_iou_pose_heading": ([*VIGOR_IOU, "--pose", "dense", *UNKNOWN_HEADING], POSE_HEAD),
}
#: Cells with the re-centred loss and the same cell without it (paired in the summary).
RECENTRED_PAIRS = {"polar_recentred": "polar", "polar_offset_recentred": "polar_offset_l1",
                   "offcentre_offset_recentred": "offcentre_offset_l1",
                   "polar_iou_offset_recentred": "polar_iou_offset_l1"}
VIGOR_CITIES = ("NewYork", "Seattle")
#: Suffix of a cell re-ranked with ``--rerank K --rerank_score`` each score, by head kind.
RERANKED = {OFFSET: {"sum": "+rerank", "recentred": "+rerank_recentred"}, POSE_HEAD: {"pose": "+rerank_pose"}}
#: Off-centre CVUSA-layout cells and VIGOR cells are also re-ranked on the true offsets (no head needed),
#: scored by the re-centred similarity alone: the oracle of a perfect offset head.
TRUE_RERANKED = "+rerank_true_offsets"
TRUE_SCORE = "recentred"


def evaluate(args, run_dir: str, layout: str, data: str, score: Optional[str] = None) -> dict:
    """The test script's results JSON for the run's checkpoint; with ``score`` re-ranked
    (``--rerank K --rerank_score score``, a model with an in-tile head)."""
    out = os.path.join(run_dir, "study_results.json" if score is None else f"study_results_{score}.json")
    if not os.path.exists(out):
        rerank = [] if score is None else ["--rerank", str(args.rerank), "--rerank_score", score]
        with open(os.path.splitext(out)[0] + ".log", "w") as log:
            subprocess.run([sys.executable, f"test_{layout}.py", "--checkpoint", os.path.join(run_dir, "best.pth"),
                            "--data_root", data, "--results_json", out, "--device", args.device, "--workers",
                            str(args.workers), *rerank], cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.load(open(out))


def true_offsets(args, run_dir: str, data: str) -> dict:
    """The output of ``experiments/rerank_true_offsets.py`` for the run (R@1 re-ranked on the true
    offsets by :data:`TRUE_SCORE`; with an offset head its error next to the mean offset's)."""
    out = os.path.join(run_dir, "study_true_offsets.json")
    if not os.path.exists(out):
        line = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "rerank_true_offsets.py"),
                               "--checkpoint", os.path.join(run_dir, "best.pth"), "--data_root", data, "--rerank",
                               str(args.rerank), "--rerank_score", TRUE_SCORE, "--device", args.device,
                               "--workers", str(args.workers)],
                              cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        with open(out, "w") as handle:
            handle.write(line + "\n")
    return json.load(open(out))


def cell_results(args, run_dir: str, layout: str, data: str, kind: Optional[str]):
    """``(results JSON, {suffix: R@1})``: as ranked and, with an in-tile head of ``kind``, re-ranked by each
    of its scores."""
    if kind is None:
        results = evaluate(args, run_dir, layout, data)
        return results, {"": results["street_to_satellite"]["R@1"]}
    by_score = {score: evaluate(args, run_dir, layout, data, score) for score in RERANKED[kind]}
    results = next(iter(by_score.values()))
    values = {"": results["street_to_satellite"]["R@1"]}
    values.update({RERANKED[kind][score]: r["rerank"]["street_to_satellite"]["R@1"] for score, r in by_score.items()})
    return results, values


def run_layout(args, work: str, layout: str, cells: List[str], worlds: Dict[str, str], seed: int, out: dict,
               localization: dict, offset_error: dict, positives_known: dict) -> None:
    """Train and evaluate ``cells`` of ``layout`` on each of ``worlds`` ({row label: data folder}),
    filling ``out`` (R@1), ``localization`` (VIGOR, top-1 positives), ``offset_error`` (offset
    heads: mean squared error of the normalised offsets, head and mean offset) and ``positives_known``
    (in-tile heads: the ``pose`` block of each seed)."""
    table = CVUSA_CELLS if layout == "cvusa" else VIGOR_CELLS
    for row, data in worlds.items():
        for cell in cells:
            flags, kind = table[cell]
            name = f"{layout}_{row}_{cell}_seed{seed}"
            if layout == "vigor":
                flags = [*flags, "--cities", ",".join(VIGOR_CITIES)]
            run_dir = train(args, work, f"train_{layout}.py", data, name, seed, flags)
            results, values = cell_results(args, run_dir, layout, data, kind)
            block = results.get("pose")
            if layout == "vigor" or float(row) > 0:
                truth = true_offsets(args, run_dir, data)
                values[TRUE_RERANKED] = truth["rerank"]["R@1_true_offsets"]
                if kind == OFFSET:
                    offset_error.setdefault(layout, {}).setdefault(row, {}).setdefault(cell, {})[str(seed)] = \
                        truth["offset_mse"]
                    block = truth["offset_positives"]
            if block is not None:
                positives_known.setdefault(layout, {}).setdefault(row, {}).setdefault(cell, {})[str(seed)] = block
            for suffix, r1 in values.items():
                out.setdefault(row, {}).setdefault(cell + suffix, {}).setdefault("per_seed", {})[str(seed)] = r1
                print(f"{name}{suffix}: R@1 {r1:.2f}", file=sys.stderr, flush=True)
            if "localization_top1_positive" in results:
                block = results["localization_top1_positive"]
                localization.setdefault(cell, {})[str(seed)] = block


def summarise(table: dict) -> None:
    for row in table.values():
        for cell in row.values():
            cell.update(mean_interval(list(cell["per_seed"].values())))


def paired(table: dict, cell: str, baseline: str) -> dict:
    """Per world, ``cell`` against ``baseline`` over their common seeds: the per-seed R@1 differences
    with their mean and interval, and the ratio of the means."""
    out = {}
    for row, cells in table.items():
        if cell in cells and baseline in cells:
            a, b = cells[cell]["per_seed"], cells[baseline]["per_seed"]
            seeds = [s for s in a if s in b]
            diff = {s: round(a[s] - b[s], 2) for s in seeds}
            ratio = sum(a[s] for s in seeds) / max(sum(b[s] for s in seeds), 1e-9)
            out[row] = {"difference": {"per_seed": diff, **mean_interval(list(diff.values()))},
                        "ratio_of_means": round(ratio, 3)}
    return out


#: How a cell was evaluated (its name's suffix) -> legend label and bar colour of the plot.
VARIANTS = {"": ("ranked", "#4c72b0"), RERANKED[OFFSET]["sum"]: ("--rerank (sum)", "#dd8452"),
            RERANKED[OFFSET]["recentred"]: ("--rerank (recentred)", "#ccb974"),
            RERANKED[POSE_HEAD]["pose"]: ("--rerank (pose)", "#55a868"),
            TRUE_RERANKED: ("true offsets (recentred)", "#8c8c8c")}


def split_variant(name: str):
    """``(cell, suffix)`` of a table entry such as ``polar_offset+rerank``."""
    suffix = next((s for s in VARIANTS if s and name.endswith(s)), "")
    return name[:len(name) - len(suffix)], suffix


def drop_empty(pairs: dict) -> dict:
    """The entries of ``pairs`` (cell -> :func:`paired`) whose cells were both run."""
    return {cell: value for cell, value in pairs.items() if value}


def plot(path: str, summary: dict) -> None:
    """Grouped bars, one group per cell and one bar per variant (ranked, re-ranked, true offsets): the
    mean R@1 with its 95% interval and the seeds as dots, one panel per world."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"CVUSA layout, max offset {row}", cells) for row, cells in summary["cvusa"].items()]
    panels += [("VIGOR layout (synthetic)", cells) for cells in summary["vigor"].values()]
    if not panels:
        return
    groups = [list(dict.fromkeys(split_variant(name)[0] for name in cells)) for _, cells in panels]
    widths = [max(3.5, 1.3 * len(names)) for names in groups]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 4.0), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    bar = 0.8 / len(VARIANTS)
    for ax, (title, cells), names in zip(axes[0], panels, groups):
        for name, v in cells.items():
            cell, suffix = split_variant(name)
            x = names.index(cell) + (list(VARIANTS).index(suffix) - (len(VARIANTS) - 1) / 2) * bar
            label, colour = VARIANTS[suffix]
            error = v["ci95"] or 0.0
            ax.bar(x, v["mean"], bar, yerr=error, capsize=2, color=colour, label=label)
            ax.scatter([x] * len(v["per_seed"]), list(v["per_seed"].values()), s=6, color="black", zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("street->satellite R@1 (%)")
        ax.set_ylim(0, 1.3 * ax.get_ylim()[1])  # room for the legend
        handles = dict(zip(*ax.get_legend_handles_labels()[::-1]))
        ax.legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", ncol=2)
    fig.suptitle(f"mean of {len(summary['settings']['seeds'].split(','))} seeds, 95% intervals, seeds as dots",
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: Numbers of a ``pose`` block summarised over seeds (the unit suffix added: ``_m`` or ``_px``).
POSITIVE_KEYS = ("median", "mean", "centre_median", "centre_mean")


def _unit(block: dict) -> str:
    return "m" if "median_m" in block else "px"


def summarise_positives(known: dict) -> dict:
    """Per layout, world and cell: each seed's ``pose`` block and, over the seeds, the mean and interval of
    the median and mean errors (head and tile centre), the heading median and the share within 10 deg."""
    out: dict = {}
    for layout, rows in known.items():
        for row, cells in rows.items():
            for cell, seeds in cells.items():
                unit = _unit(next(iter(seeds.values())))
                entry = {"unit": unit, "per_seed": seeds}
                for key in POSITIVE_KEYS:
                    entry[f"{key}_{unit}"] = mean_interval([b[f"{key}_{unit}"] for b in seeds.values()])
                if all("heading_median_deg" in b for b in seeds.values()):
                    entry["heading_median_deg"] = mean_interval([b["heading_median_deg"] for b in seeds.values()])
                    entry["heading_within_10_deg"] = mean_interval([b["heading_within_deg"]["10"]
                                                                    for b in seeds.values()])
                out.setdefault(layout, {}).setdefault(row, {})[cell] = entry
    return out


#: The pose cell and the MLP offset-head cell compared by :func:`pose_vs_mlp`, per layout.
POSE_VERSUS = {"cvusa": ("polar_pose", "polar_offset_l1"), "vigor": ("polar_iou_pose", "polar_iou_offset_l1")}


def pose_vs_mlp(known: dict) -> dict:
    """Per layout and world, per seed: the pose head's median error over the MLP offset head's and over the
    tile centre's (the issue's targets: at most 0.5 and 0.35), for the seeds both cells ran."""
    out: dict = {}
    for layout, (pose, mlp) in POSE_VERSUS.items():
        for row, cells in known.get(layout, {}).items():
            if pose not in cells:
                continue
            unit = _unit(next(iter(cells[pose].values())))
            entry = {}
            for seed, block in cells[pose].items():
                ratios = {"over_centre": round(block[f"median_{unit}"] / block[f"centre_median_{unit}"], 3)}
                if seed in cells.get(mlp, {}):
                    ratios["over_mlp"] = round(block[f"median_{unit}"] / cells[mlp][seed][f"median_{unit}"], 3)
                entry[seed] = ratios
            out.setdefault(layout, {})[row] = {"pose": pose, "mlp": mlp, "per_seed": entry}
    return out


def plot_positives(path: str, table: dict) -> None:
    """Positives known: per world, the median error of each in-tile cell and of the tile centre (the
    mean over seeds with its 95% interval, the seeds as dots), and with an unknown heading the heading
    median on a second axis row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = [(f"{layout} {row}", cells) for layout, rows in table.items() for row, cells in rows.items()]
    if not worlds:
        return
    fig, axes = plt.subplots(2, len(worlds), figsize=(4.5 * len(worlds), 6.0), squeeze=False)
    for column, (title, cells) in enumerate(worlds):
        unit = next(iter(cells.values()))["unit"]
        bars = [("tile centre", next(iter(cells.values()))[f"centre_median_{unit}"], None, "#8c8c8c")]
        bars += [(cell, v[f"median_{unit}"], [b[f"median_{unit}"] for b in v["per_seed"].values()],
                  "#55a868" if "pose" in cell else "#dd8452") for cell, v in cells.items()]
        ax = axes[0][column]
        for x, (label, stat, seeds, colour) in enumerate(bars):
            ax.bar(x, stat["mean"], 0.7, yerr=stat["ci95"] or 0.0, capsize=3, color=colour)
            if seeds:
                ax.scatter([x] * len(seeds), seeds, s=8, color="black", zorder=3)
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"median error ({unit}), positives known")
        ax.set_title(title, fontsize=9)
        heading = [(cell, v) for cell, v in cells.items() if "heading_median_deg" in v]
        ax = axes[1][column]
        for x, (cell, v) in enumerate(heading):
            ax.bar(x, v["heading_median_deg"]["mean"], 0.7, yerr=v["heading_median_deg"]["ci95"] or 0.0, capsize=3,
                   color="#4c72b0")
            ax.scatter([x] * len(v["per_seed"]), [b["heading_median_deg"] for b in v["per_seed"].values()], s=8,
                       color="black", zorder=3)
        ax.axhline(10, color="#c44e52", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(heading)), [c for c, _ in heading], fontsize=8)
        ax.set_ylabel("heading median (deg)")
    fig.suptitle("positives known: mean of the seeds, 95% intervals, seeds as dots", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_positives(table: dict) -> None:
    print("| world | cell | median (centre) | mean (centre) | heading median, <=10 deg |", file=sys.stderr)
    print("|---|---|---|---|---|", file=sys.stderr)
    for layout, rows in table.items():
        for row, cells in rows.items():
            for cell, v in cells.items():
                u = v["unit"]
                heading = (f"{v['heading_median_deg']['mean']:.1f} deg, {v['heading_within_10_deg']['mean']:.1f}%"
                           if "heading_median_deg" in v else "")
                print(f"| {layout} {row} | {cell} | {interval_text(v[f'median_{u}'])} "
                      f"{u} ({v[f'centre_median_{u}']['mean']:.2f}) | {v[f'mean_{u}']['mean']:.2f} "
                      f"({v[f'centre_mean_{u}']['mean']:.2f}) | {heading} |", file=sys.stderr)


def print_table(summary: dict) -> None:
    print("| world | cell | R@1 mean ± 95% | per seed |", file=sys.stderr)
    print("|---|---|---|---|", file=sys.stderr)
    for layout, rows in (("CVUSA", summary["cvusa"]), ("VIGOR", summary["vigor"])):
        for row, cells in rows.items():
            for cell, v in cells.items():
                seeds = ", ".join(f"{x:.2f}" for x in v["per_seed"].values())
                print(f"| {layout} {row} | {cell} | {interval_text(v)} | {seeds} |", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="polar,tps_l1,polar_offset,offcentre",
                        help=f"CVUSA cells: any of {', '.join(CVUSA_CELLS)}, or 'none'")
    parser.add_argument("--centred_cells", default="polar,offcentre",
                        help="the CVUSA cells also trained on the centred world (max offset 0), the control of the "
                             "recipe; 'none' for no centred world")
    parser.add_argument("--vigor_cells", default="polar_iou_offset",
                        help=f"VIGOR cells: any of {', '.join(VIGOR_CELLS)}, or 'none'")
    parser.add_argument("--offsets", default="0.4", help="max offsets F (> 0) of the off-centre CVUSA-layout worlds")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the worlds and runs")
    parser.add_argument("--rerank", type=int, default=10, help="K of --rerank for models with an offset head")
    parser.add_argument("--vigor_train", type=int, default=150, help="VIGOR training panoramas per city")
    parser.add_argument("--vigor_test", type=int, default=60, help="VIGOR test panoramas per city")
    parser.add_argument("--vigor_epochs", type=int, default=20)
    parser.add_argument("--plot", help="also draw the plot to this PNG file (the README's: "
                                       "docs/images/offset_study.png)")
    parser.add_argument("--pose_plot", help="also draw the positives-known errors (in-tile heads) to this PNG file "
                                            "(the pose study's: docs/images/pose_study.png)")
    add_common_arguments(parser, train=800, test=400, epochs=12, out="offset_study_cpu.json")
    args = parser.parse_args()
    cells = [] if args.cells == "none" else names(args.cells, CVUSA_CELLS, "cells", parser)
    centred = [] if args.centred_cells == "none" else names(args.centred_cells, CVUSA_CELLS, "centred cells", parser)
    vigor_cells = [] if args.vigor_cells == "none" else names(args.vigor_cells, VIGOR_CELLS, "VIGOR cells", parser)
    offsets = [float(x) for x in args.offsets.split(",") if x]
    if any(offset <= 0 for offset in offsets):
        parser.error("--offsets are the off-centre worlds (> 0); the centred one trains --centred_cells")
    if args.rerank < 1:
        parser.error(f"--rerank is the number of candidates re-ranked per query (at least 1), got {args.rerank}")
    for flag, path in (("--plot", args.plot), ("--pose_plot", args.pose_plot)):
        if path and os.path.isdir(path):
            parser.error(f"{flag} {path} is a folder; pass a file name such as {os.path.join(path, 'study.png')}")
    work = work_folder(args, "offset_study_")
    cvusa: dict = {}
    vigor: dict = {}
    localization: dict = {}
    offset_error: dict = {}
    known: dict = {}
    for seed in [int(x) for x in args.seeds.split(",")]:
        if centred:
            run_layout(args, work, "cvusa", centred, {"0": cvusa_world(args, work, 0.0, seed)}, seed, cvusa,
                       localization, offset_error, known)
        if cells:
            worlds = {f"{offset:g}": cvusa_world(args, work, offset, seed) for offset in offsets}
            run_layout(args, work, "cvusa", cells, worlds, seed, cvusa, localization, offset_error, known)
        if vigor_cells:
            vigor_args = argparse.Namespace(**{**vars(args), "train": args.vigor_train, "test": args.vigor_test,
                                               "epochs": args.vigor_epochs, "sate_size": "128,128",
                                               "pano_size": "64,256"})
            data = vigor_world(vigor_args, work, VIGOR_CITIES, seed)
            run_layout(vigor_args, work, "vigor", vigor_cells, {"same": data}, seed, vigor, localization, offset_error,
                       known)
    summarise(cvusa)
    summarise(vigor)
    finish(args, work)
    summary = {"benchmark": "offset_study", "metric": "street_to_satellite R@1 (%), test script on best.pth",
               "chance_R@1": round(100 / args.test, 2), "confidence": 0.95,
               "settings": {k: v for k, v in vars(args).items() if k not in ("keep", "out", "plot")},
               "cvusa": cvusa, "vigor": vigor, "vigor_top1_positive_localization": localization,
               "offset_mse": offset_error,
               "offcentre_vs_polar": paired(cvusa, "offcentre", "polar"),
               "recentred_vs_plain": {layout: drop_empty({cell: paired(table, cell, plain)
                                                          for cell, plain in RECENTRED_PAIRS.items()})
                                      for layout, table in (("cvusa", cvusa), ("vigor", vigor))},
               "rerank_vs_ranked": {layout: drop_empty({cell + suffix: paired(table, cell + suffix, cell)
                                                        for cell, (_, kind) in layout_cells.items()
                                                        if kind for suffix in RERANKED[kind].values()})
                                    for layout, table, layout_cells in (("cvusa", cvusa, CVUSA_CELLS),
                                                                        ("vigor", vigor, VIGOR_CELLS))},
               "positives_known": summarise_positives(known), "pose_vs_mlp": pose_vs_mlp(known)}
    print_table(summary)
    print_positives(summary["positives_known"])
    if args.plot:
        plot(args.plot, summary)
    if args.pose_plot:
        plot_positives(args.pose_plot, summary["positives_known"])
    write_json(args.out, summary)


if __name__ == "__main__":
    main()
