"""Checkpoints: atomic writes, weights_only loads, refusal of pickled code, strict weights, and
the one way to rebuild a model from a checkpoint (:func:`helper.checkpoint.model_from_checkpoint`)."""
import os
import sys

import pytest
import torch

from helper.checkpoint import (CHECKPOINT_VERSION, load_checkpoint, load_model_state, model_from_checkpoint,
                               rng_state, save_checkpoint, set_rng_state)
from common.errors import UserError
from helper.config import RunConfig

#: A complete stored config (a checkpoint records every setting).
CONFIG = RunConfig.from_dict({"dataset": "cvusa"}).resolved().to_dict()
#: A version-1 checkpoint (tests/fixtures/README.md): a tiny polar model, 32 weight tensors.
FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "checkpoint_v1_cvusa.pth")


def _state(model):
    return {"version": CHECKPOINT_VERSION, "config": CONFIG, "model": model.state_dict(),
            "epoch": 3, "best_metric": 12.5, "rng": rng_state()}


def test_round_trip_and_weights_only(tmp_path):
    model = torch.nn.Linear(4, 2)
    path = str(tmp_path / "last.pth")
    save_checkpoint(path, _state(model))
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    state = torch.load(path, weights_only=True)  # loadable without pickled code
    assert state["epoch"] == 3 and state["config"] == CONFIG
    loaded = load_checkpoint(path)
    other = torch.nn.Linear(4, 2)
    load_model_state(other, loaded["model"], path)
    assert torch.equal(other.weight, model.weight)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_malicious_pickle_refused_and_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "evil.pth")
    torch.save({"version": 1, "config": {}, "model": {}, "epoch": 0, "x": _Payload()}, path)
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(str(path))


@pytest.mark.parametrize("keep", [0.5, 0.002])
def test_truncated_checkpoint(tmp_path, keep):
    """The message is whole sentences: what, why (torch's own first sentence, never cut), how to fix."""
    path = str(tmp_path / "last.pth")
    save_checkpoint(path, _state(torch.nn.Linear(64, 64)))
    data = open(path, "rb").read()
    size = int(len(data) * keep)
    with open(path, "wb") as handle:
        handle.write(data[:size])
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    message = str(info.value)
    start = f"{path} is not a readable checkpoint ({size} bytes): truncated, damaged or not a torch file (torch: "
    end = "). Copy or write it again, or pass another checkpoint"
    assert message.startswith(start) and message.endswith(end)
    reason = message[len(start):-len(end)]
    assert reason in ("PytorchStreamReader failed reading zip archive: failed finding central directory",
                      "[Errno 22] Invalid argument"), reason


def test_a_folder_is_not_a_checkpoint(tmp_path):
    """--checkpoint / --resume given the run folder: say so and name the checkpoints inside it."""
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UserError, match=rf"^checkpoint {run} is a folder, not a file: it holds no \.pth file; pass "
                                        r"a checkpoint file \(a run folder's best.pth or last.pth\)$"):
        load_checkpoint(str(run))
    for name in ("last.pth", "best.pth", "log.txt"):
        (run / name).write_bytes(b"")
    with pytest.raises(UserError, match=rf"^checkpoint {run} is a folder, not a file: pass a \.pth file inside it, "
                                        rf"e.g. {run}/best.pth \(it holds best.pth, last.pth\)$"):
        load_checkpoint(str(run))


def test_bare_state_dict_and_missing_file(tmp_path):
    path = str(tmp_path / "weights.pth")
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(str(tmp_path / "missing.pth"))


def test_mismatched_weights_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="shape mismatch: bias, weight"):
        load_model_state(torch.nn.Linear(4, 3), torch.nn.Linear(4, 2).state_dict(), "x.pth")
    with pytest.raises(UserError, match="missing: 0.bias"):
        load_model_state(torch.nn.Sequential(torch.nn.Linear(2, 2)), {"0.weight": torch.zeros(2, 2)}, "x.pth")


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    save_checkpoint(path, _state(torch.nn.Linear(2, 2)))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"version": 1})
    assert load_checkpoint(path)["epoch"] == 3
    assert os.listdir(tmp_path) == ["last.pth"]


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    path = str(tmp_path / "rng.pth")
    save_checkpoint(path, {"rng": state})
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_model_from_checkpoint_rebuilds_a_version_1_model_with_its_weights():
    raw = torch.load(FIXTURE, weights_only=True)
    run, model, state = model_from_checkpoint(FIXTURE)
    assert raw["version"] == 1 and "resume" in raw["config"]  # the old layout, migrated:
    assert run.to_dict() == state["config"] and "resume" not in state["config"]
    assert (run.dataset, run.model.transform, run.model.backbone, run.model.attention_maps) == \
        ("cvusa", "polar", "tiny", 2)
    weights = model.state_dict()
    assert sorted(weights) == sorted(raw["model"])
    assert all(torch.equal(weights[key], raw["model"][key]) for key in raw["model"])


def _refit(tmp_path, change: str) -> str:
    """The fixture with one weight added, removed or reshaped."""
    state = torch.load(FIXTURE, weights_only=True)
    first = sorted(state["model"])[0]
    if change == "extra":
        state["model"]["extra.weight"] = torch.zeros(2)
    elif change == "missing":
        del state["model"][first]
    else:
        state["model"][first] = torch.zeros(3, 3)
    path = str(tmp_path / f"{change}.pth")
    torch.save(state, path)
    return path


WEIGHT_ERRORS = {"extra": "unexpected: extra.weight (1)", "missing": "missing: satellite_attention.bias1 (1)",
                 "shape": "shape mismatch: satellite_attention.bias1 (1)"}


@pytest.mark.parametrize("change", sorted(WEIGHT_ERRORS))
def test_model_from_checkpoint_refuses_weights_that_do_not_fit(tmp_path, change):
    path = _refit(tmp_path, change)
    with pytest.raises(UserError) as error:
        model_from_checkpoint(path)
    assert str(error.value) == f"the weights in {path} do not fit the model built from its config " \
                               f"({WEIGHT_ERRORS[change]})"


def test_model_from_checkpoint_names_the_checkpoint_of_a_bad_config(tmp_path):
    state = torch.load(FIXTURE, weights_only=True)
    state["config"]["transform"] = "warp"
    path = str(tmp_path / "bad.pth")
    torch.save(state, path)
    with pytest.raises(UserError, match=f"checkpoint {path}: .*warp"):
        model_from_checkpoint(path)


def _evaluate(path, tmp_path, monkeypatch):
    from helper.cli import evaluate_main

    evaluate_main("cvusa", ["--checkpoint", path, "--results_json", str(tmp_path / "r.json"), "--device", "cpu"])


def _localize(path, tmp_path, monkeypatch):
    from localization.embed import load_model

    load_model(path, "cpu")


def _rerank_true_offsets(path, tmp_path, monkeypatch):
    from experiments.rerank_true_offsets import main

    monkeypatch.setattr(sys, "argv", ["rerank_true_offsets.py", "--checkpoint", path, "--data_root", str(tmp_path)])
    main()


@pytest.mark.parametrize("caller", [_evaluate, _localize, _rerank_true_offsets], ids=lambda f: f.__name__[1:])
def test_every_loader_refuses_an_extra_weight_the_same_way(tmp_path, monkeypatch, caller):
    """test_*.py, localize.py and the true-offset study load through model_from_checkpoint."""
    path = _refit(tmp_path, "extra")
    with pytest.raises(UserError, match=r"^the weights in .* do not fit the model built from its config "
                                        r"\(unexpected: extra.weight \(1\)\)$"):
        caller(path, tmp_path, monkeypatch)
    assert not (tmp_path / "r.json").exists()
