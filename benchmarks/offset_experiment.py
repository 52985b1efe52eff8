"""The offset experiment: recall as the panorama moves away from the aerial's centre.

The polar transform assumes the panorama was taken at the satellite image's centre; a
spatial transformer does not. For each offset F (the camera is moved by a random vector
of length uniform in [0, F] x the aerial half side, in train and test alike) this writes a
synthetic CVUSA-layout world (`python -m data.synthetic --max_offset F`), trains the tiny
backbone with each transform, evaluates with test_cvusa.py, and prints ONE JSON line with
street->satellite R@1 / R@5 per (offset, transform), plus a Markdown table on stderr.

    python benchmarks/offset_experiment.py                       # defaults below, ~20 min on 2 cores
    python benchmarks/offset_experiment.py --offsets 0,0.5 --transforms polar,tps --epochs 4
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.synth.layouts import generate_cvusa  # noqa: E402

TRANSFORM_FLAGS = {
    "none": ["--transform", "none"],
    "polar": ["--transform", "polar"],
    "affine": ["--transform", "affine"],
    "tps": ["--transform", "tps"],
    "tps_polar_init": ["--transform", "tps", "--stn_init", "polar"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offsets", default="0,0.25,0.5", help="max offsets F (fractions of the half side)")
    parser.add_argument("--transforms", default="none,polar,affine,tps,tps_polar_init",
                        help=f"any of {', '.join(TRANSFORM_FLAGS)}")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sate_size", default="96,96")
    parser.add_argument("--pano_size", default="32,176")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, help="keep datasets and runs in this folder")
    args = parser.parse_args()
    transforms = args.transforms.split(",")
    unknown = [t for t in transforms if t not in TRANSFORM_FLAGS]
    if unknown:
        parser.error(f"unknown transforms {unknown}; choose from {', '.join(TRANSFORM_FLAGS)}")
    work = args.keep or tempfile.mkdtemp(prefix="offset_experiment_")
    table = {}
    for offset in [float(x) for x in args.offsets.split(",")]:
        data = os.path.join(work, f"data_offset{offset:g}")
        if not os.path.exists(os.path.join(data, "splits", "val-19zl.csv")):
            generate_cvusa(data, train=args.train, test=args.test, seed=args.seed, size="demo",
                           max_offset=offset, workers=args.workers)
        for name in transforms:
            run = f"offset{offset:g}_{name}"
            subprocess.run([sys.executable, "train_cvusa.py", "--data_root", data, "--results_dir", work,
                            "--name", run, "--backbone", "tiny", "--no-pretrained", "--sate_size", args.sate_size,
                            "--pano_size", args.pano_size, "--n_epochs", str(args.epochs), "--batch_size",
                            str(args.batch_size), "--lr", "1e-3", "--hard_ratios", "1.0,0.5", "--device",
                            args.device, "--workers", str(args.workers), "--seed", str(args.seed),
                            *TRANSFORM_FLAGS[name]], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            out = os.path.join(work, run, "results.json")
            subprocess.run([sys.executable, "test_cvusa.py", "--checkpoint", os.path.join(work, run, "best.pth"),
                            "--results_json", out, "--device", args.device, "--workers", str(args.workers)],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            recalls = json.load(open(out))["street_to_satellite"]
            table.setdefault(f"{offset:g}", {})[name] = {k: round(recalls[k], 2) for k in ("R@1", "R@5")}
            print(f"offset {offset:g} {name}: R@1 {recalls['R@1']:.2f} R@5 {recalls['R@5']:.2f}",
                  file=sys.stderr, flush=True)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    print("| max offset | " + " | ".join(transforms) + " |", file=sys.stderr)
    print("|---" * (len(transforms) + 1) + "|", file=sys.stderr)
    for offset, row in table.items():
        print(f"| {offset} | " + " | ".join(f"{row[t]['R@1']:.1f} / {row[t]['R@5']:.1f}" for t in transforms)
              + " |", file=sys.stderr)
    print(json.dumps({"benchmark": "offset_experiment", "chance_R@1": round(100 / args.test, 2),
                      "settings": {k: v for k, v in vars(args).items() if k != "keep"}, "street_to_satellite": table}))


if __name__ == "__main__":
    main()
