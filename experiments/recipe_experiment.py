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

    python experiments/recipe_experiment.py                # the whole grid below: 48 runs
    python experiments/recipe_experiment.py --variants baseline,infonce,similarity --offsets 0 --keep DIR

Cost: a tiny-backbone run at the defaults takes about 40 s of CPU time (measured), so the 36
tiny runs need about 15-25 min on 2 idle cores; ConvNeXt-T from random weights takes seconds per
step on a CPU, so its 12 runs want a GPU (``--device cuda``) or a long wait.

With ``--keep DIR`` the worlds and runs stay in DIR and a run already finished there is not
trained again (an interrupted experiment continues where it stopped).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.harness import (add_common_arguments, cvusa_world, final_epoch, finish, names, train,  # noqa: E402
                         work_folder, write_json)

#: The satellite blocks each configuration is trained with (those of ``make demo``, written here so
#: that the recorded results stay reproducible whatever the demo runs).
BLOCKS = {
    "none": ["--transform", "none"],
    "polar": ["--transform", "polar"],
    "tps+L1": ["--transform", "tps", "--stn_init", "polar", "--lambda_l1", "1"],
}

#: One factor changed from the baseline. Similarity sampling keeps Sample4Geo's ratio of
#: neighbours to batch (64 of a pool of 128 for batches of 128: two anchors per batch) at
#: batches of 32: 16 of 32.
VARIANTS = {
    "baseline": [],
    "infonce": ["--loss", "infonce"],
    "similarity": ["--sampling", "similarity", "--sampling_select", "16", "--sampling_pool", "32"],
    "convnext_tiny": ["--backbone", "convnext_tiny"],
}


def run_r1(args, work: str, data: str, variant: str, block: str, offset: float, seed: int) -> float:
    """Train one configuration (unless ``work`` holds it finished); its final R@1."""
    name = f"{variant}_{block.replace('+', '_')}_offset{offset:g}_seed{seed}"
    run_dir = train(args, work, "train_cvusa.py", data, name, seed, [*BLOCKS[block], *VARIANTS[variant]])
    r1 = final_epoch(run_dir, args.epochs)["street_to_satellite"]["R@1"]
    print(f"{name}: R@1 {r1:.2f}", file=sys.stderr, flush=True)
    return r1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--blocks", default="polar,none,tps+L1", help=f"any of {', '.join(BLOCKS)}")
    parser.add_argument("--offsets", default="0,0.4", help="max offsets F of the worlds (fractions of the half side)")
    parser.add_argument("--seeds", default="0,1", help="seeds of the worlds and runs")
    add_common_arguments(parser, train=128, test=64, epochs=5, out="recipe_experiment.json")
    args = parser.parse_args()
    variants = names(args.variants, VARIANTS, "variants", parser)
    blocks = names(args.blocks, BLOCKS, "blocks", parser)
    offsets = [float(x) for x in args.offsets.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    work = work_folder(args, "recipe_experiment_")
    results: dict = {}
    for variant in variants:  # one variant after the other: a partial experiment has whole variants
        for offset in offsets:
            for seed in seeds:
                data = cvusa_world(args, work, offset, seed)
                for block in blocks:
                    r1 = run_r1(args, work, data, variant, block, offset, seed)
                    cell = results.setdefault(variant, {}).setdefault(f"{offset:g}", {}).setdefault(block, {})
                    cell.setdefault("per_seed", {})[str(seed)] = round(r1, 2)
    for variant in results.values():
        for row in variant.values():
            for cell in row.values():
                cell["mean"] = round(statistics.mean(cell["per_seed"].values()), 2)
    finish(args, work)
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
    write_json(args.out, summary)


if __name__ == "__main__":
    main()
