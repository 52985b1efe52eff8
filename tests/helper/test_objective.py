"""The training objective's room: its settings, its terms, and flags that would do nothing."""
import json
import os
import subprocess
import sys

import pytest
import torch

from common.errors import UserError
from helper.config import RunConfig
from helper.losses import l1_guidance_loss
from helper.distributed import DistEnv
from helper.objective import LAMBDA_OFFSET, Objective, ObjectiveConfig, compute_loss
from helper.parser import build_test_parser, build_train_parser, parse_test_args, parse_train_args
from models import build_model
from models.polar import PolarTransform

CPU = DistEnv(0, 1, 0, torch.device("cpu"))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("dataset, argv, message", [
    ("cvusa", ["--lambda_offset", "5"], "--lambda_offset does nothing without --regress_offset"),
    ("vigor", ["--lambda_offset", "3"], "--lambda_offset does nothing without --regress_offset"),
    ("cvusa", ["--offsets_csv", "nope.csv"], "--offsets_csv does nothing without --regress_offset or --lambda_recentre"),
    ("cvusa", ["--tps_grid", "2,2"], "--tps_grid does nothing without --transform tps"),
    ("cvusa", ["--stn_stages", "5"], "--stn_stages does nothing without --transform composed_affine"),
    ("cvusa", ["--loss", "infonce", "--lambda_sm", "20"], "--lambda_sm does nothing without --loss triplet"),
    ("vigor", ["--mining_k", "8"], "--mining_k does nothing without --mining"),
    ("vigor", ["--mode", "cross", "--cities", "NewYork"], "--cities does nothing without --mode same"),
    ("vigor", ["--train_cities", "NewYork"], "--train_cities does nothing without --mode cross"),
    ("cvusa", ["--head", "pool", "--attention_maps", "4"], "--attention_maps does nothing without --head safa"),
    ("cvusa", ["--transform", "polar", "--lambda_l1", "0"], "--lambda_l1 does nothing without --transform affine"),
    ("cvusa", ["--loss", "infonce", "--hard_ratios", "1,0.5"], "--hard_ratios does nothing without --loss triplet"),
    ("cvusa", ["--label_smoothing", "0.2"], "--label_smoothing does nothing without --loss infonce"),
])
def test_a_flag_that_would_do_nothing_is_refused_naming_the_flag_that_makes_it_act(dataset, argv, message):
    with pytest.raises(UserError, match=message):
        parse_train_args(dataset, argv)


@pytest.mark.parametrize("dataset, argv", [
    ("cvusa", ["--regress_offset", "--lambda_offset", "5", "--offsets_csv", "o.csv"]),
    ("cvusa", ["--lambda_recentre", "1", "--offsets_csv", "o.csv"]),
    ("cvusa", ["--transform", "tps", "--tps_grid", "2,2", "--lambda_l1", "1"]),
    ("cvusa", ["--transform", "composed_affine", "--stn_stages", "5"]),
    ("cvusa", ["--loss", "infonce", "--label_smoothing", "0.2"]),
    ("vigor", ["--mining", "--mining_k", "8"]),
    ("vigor", ["--mode", "cross", "--train_cities", "NewYork"]),
])
def test_the_same_flags_act_with_the_flag_they_need(dataset, argv):
    parse_train_args(dataset, argv)


def test_a_runs_config_json_is_accepted_back_and_only_its_non_defaults_count(tmp_path):
    """A run's config.json records every setting (defaults included): fed back with --config it trains as
    before; a value other than the default that would do nothing is refused, naming the file."""
    run = parse_train_args("cvusa", ["--transform", "polar", "--n_epochs", "3"]).run
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**run.to_dict(), "version": 5}))
    assert parse_train_args("cvusa", ["--config", str(path)]).run == run
    path.write_text(json.dumps({**run.to_dict(), "lambda_offset": 0.5, "version": 5}))
    with pytest.raises(UserError, match=r"--lambda_offset \(in --config file .*config.json\) does nothing without "
                                        r"--regress_offset"):
        parse_train_args("cvusa", ["--config", str(path)])
    assert parse_train_args("cvusa", ["--config", str(path), "--regress_offset"]).run.objective.lambda_offset == 0.5


def test_evaluation_refuses_city_flags_of_the_other_protocol(tmp_path):
    args = parse_test_args("vigor", ["--checkpoint", "c.pth", "--mode", "cross", "--cities", "NewYork"])
    run = RunConfig.from_dict({"dataset": "vigor"}).replace(mode="cross", cities=["NewYork"])
    with pytest.raises(UserError, match="--cities does nothing without --mode same"):
        run.refuse_inert({key: "" for key in args.explicit})


def test_the_exit_is_2_with_one_error_line_and_nothing_written(tmp_path):
    results = tmp_path / "runs"
    out = subprocess.run([sys.executable, os.path.join(REPO, "train_vigor.py"), "--data_root", str(tmp_path),
                          "--results_dir", str(results), "--lambda_offset", "3"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0] == ("error: --lambda_offset does nothing without --regress_offset; pass --regress_offset or "
                        "drop --lambda_offset")
    assert not results.exists()


FOV_FLAGS = ("--train_fov", "--test_fov")


def test_an_entry_point_lists_only_the_flags_it_can_use():
    vigor_train, cvusa_train = build_train_parser("vigor").format_help(), build_train_parser("cvusa").format_help()
    vigor_test, cvusa_test = build_test_parser("vigor").format_help(), build_test_parser("cvusa").format_help()
    for flag in FOV_FLAGS:
        assert flag not in vigor_train and flag in cvusa_train
    for flag in ("--train_heading", "--test_heading"):  # unknown headings on both (VIGOR: CCVPE's protocol)
        assert flag in vigor_train and flag in cvusa_train
    assert "--test_fov" not in vigor_test and "--test_fov" in cvusa_test
    assert "--test_heading" in vigor_test and "--test_heading" in cvusa_test
    with pytest.raises(SystemExit):
        parse_train_args("vigor", ["--train_fov", "90"])


def test_the_objective_section_owns_the_loss_settings_and_config_json_stays_flat():
    owned = {"loss", "label_smoothing", "lambda_sm", "hard_ratios", "lambda_l1", "lambda_offset", "lambda_recentre"}
    run = RunConfig.from_dict({"dataset": "vigor", "lambda_offset": 0.5, "loss": "infonce"}).resolved()
    assert {name for name in owned if hasattr(run.objective, name)} == owned
    assert not any(hasattr(section, name) for section in (run.model, run.data, run.train) for name in owned)
    flat = run.to_dict()
    assert owned <= set(flat) and (flat["lambda_offset"], flat["loss"], flat["label_smoothing"]) == (0.5, "infonce", 0.1)
    assert RunConfig.from_dict(flat, complete=True) == run
    assert ObjectiveConfig().lambda_offset == LAMBDA_OFFSET


MODEL = {"backbone": "tiny", "pretrained": False, "sate_size": [64, 64], "pano_size": [32, 176],
         "attention_maps": 2}


@pytest.mark.parametrize("transform, lambda_l1, on", [("tps", 1.0, True), ("composed_affine", 0.1, True),
                                                      ("affine", 0.0, False), ("polar", 0.0, False)])
def test_the_l1_term_pulls_the_block_output_towards_the_polar_image(transform, lambda_l1, on):
    torch.manual_seed(0)
    model = build_model({**MODEL, "transform": transform})
    objective = Objective.build(ObjectiveConfig(lambda_l1=lambda_l1), model.cfg)
    assert (objective.polar_target is not None) == on
    satellite = torch.rand(2, 3, 64, 64)
    _, _, aux = model(torch.rand(2, 3, 32, 176), satellite, return_aux=True)
    l1 = objective.l1(satellite, aux)
    if not on:
        assert l1 is None
        return
    want = l1_guidance_loss(model.transform(satellite), PolarTransform((64, 64), (32, 176))(satellite))
    torch.testing.assert_close(l1, want)
    l1.backward()
    assert sum(float(p.grad.abs().sum()) for p in model.transform.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("argv", [["--train_fov", "90"], ["--test_fov", "120"]])
def test_an_offset_head_with_street_windows_is_refused_up_front(argv):
    """The offset head takes full-panorama descriptors: with a narrower field of view the first step (or,
    at evaluation, re-ranking) would fail on descriptor widths."""
    with pytest.raises(UserError, match="--regress_offset reads full panoramas"):
        parse_train_args("cvusa", ["--head", "dsm", "--regress_offset", *argv])
    with pytest.raises(UserError, match="--regress_offset reads full panoramas"):
        RunConfig.from_dict({"dataset": "cvusa", "head": "dsm", "regress_offset": True}).replace(
            **{argv[0][2:]: float(argv[1])})


@pytest.mark.parametrize("extra, message", [({"version": 99}, "has version 99; this code reads config versions 1 to"),
                                            ({"version": "5"}, "has version '5'"),
                                            ({"resume": "runs/a/last.pth"}, "to continue that run pass --resume")])
def test_a_config_file_says_what_it_cannot_do(tmp_path, extra, message):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"n_epochs": 2, **extra}))
    with pytest.raises(UserError, match=message):
        parse_train_args("cvusa", ["--config", str(path)])
    path.write_text(json.dumps({"n_epochs": 2, "resume": None}))  # version-1 config.json files hold it
    assert parse_train_args("cvusa", ["--config", str(path)]).run.train.n_epochs == 2


def test_the_pose_term_is_weighted_logged_and_needs_a_pose_head():
    """--pose dense adds the pose term (weight --lambda_pose, logged unweighted); --lambda_pose without a pose
    head does nothing and is refused; a narrow field of view is refused."""
    from helper.pose import pose_loss
    from models import build_model
    from models.offset import normalise_delta

    with pytest.raises(UserError, match="--lambda_pose does nothing without --pose dense"):
        parse_train_args("cvusa", ["--lambda_pose", "2"])
    with pytest.raises(UserError, match="--pose dense reads full panoramas"):
        parse_train_args("cvusa", ["--head", "dsm", "--pose", "dense", "--sate_size", "64,64", "--train_fov", "90"])
    torch.manual_seed(0)
    model = build_model(dict(backbone="tiny", pretrained=False, sate_size=(64, 64), pano_size=(32, 128), pose="dense"))
    batch = {"street": torch.rand(3, 3, 32, 128), "satellite": torch.rand(3, 3, 64, 64),
             "delta": torch.tensor([[10.0, -20.0], [0.0, 0.0], [-30.0, 5.0]], dtype=torch.float64),
             "heading": torch.tensor([0.0, 90.0, 300.0], dtype=torch.float64)}
    for heading in (False, True):
        objective = Objective.build(ObjectiveConfig(lambda_pose=0.5).resolved(False), model.cfg, tile_side=256.0,
                                    heading=heading)
        total, terms = compute_loss(objective, model, batch, CPU, hard_ratio=1.0)
        _, _, aux = model(batch["street"], batch["satellite"], return_aux=True)
        want = pose_loss(model.pose_head, *aux["pose"], normalise_delta(batch["delta"].float(), 256.0),
                         batch["heading"].float() if heading else None)
        torch.testing.assert_close(terms["pose"], want)
        torch.testing.assert_close(total, terms["retrieval"] + 0.5 * terms["pose"])
    without = Objective.build(ObjectiveConfig().resolved(False), model.cfg.replace(pose="none"), tile_side=256.0)
    assert without.pose_weight == 0.0


def test_the_pose_term_also_trains_on_the_semi_positives():
    """VIGOR with --semi_positive iou: the pose term adds each panorama's semi-positive tile at its label."""
    from helper.pose import pair_loss, pose_loss
    from models import build_model
    from models.offset import normalise_delta
    from models.pose import PoseEmbedding

    torch.manual_seed(0)
    model = build_model(dict(backbone="tiny", pretrained=False, sate_size=(64, 64), pano_size=(32, 128), pose="dense"))
    batch = {"street": torch.rand(2, 3, 32, 128), "satellite": torch.rand(2, 3, 64, 64),
             "semi_satellite": torch.rand(2, 3, 64, 64),
             "delta": torch.tensor([[10.0, -20.0], [-30.0, 5.0]], dtype=torch.float64),
             "semi_delta": torch.tensor([[100.0, -90.0], [-110.0, 120.0]], dtype=torch.float64)}
    objective = Objective.build(ObjectiveConfig().resolved(False), model.cfg, semi_positive=True, tile_side=256.0)
    _, terms = compute_loss(objective, model, batch, CPU, hard_ratio=1.0)
    head = model.pose_head
    street = head.embed_street(batch["street"])
    tiles = head.embed_satellite(torch.cat([batch["satellite"], batch["semi_satellite"]]))
    positives, semis = PoseEmbedding(tiles=tiles.tiles[:2]), PoseEmbedding(tiles=tiles.tiles[2:])
    delta = normalise_delta(batch["delta"].float(), 256.0)
    semi_delta = normalise_delta(batch["semi_delta"].float(), 256.0)
    positives_only = pose_loss(head, street, positives, delta)
    semi_term = pair_loss(head, street, head.cell_panoramas(semis), semi_delta, head.heading_target(torch.zeros(2)))
    torch.testing.assert_close(terms["pose"], positives_only + semi_term)
    assert float(semi_term.detach()) > 0


@pytest.mark.parametrize("flag", ["--train_fov", "--test_fov"])
def test_a_field_of_view_narrower_than_one_column_is_refused(flag):
    with pytest.raises(UserError, match=f"{flag} 1e-09 covers less than one column of the 616-column panorama"):
        parse_train_args("cvusa", [flag, "1e-9", "--head", "dsm"])
    assert parse_train_args("cvusa", [flag, "0.6", "--head", "dsm"]).run.train.test_fov > 0


@pytest.mark.parametrize("dataset,flags,message", [
    ("cvusa", ["--pose", "dense", "--lambda_pose", "0"], "--pose dense with --lambda_pose 0 never trains its head"),
    ("vigor", ["--regress_offset", "--lambda_offset", "0"],
     "--regress_offset with --lambda_offset 0 never trains its head"),
])
def test_an_in_tile_head_with_a_zero_weight_is_refused_at_training(dataset, flags, message):
    with pytest.raises(UserError, match=message):
        parse_train_args(dataset, flags)
