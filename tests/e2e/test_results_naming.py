"""test_cvusa.py / test_vigor.py: default result file names differ per evaluated view, and the JSON
and the printed table record the view."""
import json
import os

import pytest

from helper.cli import evaluate_main, train_main, view_suffix
from tests.e2e.worlds import TINY_FLAGS, make_cvusa

PLAIN_VIEW = {"test_heading": "none", "test_fov": 360.0, "rerank": 0, "rerank_score": None}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("naming"))
    make_cvusa(os.path.join(root, "data"), n_train=8, n_val=4)
    train_main("cvusa", ["--data_root", os.path.join(root, "data"), "--n_epochs", "1", "--batch_size", "4",
                         "--results_dir", os.path.join(root, "runs"), "--name", "run", *TINY_FLAGS])
    return os.path.join(root, "runs", "run", "best.pth")


def test_another_view_keeps_its_own_file_and_records_the_view(checkpoint, capsys):
    folder = os.path.dirname(checkpoint)
    evaluate_main("cvusa", ["--checkpoint", checkpoint, "--device", "cpu", "--workers", "0"])
    plain_path = os.path.join(folder, "results_best_val-19zl.json")  # the name it always had
    plain = open(plain_path).read()
    assert json.loads(plain)["view"] == PLAIN_VIEW
    assert "view: north-aligned, 360-degree panoramas; no re-ranking" in capsys.readouterr().out

    evaluate_main("cvusa", ["--checkpoint", checkpoint, "--device", "cpu", "--workers", "0",
                            "--test_heading", "random", "--test_fov", "90"])
    turned = json.load(open(os.path.join(folder, "results_best_val-19zl_heading-random_fov90.json")))
    assert turned["view"] == {**PLAIN_VIEW, "test_heading": "random", "test_fov": 90.0}
    assert "view: random headings, 90-degree panoramas; no re-ranking" in capsys.readouterr().out
    assert open(plain_path).read() == plain  # the plain result is not overwritten
    assert {key for key in json.loads(plain)} == {key for key in turned}
    assert sorted(name for name in os.listdir(folder) if name.startswith("results_")) == [
        "results_best_val-19zl.json", "results_best_val-19zl_heading-random_fov90.json"]


@pytest.mark.parametrize("view, suffix", [
    (PLAIN_VIEW, ""),
    ({**PLAIN_VIEW, "test_fov": 67.5}, "_fov67.5"),
    ({**PLAIN_VIEW, "test_heading": "random"}, "_heading-random"),
    ({**PLAIN_VIEW, "rerank": 10, "rerank_score": "sum"}, "_rerank10"),
    ({**PLAIN_VIEW, "rerank": 10, "rerank_score": "recentred"}, "_rerank10-recentred"),
    ({**PLAIN_VIEW, "test_heading": "random", "test_fov": 180.0, "rerank": 5, "rerank_score": "recentred"},
     "_heading-random_fov180_rerank5-recentred"),
])
def test_every_view_gets_its_own_name(view, suffix):
    assert view_suffix(view) == suffix
