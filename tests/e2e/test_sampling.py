"""GPS and similarity batch sampling end to end: the first similarity epoch is random, later
ones follow the satellites' neighbours, and a mid-epoch stop resumes exactly."""
import json
import os

import numpy as np
import pytest
import torch

import helper.engine
from helper.cli import train_main
from tests.e2e.worlds import TINY_FLAGS, make_cvusa

SIMILARITY = ["--sampling", "similarity", "--sampling_select", "4", "--sampling_pool", "8"]


@pytest.fixture(scope="module")
def cvusa_root(tmp_path_factory):
    root = make_cvusa(str(tmp_path_factory.mktemp("cvusa")), n_train=32, n_val=8, seed=4)
    rng = np.random.default_rng(0)  # the pairs' positions, for --sampling gps
    rows = [f"{i:07d},{40 + rng.uniform(0, 0.1):.6f},{-74 + rng.uniform(0, 0.1):.6f}" for i in range(1, 41)]
    with open(os.path.join(root, "gps.csv"), "w") as handle:
        handle.write("\n".join(["id,lat,lon", *rows]) + "\n")
    return root


def _flags(root, results_dir, name, *extra):
    return ["--data_root", root, "--transform", "polar", "--n_epochs", "3", "--batch_size", "8",
            "--results_dir", results_dir, "--name", name, *TINY_FLAGS, *extra]


def _rows(results_dir, name):
    return [json.loads(line) for line in open(os.path.join(results_dir, name, "metrics.jsonl"))]


def test_similarity_starts_random_then_follows_neighbours_and_resumes_exactly(cvusa_root, tmp_path, monkeypatch):
    reference = str(tmp_path / "reference")
    train_main("cvusa", _flags(cvusa_root, reference, "random"))
    train_main("cvusa", _flags(cvusa_root, reference, "similarity", *SIMILARITY))
    random_rows, rows = _rows(reference, "random"), _rows(reference, "similarity")
    assert rows[0] == random_rows[0]  # epoch 1: no neighbours yet, the same order as random
    assert rows[1]["train_loss"] != random_rows[1]["train_loss"]  # epoch 2: batches of neighbours
    state = torch.load(os.path.join(reference, "similarity", "last.pth"), weights_only=True)
    table = state["sampler"]["batch_neighbours"]
    assert table.shape == (32, 8) and table.dtype == torch.int32
    assert all(i not in row for i, row in enumerate(table.tolist()))  # neighbours are other satellites

    results_dir = str(tmp_path / "stopped")
    calls = {"n": 0}

    def stop_in_epoch_2(self, device):  # asked after every step and at every epoch's end
        calls["n"] += 1
        if calls["n"] == 7:  # epoch 2, step 2 of 4: its batches come from the neighbours mined after epoch 1
            self.signum = 15
        return self.signum is not None

    monkeypatch.setattr(helper.engine.StopFlag, "should_stop", stop_in_epoch_2)
    with pytest.raises(SystemExit):
        train_main("cvusa", _flags(cvusa_root, results_dir, "similarity", *SIMILARITY))
    monkeypatch.undo()
    last = os.path.join(results_dir, "similarity", "last.pth")
    state = torch.load(last, weights_only=True)
    assert (state["epoch"], state["progress"]["step"]) == (1, 2) and "batch_neighbours" in state["sampler"]
    train_main("cvusa", ["--resume", last])
    assert _rows(results_dir, "similarity") == rows


def test_gps_sampling_reads_the_positions_and_resumes_exactly(cvusa_root, tmp_path):
    reference = str(tmp_path / "reference")
    gps = ["--sampling", "gps", "--gps_csv", "gps.csv", "--sampling_select", "6", "--sampling_pool", "12"]
    train_main("cvusa", _flags(cvusa_root, reference, "gps", *gps))
    config = json.load(open(os.path.join(reference, "gps", "config.json")))
    assert (config["sampling"], config["gps_csv"], config["sampling_select"]) == ("gps", "gps.csv", 6)
    state = torch.load(os.path.join(reference, "gps", "last.pth"), weights_only=True)
    assert state["sampler"] == {}  # the table is rebuilt from gps.csv
    results_dir = str(tmp_path / "resumed")
    train_main("cvusa", _flags(cvusa_root, results_dir, "gps", *gps, "--n_epochs", "1"))
    train_main("cvusa", ["--resume", os.path.join(results_dir, "gps", "last.pth"), "--n_epochs", "3"])
    assert _rows(results_dir, "gps") == _rows(reference, "gps")
