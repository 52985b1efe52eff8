"""TPS grid generator: identity, exact interpolation, affine reproduction, gradcheck."""
import pytest
import torch

from geometry.tps import control_grid, pixel_centres, tps_coefficients
from models.tps import TPSGridGen


def test_identity_grid_when_source_equals_target():
    target = control_grid(3, 4, 0.8)
    gen = TPSGridGen(10, 14, target)
    grid = gen(target[None].repeat(2, 1, 1))
    expected = pixel_centres(10, 14).float().view(1, 10, 14, 2).expand(2, -1, -1, -1)
    assert grid.shape == (2, 10, 14, 2)
    torch.testing.assert_close(grid, expected, atol=1e-5, rtol=0)
    identity = torch.nn.functional.affine_grid(torch.eye(2, 3)[None], [1, 1, 10, 14], align_corners=False)
    torch.testing.assert_close(grid[:1], identity, atol=1e-5, rtol=0)


def test_grid_passes_exactly_through_random_source_points():
    # Control points placed at output pixel centres: the grid must return the sources there.
    centres = pixel_centres(4, 6).float()
    gen = TPSGridGen(4, 6, centres)
    source = torch.rand(3, 24, 2) * 2 - 1
    grid = gen(source)
    torch.testing.assert_close(grid.view(3, 24, 2), source, atol=1e-5, rtol=0)


def test_tps_reproduces_affine_maps_everywhere():
    target = control_grid(3, 5, 0.9)
    matrix = torch.tensor([[0.7, 0.2], [-0.1, 1.3]])
    shift = torch.tensor([0.05, -0.2])
    source = target @ matrix.t() + shift
    grid = TPSGridGen(8, 12, target)(source[None])[0]
    expected = pixel_centres(8, 12).float() @ matrix.t() + shift
    torch.testing.assert_close(grid.view(-1, 2), expected, atol=1e-5, rtol=0)


def test_gradcheck_float64():
    target = control_grid(2, 3, 0.9)
    gen = TPSGridGen(3, 4, target)
    source = (target.double() + 0.1 * torch.randn(1, 6, 2, dtype=torch.float64)).requires_grad_()
    assert gen(source).dtype == torch.float64
    assert torch.autograd.gradcheck(gen, (source,))


def test_degenerate_targets_raise():
    collinear = torch.stack([torch.linspace(-1, 1, 4), torch.zeros(4)], dim=1)
    with pytest.raises(ValueError, match="degenerate"):
        TPSGridGen(4, 4, collinear)
    with pytest.raises(ValueError, match="K >= 3"):
        tps_coefficients(torch.zeros(1, 2), torch.zeros(2, 2))


def test_buffers_not_saved_and_float32_under_autocast():
    target = control_grid(2, 3, 0.9)
    gen = TPSGridGen(5, 7, target)
    assert gen.state_dict() == {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grid = gen(target[None].to(torch.bfloat16))
    assert grid.dtype == torch.float32
