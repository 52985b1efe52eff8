"""VIGOR end to end on a generated VIGOR-layout world: train one epoch, then test_vigor.py."""
import json
import os

import pytest

from data.synthetic import generate_vigor
from helper.cli import evaluate_main, train_main

FLAGS = ["--backbone", "tiny", "--no-pretrained", "--sate_size", "64,64", "--pano_size", "32,64",
         "--device", "cpu", "--workers", "0", "--batch_size", "4", "--n_epochs", "1", "--lr", "1e-4"]


@pytest.fixture(scope="module")
def vigor_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vigor"))
    generate_vigor(root, cities="NewYork,Seattle", train=8, test=8, seed=0, size="demo")
    return root


@pytest.mark.parametrize("mode, cities, extra", [
    ("same", ["--cities", "NewYork,Seattle"], ["--transform", "polar"]),
    ("cross", ["--train_cities", "NewYork", "--test_cities", "Seattle"],
     ["--transform", "tps", "--lambda_l1", "1", "--mining", "--mining_k", "4", "--batch_size", "2"]),
    ("same", ["--cities", "NewYork,Seattle"], ["--transform", "polar", "--sampling", "gps", "--sampling_select", "4",
                                               "--sampling_pool", "8"]),
    ("same", ["--cities", "NewYork,Seattle"], ["--transform", "none", "--sampling", "similarity",
                                               "--sampling_select", "4", "--sampling_pool", "8", "--n_epochs", "2"]),
])
def test_train_and_test_vigor(vigor_root, tmp_path, mode, cities, extra):
    results_dir = str(tmp_path / "runs")
    train_main("vigor", ["--data_root", vigor_root, "--mode", mode, *cities, "--results_dir", results_dir,
                         "--name", "run", *FLAGS, *extra])
    run = os.path.join(results_dir, "run")
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert rows[0]["epoch"] == 1 and "hit_rate" in rows[0]["street_to_satellite"]
    out = str(tmp_path / "results.json")
    test_cities = ["--cities", "NewYork,Seattle"] if mode == "same" else ["--test_cities", "Seattle"]
    evaluate_main("vigor", ["--checkpoint", os.path.join(run, "last.pth"), "--results_json", out,
                            "--device", "cpu", "--workers", "0", *test_cities])
    results = json.load(open(out))
    assert results["dataset"] == "vigor" and results["mode"] == mode
    # same-area: 8 test panoramas in each of 2 cities; cross-area: all 16 panoramas of Seattle
    assert results["queries"] == 16
    street_to_satellite = results["street_to_satellite"]
    assert 0 <= street_to_satellite["R@1"] <= street_to_satellite["hit_rate"] <= 100  # a hit also counts semi-positives
    assert street_to_satellite["R@1"] <= street_to_satellite["R@5"] <= street_to_satellite["R@10"]
    loc = results["localization"]
    assert set(loc["within_m"]) == {"1", "5", "10", "25", "50"} and loc["median_m"] >= 0
    assert rows[-1]["street_to_satellite"]["R@1"] == pytest.approx(street_to_satellite["R@1"])


def test_a_plan_without_a_single_batch_is_an_error(vigor_root, tmp_path):
    """16 panoramas on a 5 x 5 tile grid: 4 of them share no satellite, 5 never do (brute force over the
    labels). The run must say so (naming the largest batch size that fits) instead of training on nothing."""
    from common.errors import UserError

    results_dir = tmp_path / "runs"
    with pytest.raises(UserError, match=r"--batch_size 5 forms no training batch.*use --batch_size 4 or less"):
        train_main("vigor", ["--data_root", vigor_root, "--mode", "cross", "--train_cities", "NewYork",
                             "--test_cities", "Seattle", "--results_dir", str(results_dir), "--name", "run", *FLAGS,
                             "--batch_size", "5"])
    assert not results_dir.exists()  # nothing written


def test_a_plan_that_drops_many_panoramas_is_logged(caplog):
    """Six of eight panoramas share a satellite: batches of 2 can hold only two of them."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from helper.config import RunConfig
    from helper.distributed import DistEnv
    from helper.log import get_logger
    from helper.tasks import VigorTask

    positive = np.array([0, 0, 0, 0, 0, 0, 1, 2])
    semi = np.stack([positive + 10, positive + 20, positive + 30], axis=1)
    index = SimpleNamespace(positive=positive, semi=semi, num_panoramas=8)
    run = RunConfig.from_dict({"batch_size": 2, "data_root": "/nowhere"}, "vigor")
    logger = get_logger()  # it may not propagate to the root logger (helper.log.setup_logging)
    logger.addHandler(caplog.handler)
    try:
        sampler = VigorTask().train_batch_sampler(run, SimpleNamespace(index=index),
                                                  DistEnv(0, 1, 0, torch.device("cpu")))
    finally:
        logger.removeHandler(caplog.handler)
    assert len(sampler) == 2
    assert "leaves out about 4 of 8 training panoramas" in caplog.text


@pytest.fixture(scope="module")
def crowded_root(tmp_path_factory):
    """NewYork: one panorama in each corner cell of a 4 x 4 tile grid (disjoint tiles) and 8 in the
    centre cell (their tiles overlap every cell's), 12 in all; Seattle: 4 test panoramas. The random
    order of epoch 0 (seed 0) starts with a centre panorama, so a greedy pass forms no batch at all."""
    from tests.e2e.worlds import make_vigor

    corners = [(0, 0), (0, 2), (2, 0), (2, 2)]
    return make_vigor(str(tmp_path_factory.mktemp("crowded")),
                      {"NewYork": corners + [(1, 1)] * 8, "Seattle": corners}, seed=3)


CROWDED = ["--mode", "cross", "--train_cities", "NewYork", "--test_cities", "Seattle", "--name", "run", *FLAGS]


@pytest.mark.parametrize("batch_size, batches", [(4, 1), (3, 1), (2, 2)])
def test_a_crowded_city_trains_on_the_batches_that_exist(crowded_root, tmp_path, capsys, caplog, batch_size,
                                                        batches):
    """Only the corner panoramas fit together: the plan keeps going past the centre ones (which the
    greedy pass may start with) and trains on the batches that exist, saying how many it leaves out."""
    results_dir = str(tmp_path / "runs")
    train_main("vigor", ["--data_root", crowded_root, "--results_dir", results_dir, *CROWDED,
                         "--batch_size", str(batch_size)])
    assert (f"leaves out about {12 - batches * batch_size} of 12 training panoramas: they cannot fill another "
            f"global batch of {batch_size} without two sharing a satellite\n") in caplog.text  # before log.txt exists
    assert f"{batches} steps per epoch" in capsys.readouterr().out
    rows = [json.loads(line) for line in open(os.path.join(results_dir, "run", "metrics.jsonl"))]
    assert rows[0]["epoch"] == 1


def test_a_crowded_city_names_the_batch_size_that_fits(crowded_root, tmp_path):
    from common.errors import UserError

    with pytest.raises(UserError, match=r"--batch_size 5 forms no training batch.*use --batch_size 4 or less"):
        train_main("vigor", ["--data_root", crowded_root, "--results_dir", str(tmp_path), *CROWDED,
                             "--batch_size", "5"])


def test_a_city_where_no_two_panoramas_fit_says_so(tmp_path):
    from common.errors import UserError
    from tests.e2e.worlds import make_vigor

    root = make_vigor(str(tmp_path / "data"), {"NewYork": [(1, 1)] * 4, "Seattle": [(0, 0)]})
    with pytest.raises(UserError, match=r"--batch_size 3 forms no training batch: the 4 training panoramas cannot "
                                        r"fill a global batch of 3 .*; no batch size of 2 or more fits$"):
        train_main("vigor", ["--data_root", root, "--results_dir", str(tmp_path / "runs"), *CROWDED,
                             "--batch_size", "3"])
