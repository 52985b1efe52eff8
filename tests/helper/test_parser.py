"""The shared command line: defaults, config files, validation with clear messages."""
import json

import pytest

from common.errors import UserError
from helper.parser import build_test_parser, parse_test_args, parse_train_config


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


def test_config_file_then_command_line(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"transform": "affine", "lr": 0.001, "batch_size": 7}))
    cfg = parse_train_config("cvusa", ["--config", str(path), "--batch_size", "9"])
    assert cfg["transform"] == "affine" and cfg["lr"] == 0.001 and cfg["batch_size"] == 9
    path.write_text(json.dumps({"trasnform": "affine"}))
    with pytest.raises(UserError, match="unknown keys: trasnform"):
        parse_train_config("cvusa", ["--config", str(path)])


@pytest.mark.parametrize("argv, message", [
    (["--polar_files", "--transform", "tps"], "--polar_files needs --transform polar"),
    (["--stn_init", "polar", "--transform", "affine"], "is only for --transform tps"),
    (["--lambda_l1", "1", "--transform", "polar"], "needs an STN transform"),
    (["--tps_bounded", "--transform", "affine"], "tps_bounded only applies to --transform tps"),
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
