"""A checkpoint written before the typed configuration (version 1) loads, evaluates and resumes."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from common.errors import UserError
from helper.checkpoint import CHECKPOINT_VERSION, load_checkpoint
from helper.cli import evaluate_main, train_main
from tests.e2e.worlds import make_cvusa

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "checkpoint_v1_cvusa.pth")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The original command of the fixture's run (see tests/fixtures/README.md), without --data_root.
ORIGINAL = ["--transform", "polar", "--n_epochs", "1", "--batch_size", "8", "--lr", "1e-4", "--sate_size", "64,64",
            "--pano_size", "32,64", "--backbone", "tiny", "--no-pretrained", "--device", "cpu", "--workers", "0",
            "--attention_maps", "2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_cvusa(str(tmp_path_factory.mktemp("v1world")), n_train=16, n_val=8, seed=3)


@pytest.fixture
def run_copy(tmp_path):
    """The fixture as the last.pth of a run folder <tmp>/runs/v1/."""
    run = tmp_path / "runs" / "v1"
    run.mkdir(parents=True)
    shutil.copy(FIXTURE, run / "last.pth")
    return str(run / "last.pth")


def test_version_1_is_migrated_on_load():
    raw = torch.load(FIXTURE, weights_only=True)
    assert raw["version"] == 1 and "resume" in raw["config"] and CHECKPOINT_VERSION == 6
    state = load_checkpoint(FIXTURE)
    assert "resume" not in state["config"] and state["config"]["transform"] == "polar"
    # what version 1 did without saying: SAFA's head on two backbones, triplets, Adam, constant rate
    assert {k: state["config"][k] for k in ("head", "shared_backbone", "loss", "optimizer", "scheduler")} == \
        {"head": "safa", "shared_backbone": False, "loss": "triplet", "optimizer": "adam", "scheduler": "constant"}
    # nor the re-centred loss (version 4 neither)
    assert state["config"]["lambda_recentre"] == 0.0
    # and north-aligned full panoramas (version 2 did too)
    assert {k: state["config"][k] for k in ("train_heading", "train_fov", "test_heading", "test_fov")} == \
        {"train_heading": "none", "train_fov": 360.0, "test_heading": "none", "test_fov": 360.0}


def test_version_1_evaluates_to_the_numbers_of_its_own_code(world, tmp_path):
    results = evaluate_main("cvusa", ["--checkpoint", FIXTURE, "--data_root", world, "--device", "cpu",
                                      "--workers", "0", "--results_json", str(tmp_path / "r.json")])
    expected = {"street_to_satellite": (12.5, 75.0, 100.0), "satellite_to_street": (25.0, 87.5, 100.0)}
    for direction, recalls in expected.items():
        assert tuple(results[direction][k] for k in ("R@1", "R@5", "R@10")) == recalls


def test_resume_with_the_original_command_continues(world, run_copy):
    """The original flags plus --resume are accepted (values equal the stored ones)."""
    train_main("cvusa", [*ORIGINAL[2:], "--n_epochs", "2", "--data_root", world, "--resume", run_copy])
    state = load_checkpoint(run_copy)
    assert state["version"] == CHECKPOINT_VERSION and state["epoch"] == 2
    assert state["config"]["lr"] == 1e-4 and state["config"]["name"] == "v1"


def test_resume_refuses_a_changed_setting_naming_both_values(world, run_copy):
    with pytest.raises(UserError, match=r"--backbone: stored tiny, given vgg16; --lr: stored 0.0001, given 0.1"):
        train_main("cvusa", ["--resume", run_copy, "--data_root", world, "--lr", "0.1", "--backbone", "vgg16",
                             "--n_epochs", "3"])


def test_resuming_a_finished_run_exits_0_saying_it_is_complete(world, run_copy):
    """A requeued job of a finished run must not fail."""
    before = os.path.getmtime(run_copy)
    proc = subprocess.run([sys.executable, "train_cvusa.py", *ORIGINAL, "--data_root", world, "--resume", run_copy],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "is complete" in proc.stdout and "Traceback" not in proc.stderr
    assert os.path.getmtime(run_copy) == before and os.listdir(os.path.dirname(run_copy)) == ["last.pth"]


def test_a_gpu_checkpoint_evaluates_on_a_cpu_machine(world, tmp_path):
    """--device and --amp of the training machine do not follow a checkpoint to evaluation."""
    state = torch.load(FIXTURE, weights_only=True)
    state["config"].update(device="cuda", amp="bf16", workers=0)
    path = str(tmp_path / "gpu.pth")
    torch.save(state, path)
    results = evaluate_main("cvusa", ["--checkpoint", path, "--data_root", world,
                                      "--results_json", str(tmp_path / "r.json")])
    assert results["street_to_satellite"]["R@1"] == 12.5
