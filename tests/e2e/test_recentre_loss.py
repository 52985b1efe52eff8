"""--lambda_recentre: the retrieval loss of the positives re-centred on their labelled camera point."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import default_collate

from common.errors import UserError
from data.synthetic import generate_cvusa, generate_vigor
from geometry.affine import recentre
from helper import distributed
from helper.checkpoint import load_checkpoint
from helper.cli import evaluate_main, train_main
from helper.config import RunConfig
from helper.distributed import move_images
from helper.objective import Objective, compute_loss
from helper.losses import semi_positive_iou_loss, soft_margin_triplet_loss
from helper.parser import build_train_parser
from helper.tasks import get_task
from models import build_model
from tests.e2e.worlds import TINY_FLAGS, make_cvusa

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU = distributed.DistEnv(0, 1, 0, torch.device("cpu"))
WEIGHT = 0.5


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("recentre")
    cvusa, vigor = str(root / "cvusa"), str(root / "vigor")
    generate_cvusa(cvusa, train=8, test=4, seed=0, size="demo", max_offset=0.5)
    generate_vigor(vigor, cities="NewYork,Seattle", train=4, test=4, seed=0, size="demo")
    return {"cvusa": cvusa, "vigor": vigor}


def _run(worlds, dataset: str, **flat) -> RunConfig:
    extra = {"cities": ["NewYork", "Seattle"], "semi_positive": "iou"} if dataset == "vigor" else {}
    return RunConfig.from_dict({"dataset": dataset, "data_root": worlds[dataset], "transform": "polar",
                                "backbone": "tiny", "pretrained": False, "sate_size": [64, 64],
                                "pano_size": [32, 128], "rotate": True, "workers": 0, "device": "cpu",
                                **extra, **flat}).resolved()


@pytest.mark.parametrize("dataset", ["cvusa", "vigor"])
def test_the_term_is_the_retrieval_loss_of_the_positives_recentred_on_their_labels(worlds, dataset):
    """The objective adds WEIGHT x the triplet loss of the street descriptors against the positives
    translated so the labelled camera point is at the centre, embedded alone (the tiny backbone has
    no batch statistics); the other terms (VIGOR: the semi-positive loss) are unchanged."""
    run = _run(worlds, dataset, lambda_recentre=WEIGHT)
    train_set = get_task(dataset).train_dataset(run)
    batch = default_collate([train_set[i] for i in range(4)])
    torch.manual_seed(0)
    model = build_model(run.model)
    objective = Objective.of(run, train_set.tile_side)
    total, terms = compute_loss(objective, model, batch, CPU, hard_ratio=1.0)
    retrieval = terms["retrieval"]

    street, satellite = move_images(batch, "street", CPU.device), move_images(batch, "satellite", CPU.device)
    street_desc, positive = model(street, satellite)
    centre = batch["delta"].float() / (train_set.tile_side / 2)
    assert centre.abs().max() > 0.05  # off-centre panoramas: the translation is not the identity
    recentred = model.encode_satellite(recentre(satellite, centre))[0]
    want_retrieval = soft_margin_triplet_loss(street_desc, positive, hard_ratio=1.0)
    want = want_retrieval + WEIGHT * soft_margin_triplet_loss(street_desc, recentred, hard_ratio=1.0)
    if dataset == "vigor":
        semi = model.encode_satellite(move_images(batch, "semi_satellite", CPU.device))[0]
        want = want + semi_positive_iou_loss(street_desc, positive, semi, batch["delta"].float(),
                                             batch["semi_delta"].float(), train_set.tile_side)
    assert torch.allclose(retrieval, want_retrieval, atol=1e-5)
    assert torch.allclose(total, want, atol=1e-5), (float(total), float(want))
    without = compute_loss(Objective.of(run.replace(lambda_recentre=0.0), train_set.tile_side), model, batch,
                           CPU, hard_ratio=1.0).total
    assert torch.allclose(total - without, WEIGHT * soft_margin_triplet_loss(street_desc, recentred, hard_ratio=1.0),
                          atol=1e-5)


def test_off_by_default_recorded_and_shown_in_help():
    run = RunConfig.from_dict({"dataset": "vigor"})
    assert run.objective.lambda_recentre == 0.0 and not run.offset_labels
    assert run.to_dict()["lambda_recentre"] == 0.0
    text = " ".join(build_train_parser("cvusa").format_help().split())
    assert "--lambda_recentre" in text and "(0 = off) (default: 0.0)" in text


def test_train_records_it_and_test_loads_the_checkpoint(worlds, tmp_path):
    runs = str(tmp_path / "runs")
    train_main("cvusa", ["--data_root", worlds["cvusa"], "--results_dir", runs, "--name", "rc", *TINY_FLAGS,
                         "--transform", "polar", "--batch_size", "4", "--n_epochs", "1", "--lambda_recentre", "1",
                         "--regress_offset"])
    config = json.load(open(os.path.join(runs, "rc", "config.json")))
    assert config["lambda_recentre"] == 1.0 and config["version"] == 6
    assert load_checkpoint(os.path.join(runs, "rc", "last.pth"))["config"]["lambda_recentre"] == 1.0
    results = evaluate_main("cvusa", ["--checkpoint", os.path.join(runs, "rc", "last.pth"), "--device", "cpu",
                                      "--workers", "0", "--rerank", "4"])
    assert results["queries"] == 4 and results["rerank"]["street_to_satellite"]["R@10"] == 100.0


@pytest.mark.parametrize("flat, message", [
    ({"polar_files": True}, "--lambda_recentre re-centres the raw satellite image"),
    ({"chunk_size": 2}, "--chunk_size .* does not support .*--lambda_recentre"),
])
def test_settings_it_cannot_run_with(flat, message):
    with pytest.raises(UserError, match=message):
        RunConfig.from_dict({"dataset": "cvusa", "transform": "polar", "lambda_recentre": 1.0, **flat})


def test_without_offset_labels_it_is_one_clear_error(tmp_path):
    root = make_cvusa(str(tmp_path / "cvusa"), n_train=4, n_val=2)  # real CVUSA: no offsets.csv
    results_dir = tmp_path / "runs"
    out = subprocess.run([sys.executable, os.path.join(REPO, "train_cvusa.py"), "--data_root", root,
                          "--results_dir", str(results_dir), *TINY_FLAGS, "--transform", "polar",
                          "--batch_size", "4", "--n_epochs", "1", "--lambda_recentre", "1"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("error: --offsets_csv file not found") and "--lambda_recentre" in lines[0]
    assert not results_dir.exists()


@pytest.mark.parametrize("flat", [{"transform": "none"}, {"transform": "affine"}, {"transform": "composed_affine"},
                                  {"transform": "tps", "lambda_l1": 1.0}, {"transform": "polar", "head": "dsm"},
                                  {"transform": "polar", "loss": "infonce"}])
def test_every_block_head_and_loss_takes_the_term(worlds, flat):
    """One CVUSA batch: the term adds to the objective and, back-propagated alone, trains the
    satellite branch (finite, non-zero gradients) through every block, head and loss."""
    run = _run(worlds, "cvusa", lambda_recentre=WEIGHT, **flat)
    train_set = get_task("cvusa").train_dataset(run)
    batch = default_collate([train_set[i] for i in range(4)])
    torch.manual_seed(0)
    model = build_model(run.model)
    total, terms = compute_loss(Objective.of(run, train_set.tile_side), model, batch, CPU, hard_ratio=1.0)
    assert set(terms) == {"retrieval", "recentre", *(["l1"] if "lambda_l1" in flat else [])}
    term = WEIGHT * terms["recentre"]
    assert torch.allclose(total, terms["retrieval"] + term + terms.get("l1", 0.0), atol=1e-6)
    assert torch.isfinite(term) and term > 0
    term.backward()
    grads = [p.grad for p in model.satellite_backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
