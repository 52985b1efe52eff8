"""Building an index: resuming an interrupted build, nothing half-written, approximate kinds."""
import json
import os

import faiss
import numpy as np
import pytest

from localization import index as index_module
from localization.cli import main

from .conftest import run_cli


def _descriptors(folder):
    index = faiss.read_index(os.path.join(folder, "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)


def test_interrupted_build_leaves_no_index_and_resumes(world, flat_index, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "index")
    args = ["index", "--checkpoint", world["checkpoint"], "--out", out, "--satellites", *world["satellites"],
            "--device", "cpu", "--workers", "0", "--chunk", "16"]
    real_save, saved = index_module._save_npy, []

    def save_then_stop(path, array):
        if saved:
            raise KeyboardInterrupt  # interrupted while embedding the second chunk
        real_save(path, array)
        saved.append(path)

    monkeypatch.setattr(index_module, "_save_npy", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    assert sorted(os.listdir(out)) == ["building"]  # no manifest, no index: never taken for an index
    code, _, err = run_cli(["query", "--index", out, "--device", "cpu", "x.jpg"], capsys)
    assert code == 2 and "unfinished index build" in err

    monkeypatch.setattr(index_module, "_save_npy", real_save)
    main(args)
    printed = capsys.readouterr().out
    assert "resumed: 16 of 50 tiles" in printed
    assert sorted(os.listdir(out)) == ["index.faiss", "manifest.json", "tiles.json"]
    # other batch boundaries: the same descriptors up to float32 round-off of the batched convolutions
    np.testing.assert_allclose(_descriptors(out), _descriptors(flat_index), rtol=0, atol=1e-6)
    main(args)
    assert "already holds this index" in capsys.readouterr().out


def test_manifest_records_the_checkpoint_identity(world, flat_index):
    from localization.embed import weights_sha256
    import torch

    manifest = json.load(open(os.path.join(flat_index, "manifest.json")))
    state = torch.load(world["checkpoint"], weights_only=True)
    assert manifest["checkpoint"]["sha256"] == weights_sha256(state["model"])
    assert manifest["checkpoint"]["config"]["backbone"] == "tiny"
    assert manifest["count"] == 50 and manifest["index"]["kind"] == "flat"


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_approximate_indexes_agree_with_the_exact_one_on_clustered_data(kind):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, 128)).astype(np.float32)
    data = centres[rng.integers(0, 64, 6000)] + 0.5 * rng.normal(size=(6000, 128)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[:200] + 0.1 * rng.normal(size=(200, 128)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    spec = index_module.IndexSpec(kind, nprobe=16).resolved(len(data), 128)
    approx = index_module.make_index(spec, data)
    exact = index_module.make_index(index_module.IndexSpec("flat").resolved(len(data), 128), data)
    agree = np.mean(approx.search(queries, 1)[1][:, 0] == exact.search(queries, 1)[1][:, 0])
    assert spec.nlist == min(round(4 * np.sqrt(6000)), 6000 // 39) and agree >= 0.95, agree
