"""Reliability: clear user errors (exit 2, no traceback), exact resume, signals, NaN guard."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import helper.engine
import helper.objective
import helper.tasks
from helper.cli import train_main
from common.errors import UserError
from tests.e2e.worlds import TINY_FLAGS, make_cvusa

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cvusa_root(tmp_path_factory):
    return make_cvusa(str(tmp_path_factory.mktemp("cvusa")), n_train=32, n_val=8, seed=3)


def _flags(root, results_dir, name, epochs, *extra):
    return ["--data_root", root, "--transform", "polar", "--n_epochs", str(epochs), "--batch_size", "4",
            "--lr", "1e-3", "--hard_ratios", "1.0,0.5", "--results_dir", results_dir, "--name", name,
            *TINY_FLAGS, *extra]


def _rows(results_dir, name):
    with open(os.path.join(results_dir, name, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def _script(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# train_cvusa.py with every training step slowed by 0.15 s (results unchanged), so that a
# signal reliably lands mid-run
SLOW_TRAIN = ["-c", "import sys, time; import helper.engine as e; step = e.compute_loss; "
              "e.compute_loss = lambda *a, **k: (time.sleep(0.15), step(*a, **k))[1]; "
              "from helper.cli import train_main; from common.errors import run_main; "
              "run_main(lambda: train_main('cvusa', sys.argv[1:]))"]


@pytest.fixture(scope="module")
def reference_rows(cvusa_root, tmp_path_factory):
    """An uninterrupted 3-epoch run: the rows every resumed run must reproduce exactly."""
    results_dir = str(tmp_path_factory.mktemp("reference"))
    train_main("cvusa", _flags(cvusa_root, results_dir, "ref", 3))
    return _rows(results_dir, "ref")


def test_resume_after_an_epoch_is_exact(cvusa_root, tmp_path, reference_rows):
    results_dir = str(tmp_path)
    train_main("cvusa", _flags(cvusa_root, results_dir, "run", 1))
    last = os.path.join(results_dir, "run", "last.pth")
    train_main("cvusa", ["--resume", last, "--n_epochs", "3"])
    assert _rows(results_dir, "run") == reference_rows
    assert torch.load(last, weights_only=True)["epoch"] == 3


def test_sigterm_stops_at_a_step_saves_and_resumes_exactly(cvusa_root, tmp_path, reference_rows):
    results_dir = str(tmp_path)
    proc = _script(*SLOW_TRAIN, *_flags(cvusa_root, results_dir, "run", 3))
    log = os.path.join(results_dir, "run", "log.txt")
    deadline = time.time() + 120
    while not (os.path.exists(log) and "steps per epoch" in open(log).read()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Resume with: python train_cvusa.py --resume" in out + err
    assert "Traceback" not in err
    state = torch.load(os.path.join(results_dir, "run", "last.pth"), weights_only=True)
    assert (state["epoch"], state["progress"]["step"]) != (3, 0)  # it stopped before the end
    train_main("cvusa", ["--resume", os.path.join(results_dir, "run", "last.pth")])
    assert _rows(results_dir, "run") == reference_rows


def kill_after_first_checkpoint(proc, last: str, timeout: float = 120) -> None:
    """SIGKILL ``proc`` half a second after it wrote ``last`` (a training run mid-way)."""
    deadline = time.time() + timeout
    while not os.path.exists(last):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    proc.kill()
    proc.communicate()


def test_sigkill_mid_epoch_loses_only_the_current_epoch(cvusa_root, tmp_path, reference_rows):
    results_dir = str(tmp_path)
    proc = _script(*SLOW_TRAIN, *_flags(cvusa_root, results_dir, "run", 3))
    last = os.path.join(results_dir, "run", "last.pth")
    kill_after_first_checkpoint(proc, last)
    state = torch.load(last, weights_only=True)  # never half-written
    assert 1 <= state["epoch"] < 3 and state["progress"]["step"] == 0
    train_main("cvusa", ["--resume", last])
    assert _rows(results_dir, "run") == reference_rows


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(cvusa_root, tmp_path, monkeypatch):
    real = helper.objective.soft_margin_triplet_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 11 else loss  # epoch 2, step 3

    monkeypatch.setattr(helper.objective, "soft_margin_triplet_loss", poisoned)
    results_dir = str(tmp_path)
    with pytest.raises(helper.engine.NonFiniteLoss, match=r"epoch 2, step 3 of 8"):
        helper.engine.fit(_config(cvusa_root, results_dir, "nan", 3), helper.tasks.get_task("cvusa"), _env())
    state = torch.load(os.path.join(results_dir, "nan", "last.pth"), weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())

    calls["n"] = 0
    row = helper.engine.fit(_config(cvusa_root, results_dir, "skip", 2, "--max_nonfinite", "1"),
                            helper.tasks.get_task("cvusa"), _env())
    assert row["epoch"] == 2 and row["steps"] == 8  # the poisoned step was skipped, training went on


def _config(root, results_dir, name, epochs, *extra):
    from helper.parser import parse_train_args

    return parse_train_args("cvusa", _flags(root, results_dir, name, epochs, *extra)).run


def _env():
    from helper.distributed import DistEnv

    return DistEnv(0, 1, 0, torch.device("cpu"))


@pytest.mark.parametrize("case", ["missing_root", "missing_csv", "missing_images", "malformed_csv",
                                  "truncated_jpeg", "existing_run", "bad_checkpoint", "bad_flags", "gps_without_csv",
                                  "bad_gps_row"])
def test_user_errors_exit_2_with_one_message(cvusa_root, tmp_path, case):
    import shutil

    root = str(tmp_path / "data")
    shutil.copytree(cvusa_root, root)
    results_dir = str(tmp_path / "runs")
    flags = _flags(root, results_dir, "run", 1, "--workers", "1")
    script, expected = "train_cvusa.py", None
    if case == "missing_root":
        flags[1] = str(tmp_path / "nowhere")
        expected = "nowhere"
    elif case == "missing_csv":
        os.remove(os.path.join(root, "splits", "train-19zl.csv"))
        expected = "train-19zl.csv"
    elif case == "missing_images":
        for ident in ("0000002", "0000005", "0000007"):
            os.remove(os.path.join(root, "streetview", "panos", f"{ident}.jpg"))
        expected = "3"
    elif case == "malformed_csv":
        with open(os.path.join(root, "splits", "train-19zl.csv"), "a") as handle:
            handle.write("just-one-field\n")
        expected = "train-19zl.csv:33"
    elif case == "truncated_jpeg":
        path = os.path.join(root, "bingmap", "19", "0000004.jpg")
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        expected = "0000004.jpg"
    elif case == "existing_run":
        os.makedirs(os.path.join(results_dir, "run"))
        open(os.path.join(results_dir, "run", "last.pth"), "wb").close()
        expected = "--resume"
    elif case == "bad_checkpoint":
        bad = tmp_path / "bad.pth"
        bad.write_bytes(b"garbage")
        script, flags, expected = "test_cvusa.py", ["--checkpoint", str(bad)], "not a readable checkpoint"
    elif case == "bad_flags":
        flags += ["--transform", "tps", "--polar_files"]
        expected = "--polar_files needs --transform polar"
    elif case == "gps_without_csv":
        flags += ["--sampling", "gps"]
        expected = "--sampling gps on CVUSA needs the pairs' positions: pass --gps_csv FILE"
    elif case == "bad_gps_row":
        with open(os.path.join(root, "gps.csv"), "w") as handle:
            handle.write("id,lat,lon\n0000001,40.1,-74.0\n0000002,40.1\n")
        flags += ["--sampling", "gps", "--gps_csv", "gps.csv"]
        expected = f"{os.path.join(root, 'gps.csv')}:3: expected 'id,lat,lon'"
    proc = _script(script, *flags)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out, err)
    assert "\nerror: " in "\n" + err, err  # progress bars may precede the message on stderr
    assert expected in err[err.index("error: "):], err
    assert err.count("error: ") == 1 and "Traceback" not in err and "Original" not in err
    if case in ("missing_root", "missing_csv", "missing_images", "malformed_csv", "bad_flags", "gps_without_csv",
                "bad_gps_row"):
        assert not os.path.exists(results_dir)  # the data is checked before anything is written


def test_resume_of_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        train_main("cvusa", ["--resume", str(tmp_path / "last.pth")])
