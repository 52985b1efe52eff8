"""Building an index: resuming an interrupted build, nothing half-written, approximate kinds."""
import json
import os

import faiss
import numpy as np
import pytest

from localization import index as index_module
from localization.cli import main

from .conftest import run_cli
from .test_errors import a_panorama


def _descriptors(folder):
    index = faiss.read_index(os.path.join(folder, "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)


def test_interrupted_build_leaves_no_index_and_resumes(world, flat_index, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "index")
    args = ["index", "--checkpoint", world["checkpoint"], "--out", out, "--satellites", *world["satellites"],
            "--device", "cpu", "--workers", "0", "--chunk", "16"]
    real_save, saved = index_module._save_chunk, []

    def save_then_stop(path, keys, array):
        if saved:
            raise KeyboardInterrupt  # interrupted while saving the second chunk
        real_save(path, keys, array)
        saved.append(path)

    monkeypatch.setattr(index_module, "_save_chunk", save_then_stop)
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 130
    assert sorted(os.listdir(out)) == ["building"]  # no manifest, no index: never taken for an index
    code, _, err = run_cli(["query", "--index", out, "--device", "cpu", a_panorama(world)], capsys)
    assert code == 2 and "unfinished index build" in err

    monkeypatch.setattr(index_module, "_save_chunk", real_save)
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


def _clustered(count=6000, dim=128):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, dim)).astype(np.float32)
    data = centres[rng.integers(0, 64, count)] + 0.5 * rng.normal(size=(count, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[:200] + 0.1 * rng.normal(size=(200, dim)).astype(np.float32)
    return data, queries / np.linalg.norm(queries, axis=1, keepdims=True)


# PQ codes alone (refine_bits 0) rank far worse here (60%): the re-scoring makes ivfpq agree
@pytest.mark.parametrize("kind, refine_bits, minimum", [("ivf", 8, 0.95), ("ivfpq", 8, 0.95), ("ivfpq", 4, 0.95),
                                                        ("ivfpq", 0, 0.5)])
def test_approximate_indexes_agree_with_the_exact_one_on_clustered_data(kind, refine_bits, minimum):
    data, queries = _clustered()
    spec = index_module.IndexSpec(kind, nprobe=16, refine_bits=refine_bits).resolved(len(data), 128)
    approx = index_module.make_index(spec, data)
    exact = index_module.make_index(index_module.IndexSpec("flat").resolved(len(data), 128), data)
    agree = np.mean(approx.search(queries, 1)[1][:, 0] == exact.search(queries, 1)[1][:, 0])
    assert spec.nlist == min(round(4 * np.sqrt(6000)), 6000 // 39) and agree >= minimum, agree
    assert (spec.refine > 0) == (kind == "ivfpq" and refine_bits > 0)


def test_re_scoring_bits_set_the_size_of_an_ivfpq_index():
    data, _ = _clustered()
    sizes = {bits: len(index_module.serialise(index_module.make_index(
        index_module.IndexSpec("ivfpq", refine_bits=bits).resolved(len(data), 128), data))) for bits in (8, 4, 0)}
    per_tile = {bits: (sizes[bits] - sizes[0]) / len(data) for bits in (8, 4)}
    assert per_tile[8] == pytest.approx(128, abs=1) and per_tile[4] == pytest.approx(64, abs=1), per_tile


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_a_chunked_build_equals_the_in_memory_one(kind):
    """Chunks read on demand (as a large build does) give the very index of the whole array."""
    data, queries = _clustered(count=3000)
    spec = index_module.IndexSpec(kind).resolved(len(data), 128)
    reads = []

    def read(number):
        reads.append(number)
        return data[1000 * number:1000 * (number + 1)]

    chunked = index_module.make_index(spec, index_module.Chunks([1000, 1000, 1000], 128, read))
    whole = index_module.make_index(spec, data)
    assert index_module.serialise(chunked) == index_module.serialise(whole)
    assert reads == ([0, 1, 2] * 2 if kind == "ivfpq" else [0, 1, 2])  # sample pass + add pass: one chunk each time
    np.testing.assert_array_equal(chunked.search(queries, 5)[1], whole.search(queries, 5)[1])


def test_an_ivfpq_manifest_of_the_previous_release_without_refine_bits_still_loads():
    """Manifests written before ``--refine_bits`` existed hold SQ8 re-scoring: the default."""
    data, queries = _clustered()
    spec = index_module.IndexSpec("ivfpq").resolved(len(data), 128)
    index = faiss.deserialize_index(np.frombuffer(index_module.serialise(index_module.make_index(spec, data)),
                                                  dtype=np.uint8))
    stored = {key: value for key, value in vars(spec).items() if key != "refine_bits"}
    index_module.set_search_params(index, index_module.IndexSpec(**stored))
    assert faiss.downcast_index(index).k_factor == spec.refine


def test_ivfpq_on_fewer_tiles_than_a_pq_codebook_is_one_clear_error(world, tmp_path, capsys):
    out = str(tmp_path / "ivfpq")
    code, _, err = run_cli(["index", "--checkpoint", world["checkpoint"], "--out", out, "--satellites",
                            *world["satellites"], "--device", "cpu", "--workers", "0", "--index", "ivfpq"], capsys)
    assert code == 2 and "--index ivfpq needs at least 256 tiles" in err and "Traceback" not in err, err
    assert not os.path.exists(out)  # refused before embedding anything
