"""The recipe experiment: SAFA's training recipe against today's choices, one factor at a time.

The baseline is the tiny backbone with SAFA's soft-margin triplet loss and random batches;
each variant changes one factor: ``--loss infonce``, ``--sampling similarity`` or
``--backbone convnext_tiny`` (from random weights, like the baseline). Every configuration is
trained with the polar, none and tps+L1 blocks on synthetic CVUSA-layout worlds with centred
panoramas and off-centre ones (``python -m data.synthetic --max_offset 0.4``), for several
seeds (each seed is both the world's and the training run's), all for the same number of
epochs. It records the final epoch's street->satellite R@1 (one evaluation, after the last
epoch), writes a JSON file of the per-seed values and their means (``--out``), prints it as
one JSON line and a Markdown table on stderr.

    python benchmarks/recipe_experiment.py                # the whole grid below: 48 runs
    python benchmarks/recipe_experiment.py --variants baseline,infonce,similarity --offsets 0 --keep DIR

Cost: a tiny-backbone run at the defaults takes about 40 s of CPU time (measured), so the 36
tiny runs need about 15-25 min on 2 idle cores; ConvNeXt-T from random weights takes seconds per
step on a CPU, so its 12 runs want a GPU (``--device cuda``) or a long wait.

With ``--keep DIR`` the worlds and runs stay in DIR and a run already finished there is not
trained again (an interrupted experiment continues where it stopped).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.synth.layouts import generate_cvusa  # noqa: E402
from scripts.demo import RUNS as BLOCKS  # noqa: E402  (the demo's none, polar and tps+L1 blocks)
#: One factor changed from the baseline. Similarity sampling keeps Sample4Geo's ratio of
#: neighbours to batch (64 of a pool of 128 for batches of 128: two anchors per batch) at
#: batches of 32: 16 of 32.
VARIANTS = {
    "baseline": [],
    "infonce": ["--loss", "infonce"],
    "similarity": ["--sampling", "similarity", "--sampling_select", "16", "--sampling_pool", "32"],
    "convnext_tiny": ["--backbone", "convnext_tiny"],
}


def _names(text: str, valid: dict, what: str, parser) -> list:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        parser.error(f"unknown {what} {unknown}; choose from {', '.join(valid)}")
    return names


def final_r1(run_dir: str, epochs: int):
    """Street->satellite R@1 of the run's last epoch, or None when it has not finished."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    rows = [json.loads(line) for line in open(path) if line.strip()]
    if not rows or rows[-1]["epoch"] != epochs:
        return None
    return rows[-1]["street_to_satellite"]["R@1"]


def train(args, work: str, data: str, variant: str, block: str, offset: float, seed: int) -> float:
    """Train one configuration (unless ``work`` holds it finished); its final R@1."""
    name = f"{variant}_{block.replace('+', '_')}_offset{offset:g}_seed{seed}"
    run_dir = os.path.join(work, name)
    if final_r1(run_dir, args.epochs) is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        with open(os.path.join(work, f"{name}.log"), "w") as log:
            subprocess.run([sys.executable, "train_cvusa.py", "--data_root", data, "--results_dir", work, "--name",
                            name, "--backbone", "tiny", "--no-pretrained", "--sate_size", args.sate_size,
                            "--pano_size", args.pano_size, "--n_epochs", str(args.epochs), "--eval_every",
                            str(args.epochs), "--batch_size", str(args.batch_size), "--device", args.device,
                            "--workers", str(args.workers), "--seed", str(seed), *BLOCKS[block], *VARIANTS[variant]],
                           cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    r1 = final_r1(run_dir, args.epochs)
    print(f"{name}: R@1 {r1:.2f}", file=sys.stderr, flush=True)
    return r1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--blocks", default="polar,none,tps+L1", help=f"any of {', '.join(BLOCKS)}")
    parser.add_argument("--offsets", default="0,0.4", help="max offsets F of the worlds (fractions of the half side)")
    parser.add_argument("--seeds", default="0,1", help="seeds of the worlds and runs")
    parser.add_argument("--train", type=int, default=128, help="training pairs per world")
    parser.add_argument("--test", type=int, default=64, help="test pairs per world")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--sate_size", default="96,96")
    parser.add_argument("--pano_size", default="32,176")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--keep", default=None, help="keep worlds and runs in this folder (and reuse finished runs)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "recipe_experiment.json"),
                        help="the JSON file written (default: benchmarks/results/recipe_experiment.json)")
    args = parser.parse_args()
    variants = _names(args.variants, VARIANTS, "variants", parser)
    blocks = _names(args.blocks, BLOCKS, "blocks", parser)
    offsets = [float(x) for x in args.offsets.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    work = args.keep or tempfile.mkdtemp(prefix="recipe_experiment_")
    results: dict = {}
    for variant in variants:  # one variant after the other: a partial experiment has whole variants
        for offset in offsets:
            for seed in seeds:
                data = os.path.join(work, f"data_offset{offset:g}_seed{seed}")
                if not os.path.exists(os.path.join(data, "splits", "val-19zl.csv")):
                    generate_cvusa(data, train=args.train, test=args.test, seed=seed, size="demo",
                                   max_offset=offset, workers=args.workers)
                for block in blocks:
                    r1 = train(args, work, data, variant, block, offset, seed)
                    cell = results.setdefault(variant, {}).setdefault(f"{offset:g}", {}).setdefault(block, {})
                    cell.setdefault("per_seed", {})[str(seed)] = round(r1, 2)
    for variant in results.values():
        for row in variant.values():
            for cell in row.values():
                cell["mean"] = round(statistics.mean(cell["per_seed"].values()), 2)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    print("| variant | max offset | " + " | ".join(blocks) + " |", file=sys.stderr)
    print("|---" * (len(blocks) + 2) + "|", file=sys.stderr)
    for variant, rows in results.items():
        for offset, row in rows.items():
            cells = [f"{row[b]['mean']:.1f} ({', '.join(f'{v:.1f}' for v in row[b]['per_seed'].values())})"
                     for b in blocks]
            print(f"| {variant} | {offset} | " + " | ".join(cells) + " |", file=sys.stderr)
    summary = {"benchmark": "recipe_experiment", "metric": "street_to_satellite R@1 (%) after the last epoch",
               "chance_R@1": round(100 / args.test, 2),
               "settings": {k: v for k, v in vars(args).items() if k not in ("keep", "out")},
               "street_to_satellite_R@1": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(summary, handle, indent=1)
        handle.write("\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
