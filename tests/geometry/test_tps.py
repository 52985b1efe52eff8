"""geometry.tps: the functional core interpolates in float64, bends between control points, and
lays its control grid out row-major."""
import torch

from geometry.tps import control_grid, tps_coefficients


def test_functional_core_interpolates_at_scattered_targets_in_float64():
    target = torch.rand(9, 2, dtype=torch.float64) * 2 - 1
    source = torch.rand(2, 9, 2, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(tps_coefficients(target, target) @ source, source, atol=1e-10, rtol=0)


def test_non_affine_source_bends_the_grid_between_control_points():
    target = control_grid(3, 3, 1.0)
    source = target.clone()
    source[4] = torch.tensor([0.3, 0.2])  # move the centre point only
    query = torch.tensor([[0.15, 0.1], [-0.9, -0.9]], dtype=torch.float64)
    warped = tps_coefficients(query, target) @ source.double()
    assert (warped[0] - query[0]).norm() > 0.05  # pulled along with the centre
    assert (warped[1] - query[1]).norm() < (warped[0] - query[0]).norm()


def test_control_grid_layout_is_row_major_x_then_y():
    points = control_grid(2, 3, 0.5)
    expected = torch.tensor([[-0.5, -0.5], [0.0, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.0, 0.5], [0.5, 0.5]])
    torch.testing.assert_close(points, expected)
