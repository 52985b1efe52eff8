"""Bad inputs, busy folders and interrupted runs through the real entry points (subprocesses).

Each case prepares its own folder, runs one entry script and checks the exit code, exactly
one ``error:`` line on stderr without a traceback, and that the folder is exactly as before
(nothing new, nothing changed). The cheap cases run concurrently (one module fixture);
the cases that train run one by one.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from helper.cli import train_main
from tests.e2e.worlds import TINY_FLAGS, make_cvusa

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
VAL = os.path.join("splits", "val-19zl.csv")
TRAIN = os.path.join("splits", "train-19zl.csv")


def slow_train(seconds):
    """train_cvusa.py with every step slowed by ``seconds``, so that others meet a run in progress."""
    return ["-c", f"import sys, time; import helper.engine as e; step = e.compute_loss; "
                  f"e.compute_loss = lambda *a, **k: (time.sleep({seconds}), step(*a, **k))[1]; "
                  f"from helper.cli import train_main; from common.errors import run_main; "
                  f"run_main(lambda: train_main('cvusa', sys.argv[1:]))"]


# train_cvusa.py whose loss is NaN from the first step
NAN_TRAIN = ["-c", "import sys; import helper.objective as e; loss = e.soft_margin_triplet_loss; "
             "e.soft_margin_triplet_loss = lambda *a, **k: loss(*a, **k) * float('nan'); "
             "from helper.cli import train_main; from common.errors import run_main; "
             "run_main(lambda: train_main('cvusa', sys.argv[1:]))"]


def flags(root, results_dir, name="run", epochs=1, *extra):
    return ["--data_root", str(root), "--transform", "polar", "--n_epochs", str(epochs), "--batch_size", "4",
            "--lr", "1e-3", "--hard_ratios", "1.0,0.5", "--results_dir", str(results_dir), "--name", name,
            *TINY_FLAGS, *extra]


def run(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def snapshot(folder):
    """Every entry under ``folder`` with its size and modification time (links as their target)."""
    out = {}
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(base, name)
            info = os.lstat(path)
            out[os.path.relpath(path, folder)] = (info.st_size if name in files else 0, info.st_mtime_ns)
    return out


def assert_one_error(proc, expected, code=2):
    err = proc.stderr
    assert proc.returncode == code, (proc.stdout[-2000:], err[-3000:])
    assert "Traceback" not in err and "Original Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1, err[-3000:]
    assert expected in err[err.index("error: "):], err[-3000:]


# ------------------------------------------------------------------------------ worlds
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_cvusa(str(tmp_path_factory.mktemp("world")), n_train=16, n_val=8, seed=3)


@pytest.fixture(scope="module")
def vigor_world(tmp_path_factory):
    from data.synthetic import generate_vigor

    root = str(tmp_path_factory.mktemp("vigor"))
    generate_vigor(root, cities="NewYork,Seattle", train=4, test=4, seed=0, size="demo")
    return root


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """A run folder trained 2 epochs (in this process), plus ``epoch1.pth``: its checkpoint after epoch 1."""
    results_dir = tmp_path_factory.mktemp("trained")
    train_main("cvusa", flags(world, results_dir, "run", 1))
    run_dir = results_dir / "run"
    shutil.copy(run_dir / "last.pth", run_dir / "epoch1.pth")
    train_main("cvusa", ["--resume", str(run_dir / "last.pth"), "--n_epochs", "2"])
    return run_dir


def data_copy(world, case_dir):
    root = case_dir / "data"
    shutil.copytree(world, root)
    return root


def run_copy(trained, case_dir):
    target = case_dir / "runs" / "run"
    shutil.copytree(trained, target)
    return target


def edited_checkpoint(trained, case_dir, edit):
    """``trained``'s last.pth changed by ``edit(state)``, as the last.pth of a run folder in ``case_dir``."""
    run_dir = run_copy(trained, case_dir)
    state = torch.load(run_dir / "last.pth", weights_only=True)
    edit(state)
    torch.save(state, run_dir / "last.pth")
    return run_dir / "last.pth"


def write(path, text):
    with open(path, "w") as handle:
        handle.write(text)


def append(path, text):
    with open(path, "a") as handle:
        handle.write(text)


# ----------------------------------------------------------------------- cheap cases
#: name -> (setup(case_dir, ctx) -> argv, expected text of the error)
CASES = {}


def case(name, expected):
    def register(setup):
        CASES[name] = (setup, expected)
        return setup
    return register


def train(ctx, d, *extra, root=None):
    return ["train_cvusa.py", *flags(root or ctx["world"], d / "runs", "run", 1, *extra)]


def vigor_train(ctx, d, *extra):
    return ["train_vigor.py", "--data_root", ctx["vigor"], "--results_dir", d / "runs", "--batch_size", "4",
            "--n_epochs", "1", *TINY_FLAGS, "--pano_size", "32,64", *extra]


# 1: every split is checked before anything is written
case("1_val_csv_typo", "split CSV not found")(lambda d, c: train(c, d, "--val_csv", "splits/vall-19zl.csv"))


@case("1_val_csv_empty", "split CSV has no pairs")
def _(d, c):
    root = data_copy(c["world"], d)
    write(root / VAL, "")
    return train(c, d, root=root)


@case("1_val_csv_broken", "val-19zl.csv:9")
def _(d, c):
    root = data_copy(c["world"], d)
    append(root / VAL, "just-one-field\n")
    return train(c, d, root=root)


@case("1_val_image_missing", "1 of 16 files are missing")
def _(d, c):
    root = data_copy(c["world"], d)
    os.remove(root / "streetview" / "panos" / "0000020.jpg")
    return train(c, d, root=root)


case("1_vigor_test_city_missing", "VIGOR city 'Chicago' not found")(
    lambda d, c: vigor_train(c, d, "--mode", "cross", "--train_cities", "NewYork", "--test_cities", "Chicago"))


@case("1_vigor_test_labels_missing", "same_area_balanced_test.txt")
def _(d, c):
    root = d / "vigor"
    shutil.copytree(c["vigor"], root)
    os.remove(root / "splits" / "Seattle" / "same_area_balanced_test.txt")
    return ["train_vigor.py", *vigor_train(c, d, "--cities", "NewYork,Seattle")[1:], "--data_root", root]


# 2: resuming an older checkpoint in its own folder would rewind the run
case("2_resume_older_checkpoint", "is older than")(
    lambda d, c: ["train_cvusa.py", "--resume", run_copy(c["trained"], d) / "epoch1.pth", "--n_epochs", "3"])


# 3: a run folder held by a live process is refused, to new and resumed runs alike
HELD = []  # lock descriptors held by this process while the cases run


def hold_lock(run_dir):
    import fcntl

    os.makedirs(run_dir, exist_ok=True)
    fd = os.open(os.path.join(run_dir, ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    HELD.append(fd)


@case("3_new_run_in_a_busy_folder", "is in use by another process (pid")
def _(d, c):
    hold_lock(d / "runs" / "run")
    return train(c, d)


@case("3_resume_in_a_busy_folder", "is in use by another process (pid")
def _(d, c):
    run_dir = run_copy(c["trained"], d)
    hold_lock(run_dir)
    return ["train_cvusa.py", "--resume", run_dir / "last.pth", "--n_epochs", "3"]


# 4: --config values get the command line's checks
def config_case(name, values, expected):
    def setup(d, c):
        path = d / "config.json"
        write(path, json.dumps(values))
        return ["train_cvusa.py", "--config", path, "--data_root", c["world"], "--results_dir", d / "runs",
                *TINY_FLAGS]
    case(f"4_config_{name}", expected)(setup)


config_case("batch_size_0", {"batch_size": 0}, "--batch_size must be an integer >= 1, got 0")
config_case("eval_every_0", {"eval_every": 0}, "--eval_every must be an integer >= 1, got 0")
config_case("n_epochs_float", {"n_epochs": 1.5}, "--n_epochs must be an integer >= 1, got 1.5")
config_case("lr_text", {"lr": "fast"}, "--lr must be a number > 0, got 'fast'")
config_case("hard_ratios_scalar", {"hard_ratios": 0.5}, "--hard_ratios must be a non-empty list, got 0.5")
config_case("augment_text", {"augment": "no"}, "--augment must be true or false, got 'no'")
case("4_config_directory", "is a directory")(
    lambda d, c: ["train_cvusa.py", "--config", d, "--data_root", c["world"], "--results_dir", d / "runs"])


@case("4_config_binary", "is not valid JSON")
def _(d, c):
    (d / "weights.bin").write_bytes(bytes(range(256)) * 4)
    return ["train_cvusa.py", "--config", d / "weights.bin", "--data_root", c["world"], "--results_dir", d / "runs"]


case("4_config_checkpoint", "is not valid JSON")(
    lambda d, c: ["train_cvusa.py", "--config", run_copy(c["trained"], d) / "last.pth", "--data_root", c["world"],
                  "--results_dir", d / "runs"])


# 5: numeric flags are checked at parse time
for name, extra, expected in [
        ("lr_negative", ["--lr", "-1"], "--lr: must be a number > 0, got -1.0"),
        ("lr_nan", ["--lr", "nan"], "--lr: must be a finite number > 0"),
        ("lr_inf", ["--lr", "inf"], "--lr: must be a finite number > 0"),
        ("weight_decay_negative", ["--weight_decay", "-1"], "--weight_decay: must be a number >= 0"),
        ("seed_negative", ["--seed", "-1"], "--seed: must be an integer in [0, 4294967295]"),
        ("seed_huge", ["--seed", str(2 ** 70)], "--seed: must be an integer in [0, 4294967295]"),
        ("lambda_sm_negative", ["--lambda_sm", "-10"], "--lambda_sm: must be a number > 0"),
        ("lambda_sm_zero", ["--lambda_sm", "0"], "--lambda_sm: must be a number > 0"),
        ("lambda_l1_nan", ["--lambda_l1", "nan"], "--lambda_l1: must be a finite number >= 0")]:
    case(f"5_{name}", expected)(lambda d, c, extra=extra: train(c, d, *extra))
case("5_test_workers_negative", "--workers: must be an integer >= 0, got -1")(
    lambda d, c: ["test_cvusa.py", "--checkpoint", run_copy(c["trained"], d) / "last.pth", "--workers", "-1"])


# 6: unwritable outputs are found before the work
@case("6_results_dir_is_a_file", "is inside")
def _(d, c):
    (d / "results").write_text("not a folder")
    return ["train_cvusa.py", *flags(c["world"], d / "results", "run", 1)]


case("6_results_dir_read_only", "is not writable")(
    lambda d, c: ["train_cvusa.py", *flags(c["world"], "/sys/runs_of_a_test", "run", 1)])
case("6_results_json_is_a_folder", "is a folder")(
    lambda d, c: ["test_cvusa.py", "--checkpoint", run_copy(c["trained"], d) / "last.pth", "--results_json", d])
case("6_results_json_read_only", "is not writable")(
    lambda d, c: ["test_cvusa.py", "--checkpoint", run_copy(c["trained"], d) / "last.pth",
                  "--results_json", "/sys/results_of_a_test.json"])
case("6_synthetic_out_read_only", "is not writable")(
    lambda d, c: ["-m", "data.synthetic", "--layout", "cvusa", "--out", "/sys/synthetic_of_a_test",
                  "--train", "2", "--test", "2"])


# 7: batch rules and unusable files are found before the run folder is made
case("7_batch_size_1", "--batch_size must be >= 2 for training")(lambda d, c: train(c, d, "--batch_size", "1"))
case("7_batch_size_above_data", "--batch_size 64 is larger than the 16 training samples")(
    lambda d, c: train(c, d, "--batch_size", "64"))


def unusable_case(name, make, expected):
    def setup(d, c):
        root = data_copy(c["world"], d)
        path = root / "streetview" / "panos" / "0000003.jpg"
        os.remove(path)
        make(path)
        return train(c, d, root=root)
    case(f"7_{name}", expected)(setup)


unusable_case("row_names_a_folder", os.mkdir, "0000003.jpg (a folder)")
unusable_case("dangling_symlink", lambda path: os.symlink(str(path) + ".gone", path),
              "0000003.jpg (a broken symbolic link)")
unusable_case("empty_image", lambda path: open(path, "wb").close(), "0000003.jpg (an empty file)")


# 8: checkpoints are validated on load
def checkpoint_case(name, edit, expected, resume=False):
    def setup(d, c):
        path = edited_checkpoint(c["trained"], d, edit)
        return ["train_cvusa.py", "--resume", path] if resume else ["test_cvusa.py", "--checkpoint", path]
    case(f"8_{name}", expected)(setup)


checkpoint_case("no_transform_test", lambda s: s["config"].pop("transform"), "lacks the setting(s) transform")
checkpoint_case("no_transform_resume", lambda s: s["config"].pop("transform"), "lacks the setting(s) transform",
                resume=True)
checkpoint_case("val_csv_number", lambda s: s["config"].update(val_csv=5), "--val_csv must be a string, got 5")
checkpoint_case("top1p_unknown", lambda s: s["config"].update(top1p="ceil"), "--top1p = 'ceil' is not one of")
checkpoint_case("no_data_root", lambda s: s["config"].pop("data_root"), "lacks the setting(s) data_root")
checkpoint_case("config_string", lambda s: s.update(config="polar"), "no settings dict under 'config'")
checkpoint_case("version_string", lambda s: s.update(version="1"), "invalid checkpoint version '1'")
checkpoint_case("no_dataset", lambda s: s["config"].pop("dataset"), "lacks the setting 'dataset'")
checkpoint_case("no_optimizer", lambda s: s.pop("optimizer"), "cannot be resumed: it lacks optimizer", resume=True)
checkpoint_case("no_rng", lambda s: s.pop("rng"), "cannot be resumed: it lacks rng", resume=True)


# 9: the synthetic generator refuses a non-empty folder
@case("9_synthetic_into_a_dataset", "is not empty")
def _(d, c):
    root = data_copy(c["world"], d)
    return ["-m", "data.synthetic", "--layout", "vigor", "--out", root, "--cities", "NewYork", "--train", "2",
            "--test", "2"]


# 12: polar sizes are bounded and checked against --pano_size
case("12_polar_2x2", "--height and --width must be in [8, 4096], got 2 x 2")(
    lambda d, c: ["-m", "data.convert_polar", "--data_root", data_copy(c["world"], d), "--height", "2",
                  "--width", "2"])
case("12_polar_huge", "must be in [8, 4096], got 100000 x 100000")(
    lambda d, c: ["-m", "data.convert_polar", "--data_root", data_copy(c["world"], d), "--height", "100000",
                  "--width", "100000"])


@case("12_polar_files_too_small", "16 x 88, which does not fit --pano_size 32,176")
def _(d, c):
    from data import convert_polar

    root = data_copy(c["world"], d)
    convert_polar.main(["--data_root", str(root), "--height", "16", "--width", "88", "--workers", "1",
                        "--no_progress"])
    return train(c, d, "--polar_files", root=root)


# 13: --n_epochs below a mid-epoch checkpoint's epoch
@case("13_n_epochs_below_mid_epoch", "--n_epochs 2 is below the 3 epoch(s)")
def _(d, c):
    path = edited_checkpoint(c["trained"], d, lambda s: s["progress"].update(step=2))
    return ["train_cvusa.py", "--resume", path, "--n_epochs", "2"]


# 14-16: split CSV mistakes are named
def csv_case(name, edit, expected, csv=VAL):
    def setup(d, c):
        root = data_copy(c["world"], d)
        with open(root / csv) as handle:
            lines = handle.read().splitlines()
        write(root / csv, "\n".join(edit(lines)) + "\n")
        return train(c, d, root=root)
    case(name, expected)(setup)


csv_case("14_duplicate_val_row", lambda lines: lines + [lines[2]], "val-19zl.csv:9: aerial bingmap/19/0000019.jpg "
                                                                   "is listed again (first at line 3)")
csv_case("16_header_line", lambda lines: ["aerial,panorama,annotation"] + lines,
         "train-19zl.csv:1: this looks like a header line", csv=TRAIN)
csv_case("16_backslashes", lambda lines: [lines[0].replace("/", "\\")] + lines[1:],
         "train-19zl.csv:1: Windows backslashes", csv=TRAIN)
csv_case("16_quoted_fields", lambda lines: ['"' + lines[0].replace(",", '","') + '"'] + lines[1:],
         "train-19zl.csv:1: quoted fields are not supported", csv=TRAIN)
csv_case("16_swapped_columns", lambda lines: [",".join([l.split(",")[1], l.split(",")[0]]) for l in lines],
         "the columns look swapped", csv=TRAIN)
case("15_name_parent", "--name '../../x' must be a plain folder name")(lambda d, c: train(c, d, "--name", "../../x"))
case("15_name_absolute", "must be a plain folder name")(lambda d, c: train(c, d, "--name", str(d / "abs")))
case("15_name_empty", "--name '' must be a plain folder name")(lambda d, c: train(c, d, "--name", ""))
case("15_name_dot", "--name '.' must be a plain folder name")(lambda d, c: train(c, d, "--name", "."))


# 17: a cached ImageNet file of the wrong content
def weights_case(name, content, expected):
    def setup(d, c):
        from models.backbones import hub_weights_path

        url = "https://download.pytorch.org/models/vgg16-397923af.pth"
        path = os.path.join(d, "torch", "hub", "checkpoints", os.path.basename(url))
        assert hub_weights_path(url).endswith(os.path.join("hub", "checkpoints", os.path.basename(url)))
        os.makedirs(os.path.dirname(path))
        if content is None:
            torch.save({"features.0.weight": torch.zeros(2, 2)}, path)
        else:
            with open(path, "wb") as handle:
                handle.write(content)
        return train(c, d, "--backbone", "vgg16", "--pretrained", "--sate_size", "32,32"), {"TORCH_HOME": str(d / "torch")}
    case(f"17_{name}", expected)(setup)


weights_case("wrong_content", None, "does not match torchvision's vgg16 (missing 25 of 26 weights")
weights_case("random_bytes", np.random.default_rng(17).bytes(4096), "could not be read (not a torch weights file, or truncated)")


@pytest.fixture(scope="module")
def outcomes(world, vigor_world, trained, tmp_path_factory):
    """``{name: (process, files before, files after)}`` of every case, run two at a time."""
    ctx = {"world": world, "vigor": vigor_world, "trained": trained}
    prepared = {}
    for name, (setup, _) in CASES.items():
        d = tmp_path_factory.mktemp(name)
        argv = setup(d, ctx)
        argv, env = argv if isinstance(argv, tuple) else (argv, None)
        prepared[name] = (d, (argv, env), snapshot(d))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        procs = dict(zip(prepared, pool.map(lambda item: run(*item[1][0], env=item[1][1]), prepared.values())))
    while HELD:
        os.close(HELD.pop())
    return {name: (procs[name], before, snapshot(d)) for name, (d, _, before) in prepared.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_and_writes_nothing(outcomes, name):
    proc, before, after = outcomes[name]
    assert_one_error(proc, CASES[name][1])
    assert after == before  # nothing new, nothing changed
    assert not os.path.exists("/sys/runs_of_a_test")


# ------------------------------------------------------------------- cases that train
def test_resume_of_an_older_checkpoint_branches_with_name(trained, tmp_path):
    run_dir = run_copy(trained, tmp_path)
    before = snapshot(run_dir)
    proc = run("train_cvusa.py", "--resume", run_dir / "epoch1.pth", "--n_epochs", "2", "--name", "branch")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "error:" not in proc.stderr, proc.stderr
    assert snapshot(run_dir) == before  # the original run is untouched
    assert torch.load(tmp_path / "runs" / "branch" / "last.pth", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_a_second_run_in_a_busy_folder_is_refused_and_a_killed_one_resumes(world, tmp_path):
    results_dir = tmp_path / "runs"
    first = subprocess.Popen([sys.executable, *slow_train(2.0), *flags(world, results_dir, "same", 3)], cwd=REPO,
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = results_dir / "same" / "last.pth"
    deadline = time.time() + 120
    while not last.exists():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            second, resumed = pool.map(lambda argv: run(*argv), [
                ("train_cvusa.py", *flags(world, results_dir, "same", 3)), ("train_cvusa.py", "--resume", last)])
    finally:
        first.kill()
        first.wait()
    assert_one_error(second, "is in use by another process")
    assert_one_error(resumed, "is in use by another process")
    state = torch.load(last, weights_only=True)
    assert state["epoch"] < 3  # the first run was stopped early
    after_kill = run("train_cvusa.py", "--resume", last)  # the lock died with its process
    assert after_kill.returncode == 0, after_kill.stderr[-3000:]
    assert torch.load(last, weights_only=True)["epoch"] == 3


def test_a_stale_lock_file_does_not_block(world, tmp_path):
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text("999999\n")  # left by a killed run: nobody holds it
    proc = run("train_cvusa.py", *flags(world, tmp_path / "runs", "run", 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "last.pth").exists()


def test_non_finite_stop_says_that_no_checkpoint_exists(world, tmp_path):
    proc = run(*NAN_TRAIN, *flags(world, tmp_path / "runs", "nan", 1))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "no checkpoint was written yet" in proc.stdout and "holds the last good" not in proc.stdout
    assert not (tmp_path / "runs" / "nan" / "last.pth").exists()


def test_each_evaluation_writes_its_own_results_file(trained, tmp_path):
    run_dir = run_copy(trained, tmp_path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(lambda name: run("test_cvusa.py", "--checkpoint", run_dir / name),
                              ("best.pth", "last.pth")))
    assert [p.returncode for p in procs] == [0, 0], procs[0].stderr[-2000:]
    for stem in ("best", "last"):
        with open(run_dir / f"results_{stem}_val-19zl.json") as handle:
            assert json.load(handle)["checkpoint"] == str(run_dir / f"{stem}.pth")


def test_convert_polar_redoes_only_truncated_images(world, tmp_path):
    from data import convert_polar

    root = data_copy(world, tmp_path)
    convert_polar.main(["--data_root", str(root), "--height", "32", "--width", "176", "--workers", "1",
                        "--no_progress"])
    broken = root / "polarmap" / "19" / "0000005.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    before = snapshot(root)
    proc = run("-m", "data.convert_polar", "--data_root", root, "--height", "32", "--width", "176", "--workers", "1")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "1 existing polar images are truncated" in proc.stdout
    assert broken.read_bytes() == data
    after = snapshot(root)
    changed = sorted(k for k in after if after[k] != before.get(k))
    assert changed == [os.path.join("polarmap", "19"), os.path.join("polarmap", "19", "0000005.png")]


@pytest.mark.parametrize("name, make, expected", [
    ("tiny_image", lambda path: path.write_bytes(_encode(1, 1)), "is only 1 x 1 pixels"),
    ("non_square_aerial", lambda path: path.write_bytes(_encode(96, 80)), "is not square (96 x 80)")])
def test_images_of_bad_shape_stop_training(world, tmp_path, name, make, expected):
    root = data_copy(world, tmp_path)
    folder = "streetview/panos" if name == "tiny_image" else "bingmap/19"
    make(root / folder / "0000006.jpg")
    proc = run("train_cvusa.py", *flags(root, tmp_path / "runs", "run", 1))
    assert_one_error(proc, expected)
    assert not list((tmp_path / "runs").rglob("*.pth"))


def _encode(height, width):
    import cv2
    import numpy as np

    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 128, np.uint8))
    return data.tobytes()


@pytest.mark.slow
def test_a_deleted_best_checkpoint_is_reported(world, tmp_path):
    results_dir = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, *slow_train(0.15), *flags(world, results_dir, "run", 3, "--lr", "1e-9")],
                            cwd=REPO,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    best = results_dir / "run" / "best.pth"
    deadline = time.time() + 120
    while not best.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.remove(best)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "best.pth was deleted" in out


def test_sigterm_stops_convert_polar_workers_quietly(world, tmp_path):
    root = data_copy(world, tmp_path)
    slow = ["-c", "import sys, time; from data import convert_polar as c; read = c.read_image; "
                  "c.read_image = lambda *a, **k: (time.sleep(0.3), read(*a, **k))[1]; "
                  "from common.errors import run_main; run_main(lambda: c.main(sys.argv[1:]))"]
    proc = subprocess.Popen([sys.executable, *slow, "--data_root", str(root), "--workers", "2", "--height", "32",
                             "--width", "176", "--no_progress"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    folder = root / "polarmap" / "19"
    deadline = time.time() + 60
    while not (folder.exists() and any(name.endswith(".png") for name in os.listdir(folder))):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    time.sleep(0.5)  # the workers are gone too
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert "interrupted by signal 15" in err
    assert not [name for name in os.listdir(folder) if ".tmp" in name]
    assert 0 < len(os.listdir(folder)) < 24
