"""VIGOR metre-level localisation refined by the offset head, end to end on a synthetic world."""
import json
import os

import numpy as np
import pytest
import torch

from data.synthetic import generate_vigor
from helper import distributed
from helper.cli import evaluate_main, format_table, train_main
from helper.config import RunConfig
from helper.offsets import refined_localization
from helper.tasks import REFINED_KEYS, VigorTask

FLAGS = ["--backbone", "tiny", "--no-pretrained", "--sate_size", "64,64", "--pano_size", "32,64",
         "--device", "cpu", "--workers", "0", "--batch_size", "3", "--n_epochs", "1", "--lr", "1e-4",
         "--cities", "NewYork,Seattle"]


@pytest.fixture(scope="module")
def vigor_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vigor"))
    generate_vigor(root, cities="NewYork,Seattle", train=8, test=8, seed=0, size="demo")
    return root


def test_train_with_semi_positives_and_offsets_then_test(vigor_root, tmp_path):
    results_dir = str(tmp_path / "runs")
    train_main("vigor", ["--data_root", vigor_root, "--results_dir", results_dir, "--name", "run", *FLAGS,
                         "--transform", "affine", "--semi_positive", "iou", "--regress_offset"])
    run = os.path.join(results_dir, "run")
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["semi_positive"] == "iou" and config["regress_offset"] and config["lambda_offset"] == 0.01
    out = str(tmp_path / "results.json")
    results = evaluate_main("vigor", ["--checkpoint", os.path.join(run, "last.pth"), "--results_json", out,
                                      "--device", "cpu", "--workers", "0"])
    assert json.load(open(out)) == json.loads(json.dumps(results))
    refined, hits = results["localization_refined"], results["localization_top1_positive"]
    assert set(refined) == {"median_m", "within_m"} and set(refined["within_m"]) == {"1", "5", "10", "25", "50"}
    assert set(hits) == {"queries", "median_m", "median_m_refined"} and 0 <= hits["queries"] <= results["queries"]
    assert "refined by the offset: median" in format_table(results)
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert rows[0]["localization_refined"]["median_m"] == pytest.approx(refined["median_m"])
    # every loss term that is on is logged (unweighted), in metrics.jsonl and TensorBoard
    terms = {"train_loss", "train_l1", "train_semi_positive", "train_offset"}
    assert terms <= set(rows[-1]) and "train_recentre" not in rows[-1]
    assert all(rows[-1][key] > 0 for key in terms - {"train_l1"})
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(run).Reload()
    assert {f"train/{key}" for key in terms} <= set(events.Tags()["scalars"])
    assert events.Scalars("train/train_offset")[-1].value == pytest.approx(rows[-1]["train_offset"], rel=1e-6)


def _run(vigor_root, **changes):
    flat = {"dataset": "vigor", "data_root": vigor_root, "cities": ["NewYork", "Seattle"], "backbone": "tiny",
            "pretrained": False, "sate_size": [64, 64], "pano_size": [32, 64], "workers": 0, "device": "cpu"}
    return RunConfig.from_dict({**flat, **changes}).resolved()


@pytest.mark.parametrize("regress_offset", [False, True])
def test_refined_keys_only_with_an_offset_head(vigor_root, regress_offset):
    from models import build_model

    run = _run(vigor_root, regress_offset=regress_offset)
    env = distributed.DistEnv(0, 1, 0, torch.device("cpu"))
    results = VigorTask().evaluate(run, build_model(run.model), env)
    assert all((key in results) == regress_offset for key in REFINED_KEYS)
    assert "localization" in results


def test_refined_error_with_the_true_offsets_beats_the_centre(vigor_root):
    """The known answer: for queries whose top-1 is their positive, moving the centre by the label's
    delta puts them at their GPS; a wrong top-1 keeps an error of about a tile."""
    index = _run(vigor_root).data.index("test")
    top1 = torch.as_tensor(index.positive.copy())
    wrong = np.arange(index.num_panoramas) % 4 == 0
    top1[wrong] = torch.as_tensor((index.positive[wrong] + 7) % index.num_satellites)
    offset = np.where(wrong[:, None], 0.0, index.deltas[:, 0])
    out = refined_localization(index, top1, offset)
    hits = out["localization_top1_positive"]
    assert hits["queries"] == int((~wrong).sum())
    assert hits["median_m_refined"] < 0.05 < 1.0 < hits["median_m"]
    assert out["localization_refined"]["within_m"]["1"] == pytest.approx(100.0 * (~wrong).mean())


def test_train_and_test_with_the_pose_head_and_unknown_headings(vigor_root, tmp_path):
    """VIGOR end to end with --pose dense: trained on the positives and semi-positives with random
    headings, tested with random headings: the positives-known ``pose`` block in metres with the
    heading keys, the refined localisation from the pose head, re-ranking by the pose score."""
    from helper.offsets import city_metres_per_pixel

    results_dir = str(tmp_path / "runs")
    train_main("vigor", ["--data_root", vigor_root, "--results_dir", results_dir, "--name", "pose", *FLAGS,
                         "--transform", "polar", "--semi_positive", "iou", "--pose", "dense",
                         "--train_heading", "random"])
    run = os.path.join(results_dir, "pose")
    assert json.loads(open(os.path.join(run, "metrics.jsonl")).readline())["train_pose"] > 0
    out = str(tmp_path / "results.json")
    results = evaluate_main("vigor", ["--checkpoint", os.path.join(run, "last.pth"), "--results_json", out,
                                      "--device", "cpu", "--workers", "0", "--test_heading", "random",
                                      "--rerank", "2", "--rerank_score", "pose"])
    block = results["pose"]
    assert set(block) == {"queries", "mean_m", "median_m", "within_m", "centre_mean_m", "centre_median_m",
                          "heading_mean_deg", "heading_median_deg", "heading_within_deg"}
    index = _run(vigor_root).data.index("test")
    centre = np.hypot(*index.deltas[:, 0].T) * city_metres_per_pixel(index)[index.street_city]
    assert block["queries"] == index.num_panoramas == results["queries"]
    assert block["centre_median_m"] == pytest.approx(float(np.median(centre)), rel=1e-9)
    assert set(results["localization_refined"]["within_m"]) == {"1", "5", "10", "25", "50"}
    assert results["rerank"]["score"] == "pose" and results["view"]["test_heading"] == "random"
    assert "pose, positives known" in format_table(results) and json.load(open(out))["pose"] == block
