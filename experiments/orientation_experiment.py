"""The orientation experiment: retrieval and heading estimation when north is unknown.

CVUSA panoramas are north-aligned; a real photo is not, and often covers less than 360
degrees. For each seed this writes a synthetic CVUSA-layout world (north-aligned), then per
transform and field of view trains the tiny backbone three ways and evaluates it with
test_cvusa.py (the test turns use a fixed seed, so every row sees the same test images):

- ``safa_north``: SAFA head, north-aligned street images (what every model here assumed);
- ``safa_unknown``: SAFA head, street images turned to a random heading in training and test
  (``--train_heading random --test_heading random``);
- ``dsm_unknown``: the same with the DSM head (``--head dsm``), which also estimates the heading.

A field of view below 360 applies ``--train_fov`` / ``--test_fov`` to every row. Prints ONE
JSON line (R@1 and, for dsm, the heading error over correct top-1s, per seed and their mean)
and a Markdown table on stderr.

    python experiments/orientation_experiment.py            # defaults below, ~30 min on 2 cores
    python experiments/orientation_experiment.py --seeds 0 --fovs 360 --transforms polar --epochs 4
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.synth.layouts import generate_cvusa  # noqa: E402

TRANSFORM_FLAGS = {"polar": ["--transform", "polar"], "tps": ["--transform", "tps", "--stn_init", "polar"]}
SETUPS = {
    "safa_north": ["--head", "safa"],
    "safa_unknown": ["--head", "safa", "--train_heading", "random", "--test_heading", "random"],
    "dsm_unknown": ["--head", "dsm", "--train_heading", "random", "--test_heading", "random"],
}


def train_and_test(args, data: str, work: str, run: str, flags: list) -> dict:
    """Train and evaluate one run (a run of a kept folder with its results.json is read back)."""
    common = ["--device", args.device, "--workers", str(args.workers)]
    out = os.path.join(work, run, "results.json")
    if not os.path.exists(out):
        train(args, data, work, run, flags, common, out)
    with open(out) as handle:
        return summarise(json.load(handle))


def train(args, data: str, work: str, run: str, flags: list, common: list, out: str) -> None:
    subprocess.run([sys.executable, "train_cvusa.py", "--data_root", data, "--results_dir", work, "--name", run,
                    "--backbone", "tiny", "--no-pretrained", "--sate_size", args.sate_size, "--pano_size",
                    args.pano_size, "--n_epochs", str(args.epochs), "--batch_size", str(args.batch_size),
                    "--eval_every", str(args.epochs), *common, *flags], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([sys.executable, "test_cvusa.py", "--checkpoint", os.path.join(work, run, "last.pth"),
                    "--results_json", out, *common], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def summarise(results: dict) -> dict:
    """The row of one run: R@1 and, with an orientation-aware head, the heading error."""
    row = {"R@1": round(results["street_to_satellite"]["R@1"], 2)}
    if "orientation" in results:
        orientation = results["orientation"]
        row.update(median_deg=orientation["median_deg"], within_10=orientation["within_deg"]["10"],
                   within_30=orientation["within_deg"]["30"], correct=orientation["queries"])
    return row


def mean(rows: list, key: str):
    values = [row[key] for row in rows if row.get(key) is not None]
    return round(statistics.mean(values), 2) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1", help="world and training seeds")
    parser.add_argument("--fovs", default="360,90", help="fields of view in degrees")
    parser.add_argument("--transforms", default="polar,tps", help=f"any of {', '.join(TRANSFORM_FLAGS)} "
                                                                  f"(tps starts at the polar mapping)")
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"any of {', '.join(SETUPS)}")
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sate_size", default="96,96")
    parser.add_argument("--pano_size", default="32,192", help="192 columns = 24 feature columns of 15 degrees")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--keep", default=None, help="keep datasets and runs in this folder (reused if there)")
    args = parser.parse_args()
    transforms, setups = args.transforms.split(","), args.setups.split(",")
    unknown = [t for t in transforms if t not in TRANSFORM_FLAGS] + [s for s in setups if s not in SETUPS]
    if unknown:
        parser.error(f"unknown transforms/setups {unknown}")
    work = args.keep or tempfile.mkdtemp(prefix="orientation_experiment_")
    started = time.perf_counter()
    table: dict = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = os.path.join(work, f"data_seed{seed}")
        if not os.path.exists(os.path.join(data, "splits", "val-19zl.csv")):
            generate_cvusa(data, train=args.train, test=args.test, seed=seed, size="demo", workers=args.workers)
        for fov in [float(f) for f in args.fovs.split(",")]:
            for transform in transforms:
                for setup in setups:
                    run = f"seed{seed}_fov{fov:g}_{transform}_{setup}"
                    flags = [*TRANSFORM_FLAGS[transform], *SETUPS[setup], "--seed", str(seed),
                             "--train_fov", f"{fov:g}", "--test_fov", f"{fov:g}"]
                    row = train_and_test(args, data, work, run, flags)
                    table.setdefault(f"{fov:g}", {}).setdefault(transform, {}).setdefault(setup, []).append(row)
                    print(f"{run}: {row}", file=sys.stderr, flush=True)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    summary = {fov: {transform: {setup: {"seeds": rows, "mean": {key: mean(rows, key) for key in rows[0]}}
                                 for setup, rows in by_setup.items()} for transform, by_setup in by_transform.items()}
               for fov, by_transform in table.items()}
    print("| FoV | transform | " + " | ".join(setups) + " |", file=sys.stderr)
    print("|---" * (len(setups) + 2) + "|", file=sys.stderr)
    for fov, by_transform in summary.items():
        for transform, by_setup in by_transform.items():
            cells = []
            for setup in setups:
                m = by_setup[setup]["mean"]
                cell = f"{m['R@1']:.1f}"
                if "median_deg" in m:
                    cell += f" ({m['median_deg']}° median, {m['within_10']}% <=10°)"
                cells.append(cell)
            print(f"| {fov} | {transform} | " + " | ".join(cells) + " |", file=sys.stderr)
    print(json.dumps({"benchmark": "orientation_experiment", "chance_R@1": round(100 / args.test, 2),
                      "settings": {k: v for k, v in vars(args).items() if k != "keep"},
                      "seconds": round(time.perf_counter() - started), "results": summary}))


if __name__ == "__main__":
    main()
