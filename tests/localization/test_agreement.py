"""Exact agreement of localize.py (flat index) with test_vigor.py's ranking and metre-level figures."""
import json
import os

import numpy as np
import pytest

from data.vigor_layout import VigorIndex
from geometry.earth import haversine_m
from helper import tasks
from helper.cli import evaluate_main
from helper.metrics import evaluate_retrieval, localization_summary
from localization.cli import main

from .conftest import CITIES


def test_top1_and_metre_errors_equal_test_vigor(world, flat_index, tmp_path, monkeypatch, capsys):
    split = VigorIndex(world["root"], CITIES, "test", "same")
    panoramas = [split.street_file(i) for i in range(split.num_panoramas)]
    out = str(tmp_path / "query")
    main(["query", "--index", flat_index, "--out", out, "-k", "3", "--device", "cpu", "--no-pictures", *panoramas])
    results = json.load(open(os.path.join(out, "results.json")))

    captured = {}

    def ranking_with_top1(*args, **kwargs):  # test_vigor.py's own evaluation, also returning its top-1
        out = evaluate_retrieval(*args, **{**kwargs, "return_top1": True})
        captured["top1"] = out.pop("top1").cpu().numpy()
        return out

    monkeypatch.setattr(tasks, "evaluate_retrieval", ranking_with_top1)
    reference = evaluate_main("vigor", ["--checkpoint", world["checkpoint"], "--data_root", world["root"],
                                        "--cities", ",".join(CITIES), "--device", "cpu", "--workers", "0",
                                        "--results_json", str(tmp_path / "test_vigor.json")])
    capsys.readouterr()

    assert [r["query"] for r in results] == panoramas and len(panoramas) == reference["queries"] == 16
    expected = [os.path.basename(split.satellite_paths[j]) for j in captured["top1"]]
    assert [r["candidates"][0]["tile"] for r in results] == expected
    assert len(set(expected)) > 1  # a real ranking, not one tile for everything
    assert all([c["rank"] for c in r["candidates"]] == [1, 2, 3] for r in results)
    assert all(r["candidates"][0]["similarity"] >= r["candidates"][1]["similarity"] for r in results)

    true = np.array([(r["true_lat"], r["true_lon"]) for r in results])
    np.testing.assert_array_equal(true, split.street_gps)
    found = np.array([(r["candidates"][0]["lat"], r["candidates"][0]["lon"]) for r in results])
    errors = haversine_m(true[:, 0], true[:, 1], found[:, 0], found[:, 1])
    summary = localization_summary(errors)
    assert summary["within_m"] == reference["localization"]["within_m"]
    assert summary["median_m"] == pytest.approx(reference["localization"]["median_m"], rel=1e-12, abs=1e-9)
    np.testing.assert_allclose([r["candidates"][0]["distance_m"] for r in results], errors, rtol=1e-12)
