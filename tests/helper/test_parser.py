"""The shared command line: defaults, config files, validation with clear messages."""
import json
import os

import pytest

from common.errors import UserError
from helper.parser import build_test_parser, parse_test_args, parse_train_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cvusa_defaults_and_fixed_flags():
    cfg = parse_train_config("cvusa", ["--data_root", "/d", "--transform", "tps", "--no-pretrained",
                                       "--sate_size", "64,64", "--pano_size", "32,176", "--lambda_l1", "0.5"])
    assert cfg["dataset"] == "cvusa" and cfg["transform"] == "tps" and cfg["pretrained"] is False
    assert cfg["sate_size"] == [64, 64] and cfg["pano_size"] == [32, 176]
    assert cfg["train_csv"] == "splits/train-19zl.csv" and cfg["val_csv"] == "splits/val-19zl.csv"
    assert cfg["lambda_sm"] == 10.0
    assert cfg["name"] == "cvusa_tps_vgg16" and cfg["eval_batch_size"] == 2 * cfg["batch_size"]
    json.dumps(cfg)  # plain JSON


def test_schedule_defaults_follow_pretrained():
    """SAFA's lr and hard-ratio schedule suit ImageNet weights; from scratch they do not learn."""
    pretrained = parse_train_config("cvusa", [])
    assert pretrained["lr"] == 1e-5 and pretrained["hard_ratios"] == [1.0, 0.1, 0.05, 0.01]
    scratch = parse_train_config("cvusa", ["--no-pretrained", "--backbone", "tiny"])
    assert scratch["lr"] == 1e-3 and scratch["hard_ratios"] == [1.0, 0.5]
    explicit = parse_train_config("cvusa", ["--no-pretrained", "--lr", "2e-4", "--hard_ratios", "1,0.1"])
    assert explicit["lr"] == 2e-4 and explicit["hard_ratios"] == [1.0, 0.1]


def test_help_states_each_default_once(capsys):
    from helper.parser import build_train_parser

    text = build_train_parser("cvusa").format_help()
    assert text.count("/data/CVUSA") == 1 and "(default: None)" not in text
    assert "1e-05 with --pretrained (SAFA), 0.001 with --no-pretrained" in " ".join(text.split())


def test_vigor_flags():
    cfg = parse_train_config("vigor", ["--mode", "cross", "--train_cities", "NewYork", "--test_cities",
                                       "Chicago,Seattle"])
    assert cfg["mode"] == "cross" and cfg["train_cities"] == ["NewYork"]
    assert cfg["test_cities"] == ["Chicago", "Seattle"]
    assert cfg["cities"] == ["NewYork", "Seattle", "SanFrancisco", "Chicago"]
    assert cfg["pano_size"] == [320, 640] and cfg["sate_size"] == [320, 320]


def test_config_file_with_a_byte_order_mark(tmp_path):
    """Editors on Windows save UTF-8 with a BOM: the file reads like any other."""
    path = tmp_path / "cfg.json"
    path.write_text('{"batch_size": 7, "transform": "polar"}', encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    cfg = parse_train_config("cvusa", ["--config", str(path)])
    assert (cfg["batch_size"], cfg["transform"]) == (7, "polar")


def test_config_file_then_command_line(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"transform": "affine", "lr": 0.001, "batch_size": 7}))
    cfg = parse_train_config("cvusa", ["--config", str(path), "--batch_size", "9"])
    assert cfg["transform"] == "affine" and cfg["lr"] == 0.001 and cfg["batch_size"] == 9
    path.write_text(json.dumps({"trasnform": "affine"}))
    with pytest.raises(UserError, match="unknown keys: trasnform"):
        parse_train_config("cvusa", ["--config", str(path)])


def test_the_shipped_off_centre_recipe():
    """configs/cvusa_offcentre.json: the polar block trained with InfoNCE; the command line wins."""
    recipe = os.path.join(REPO, "configs", "cvusa_offcentre.json")
    cfg = parse_train_config("cvusa", ["--config", recipe])
    default = parse_train_config("cvusa", [])
    changed = {k for k in cfg if cfg[k] != default[k]}
    assert changed == {"loss", "label_smoothing", "hard_ratios"} and (cfg["transform"], cfg["loss"]) == ("polar", "infonce")
    assert parse_train_config("cvusa", ["--config", recipe, "--transform", "tps"])["transform"] == "tps"
    with pytest.raises(UserError, match="is a cvusa config"):
        parse_train_config("vigor", ["--config", recipe])


@pytest.mark.parametrize("argv, message", [
    (["--polar_files", "--transform", "tps"], "--polar_files needs --transform polar"),
    (["--stn_init", "polar", "--transform", "affine"], "is only for --transform tps"),
    (["--lambda_l1", "1", "--transform", "polar"], "needs an STN transform"),
    (["--tps_bounded", "--transform", "affine"], "--tps_bounded does nothing without --transform tps"),
    (["--amp", "bf16", "--device", "cpu"], "needs a CUDA device"),
])
def test_invalid_combinations(argv, message):
    with pytest.raises(UserError, match=message):
        parse_train_config("cvusa", argv)


@pytest.mark.parametrize("argv, message", [(["--transform", "spline"], "valid transforms"),
                                           (["--sate_size", "16,16"], "must be integers >= 32"),
                                           (["--batch_size", "0"], "must be an integer >= 1"),
                                           (["--hard_ratios", "1,0"], "must be numbers in (0, 1]")])
def test_bad_values_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_train_config("cvusa", argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err


def test_unknown_transform_lists_choices(capsys):
    with pytest.raises(SystemExit):
        parse_train_config("cvusa", ["--transform", "spline"])
    err = capsys.readouterr().err
    for name in ("none", "polar", "affine", "composed_affine", "tps"):
        assert name in err


def test_test_parser_tracks_explicit_flags():
    args = parse_test_args("vigor", ["--checkpoint", "c.pth", "--data_root", "/v", "--cities", "Chicago"])
    assert args.explicit == {"data_root", "cities"}
    with pytest.raises(SystemExit):
        build_test_parser("cvusa").parse_args([])  # --checkpoint is required


def test_explicit_test_flags_even_when_equal_to_the_defaults():
    args = parse_test_args("vigor", ["--checkpoint", "c.pth", "--cities", "NewYork,Seattle,SanFrancisco,Chicago",
                                     "--top1p", "floor", "--data_root", "/data/VIGOR"])
    assert args.explicit == {"cities", "top1p", "data_root"}
    with pytest.raises(UserError, match="Seattle is in both"):
        parse_test_args("vigor", ["--checkpoint", "c.pth", "--mode", "cross", "--test_cities", "Seattle"])


def test_config_file_never_resumes_and_checks_choices(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"resume": "old/last.pth", "transform": "tps"}))
    with pytest.raises(UserError, match="only reads settings and starts a new run; to continue that run pass "
                                        "--resume old/last.pth"):
        parse_train_config("cvusa", ["--config", str(path)])
    path.write_text(json.dumps({"resume": None, "transform": "tps"}))  # as version-1 config.json files hold it
    cfg = parse_train_config("cvusa", ["--config", str(path)])
    assert cfg["resume"] is None and cfg["transform"] == "tps"
    path.write_text(json.dumps({"amp": "fp32"}))
    with pytest.raises(UserError, match="amp = 'fp32' is not one of none, bf16, fp16"):
        parse_train_config("cvusa", ["--config", str(path)])


def test_cross_area_cities_must_differ_and_no_abbreviations(capsys):
    with pytest.raises(UserError, match="Seattle is in both --train_cities and --test_cities"):
        parse_train_config("vigor", ["--mode", "cross", "--train_cities", "NewYork,Seattle",
                                     "--test_cities", "Seattle,Chicago"])
    with pytest.raises(SystemExit):
        parse_train_config("cvusa", ["--n_ep", "3"])


def test_sampling_defaults_resolve_for_gps_and_similarity():
    random = parse_train_config("cvusa", [])
    assert (random["sampling"], random["sampling_select"], random["sampling_pool"], random["gps_csv"]) == \
        ("random", None, None, None)
    similarity = parse_train_config("vigor", ["--sampling", "similarity", "--sampling_select", "8"])
    assert (similarity["sampling_select"], similarity["sampling_pool"]) == (8, 128)
    gps = parse_train_config("cvusa", ["--sampling", "gps", "--gps_csv", "gps.csv"])
    assert (gps["sampling_select"], gps["sampling_pool"], gps["gps_csv"]) == (64, 128, "gps.csv")


@pytest.mark.parametrize("dataset, argv, message", [
    ("cvusa", ["--sampling", "gps"], "--sampling gps on CVUSA needs the pairs' positions: pass --gps_csv FILE"),
    ("cvusa", ["--gps_csv", "gps.csv"], "--gps_csv is read by --sampling gps only"),
    ("cvusa", ["--sampling_pool", "16"], "apply to --sampling gps or similarity only"),
    ("vigor", ["--sampling", "similarity", "--sampling_pool", "32"], "--sampling_select 64 is more than "
                                                                     "--sampling_pool 32"),
    ("vigor", ["--sampling", "gps", "--mining"], "--mining and --sampling gps both fill batches"),
])
def test_sampling_rules(dataset, argv, message):
    with pytest.raises(UserError, match=message):
        parse_train_config(dataset, argv)


def test_version_2_configs_migrate_to_random_batches():
    from helper.config import RunConfig, migrate_config

    stored = RunConfig.from_dict({"dataset": "cvusa"}).resolved().to_dict()
    for key in ("sampling", "sampling_select", "sampling_pool", "gps_csv"):
        del stored[key]
    migrated = migrate_config(stored, 2)
    run = RunConfig.from_dict(migrated, complete=True)
    assert run.train.sampling == "random" and run.data.gps_csv is None
    vigor = RunConfig.from_dict({"dataset": "vigor"}).to_dict()
    del vigor["sampling"]
    assert "gps_csv" not in migrate_config(vigor, 2)


def test_cvusa_offset_settings_round_trip_and_defaults():
    from helper.config import RunConfig
    from helper.parser import build_test_parser

    default = parse_train_config("cvusa", [])
    assert (default["regress_offset"], default["offsets_csv"], default["lambda_offset"]) == (False, "offsets.csv", 0.01)
    assert parse_train_config("vigor", [])["lambda_offset"] == default["lambda_offset"]  # one default
    cfg = parse_train_config("cvusa", ["--regress_offset", "--offsets_csv", "labels/o.csv", "--lambda_offset", "0.5"])
    cfg.pop("resume")
    run = RunConfig.from_dict(json.loads(json.dumps(cfg)), complete=True)
    assert run.model.regress_offset and (run.data.offsets_csv, run.objective.lambda_offset) == ("labels/o.csv", 0.5)
    assert run.to_dict() == cfg
    assert "--offsets_csv" not in build_test_parser("cvusa").format_help()  # read by training only


def test_version_3_cvusa_configs_migrate_without_offset_labels():
    from helper.config import RunConfig, migrate_config

    stored = RunConfig.from_dict({"dataset": "cvusa"}).resolved().to_dict()
    del stored["offsets_csv"], stored["lambda_offset"]
    run = RunConfig.from_dict(migrate_config(stored, 3), complete=True)
    assert not run.model.regress_offset and (run.data.offsets_csv, run.objective.lambda_offset) == ("offsets.csv", 0.01)
    vigor = RunConfig.from_dict({"dataset": "vigor", "lambda_offset": 0.2}).to_dict()
    assert migrate_config(vigor, 3) == vigor


def test_version_4_configs_migrate_without_the_recentred_loss():
    from helper.config import RunConfig, migrate_config

    for dataset in ("cvusa", "vigor"):
        stored = RunConfig.from_dict({"dataset": dataset}).resolved().to_dict()
        del stored["lambda_recentre"]
        run = RunConfig.from_dict(migrate_config(stored, 4), complete=True)
        assert run.objective.lambda_recentre == 0.0 and not run.offset_labels


def test_version_5_configs_migrate_to_no_pose_head():
    from helper.config import RunConfig, migrate_config
    from helper.objective import LAMBDA_POSE

    for dataset in ("cvusa", "vigor"):
        stored = RunConfig.from_dict({"dataset": dataset}).resolved().to_dict()
        del stored["pose"], stored["lambda_pose"]
        run = RunConfig.from_dict(migrate_config(stored, 5), complete=True)
        assert run.model.pose == "none" and run.objective.lambda_pose == LAMBDA_POSE


def test_a_version_6_pose_head_is_refused_and_other_version_6_configs_load():
    from common.errors import UserError
    from helper.config import RunConfig, migrate_config

    plain = RunConfig.from_dict({"dataset": "vigor"}).resolved().to_dict()
    assert RunConfig.from_dict(migrate_config(plain, 6), complete=True).model.pose == "none"
    with pytest.raises(UserError, match="earlier design.*retrain it with --pose dense"):
        migrate_config({**plain, "pose": "dense"}, 6)
