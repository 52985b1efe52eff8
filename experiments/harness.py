"""What the experiment scripts share: cached synthetic worlds, cached training runs, intervals.

A kept folder (``--keep DIR``) holds the worlds (``data_<layout>_offset<F>_seed<S>``) and the
runs (``<name>/``, log ``<name>.log``); a world or a run already finished there is reused, so
an interrupted experiment continues where it stopped. Every run uses the tiny backbone from
random weights; a seed is both the world's and the training run's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from data.synth.layouts import generate_cvusa, generate_vigor  # noqa: E402

#: Confidence of the intervals reported.
CONFIDENCE = 0.95


def add_common_arguments(parser: argparse.ArgumentParser, train: int, test: int, epochs: int,
                         out: Optional[str] = None) -> None:
    """The world-size, schedule, input-size and machine flags every experiment takes."""
    parser.add_argument("--train", type=int, default=train, help="training pairs per world")
    parser.add_argument("--test", type=int, default=test, help="test pairs per world")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--sate_size", default="96,96")
    parser.add_argument("--pano_size", default="32,176")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--keep", default=None, help="keep worlds and runs in this folder (and reuse finished ones)")
    if out is not None:
        parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", out),
                            help=f"the JSON file written (default: experiments/results/{out})")


def names(text: str, valid, what: str, parser: argparse.ArgumentParser) -> List[str]:
    """A comma-separated choice from ``valid``; a parser error names the unknown ones."""
    chosen = [name for name in text.split(",") if name]
    unknown = [name for name in chosen if name not in valid]
    if unknown or not chosen:
        parser.error(f"unknown {what} {unknown}; choose from {', '.join(valid)}")
    return chosen


def work_folder(args, prefix: str) -> str:
    return args.keep or tempfile.mkdtemp(prefix=prefix)


def finish(args, work: str) -> None:
    """Remove a temporary work folder (a kept one stays)."""
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def cvusa_world(args, work: str, offset: float, seed: int) -> str:
    """A CVUSA-layout world of ``args.train`` / ``args.test`` pairs with panoramas moved up to
    ``offset`` x the aerial half side (written once)."""
    data = os.path.join(work, f"data_cvusa_offset{offset:g}_seed{seed}")
    if not os.path.exists(os.path.join(data, "splits", "val-19zl.csv")):
        generate_cvusa(data, train=args.train, test=args.test, seed=seed, size="demo", max_offset=offset,
                       workers=args.workers)
    return data


def vigor_world(args, work: str, cities: Sequence[str], seed: int) -> str:
    """A VIGOR-layout world, ``args.train`` / ``args.test`` panoramas per city (written once)."""
    data = os.path.join(work, f"data_vigor_seed{seed}")
    marker = os.path.join(data, "splits", cities[-1], "same_area_balanced_test.txt")
    if not os.path.exists(marker):
        generate_vigor(data, cities=",".join(cities), train=args.train, test=args.test, seed=seed, size="demo",
                       workers=args.workers)
    return data


def final_epoch(run_dir: str, epochs: int) -> Optional[dict]:
    """The last ``metrics.jsonl`` row of a run, or None unless it finished ``epochs`` epochs."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return rows[-1] if rows and rows[-1]["epoch"] == epochs else None


def train(args, work: str, script: str, data: str, name: str, seed: int, flags: Sequence[str]) -> str:
    """Train ``name`` with ``script`` (train_cvusa.py / train_vigor.py) unless ``work`` holds it
    finished; returns its folder. Evaluates once, after the last epoch."""
    run_dir = os.path.join(work, name)
    if final_epoch(run_dir, args.epochs) is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        with open(os.path.join(work, f"{name}.log"), "w") as log:
            subprocess.run([sys.executable, script, "--data_root", data, "--results_dir", work, "--name", name,
                            "--backbone", "tiny", "--no-pretrained", "--sate_size", args.sate_size,
                            "--pano_size", args.pano_size, "--n_epochs", str(args.epochs), "--eval_every",
                            str(args.epochs), "--batch_size", str(args.batch_size), "--device", args.device,
                            "--workers", str(args.workers), "--seed", str(seed), *flags],
                           cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return run_dir


def mean_interval(values: Sequence[float]) -> Dict[str, float]:
    """Mean and the half-width of its two-sided Student-t interval at :data:`CONFIDENCE`
    (None for a single value: no interval)."""
    values = [float(v) for v in values]
    mean = statistics.mean(values)
    if len(values) < 2:
        return {"mean": round(mean, 2), "ci95": None}
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": round(mean, 2), "ci95": round(float(half), 2)}


def interval_text(value: Dict[str, float]) -> str:
    """A :func:`mean_interval` as table text: ``mean ± half-width``, or the mean alone for one value."""
    return f"{value['mean']:.2f}" + ("" if value["ci95"] is None else f" ± {value['ci95']:.2f}")


def write_json(path: str, summary: dict) -> None:
    """Write ``summary`` to ``path`` (indented, strict JSON: no NaN) and print it as one JSON line."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(summary, handle, indent=1, allow_nan=False)
        handle.write("\n")
    print(json.dumps(summary, allow_nan=False))
