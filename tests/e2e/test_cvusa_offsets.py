"""CVUSA with offset labels: train_cvusa.py --regress_offset on a synthetic world written with
--max_offset, the head learning the offsets, test_cvusa.py loading it strictly, and the error
for data without offsets.csv."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import default_collate

from data.cvusa import CVUSA
from data.synthetic import generate_cvusa
from helper import distributed
from helper.checkpoint import load_checkpoint, load_model_state
from helper.cli import evaluate_main, train_main
from helper.config import RunConfig
from helper.objective import Objective, compute_loss
from helper.tasks import REFINED_KEYS, CVUSATask
from models import build_model
from tests.e2e.worlds import TINY_FLAGS, make_cvusa

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGS = [*TINY_FLAGS, "--transform", "polar", "--batch_size", "4", "--regress_offset", "--rotate"]


@pytest.fixture(scope="module")
def offset_world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cvusa_offsets"))
    generate_cvusa(root, train=16, test=8, seed=0, size="demo", max_offset=0.5)
    return root


def _offset_error(model, run: RunConfig) -> float:
    """Mean squared error of the predicted normalised offsets of the (unaugmented) training pairs."""
    dataset = CVUSA(run.data.data_root, run.data.train_csv, run.model.sate_size, run.model.pano_size,
                    offsets_csv=run.data.offsets_csv)
    batch = default_collate([dataset[i] for i in range(len(dataset))])
    model.eval()
    with torch.no_grad():
        street, satellite = model(batch["street"], batch["satellite"])
        predicted = model.predict_offset(street, satellite).double()
    return float(((predicted - batch["delta"] / (dataset.tile_side / 2)) ** 2).sum(1).mean())


def test_train_learns_the_offsets_then_test_loads_strictly(offset_world, tmp_path):
    results_dir = str(tmp_path / "runs")
    train_main("cvusa", ["--data_root", offset_world, "--results_dir", results_dir, "--name", "run", *FLAGS,
                         "--n_epochs", "5"])
    run_dir = os.path.join(results_dir, "run")
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert (config["regress_offset"], config["offsets_csv"], config["lambda_offset"]) == (True, "offsets.csv", 0.01)
    state = load_checkpoint(os.path.join(run_dir, "last.pth"))
    run = RunConfig.from_dict(state["config"], complete=True)
    trained = build_model(run.model)
    load_model_state(trained, state["model"], "last.pth")
    assert any(key.startswith("offset_head.") for key in state["model"])
    torch.manual_seed(run.train.seed)  # the weights the run started from (helper.engine.start_training)
    initial = build_model(run.model)
    before, after = _offset_error(initial, run), _offset_error(trained, run)
    # the predictions move towards the targets (in 20 steps mostly towards their mean: 0.087 -> 0.065)
    assert after < 0.8 * before, (before, after)

    out = str(tmp_path / "results.json")
    results = evaluate_main("cvusa", ["--checkpoint", os.path.join(run_dir, "last.pth"), "--results_json", out,
                                      "--device", "cpu", "--workers", "0"])
    assert results["queries"] == 8 and not any(key in results for key in REFINED_KEYS)
    assert json.load(open(out)) == json.loads(json.dumps(results))

    # re-centred re-ranking of the whole list: every query keeps its candidates, only their order
    # may change, so R@K over all references is 100 and the other keys are today's
    reranked = evaluate_main("cvusa", ["--checkpoint", os.path.join(run_dir, "last.pth"), "--device", "cpu",
                                       "--workers", "0", "--rerank", "8"])
    assert {k: v for k, v in reranked.items() if k != "rerank"} == results
    block = reranked["rerank"]
    assert block["k"] == 8 and block["seconds"] > 0 and block["street_to_satellite"]["R@10"] == 100.0
    assert block["street_to_satellite"]["queries"] == 8


@pytest.mark.parametrize("transform", ["none", "polar", "affine", "composed_affine", "tps"])
def test_offset_term_on_every_transform(offset_world, transform):
    """One CVUSA training batch: the objective with the offset term exceeds the retrieval loss, and the
    offset head gets gradients."""
    flat = {"dataset": "cvusa", "data_root": offset_world, "transform": transform, "backbone": "tiny",
            "pretrained": False, "sate_size": [64, 64], "pano_size": [32, 176], "regress_offset": True,
            "lambda_offset": 1.0, "rotate": True, "workers": 0, "device": "cpu"}
    run = RunConfig.from_dict(flat).resolved()
    dataset = CVUSATask().train_dataset(run)
    batch = default_collate([dataset[i] for i in range(4)])
    assert dataset.tile_side == 256 and batch["delta"].shape == (4, 2)
    torch.manual_seed(0)
    model = build_model(run.model)
    env = distributed.DistEnv(0, 1, 0, torch.device("cpu"))
    total, terms = compute_loss(Objective.of(run, dataset.tile_side), model, batch, env, hard_ratio=1.0)
    retrieval = terms["retrieval"]
    assert torch.isfinite(total) and total > retrieval
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.offset_head.parameters())


def test_regress_offset_without_offset_labels_is_one_clear_error(tmp_path):
    root = make_cvusa(str(tmp_path / "cvusa"), n_train=4, n_val=2)  # real CVUSA: no offsets.csv
    results_dir = tmp_path / "runs"
    out = subprocess.run([sys.executable, os.path.join(REPO, "train_cvusa.py"), "--data_root", root,
                          "--results_dir", str(results_dir), *FLAGS, "--n_epochs", "1"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"error: --offsets_csv file not found: {os.path.join(root, 'offsets.csv')}; ")
    assert "CVUSA has no offset labels" in lines[0] and "--max_offset" in lines[0]
    assert not results_dir.exists()
