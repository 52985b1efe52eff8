"""The offset experiment: recall as the panorama moves away from the aerial's centre.

The polar transform assumes the panorama was taken at the satellite image's centre; a
spatial transformer does not. For each offset F (the camera is moved by a random vector
of length uniform in [0, F] x the aerial half side, in train and test alike) this writes a
synthetic CVUSA-layout world (`python -m data.synthetic --max_offset F`), trains the tiny
backbone with each transform, evaluates with test_cvusa.py, and prints ONE JSON line with
street->satellite R@1 / R@5 per (offset, transform), plus a Markdown table on stderr.

    python experiments/offset_experiment.py                       # defaults below, ~20 min on 2 cores
    python experiments/offset_experiment.py --offsets 0,0.5 --transforms polar,tps --epochs 4
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.harness import ROOT, add_common_arguments, cvusa_world, finish, names, train, work_folder  # noqa: E402

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
    parser.add_argument("--seed", type=int, default=0)
    add_common_arguments(parser, train=400, test=200, epochs=10)
    args = parser.parse_args()
    transforms = names(args.transforms, TRANSFORM_FLAGS, "transforms", parser)
    work = work_folder(args, "offset_experiment_")
    table = {}
    for offset in [float(x) for x in args.offsets.split(",")]:
        data = cvusa_world(args, work, offset, args.seed)
        for name in transforms:
            run = train(args, work, "train_cvusa.py", data, f"offset{offset:g}_{name}", args.seed,
                        TRANSFORM_FLAGS[name])
            out = os.path.join(run, "results.json")
            subprocess.run([sys.executable, "test_cvusa.py", "--checkpoint", os.path.join(run, "best.pth"),
                            "--results_json", out, "--device", args.device, "--workers", str(args.workers)],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            recalls = json.load(open(out))["street_to_satellite"]
            table.setdefault(f"{offset:g}", {})[name] = {k: round(recalls[k], 2) for k in ("R@1", "R@5")}
            print(f"offset {offset:g} {name}: R@1 {recalls['R@1']:.2f} R@5 {recalls['R@5']:.2f}",
                  file=sys.stderr, flush=True)
    finish(args, work)
    print("| max offset | " + " | ".join(transforms) + " |", file=sys.stderr)
    print("|---" * (len(transforms) + 1) + "|", file=sys.stderr)
    for offset, row in table.items():
        print(f"| {offset} | " + " | ".join(f"{row[t]['R@1']:.1f} / {row[t]['R@5']:.1f}" for t in transforms)
              + " |", file=sys.stderr)
    print(json.dumps({"benchmark": "offset_experiment", "chance_R@1": round(100 / args.test, 2),
                      "settings": {k: v for k, v in vars(args).items() if k != "keep"}, "street_to_satellite": table}))


if __name__ == "__main__":
    main()
