"""A small synthetic VIGOR world, random-weights checkpoints and a built index, shared by the tests."""
import contextlib
import io
import os

import pytest
import torch

from common.errors import run_main
from data.synthetic import generate_vigor
from helper.checkpoint import CHECKPOINT_VERSION, save_checkpoint
from helper.config import RunConfig
from localization.cli import main
from models import build_model

CITIES = ("NewYork", "Seattle")
SIZES = {"backbone": "tiny", "pretrained": False, "sate_size": [64, 64], "pano_size": [32, 64]}


def make_checkpoint(path: str, data_root: str, seed: int) -> str:
    """A loadable checkpoint of a tiny VIGOR model with random weights (``seed``)."""
    run = RunConfig.from_dict({"dataset": "vigor", **SIZES, "data_root": data_root, "cities": list(CITIES),
                               "device": "cpu", "workers": 0})
    torch.manual_seed(seed)
    model = build_model(run.model)
    save_checkpoint(path, {"version": CHECKPOINT_VERSION, "config": run.to_dict(), "model": model.state_dict(),
                           "epoch": 0, "best_metric": 0.0})
    return path


def run_cli(argv, capsys):
    """``localize.py argv`` in this process, as the script runs it: ``(exit code, stdout, stderr)``."""
    code = 0
    try:
        run_main(lambda: main(argv))
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vigor"))
    with contextlib.redirect_stdout(io.StringIO()):
        generate_vigor(root, cities=",".join(CITIES), train=8, test=8, seed=0, size="demo")
    checkpoints = str(tmp_path_factory.mktemp("checkpoints"))
    return {"root": root, "satellites": [os.path.join(root, city, "satellite") for city in CITIES],
            "checkpoint": make_checkpoint(os.path.join(checkpoints, "a.pth"), root, seed=1),
            "other_checkpoint": make_checkpoint(os.path.join(checkpoints, "b.pth"), root, seed=2)}


@pytest.fixture(scope="session")
def flat_index(world, tmp_path_factory):
    """An exact index of both cities' tiles built by ``world["checkpoint"]``."""
    out = os.path.join(str(tmp_path_factory.mktemp("index")), "flat")
    with contextlib.redirect_stdout(io.StringIO()):
        main(["index", "--checkpoint", world["checkpoint"], "--out", out, "--satellites", *world["satellites"],
              "--device", "cpu", "--workers", "0"])
    return out
