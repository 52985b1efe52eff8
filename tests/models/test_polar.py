"""Polar block: agrees with the numpy SAFA reference, generalises to non-square inputs."""
import numpy as np
import pytest
import torch

from common.errors import UserError
from geometry.polar import polar_grid, polar_map_points, polar_source_coords, polar_transform
from geometry.tps import pixel_centres
from models.polar import PolarTransform


def test_polar_block_matches_numpy_reference_on_random_image():
    image = np.random.rand(64, 64, 3).astype(np.float32)
    expected = polar_transform(image, 32, 176)
    block = PolarTransform((64, 64), (32, 176))
    out = block(torch.from_numpy(image).permute(2, 0, 1)[None])
    assert out.shape == (1, 3, 32, 176)
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), expected, atol=2e-5)


def test_polar_block_matches_reference_at_cvusa_sizes_batched():
    images = np.random.rand(2, 96, 96, 3).astype(np.float32)
    out = PolarTransform((96, 96), (56, 308))(torch.from_numpy(images).permute(0, 3, 1, 2))
    for b in range(2):
        np.testing.assert_allclose(out[b].permute(1, 2, 0).numpy(), polar_transform(images[b], 56, 308), atol=2e-5)


def test_non_square_grid_takes_rows_from_height_and_columns_from_width():
    grid = polar_grid((40, 80), (16, 64))[0].astype(np.float64)
    row, _ = polar_source_coords(40, 16, 64)
    _, col = polar_source_coords(80, 16, 64)
    np.testing.assert_allclose(grid[..., 0], (2 * col + 1) / 80 - 1, atol=1e-6)
    np.testing.assert_allclose(grid[..., 1], (2 * row + 1) / 40 - 1, atol=1e-6)
    # The last output row is the centre of the satellite: pixel coordinate (Hs/2, Ws/2).
    np.testing.assert_allclose(grid[-1, :, 0], (2 * 40 + 1) / 80 - 1, atol=1e-6)
    np.testing.assert_allclose(grid[-1, :, 1], (2 * 20 + 1) / 40 - 1, atol=1e-6)


def test_continuous_polar_map_equals_grid_at_pixel_centres():
    centres = pixel_centres(24, 100).numpy()
    mapped = polar_map_points(centres, (50, 70), (24, 100)).reshape(24, 100, 2)
    np.testing.assert_allclose(mapped, polar_grid((50, 70), (24, 100))[0], atol=1e-6)


def test_grid_is_a_non_persistent_buffer():
    block = PolarTransform((64, 64), (32, 176))
    assert "grid" in dict(block.named_buffers())
    assert block.state_dict() == {}
    assert list(block.parameters()) == []


def test_polar_files_is_identity_and_checks_the_size():
    block = PolarTransform((64, 64), (32, 176), polar_files=True)
    polar = torch.randn(2, 3, 32, 176)
    assert block(polar) is polar
    with pytest.raises(UserError, match=r"polar_files.*\[32, 176\].*\[64, 64\]"):
        block(torch.randn(2, 3, 64, 64))


def test_polar_block_keeps_float32_under_autocast():
    block = PolarTransform((64, 64), (32, 176))
    image = torch.rand(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(image)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, block(image))
