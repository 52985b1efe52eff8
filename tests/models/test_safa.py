"""SAFA spatial-aware attention head: shapes, brute-force reference, normalisation, init."""
import pytest
import torch

from common.errors import UserError
from models.heads import SpatialAwareAttention


def _reference(head, features):
    """Brute-force loops over batch, maps and positions (SAFA's spatial_aware + aggregation)."""
    batch, channels = features.shape[:2]
    flat = features.flatten(2).double()
    out = torch.zeros(batch, channels, head.maps, dtype=torch.float64)
    w1, b1, w2, b2 = (p.detach().double() for p in (head.weight1, head.bias1, head.weight2, head.bias2))
    for b in range(batch):
        mask = flat[b].max(dim=0).values  # max over channels, N
        for k in range(head.maps):
            hidden = mask @ w1[:, :, k] + b1[0, :, k]
            attention = hidden @ w2[:, :, k] + b2[0, :, k]  # N
            for c in range(channels):
                out[b, c, k] = (flat[b, c] * attention).sum()
    out = out.reshape(batch, -1)
    return out / out.norm(dim=1, keepdim=True)


def test_shapes_norm_and_descriptor_dim():
    head = SpatialAwareAttention((3, 7), channels=16, maps=8)
    assert head.weight1.shape == (21, 10, 8) and head.bias1.shape == (1, 10, 8)
    assert head.weight2.shape == (10, 21, 8) and head.bias2.shape == (1, 21, 8)
    desc = head(torch.randn(4, 16, 3, 7))
    assert desc.shape == (4, 16 * 8) and head.out_dim == 128
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(4))


def test_matches_brute_force_reference():
    head = SpatialAwareAttention((2, 5), channels=6, maps=3)
    with torch.no_grad():  # break the symmetric init so every weight matters
        for param in head.parameters():
            param.normal_()
    features = torch.randn(2, 6, 2, 5)
    torch.testing.assert_close(head(features).double(), _reference(head, features), atol=1e-5, rtol=1e-5)


def test_initialisation_follows_safa():
    head = SpatialAwareAttention((8, 8), channels=4, maps=8)
    for weight in (head.weight1, head.weight2):
        assert weight.abs().max() <= 0.01  # truncated at 2 std
        assert 0.003 < weight.std() < 0.005
    assert torch.all(head.bias1 == 0.1) and torch.all(head.bias2 == 0.1)


def test_normalisation_in_float32_under_autocast():
    head = SpatialAwareAttention((4, 4), channels=8, maps=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        desc = head(torch.randn(3, 8, 4, 4))
    assert desc.dtype == torch.float32
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(3))


def test_gradients_reach_every_parameter_and_the_features():
    head = SpatialAwareAttention((2, 4), channels=5, maps=2)
    features = torch.randn(2, 5, 2, 4, requires_grad=True)
    (head(features) * torch.randn(2, 10)).sum().backward()
    assert features.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_rejects_wrong_feature_size_and_too_small_maps():
    head = SpatialAwareAttention((2, 4), channels=5, maps=2)
    with pytest.raises(ValueError, match="B x 5 x 2 x 4"):
        head(torch.randn(1, 5, 4, 2))
    with pytest.raises(UserError, match="too small"):
        SpatialAwareAttention((1, 1), channels=5, maps=2)


def test_pool_head_is_the_normalised_channel_mean():
    from models.heads import GlobalPoolHead

    features = torch.randn(3, 16, 4, 7)
    out = GlobalPoolHead((4, 7), 16)(features)
    expected = features.mean(dim=(2, 3))
    torch.testing.assert_close(out, expected / expected.norm(dim=1, keepdim=True))
    assert out.dtype == torch.float32


def test_shared_backbone_round_trips_strictly():
    from models import build_model

    cfg = {"backbone": "tiny", "pretrained": False, "sate_size": [48, 48], "pano_size": [32, 64],
           "shared_backbone": True, "head": "pool"}
    first, second = build_model(cfg), build_model(cfg)
    assert sum(p.numel() for p in first.parameters()) == sum(p.numel() for p in first.street_backbone.parameters())
    second.load_state_dict(first.state_dict(), strict=True)
    street = torch.randn(2, 3, 32, 64)
    torch.testing.assert_close(second(street, None)[0], first(street, None)[0])
