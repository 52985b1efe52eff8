"""query --fov DEG: a photo of a limited field of view, searched like test_cvusa.py --test_fov DEG."""
import contextlib
import csv
import io
import json
import os

import cv2
import numpy as np
import pytest
import torch

from data.io import read_image
from data.synthetic import generate_cvusa
from geometry.heading import crop_columns, fov_width
from helper import tasks
from helper.checkpoint import CHECKPOINT_VERSION, save_checkpoint
from helper.cli import evaluate_main
from helper.config import RunConfig
from models import build_model

from .conftest import SIZES, run_cli
from .test_errors import assert_user_error, index_args

FOV = 90.0
VAL = "splits/val-19zl.csv"


@pytest.fixture(scope="module")
def cvusa(tmp_path_factory):
    """A synthetic CVUSA world, a random-weights dsm checkpoint, and its aerials as a --tiles CSV."""
    root = str(tmp_path_factory.mktemp("cvusa"))
    with contextlib.redirect_stdout(io.StringIO()):
        generate_cvusa(root, train=4, test=12, seed=0, size="demo")
    run = RunConfig.from_dict({"dataset": "cvusa", **SIZES, "pano_size": [32, 128], "head": "dsm",
                               "data_root": root, "device": "cpu", "workers": 0})
    torch.manual_seed(5)
    checkpoint = os.path.join(root, "dsm.pth")
    save_checkpoint(checkpoint, {"version": CHECKPOINT_VERSION, "config": run.to_dict(),
                                 "model": build_model(run.model).state_dict(), "epoch": 0, "best_metric": 0.0})
    gps = {row["id"]: (row["lat"], row["lon"]) for row in csv.DictReader(open(os.path.join(root, "gps.csv")))}
    pairs = [row for row in csv.reader(open(os.path.join(root, VAL))) if row]
    tiles_csv = os.path.join(root, "val_tiles.csv")
    with open(tiles_csv, "w") as handle:
        for aerial, _, _ in pairs:
            ident = os.path.splitext(os.path.basename(aerial))[0]
            handle.write(f"{aerial},{gps[ident][0]},{gps[ident][1]}\n")
    return {"root": root, "checkpoint": checkpoint, "tiles": tiles_csv, "pairs": pairs,
            "pano_size": tuple(run.model.pano_size)}


def test_fov_photos_match_test_cvusa_top1_and_heading(cvusa, tmp_path, monkeypatch, capsys):
    captured = {}

    def capture(street, satellite, positive, **kwargs):  # test_cvusa.py's own descriptors and similarity
        captured.update(street=street, satellite=satellite, similarity=kwargs["similarity"])
        return evaluate_retrieval(street, satellite, positive, **kwargs)

    evaluate_retrieval = tasks.evaluate_retrieval
    monkeypatch.setattr(tasks, "evaluate_retrieval", capture)
    evaluate_main("cvusa", ["--checkpoint", cvusa["checkpoint"], "--data_root", cvusa["root"], "--test_fov", str(FOV),
                            "--device", "cpu", "--workers", "0", "--results_json", str(tmp_path / "test.json")])
    sims, shifts = captured["similarity"](captured["street"], captured["satellite"])
    top1 = torch.argmax(sims, dim=1)  # the first among ties, as torch.max in the evaluation
    headings = captured["similarity"].heading(shifts.gather(1, top1[:, None])[:, 0], captured["street"].shape[1])

    # the same windows as photos: each panorama at the model size, its centred 90 degrees
    height, width = cvusa["pano_size"]
    photos = []
    for number, (_, panorama, _) in enumerate(cvusa["pairs"]):
        window = crop_columns(read_image(os.path.join(cvusa["root"], panorama), (height, width)),
                              fov_width(width, FOV))
        photos.append(str(tmp_path / f"photo_{number:02d}.png"))
        cv2.imwrite(photos[-1], cv2.cvtColor(window, cv2.COLOR_RGB2BGR))
    index = str(tmp_path / "index")
    code, _, err = run_cli(index_args({"checkpoint": cvusa["checkpoint"]}, index, "--tiles", cvusa["tiles"]), capsys)
    assert code == 0, err
    out = str(tmp_path / "out")
    code, printed, err = run_cli(["query", "--index", index, "--out", out, "--fov", str(FOV), "-k", "3",
                                  "--device", "cpu", "--no-pictures", *photos], capsys)
    assert code == 0, err
    results = json.load(open(os.path.join(out, "results.json")))
    assert [r["candidates"][0]["tile"] for r in results] == [cvusa["pairs"][int(j)][0] for j in top1]
    np.testing.assert_allclose([r["candidates"][0]["heading_deg"] for r in results], headings.numpy())
    np.testing.assert_allclose([r["candidates"][0]["similarity"] for r in results],
                               sims.gather(1, top1[:, None])[:, 0].numpy(), atol=1e-5)
    assert len(set(headings.tolist())) > 1 and all(r["searched"] == len(photos) for r in results)
    assert "heading" in printed


def test_fov_needs_a_head_that_takes_windows(world, flat_index, tmp_path, capsys):
    photo = str(tmp_path / "photo.png")
    cv2.imwrite(photo, np.full((48, 64, 3), 90, np.uint8))
    out = str(tmp_path / "out")
    code, _, err = run_cli(["query", "--index", flat_index, "--out", out, "--fov", "90", "--device", "cpu", photo],
                           capsys)
    assert_user_error(code, err, "needs a checkpoint whose head takes street windows")
    assert "--head dsm" in err and not os.path.exists(out)
    code, _, err = run_cli(["query", "--index", flat_index, "--out", out, "--device", "cpu", photo], capsys)
    assert_user_error(code, err, "not a 360-degree panorama")
