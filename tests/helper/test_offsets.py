"""VIGOR's semi-positive IOU loss, the offset head and the refined metre-level localisation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.vigor_layout import parse_panorama_name, parse_satellite_name
from helper.losses import iou_score, offset_regression_loss, semi_positive_iou_loss
from geometry.earth import haversine_m, panorama_gps
from helper.offsets import label_metres_per_pixel
from models import build_model

SMALL = {"transform": "polar", "backbone": "tiny", "pretrained": False, "sate_size": [48, 48],
         "pano_size": [32, 96]}


def brute_force_iou_loss(street, positive, semi, delta_pos, delta_semi, side=640.0):
    """The official ``distance_score(mode='IOU')`` and ``compute_loss_continuous_IOU`` as Python loops."""
    def iou(d):
        return 1.0 / (1.0 - (1 - abs(d[0]) / side) * (1.0 - abs(d[1]) / side) / 2.0) - 1

    total = 0.0
    for i in range(len(street)):
        sim_pos = sum(x * y for x, y in zip(street[i], positive[i]))
        sim_semi = sum(x * y for x, y in zip(street[i], semi[i]))
        error = sim_semi / sim_pos - iou(delta_semi[i]) / iou(delta_pos[i])
        total += error * error
    return total / len(street) / 10.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_semi_positive_loss_matches_the_official_formula(dtype):
    g = torch.Generator().manual_seed(0)
    street = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1)
    positive = F.normalize(street + 0.3 * torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1)
    semi = F.normalize(street + 0.9 * torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1)
    delta_pos = torch.rand(6, 2, generator=g, dtype=torch.float64) * 320 - 160
    delta_semi = torch.rand(6, 2, generator=g, dtype=torch.float64) * 640 - 320
    want = brute_force_iou_loss(street.tolist(), positive.tolist(), semi.tolist(), delta_pos.tolist(),
                                delta_semi.tolist())
    got = semi_positive_iou_loss(street.to(dtype), positive.to(dtype), semi.to(dtype), delta_pos, delta_semi, 640)
    assert got.dtype == dtype
    assert float(got) == pytest.approx(want, rel=1e-5 if dtype == torch.float32 else 1e-12)


def test_iou_score_is_one_at_the_centre_and_invariant_under_flips_and_turns():
    assert float(iou_score(torch.zeros(2), 640)) == 1.0
    delta = torch.tensor([[100.0, -40.0]])
    for moved in ([100.0, 40.0], [-40.0, -100.0], [40.0, 100.0], [-100.0, 40.0]):
        assert float(iou_score(torch.tensor([moved]), 640)) == float(iou_score(delta, 640))
    assert float(iou_score(torch.tensor([[200.0, 0.0]]), 640)) < float(iou_score(delta, 640))


def test_offset_loss_is_the_mean_of_summed_squares():
    predicted, target = torch.tensor([[0.5, -0.5], [0.0, 0.25]]), torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    assert float(offset_regression_loss(predicted, target)) == pytest.approx((0.5 + 0.0625) / 2)


def test_offset_head_shapes_and_gradients_reach_both_branches():
    torch.manual_seed(0)
    model = build_model({**SMALL, "regress_offset": True})
    street, satellite = torch.randn(3, 3, 32, 96), torch.randn(6, 3, 48, 48)  # positives then semi-positives
    street_desc, sat_desc, aux = model(street, satellite, return_aux=True)
    assert street_desc.shape[0] == 3 and sat_desc.shape[0] == 6 and aux["offset"].shape == (3, 2)
    torch.testing.assert_close(aux["offset"], model.predict_offset(street_desc, sat_desc[:3]))
    aux["offset"].square().sum().backward()
    for part in (model.offset_head, model.street_attention, model.satellite_attention):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert model(street, None, return_aux=True)[2]["offset"] is None


def test_without_offset_head_the_model_is_unchanged():
    torch.manual_seed(0)
    plain = build_model(SMALL).state_dict()
    torch.manual_seed(0)
    with_head = build_model({**SMALL, "regress_offset": True}).state_dict()
    assert set(with_head) - set(plain) == {k for k in with_head if k.startswith("offset_head.")}
    for key, value in plain.items():
        assert torch.equal(value, with_head[key]), key  # the head is built last: same weights elsewhere


def test_labels_of_the_synthetic_world_give_back_the_panorama_gps():
    """Every (panorama, tile, delta) of a synthetic city: the tile centre moved by the label's delta
    is the panorama's GPS, and the metres per pixel read off the labels are the world's 0.114."""
    from data.synth.layouts import VIGOR_M_PER_PX, plan_city

    plan = plan_city("Seattle", train=12, test=4, seed=3)
    fields = [line.split() for line in plan.labels]
    street = np.array([parse_panorama_name(f[0])[1:] for f in fields])
    tiles = np.array([[parse_satellite_name(f[i]) for i in (1, 4, 7, 10)] for f in fields])
    delta = np.array([[[float(f[i]), float(f[i + 1])] for i in (2, 5, 8, 11)] for f in fields])
    scale = label_metres_per_pixel(street, tiles, delta)
    assert scale == pytest.approx(VIGOR_M_PER_PX, rel=1e-4)  # the world projects at its origin, not the tile
    refined = panorama_gps(tiles, delta, scale)
    error = haversine_m(street[:, None, 0], street[:, None, 1], refined[..., 0], refined[..., 1])
    centre = haversine_m(street[:, None, 0], street[:, None, 1], tiles[..., 0], tiles[..., 1])
    assert error.max() < 0.01 and centre.min() > 0.01
