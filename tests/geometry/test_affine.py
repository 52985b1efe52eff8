"""geometry.affine: composition order of stacked warps, and re-centring on the label convention."""
import pytest
import torch

from geometry.affine import compose_affine, recentre


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
