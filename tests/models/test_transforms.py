"""Transformation blocks: shapes, gradients, identity at init, composition, TPS polar init, re-centring."""
import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from geometry.affine import affine_warp, compose_affine, recentre
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


def test_composition_order_equals_sequential_warps():
    """Warping by A_1 then (the result) by A_2 equals one warp by A_1 @ A_2 (continuous images)."""
    a1 = torch.tensor([[[0.8, 0.1, 0.1], [0.0, 0.9, -0.1]]], dtype=torch.float64)
    a2 = torch.tensor([[[1.0, -0.2, 0.05], [0.15, 0.85, 0.0]]], dtype=torch.float64)
    points = torch.rand(5, 2, dtype=torch.float64) * 2 - 1
    hom = torch.cat([points, torch.ones(5, 1, dtype=torch.float64)], dim=1)
    # Output point p reads the stage-1 image at A_2 p, which reads the input at A_1 (A_2 p).
    sequential = (a1[0] @ torch.cat([(a2[0] @ hom.t()), torch.ones(1, 5, dtype=torch.float64)])).t()
    composed = compose_affine([a1, a2])[0]
    torch.testing.assert_close((composed @ hom.t()).t(), sequential)


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


def test_recentre_with_a_zero_offset_returns_the_input_bit_for_bit():
    image = torch.randn(3, 3, 20, 20)
    offset = torch.tensor([[0.0, 0.0], [0.1, -0.3], [0.0, 0.0]])
    out = recentre(image, offset)
    assert torch.equal(out[0], image[0]) and torch.equal(out[2], image[2])
    assert not torch.allclose(out[1], image[1])


@pytest.mark.parametrize("delta", [(80.0, 0.0), (0.0, 80.0), (80.0, -40.0), (-120.0, 160.0)])
def test_recentre_moves_the_camera_point_of_the_label_convention_to_the_centre(delta):
    """A panorama at data.vigor.panorama_pixel(delta) (d0 > 0 south, d1 > 0 west) comes to index
    (S/2, S/2); what moves in from beyond the tile is zero."""
    from data.vigor import panorama_pixel
    from data.vigor_layout import TILE_SIDE

    side = 32
    row, col = (int(round(v)) for v in panorama_pixel(delta, side))
    image = torch.zeros(1, 3, side, side)
    image[0, 1:, row, col] = 1.0
    image[0, 0, :, :] += 0.5  # a constant channel shows the zero padding
    out = recentre(image, torch.tensor([delta]) / (TILE_SIDE / 2))[0]
    assert out[1, side // 2, side // 2] == pytest.approx(1.0, abs=1e-5)
    assert float(out[1].sum()) == pytest.approx(1.0, abs=1e-4)
    shift_r, shift_c = row - side // 2, col - side // 2
    moved_in = torch.zeros(side, side, dtype=torch.bool)
    if shift_r > 0:
        moved_in[side - shift_r:] = True
    if shift_r < 0:
        moved_in[:-shift_r] = True
    if shift_c > 0:
        moved_in[:, side - shift_c:] = True
    if shift_c < 0:
        moved_in[:, :-shift_c] = True
    assert torch.allclose(out[0][moved_in], torch.zeros(1), atol=1e-6)
    assert torch.allclose(out[0][~moved_in], torch.full((1,), 0.5), atol=1e-5)
