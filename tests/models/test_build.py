"""build_model: defaults, validation, JSON round trip, forward contract, aux outputs."""
import json

import pytest
import torch

from common.errors import UserError
from models import DEFAULT_CONFIG, build_model, count_parameters, resolve_config

SMALL = {"backbone": "tiny", "pretrained": False, "sate_size": [64, 64], "pano_size": [32, 176]}


def _cfg(**overrides):
    return dict(SMALL, **overrides)


def _batch(b=2):
    return torch.randn(b, 3, 32, 176), torch.randn(b, 3, 64, 64)


def test_defaults_fill_missing_keys_and_keep_others():
    cfg = resolve_config({"backbone": "tiny", "lr": 1e-4})
    assert cfg["lr"] == 1e-4
    for key, value in DEFAULT_CONFIG.items():
        if key != "backbone":
            assert cfg[key] == value, key
    assert DEFAULT_CONFIG["transform"] == "polar" and DEFAULT_CONFIG["backbone"] == "vgg16"
    assert DEFAULT_CONFIG["pretrained"] is True and DEFAULT_CONFIG["tps_grid"] == [6, 10]


def test_missing_keys_build_the_default_architecture():
    model = build_model({"backbone": "tiny", "pretrained": False})
    assert type(model.transform).__name__ == "PolarTransform"
    assert model.street_attention.feature_size == (14, 77)  # 112 x 616 at stride 8
    assert model.descriptor_dim == 128 * 8


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"transform": "spline"}, "valid transforms: none, polar, affine, composed_affine, tps"),
        ({"backbone": "resnet50"}, "valid backbones: vgg16, resnet34, tiny"),
        ({"sate_size": [16, 64]}, "sate_size must be"),
        ({"pano_size": [112]}, "pano_size must be"),
        ({"attention_maps": 0}, "attention_maps must be"),
        ({"stn_init": "random"}, "is not one of identity, polar"),
        ({"transform": "affine", "stn_init": "polar"}, "only for --transform tps"),
        ({"transform": "polar", "lambda_l1": 1.0}, "needs an STN transform"),
        ({"transform": "affine", "tps_bounded": True}, "only applies to --transform tps"),
        ({"tps_span": 1.5}, "tps_span"),
        ({"pretrained": "yes"}, "pretrained must be true or false"),
    ],
)
def test_bad_configs_are_user_errors(overrides, pattern):
    with pytest.raises(UserError, match=pattern):
        build_model(_cfg(**overrides))


@pytest.mark.parametrize("transform", ["polar", "tps"])
def test_json_round_trip_and_strict_load_give_identical_outputs(transform):
    tps = transform == "tps"
    cfg = _cfg(transform=transform, lambda_l1=0.5 if tps else 0.0, stn_init="polar" if tps else "identity")
    first = build_model(cfg).eval()
    with torch.no_grad():  # make the STN non-trivial so a failed load would show
        for name, param in first.named_parameters():
            if "head.weight" in name:
                param.normal_(0, 0.01)
    torch.manual_seed(123)  # a different random init for the second model
    second = build_model(json.loads(json.dumps(cfg))).eval()
    assert json.loads(json.dumps(second.cfg.to_dict())) == second.cfg.to_dict()
    street, satellite = _batch()
    before = second(street, satellite)
    assert not torch.allclose(before[0], first(street, satellite)[0])
    second.load_state_dict(first.state_dict(), strict=True)
    with torch.no_grad():
        for a, b in zip(first(street, satellite), second(street, satellite)):
            assert torch.equal(a, b)
    keys = first.state_dict().keys()
    assert not any("grid" in k or "coefficients" in k for k in keys)  # geometry buffers are rebuilt, not stored
    assert any(k.startswith("street_backbone.") for k in keys)
    assert any(k.startswith("satellite_attention.") for k in keys)


def test_forward_contract_and_none_inputs():
    model = build_model(_cfg(transform="polar")).eval()
    street, satellite = _batch(3)
    street_desc, sat_desc = model(street, satellite)
    assert street_desc.shape == sat_desc.shape == (3, model.descriptor_dim)
    assert street_desc.dtype == sat_desc.dtype == torch.float32
    torch.testing.assert_close(street_desc.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(sat_desc.norm(dim=1), torch.ones(3))
    only_street = model(street, None)
    only_sat = model(None, satellite)
    assert only_street[1] is None and only_sat[0] is None
    torch.testing.assert_close(only_street[0], street_desc)
    torch.testing.assert_close(only_sat[1], sat_desc)
    assert model(None, None) == (None, None)


def test_branches_do_not_share_weights():
    model = build_model(_cfg(transform="none"))
    street_params = {id(p) for m in (model.street_backbone, model.street_attention) for p in m.parameters()}
    sat_params = {id(p) for m in (model.satellite_backbone, model.satellite_attention) for p in m.parameters()}
    assert street_params.isdisjoint(sat_params)
    assert model.transform is not None


def test_return_aux_holds_the_block_output():
    model = build_model(_cfg(transform="tps"))
    street, satellite = _batch()
    street_desc, sat_desc, aux = model(street, satellite, return_aux=True)
    assert set(aux) == {"transformed"}
    torch.testing.assert_close(aux["transformed"], model.transform(satellite))
    assert aux["transformed"].shape == (2, 3, 32, 176)
    _, _, aux = model(street, None, return_aux=True)
    assert aux == {"transformed": None}


def test_polar_files_satellite_input_is_pano_sized():
    model = build_model(_cfg(transform="polar", polar_files=True))
    street, _ = _batch()
    polar = torch.randn(2, 3, 32, 176)
    _, _, aux = model(street, polar, return_aux=True)
    assert torch.equal(aux["transformed"], polar)
    with pytest.raises(UserError, match="satellite batch"):
        model(street, torch.randn(2, 3, 64, 64))


def test_input_size_mismatch_is_a_user_error():
    model = build_model(_cfg(transform="none"))
    with pytest.raises(UserError, match=r"street batch .* 32 x 176"):
        model(torch.randn(1, 3, 32, 160), None)
    with pytest.raises(UserError, match=r"satellite batch .* 64 x 64"):
        model(None, torch.randn(1, 3, 48, 48))


def test_count_parameters():
    model = build_model(_cfg(transform="tps"))
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    parts = (model.transform, model.street_backbone, model.satellite_backbone)
    parts += (model.street_attention, model.satellite_attention)
    assert total == sum(count_parameters(m) for m in parts)
    model.transform.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - count_parameters(model.transform)


def test_every_parameter_gets_a_gradient_end_to_end():
    model = build_model(_cfg(transform="composed_affine", stn_stages=2))
    street, satellite = _batch()
    street_desc, sat_desc = model(street, satellite)
    (street_desc @ sat_desc.t()).diagonal().sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
