"""Transformation blocks: shapes, gradients, identity at init, composition, TPS polar init."""
import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from geometry.affine import affine_warp, compose_affine
from geometry.polar import polar_grid, polar_map_points
from geometry.tps import control_grid, pixel_centres
from models.config import ModelConfig
from models.polar import PolarTransform
from models.transforms import (
    TRANSFORMS,
    AffineTransform,
    ComposedAffineTransform,
    ResizeTransform,
    STN_TRANSFORMS,
    TPSTransform,
    build_transform,
)

SATE = (64, 64)
PANO = (32, 176)


def _cfg(**overrides):
    base = dict(backbone="tiny", pretrained=False, sate_size=list(SATE), pano_size=list(PANO))
    return ModelConfig.from_dict(dict(base, **overrides))


def _perturb_heads(block, scale=0.05):
    """Give the zero-initialised regression heads random weights (a block that has 'trained')."""
    with torch.no_grad():
        for name, param in block.named_parameters():
            if "head.weight" in name:
                param.normal_(0.0, scale)


@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_every_transform_shape_finite_and_gradients(name):
    block = build_transform(_cfg(transform=name))
    satellite = torch.randn(2, 3, *SATE, requires_grad=True)
    out = block(satellite)
    assert out.shape == (2, 3, *PANO)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert satellite.grad is not None and satellite.grad.abs().sum() > 0
    params = list(block.named_parameters())
    assert (len(params) > 0) == (name in STN_TRANSFORMS)
    for pname, param in params:
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
    heads = [p.grad for n, p in params if "head" in n]
    assert all(g.abs().sum() > 0 for g in heads)


def test_registry_lists_valid_names():
    assert TRANSFORMS.names() == ["none", "polar", "affine", "composed_affine", "tps"]
    with pytest.raises(UserError, match="none, polar, affine, composed_affine, tps"):
        TRANSFORMS.get("homography")


def test_none_is_bilinear_resize():
    satellite = torch.randn(2, 3, *SATE)
    expected = F.interpolate(satellite, size=PANO, mode="bilinear", align_corners=False)
    torch.testing.assert_close(ResizeTransform(PANO)(satellite), expected)


def _inside_mask():
    """Output pixels whose identity-sampling position stays within [0, S-1] (no zero padding involved)."""
    rows = (torch.arange(PANO[0]) + 0.5) * SATE[0] / PANO[0] - 0.5
    cols = (torch.arange(PANO[1]) + 0.5) * SATE[1] / PANO[1] - 0.5
    ok_r = (rows >= 0) & (rows <= SATE[0] - 1)
    ok_c = (cols >= 0) & (cols <= SATE[1] - 1)
    return ok_r[:, None] & ok_c[None, :]


@pytest.mark.parametrize("name", ["affine", "composed_affine", "tps"])
def test_stn_is_identity_at_init(name):
    block = build_transform(_cfg(transform=name))
    satellite = torch.randn(2, 3, *SATE)
    out = block(satellite)
    resized = ResizeTransform(PANO)(satellite)
    mask = _inside_mask()
    assert mask.float().mean() > 0.9
    # Where no zero padding is involved the STN equals the plain resize exactly; at the outer
    # half-pixel border (width upsampled 64 -> 176) grid_sample blends in zeros instead of clamping.
    torch.testing.assert_close(out[..., mask], resized[..., mask], atol=1e-4, rtol=0)
    identity_grid = F.affine_grid(torch.eye(2, 3).expand(2, 2, 3), [2, 3, *PANO], align_corners=False)
    identity = F.grid_sample(satellite, identity_grid, align_corners=False)
    torch.testing.assert_close(out, identity, atol=1e-4, rtol=0)


def test_affine_theta_is_identity_at_init_and_frame_is_output_to_input():
    block = AffineTransform(PANO)
    satellite = torch.randn(1, 3, *SATE)
    _, theta = block.forward_with_theta(satellite)
    torch.testing.assert_close(theta, torch.eye(2, 3)[None])
    # A horizontal shift of +0.5 (normalized) in theta reads input x + 0.5: output column j
    # shows what the identity shows at x + 0.5.
    shift = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]])
    shifted = affine_warp(satellite, shift, (64, 64))
    torch.testing.assert_close(shifted[..., :, :48], satellite[..., :, 16:], atol=1e-4, rtol=0)


def test_composed_affine_composes_stage_matrices_and_resamples_once():
    block = ComposedAffineTransform(PANO, stages=3)
    _perturb_heads(block)
    satellite = torch.randn(2, 3, *SATE)
    out, stages, composed = block.forward_with_thetas(satellite)
    assert stages.shape == (2, 3, 2, 3) and composed.shape == (2, 2, 3)
    assert not torch.allclose(stages[:, 0], stages[:, 1])  # later stages see a different warped input
    hom = torch.cat([stages, torch.tensor([0.0, 0.0, 1.0]).expand(2, 3, 1, 3)], dim=2)
    product = hom[:, 0] @ hom[:, 1] @ hom[:, 2]
    torch.testing.assert_close(composed, product[:, :2], atol=1e-6, rtol=0)
    torch.testing.assert_close(compose_affine(list(stages.unbind(1))), composed)
    once = F.grid_sample(satellite, F.affine_grid(composed, [2, 3, *PANO], align_corners=False), align_corners=False)
    torch.testing.assert_close(out, once, atol=1e-4, rtol=0)
    assert torch.equal(block(satellite), out)


def test_composed_identity_at_init_returns_identity_matrices():
    block = ComposedAffineTransform(PANO, stages=2)
    _, stages, composed = block.forward_with_thetas(torch.randn(1, 3, *SATE))
    torch.testing.assert_close(stages, torch.eye(2, 3).expand(1, 2, 2, 3))
    torch.testing.assert_close(composed, torch.eye(2, 3)[None])


@pytest.mark.parametrize("bounded", [False, True])
def test_tps_identity_init_source_points_are_targets(bounded):
    block = TPSTransform(SATE, PANO, grid=(3, 5), span=0.9, bounded=bounded)
    source = block.source_points(torch.randn(2, 3, *SATE))
    torch.testing.assert_close(source, control_grid(3, 5, 0.9).expand(2, -1, -1), atol=1e-6, rtol=0)
    if bounded:
        block.loc.head.bias.data.fill_(50.0)
        assert block.source_points(torch.randn(1, 3, *SATE)).abs().max() <= 1.0


@pytest.mark.parametrize("bounded", [False, True])
def test_tps_polar_init_matches_polar_block(bounded):
    block = TPSTransform(SATE, PANO, grid=(6, 10), span=0.9, bounded=bounded, init="polar")
    target = control_grid(6, 10, 0.9)
    source = block.source_points(torch.randn(1, 3, *SATE))[0]
    # At the control points: exactly the polar mapping.
    expected = torch.from_numpy(polar_map_points(target.double().numpy(), SATE, PANO)).float()
    torch.testing.assert_close(source, expected, atol=1e-4 if bounded else 1e-6, rtol=0)
    # In between: a TPS through 6 x 10 points approximates the polar map (a full sine period
    # across the width, about 0.63 rad between control columns). Measured for 6 x 10 at these
    # sizes: max 0.039 / mean 0.0075 (normalized units) inside the control hull |x|, |y| <= 0.9,
    # mean 0.012 over the whole image (extrapolation beyond the hull is worse, max 0.12).
    grid = block.grid_gen(source[None])[0]
    error = (grid - torch.from_numpy(polar_grid(SATE, PANO)[0])).norm(dim=-1)
    inside = (pixel_centres(*PANO).view(*PANO, 2).abs() <= 0.9).all(-1)
    assert error[inside].max() < 0.05 and error[inside].mean() < 0.01
    assert error.mean() < 0.02
    # Images: on a smooth satellite (low frequencies, values in [-1, 1]) the outputs agree closely.
    yy, xx = torch.meshgrid(torch.linspace(0, 3.1, SATE[0]), torch.linspace(0, 3.1, SATE[1]), indexing="ij")
    smooth = torch.stack([torch.sin(xx + yy), torch.cos(2 * xx - yy), torch.sin(xx * yy)])[None]
    tps_img = block(smooth)
    polar_img = PolarTransform(SATE, PANO)(smooth)
    assert (tps_img - polar_img)[..., inside].abs().mean() < 0.02


def test_stn_init_polar_only_for_tps():
    for name in ("affine", "composed_affine", "none", "polar"):
        with pytest.raises(UserError, match="only for --transform tps"):
            _cfg(transform=name, stn_init="polar")
    with pytest.raises(UserError, match="polar_files"):
        build_transform(_cfg(transform="tps", stn_init="polar", polar_files=True))


def test_stn_blocks_on_polar_files_take_pano_sized_input():
    block = build_transform(_cfg(transform="tps", polar_files=True))
    assert block.sate_size == PANO
    assert block(torch.randn(1, 3, *PANO)).shape == (1, 3, *PANO)


def test_stn_geometry_stays_float32_under_autocast():
    block = ComposedAffineTransform(PANO, stages=2)
    _perturb_heads(block)
    satellite = torch.randn(1, 3, *SATE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, stages, composed = block.forward_with_thetas(satellite)
    assert out.dtype == stages.dtype == composed.dtype == torch.float32
