"""geometry.polar: the SAFA formula (reference values, a brute-force loop), the exact fast
converter's gather table, and the torch grid of non-square inputs."""
import numpy as np
import pytest

from geometry.polar import (polar_gather_table, polar_grid, polar_image_uint8, polar_map_points, polar_source_coords,
                            polar_transform, polar_transform_fast)
from geometry.tps import pixel_centres


def _brute_force_polar(image, height, width):
    """docs/datasets.md, one output pixel at a time."""
    side = image.shape[0]
    out = np.zeros((height, width, image.shape[2]))
    for i in range(height):
        for j in range(width):
            r = (side / 2) / height * (height - 1 - i)
            row = side / 2 + r * np.cos(2 * np.pi * j / width)
            col = side / 2 - r * np.sin(2 * np.pi * j / width)
            r0, c0 = int(np.floor(row)), int(np.floor(col))
            dr, dc = row - r0, col - c0
            for rr, cc, w in ((r0, c0, (1 - dr) * (1 - dc)), (r0, c0 + 1, (1 - dr) * dc),
                              (r0 + 1, c0, dr * (1 - dc)), (r0 + 1, c0 + 1, dr * dc)):
                if 0 <= rr < side and 0 <= cc < side:
                    out[i, j] += w * image[rr, cc]
    return out


@pytest.mark.parametrize("side,height,width", [(9, 4, 8), (10, 5, 12)])
def test_polar_transform_matches_the_formula(side, height, width):
    image = np.random.default_rng(0).integers(0, 256, (side, side, 2)).astype(np.uint8)
    np.testing.assert_allclose(polar_transform(image, height, width), _brute_force_polar(image, height, width),
                               atol=1e-4)


def test_polar_reference_geometry():
    row, col = polar_source_coords(750, 112, 616)
    assert (row[-1] == 375).all() and (col[-1] == 375).all()  # last row: the centre S/2
    radius = 375 / 112 * 111
    assert row[0, 0] == pytest.approx(375 + radius) and col[0, 0] == pytest.approx(375)  # column 0: South
    assert col[0, 154] == pytest.approx(375 - radius) and row[0, 154] == pytest.approx(375)  # W/4: West
    assert row[0, 308] == pytest.approx(375 - radius)  # W/2: North
    assert col[0, 462] == pytest.approx(375 + radius)  # 3W/4: East


@pytest.mark.parametrize("side,height,width,channels", [(750, 112, 616, 3), (31, 7, 20, 3), (32, 8, 16, 1),
                                                        (40, 50, 64, 3)])
def test_fast_transform_is_bit_identical(side, height, width, channels):
    rng = np.random.default_rng(side)
    image = rng.integers(0, 256, (side, side, channels), dtype=np.uint8)
    reference = polar_transform(image, height, width)
    fast = polar_transform_fast(image, height, width)
    assert fast.dtype == np.float32 and fast.shape == (height, width, channels)
    assert np.array_equal(fast, reference)
    assert np.array_equal(polar_image_uint8(image, height, width),
                          np.clip(np.rint(reference), 0, 255).astype(np.uint8))
    floats = rng.random((side, side, channels)).astype(np.float32)
    assert np.array_equal(polar_transform_fast(floats, height, width), polar_transform(floats, height, width))


def test_gather_table_taps():
    side, height, width = 20, 25, 16  # height > S/2: the inner rows are denser than pixels
    index, weight = polar_gather_table(side, height, width, 3)
    assert index.shape == weight.shape == (4, height * width * 3)
    assert index.min() >= 0 and index.max() < side * side * 3
    assert (weight >= 0).all()
    row, col = polar_source_coords(side, height, width)
    r0, c0 = np.floor(row).astype(int), np.floor(col).astype(int)
    taps = [(r0, c0), (r0, c0 + 1), (r0 + 1, c0), (r0 + 1, c0 + 1)]
    for k, (rr, cc) in enumerate(taps):
        inside = ((rr >= 0) & (rr < side) & (cc >= 0) & (cc < side)).repeat(3)
        assert (weight[k][~inside] == 0).all()  # outside neighbours contribute nothing
        flat = (rr * side + cc).repeat(3) * 3 + np.tile(np.arange(3), height * width)
        assert np.array_equal(index[k][inside], flat[inside])  # channel-interleaved flat index
    all_inside = ((r0 + 1 < side) & (c0 + 1 < side) & (r0 >= 0) & (c0 >= 0)).repeat(3)
    assert not all_inside.all()  # the outer ring touches row/column S (outside)
    np.testing.assert_allclose(weight.sum(axis=0)[all_inside], 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="square"):
        polar_transform_fast(np.zeros((4, 5, 3)), 2, 4)


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
