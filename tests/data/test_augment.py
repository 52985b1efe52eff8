"""Paired augmentation: exact index formulas, group identities, and consistency with the
SAFA polar transform (augment the aerial then polar == polar then augment like a panorama)."""
import numpy as np
import pytest

from data.augment import (aerial_point, flip_aerial, flip_panorama, paired_augment, roll_panorama,
                          rotate_aerial, sample_rng)
from data.convert_polar import polar_transform


def _column_image(height, width):
    """Pixel value = column index (and row index in channel 1)."""
    cols = np.broadcast_to(np.arange(width)[None, :], (height, width))
    rows = np.broadcast_to(np.arange(height)[:, None], (height, width))
    return np.stack([cols, rows], axis=-1).astype(np.int32)


@pytest.mark.parametrize("width", [16, 17, 616])
def test_flip_panorama_maps_heading_h_to_minus_h(width):
    pano = _column_image(3, width)
    flipped = flip_panorama(pano)
    # column c shows what column (W - c) mod W showed: heading h -> -h
    assert np.array_equal(flipped[..., 0], (width - pano[..., 0]) % width)
    assert np.array_equal(flipped[..., 1], pano[..., 1])  # rows untouched
    assert flipped[0, 0, 0] == 0  # South stays South
    if width % 4 == 0:
        assert flipped[0, width // 2, 0] == width // 2  # North stays North
        assert flipped[0, width // 4, 0] == 3 * width // 4  # West now shows the old East


@pytest.mark.parametrize("side", [8, 9])
def test_flip_aerial_mirrors_about_column_s_over_2(side):
    aerial = _column_image(side, side)
    flipped = flip_aerial(aerial)
    assert np.array_equal(flipped[..., 0], (side - aerial[..., 0]) % side)
    assert np.array_equal(flipped[..., 1], aerial[..., 1])


@pytest.mark.parametrize("side", [6, 7])
def test_rotate_aerial_brute_force_formula(side):
    rng = np.random.default_rng(0)
    aerial = rng.integers(0, 256, (side, side, 2))
    out = rotate_aerial(aerial, 1)
    for r in range(side):
        for c in range(side):
            assert np.array_equal(out[r, c], aerial[c, (side - r) % side])


def test_rotation_turns_east_into_north():
    side, d = 20, 6
    aerial = np.zeros((side, side), np.uint8)
    aerial[side // 2, side // 2 + d] = 255  # east of the centre (S/2, S/2)
    out = rotate_aerial(aerial, 1)
    assert np.argwhere(out == 255).tolist() == [[side // 2 - d, side // 2]]  # now north of it
    pano = _column_image(1, 16)
    rolled = roll_panorama(pano, 1)
    assert rolled[0, 8, 0] == 12  # the North column (W/2) shows the old East (3W/4)


@pytest.mark.parametrize("shape", [(5, 5, 3), (8, 8), (7, 7, 1)])
def test_group_identities(shape):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, shape).astype(np.uint8)
    assert np.array_equal(flip_aerial(flip_aerial(image)), image)
    assert np.array_equal(flip_panorama(flip_panorama(image)), image)
    assert np.array_equal(rotate_aerial(image, 4), image)
    assert np.array_equal(rotate_aerial(rotate_aerial(rotate_aerial(rotate_aerial(image, 1), 1), 1), 1), image)
    assert np.array_equal(rotate_aerial(rotate_aerial(image, 1), 2), rotate_aerial(image, 3))
    assert np.array_equal(rotate_aerial(image, -1), rotate_aerial(image, 3))
    # a mirror conjugates a rotation into its inverse
    assert np.array_equal(flip_aerial(rotate_aerial(flip_aerial(image), 1)), rotate_aerial(image, 3))
    if shape[1] % 4 == 0:
        assert np.array_equal(roll_panorama(image, 4), image)
        assert np.array_equal(roll_panorama(roll_panorama(image, 1), 3), image)


def test_roll_needs_width_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        roll_panorama(np.zeros((2, 10, 3)), 1)
    with pytest.raises(ValueError, match="square"):
        rotate_aerial(np.zeros((4, 6, 3)), 1)


def _compass(side):
    """An aerial whose quadrants are coloured by direction from the centre (S/2, S/2):
    north red, east green, south blue, west yellow."""
    row, col = np.mgrid[0:side, 0:side].astype(np.float64) - side / 2.0
    north, south = -row >= np.abs(col), row >= np.abs(col)
    east, west = col > np.abs(row), -col > np.abs(row)
    image = np.zeros((side, side, 3), np.uint8)
    image[north] = (255, 0, 0)
    image[east] = (0, 255, 0)
    image[south] = (0, 0, 255)
    image[west] = (255, 255, 0)
    return image


def test_compass_polar_layout_and_augmented_headings():
    side, height, width = 64, 16, 64
    aerial = _compass(side)
    mid = height // 2  # a ring away from the centre

    def colour_at(polar, column):
        return tuple(np.rint(polar[mid, column]).astype(int))

    polar = polar_transform(aerial, height, width)
    red, green, blue, yellow = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
    assert [colour_at(polar, c) for c in (0, width // 4, width // 2, 3 * width // 4)] == [blue, yellow, red, green]
    # rotate 90 degrees counter-clockwise: the old east is now north
    rotated = polar_transform(rotate_aerial(aerial, 1), height, width)
    assert colour_at(rotated, width // 2) == green and colour_at(rotated, width // 4) == red
    # east-west mirror: west shows the old east, north/south unchanged
    flipped = polar_transform(flip_aerial(aerial), height, width)
    assert [colour_at(flipped, c) for c in (0, width // 4, width // 2, 3 * width // 4)] == [blue, green, red, yellow]


@pytest.mark.parametrize("side,height,width", [(64, 16, 64), (63, 12, 40), (50, 10, 616 // 7 * 4)])
def test_augmentations_commute_with_polar_transform(side, height, width):
    rng = np.random.default_rng(2)
    aerial = rng.integers(0, 256, (side, side, 3)).astype(np.uint8)
    polar = polar_transform(aerial, height, width)
    np.testing.assert_allclose(polar_transform(flip_aerial(aerial), height, width), flip_panorama(polar), atol=1e-3)
    for k in (1, 2, 3):
        np.testing.assert_allclose(polar_transform(rotate_aerial(aerial, k), height, width),
                                   roll_panorama(polar, k), atol=1e-3)
    # and through paired_augment with both decisions on, the pair stays consistent
    for index in range(6):
        street_aug, sat_aug, params = paired_augment(polar, aerial, sample_rng(0, 0, index), flip=True, rotate=True)
        np.testing.assert_allclose(polar_transform(sat_aug, height, width), street_aug, atol=1e-3)
        # a polar satellite is augmented like a panorama
        street_aug2, polar_aug, params2 = paired_augment(polar, polar, sample_rng(0, 0, index), flip=True,
                                                         rotate=True, satellite_is_polar=True)
        assert params2 == params
        np.testing.assert_array_equal(polar_aug, street_aug2)
        np.testing.assert_array_equal(street_aug2, street_aug)


def test_plain_np_fliplr_would_break_the_polar_identity():
    """Guards the choice of mirror axis: np.fliplr mirrors about (S-1)/2, not the polar centre."""
    rng = np.random.default_rng(3)
    aerial = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    polar = polar_transform(aerial, 8, 32)
    assert np.abs(polar_transform(np.fliplr(aerial), 8, 32) - flip_panorama(polar)).max() > 10


@pytest.mark.parametrize("flip,rotation", [(False, 1), (True, 0), (True, 3), (False, 2)])
def test_aerial_point_tracks_a_marked_pixel(flip, rotation):
    side = 21
    aerial = np.zeros((side, side), np.uint8)
    row, col = 5, 13
    aerial[row, col] = 1
    out = flip_aerial(aerial) if flip else aerial
    out = rotate_aerial(out, rotation)
    expected = aerial_point(row, col, side, flip, rotation)
    assert np.argwhere(out == 1).tolist() == [list(expected)]


def test_paired_augment_rng_draws_and_flags():
    street = _column_image(2, 16).astype(np.uint8)
    satellite = np.arange(64, dtype=np.uint8).reshape(8, 8)
    flips, rotations = [], []
    for index in range(200):
        _, _, both = paired_augment(street, satellite, sample_rng(7, 1, index), flip=True, rotate=True)
        _, _, flip_only = paired_augment(street, satellite, sample_rng(7, 1, index), flip=True, rotate=False)
        _, _, rotate_only = paired_augment(street, satellite, sample_rng(7, 1, index), flip=False, rotate=True)
        # one augmentation's decisions do not depend on whether the other is enabled
        assert flip_only == {"flip": both["flip"], "rotation": 0}
        assert rotate_only == {"flip": 0, "rotation": both["rotation"]}
        flips.append(both["flip"])
        rotations.append(both["rotation"])
    assert 70 < sum(flips) < 130
    assert set(rotations) == {0, 1, 2, 3}
    s, a, params = paired_augment(street, satellite, sample_rng(0, 0, 0), flip=False, rotate=False)
    assert params == {"flip": 0, "rotation": 0} and s is street and a is satellite


def test_sample_rng_is_a_function_of_seed_epoch_index():
    draw = lambda *key: sample_rng(*key).random(4).tolist()  # noqa: E731
    assert draw(1, 2, 3) == draw(1, 2, 3)
    assert draw(1, 2, 3) != draw(1, 3, 3)
    assert draw(1, 2, 3) != draw(1, 2, 4)
    assert draw(1, 2, 3) != draw(2, 2, 3)
    assert draw(-1, 0, 0) == draw(2**64 - 1, 0, 0)  # negative seeds are accepted
