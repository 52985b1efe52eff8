"""localize.py with a pose-head checkpoint: its refined positions and headings are the test scripts' ones."""
import json
import os

import numpy as np
import pytest
import torch

from data.vigor import VigorPanoramas, VigorSatellites
from data.vigor_layout import NOMINAL_METRES_PER_PIXEL, TILE_SIDE, VigorIndex
from helper import distributed
from helper.checkpoint import CHECKPOINT_VERSION, save_checkpoint
from helper.config import RunConfig
from helper.offsets import panorama_gps
from helper.pose_eval import embed_panoramas, pose_of_pairs
from localization.cli import main
from models import build_model
from models.offset import delta_pixels

from .conftest import CITIES, SIZES


def test_refined_positions_and_headings_equal_the_test_scripts(world, tmp_path, capsys):
    run = RunConfig.from_dict({"dataset": "vigor", **SIZES, "pose": "dense", "data_root": world["root"],
                               "cities": list(CITIES), "device": "cpu", "workers": 0})
    torch.manual_seed(3)
    model = build_model(run.model)
    checkpoint = str(tmp_path / "pose.pth")
    save_checkpoint(checkpoint, {"version": CHECKPOINT_VERSION, "config": run.to_dict(), "model": model.state_dict(),
                                 "epoch": 0, "best_metric": 0.0})
    index_dir, out = str(tmp_path / "index"), str(tmp_path / "query")
    main(["index", "--checkpoint", checkpoint, "--out", index_dir, "--satellites", *world["satellites"],
          "--device", "cpu", "--workers", "0"])
    split = VigorIndex(world["root"], CITIES, "test", "same")
    panoramas = [split.street_file(i) for i in range(split.num_panoramas)]
    main(["query", "--index", index_dir, "--out", out, "-k", "2", "--device", "cpu", *panoramas])
    capsys.readouterr()
    results = json.load(open(os.path.join(out, "results.json")))
    assert all(os.path.exists(os.path.join(out, r["figure"])) for r in results)  # with the pose arrows

    # the test scripts' computation (helper.tasks.VigorTask.evaluate) on the same pairs
    names = [os.path.basename(p) for p in split.satellite_paths]
    tiles = torch.tensor([[names.index(c["tile"]) for c in r["candidates"]] for r in results])
    env = distributed.DistEnv(0, 1, 0, torch.device("cpu"))
    model.eval()
    street = embed_panoramas(model, VigorPanoramas(split, pano_size=run.model.pano_size, normalise=False), env, 4, 0)
    satellites = VigorSatellites(split, sate_size=run.model.sate_size, pano_size=run.model.pano_size, normalise=False)
    delta, heading, _ = pose_of_pairs(model, street, satellites, tiles, env, 4, 0)
    centres = split.satellite_gps[tiles.numpy()]
    expected = panorama_gps(centres, delta_pixels(delta.double().numpy(), TILE_SIDE), NOMINAL_METRES_PER_PIXEL)
    found = np.array([[(c["lat_refined"], c["lon_refined"]) for c in r["candidates"]] for r in results])
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-9)  # degrees: 0.1 mm
    headings = np.array([[c["heading_deg"] for c in r["candidates"]] for r in results])
    np.testing.assert_allclose(headings, heading.numpy(), atol=1e-4)  # float32 sums of other batch sizes
    assert np.abs(found - centres).max() > 0  # the positions moved off the tile centres
