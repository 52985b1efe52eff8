"""`make demo`: the whole method on the built-in synthetic world, on a laptop CPU.

1. generates (once; cached in demo_data/) a synthetic CVUSA-layout world;
2. trains the `tiny` backbone with `none`, `polar` and `tps` + L1 guidance;
3. evaluates each checkpoint with test_cvusa.py;
4. prints one side-by-side recall table and leaves, in demo_results/, the results JSON
   files, a recall-per-epoch plot and the STN visualisation of the TPS run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.synth.layouts import generate_cvusa  # noqa: E402
from helper.visualize import plot_recall_curves  # noqa: E402

RUNS = {
    "none": ["--transform", "none"],
    "polar": ["--transform", "polar"],
    "tps+L1": ["--transform", "tps", "--stn_init", "polar", "--lambda_l1", "1"],
}
COMMON = ["--backbone", "tiny", "--no-pretrained", "--sate_size", "96,96", "--pano_size", "32,176",
          "--batch_size", "32", "--device", "cpu"]  # --no-pretrained: lr 1e-3, hard ratios 1.0,0.5 by default


def run(cmd: list) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True)


def dataset(path: str, train: int, test: int, seed: int) -> str:
    """Generate the synthetic world unless the same one is cached."""
    spec = {"train": train, "test": test, "seed": seed, "size": "demo"}
    marker = os.path.join(path, "demo_spec.json")
    if os.path.exists(marker) and json.load(open(marker)) == spec:
        print(f"using the cached synthetic world in {path}", flush=True)
        return path
    shutil.rmtree(path, ignore_errors=True)
    print(f"generating a synthetic CVUSA-layout world ({train} train + {test} test pairs) in {path}", flush=True)
    generate_cvusa(path, train=train, test=test, seed=seed, size="demo", workers=os.cpu_count() or 1,
                   progress=True)
    json.dump(spec, open(marker, "w"))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(ROOT, "demo_data", "cvusa"))
    parser.add_argument("--out", default=os.path.join(ROOT, "demo_results"))
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.time()
    data = dataset(args.data, args.train, args.test, args.seed)
    shutil.rmtree(args.out, ignore_errors=True)
    results = {}
    for name, flags in RUNS.items():
        run_name = name.replace("+", "_")
        run(["train_cvusa.py", "--data_root", data, "--results_dir", args.out, "--name", run_name,
             "--n_epochs", str(args.epochs), "--seed", str(args.seed), *COMMON, *flags])
        out = os.path.join(args.out, run_name, "results.json")
        run(["test_cvusa.py", "--checkpoint", os.path.join(args.out, run_name, "best.pth"), "--device", "cpu",
             "--results_json", out])
        results[name] = json.load(open(out))
    plot_recall_curves({name: os.path.join(args.out, name.replace("+", "_"), "metrics.jsonl") for name in RUNS},
                       os.path.join(args.out, "recall_per_epoch.png"))
    shutil.copy(os.path.join(args.out, "tps_L1", f"transform_epoch{args.epochs:03d}.png"),
                os.path.join(args.out, "stn_tps.png"))
    any_result = next(iter(results.values()))
    print(f"\nsynthetic CVUSA world: {any_result['queries']} test pairs, chance R@1 = "
          f"{100 / any_result['references']:.2f}%, R@1% uses k = {any_result['top1p_k']}")
    print(f"{'transform':<10}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'R@1%':>8}   (street -> satellite, %)")
    for name, result in results.items():
        row = result["street_to_satellite"]
        print(f"{name:<10}" + "".join(f"{row[k]:>8.2f}" for k in ("R@1", "R@5", "R@10", "R@1%")))
    print(f"\nrecall per epoch: {os.path.join(args.out, 'recall_per_epoch.png')}")
    print(f"STN visualisation (aerial | TPS output | polar target | panorama): {os.path.join(args.out, 'stn_tps.png')}")
    print(f"demo finished in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
