"""InfoNCE with a learned temperature, AdamW and a warmed-up cosine schedule: learning-rate
values, checkpoint contents, and exact resume from a mid-epoch stop."""
import json
import math
import os

import pytest
import torch

import helper.engine
from helper.cli import train_main
from helper.engine import lr_factor
from tests.e2e.worlds import TINY_FLAGS, make_cvusa

RECIPE = ["--loss", "infonce", "--optimizer", "adamw", "--weight_decay", "0.01", "--scheduler", "cosine",
          "--warmup_epochs", "1", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def cvusa_root(tmp_path_factory):
    return make_cvusa(str(tmp_path_factory.mktemp("cvusa")), n_train=32, n_val=8, seed=3)


def _flags(root, results_dir, name):
    return ["--data_root", root, "--transform", "polar", "--n_epochs", "3", "--batch_size", "8",
            "--results_dir", results_dir, "--name", name, *TINY_FLAGS, *RECIPE]


def _rows(results_dir, name):
    return [json.loads(line) for line in open(os.path.join(results_dir, name, "metrics.jsonl"))]


def test_lr_factor_warms_up_then_decays_to_zero():
    assert [lr_factor(s, 10, 2, cosine=True) for s in (0, 1)] == [0.0, 0.5]
    assert lr_factor(2, 10, 2, cosine=True) == 1.0
    assert lr_factor(6, 10, 2, cosine=True) == pytest.approx(0.5)
    assert lr_factor(10, 10, 2, cosine=True) == pytest.approx(0.0) == lr_factor(12, 10, 2, cosine=True)
    assert lr_factor(7, 10, 2, cosine=False) == 1.0


def test_recipe_records_schedule_and_temperature(cvusa_root, tmp_path):
    results_dir = str(tmp_path)
    train_main("cvusa", _flags(cvusa_root, results_dir, "ref"))
    config = json.load(open(os.path.join(results_dir, "ref", "config.json")))
    assert config["loss"] == "infonce" and config["label_smoothing"] == 0.1 and config["hard_ratios"] is None
    rows = _rows(results_dir, "ref")
    steps = rows[0]["steps"]  # 32 pairs / batch 8
    assert steps == 4
    for row in rows:  # the lr after each epoch's last step
        assert row["lr"] == pytest.approx(1e-3 * lr_factor(row["epoch"] * steps, 3 * steps, steps, cosine=True))
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    state = torch.load(os.path.join(results_dir, "ref", "last.pth"), weights_only=True)
    assert state["scheduler"]["last_epoch"] == 3 * steps
    assert float(state["objective"]["log_scale"]) != pytest.approx(math.log(1 / 0.07))  # it learned
    assert not any("log_scale" in key for key in state["model"])  # the model is the same as for triplets


def test_mid_epoch_stop_resumes_exactly(cvusa_root, tmp_path, monkeypatch):
    reference = str(tmp_path / "reference")
    train_main("cvusa", _flags(cvusa_root, reference, "run"))
    results_dir = str(tmp_path / "stopped")
    calls = {"n": 0}

    def stop_at_step_6(self, device):  # asked after every step and at every epoch's end
        calls["n"] += 1
        if calls["n"] == 7:  # epoch 2, step 2 of 4
            self.signum = 15
        return self.signum is not None

    monkeypatch.setattr(helper.engine.StopFlag, "should_stop", stop_at_step_6)
    with pytest.raises(SystemExit) as stopped:
        train_main("cvusa", _flags(cvusa_root, results_dir, "run"))
    assert stopped.value.code == 128 + 15
    monkeypatch.undo()
    last = os.path.join(results_dir, "run", "last.pth")
    state = torch.load(last, weights_only=True)
    assert (state["epoch"], state["progress"]["step"]) == (1, 2) and state["scheduler"]["last_epoch"] == 6
    train_main("cvusa", ["--resume", last])
    assert _rows(results_dir, "run") == _rows(reference, "run")


def test_gradient_caching_trains_like_the_whole_batch(cvusa_root, tmp_path):
    """--chunk_size 3 with batches of 8: the same training up to float round-off."""
    rows = {}
    for name, extra in (("whole", []), ("chunked", ["--chunk_size", "3"])):
        flags = _flags(cvusa_root, str(tmp_path), name) + ["--n_epochs", "2", *extra]  # the last --n_epochs wins
        train_main("cvusa", flags)
        rows[name] = _rows(str(tmp_path), name)
    for whole, chunked in zip(rows["whole"], rows["chunked"]):
        assert chunked["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-4)
        assert chunked["lr"] == pytest.approx(whole["lr"])
