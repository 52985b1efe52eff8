"""The pose head end to end: train_cvusa.py --pose dense with unknown headings on a world with offsets,
test_cvusa.py's ``pose`` block and --rerank_score pose, and an exact resume after SIGKILL."""
import json
import os

import numpy as np
import pytest
import torch

from data.cvusa import CVUSA
from data.synthetic import generate_cvusa
from helper.cli import evaluate_main, train_main
from tests.e2e.test_reliability import SLOW_TRAIN, _rows, _script, kill_after_first_checkpoint
from tests.e2e.worlds import TINY_FLAGS

FLAGS = [*TINY_FLAGS, "--transform", "polar", "--batch_size", "4", "--pose", "dense", "--train_heading", "random",
         "--test_heading", "random", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def pose_world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cvusa_pose"))
    generate_cvusa(root, train=16, test=8, seed=0, size="demo", max_offset=0.5)
    return root


def test_train_then_test_reports_the_pose_block_and_reranks_by_pose(pose_world, tmp_path):
    runs = str(tmp_path / "runs")
    train_main("cvusa", ["--data_root", pose_world, "--results_dir", runs, "--name", "pose", "--n_epochs", "1",
                         *FLAGS])
    row = json.loads(open(os.path.join(runs, "pose", "metrics.jsonl")).readline())
    assert row["train_pose"] > 0 and set(row["pose"]) >= {"median_px", "heading_median_deg"}
    out = str(tmp_path / "results.json")
    results = evaluate_main("cvusa", ["--checkpoint", os.path.join(runs, "pose", "best.pth"), "--data_root",
                                      pose_world, "--results_json", out, "--rerank", "3", "--rerank_score", "pose"])
    block = results["pose"]
    assert set(block) == {"queries", "mean_px", "median_px", "within_px", "centre_mean_px", "centre_median_px",
                          "heading_mean_deg", "heading_median_deg", "heading_within_deg"}
    assert set(block["within_px"]) == {"1", "3", "5", "10"} and set(block["heading_within_deg"]) == {"5", "10"}
    truth = CVUSA(pose_world, "splits/val-19zl.csv", (64, 64), (32, 176), offsets_csv="offsets.csv").deltas
    assert block["queries"] == 8
    assert block["centre_median_px"] == pytest.approx(float(np.median(np.hypot(*truth.T))), rel=1e-12)
    assert results["rerank"]["score"] == "pose" and results["rerank"]["k"] == 3
    assert json.load(open(out))["pose"] == block


@pytest.mark.slow
def test_resume_after_sigkill_is_exact_with_the_pose_head(pose_world, tmp_path):
    def flags(results_dir, epochs):
        return ["--data_root", pose_world, "--results_dir", results_dir, "--name", "run", "--n_epochs",
                str(epochs), *FLAGS]

    reference = str(tmp_path / "reference")
    train_main("cvusa", flags(reference, 3))
    results_dir = str(tmp_path / "killed")
    proc = _script(*SLOW_TRAIN, *flags(results_dir, 3))
    last = os.path.join(results_dir, "run", "last.pth")
    kill_after_first_checkpoint(proc, last, timeout=300)
    state = torch.load(last, weights_only=True)
    assert 1 <= state["epoch"] < 3 and any(key.startswith("pose_head.") for key in state["model"])
    train_main("cvusa", ["--resume", last])
    assert _rows(results_dir, "run") == _rows(reference, "run")
