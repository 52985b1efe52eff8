"""geometry.earth: great-circle distances, the local metres <-> GPS projection and the panorama GPS
of a label delta, against closed forms and the official law of cosines."""
import math

import numpy as np
import pytest
import torch

from geometry.earth import EARTH_RADIUS_M, gps_to_north_east, haversine_m, north_east_to_gps, panorama_gps


def test_haversine_known_distances():
    one_degree = EARTH_RADIUS_M * math.pi / 180.0
    assert one_degree == pytest.approx(111_195.0, abs=0.01)
    assert float(haversine_m(0.0, 0.0, 1.0, 0.0)) == pytest.approx(one_degree, rel=1e-12)  # meridian
    assert float(haversine_m(10.0, 20.0, 10.0, 20.0)) == 0.0
    assert float(haversine_m(0.0, 0.0, 0.0, 1.0)) == pytest.approx(one_degree, rel=1e-12)  # equator
    assert float(haversine_m(0.0, 0.0, 0.0, 180.0)) == pytest.approx(math.pi * EARTH_RADIUS_M, rel=1e-12)
    assert float(haversine_m(90.0, 0.0, -90.0, 0.0)) == pytest.approx(math.pi * EARTH_RADIUS_M, rel=1e-12)
    # 60 deg N, 1 deg of longitude: great circle slightly shorter than the parallel
    d = float(haversine_m(60.0, 0.0, 60.0, 1.0))
    assert d < one_degree * 0.5 and d == pytest.approx(one_degree * 0.5, rel=1e-4)


def test_haversine_matches_official_law_of_cosines_and_vectorises():
    rng = np.random.default_rng(0)
    lat = rng.uniform(37.0, 48.0, 100)
    lon = rng.uniform(-123.0, -73.0, 100)
    lat2 = lat + rng.uniform(-0.01, 0.01, 100)
    lon2 = lon + rng.uniform(-0.01, 0.01, 100)
    ours = haversine_m(lat, lon, lat2, lon2)
    a, b, c, e = (np.radians(v) for v in (lat, lon, lat2, lon2))
    official = EARTH_RADIUS_M * np.arccos(np.sin(a) * np.sin(c) + np.cos(a) * np.cos(c) * np.cos(e - b))
    assert ours.shape == (100,) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, official, atol=0.05)  # law of cosines: ~cm round-off
    t = haversine_m(torch.tensor(lat), torch.tensor(lon), torch.tensor(lat2), torch.tensor(lon2))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), ours, rtol=1e-12)
    # float32 inputs are promoted: 1e-5 deg offsets survive
    t32 = haversine_m(torch.tensor([45.0], dtype=torch.float32), torch.tensor([7.0]),
                      torch.tensor([45.00001], dtype=torch.float64), torch.tensor([7.0]))
    assert float(t32[0]) == pytest.approx(1.11195, rel=1e-3)


def test_refined_position_of_a_known_offset_is_south_west():
    """A panorama 10 m south and 5 m west of a tile centre has deltas (+10, +5) m in label pixels."""
    scale = 0.114
    tile = np.array([40.7648, -73.9935])
    lat, lon = panorama_gps(tile, np.array([10 / scale, 5 / scale]), scale)
    assert lat < tile[0] and lon < tile[1]
    assert haversine_m(tile[0], tile[1], lat, tile[1]) == pytest.approx(10.0, abs=1e-3)
    assert haversine_m(lat, tile[1], lat, lon) == pytest.approx(5.0, abs=1e-3)


def test_local_projection_is_the_closed_form_and_round_trips():
    """One metre north is 1/R radians of latitude; one metre east 1/(R cos lat0) of longitude;
    the inverse gives the metres back, and the distance agrees with the great circle."""
    lat0, lon0 = 47.6205, -122.3493
    lat, lon = north_east_to_gps(lat0, lon0, 1.0, 0.0)
    assert (float(lat), float(lon)) == (lat0 + math.degrees(1.0 / EARTH_RADIUS_M), lon0)
    lat, lon = north_east_to_gps(lat0, lon0, 0.0, 1.0)
    assert (float(lat), float(lon)) == (lat0, lon0 + math.degrees(1.0 / (EARTH_RADIUS_M * math.cos(math.radians(lat0)))))
    north = np.array([[-40.0, 0.0, 12.5], [3.0, 250.0, -0.5]])
    east = np.array([[7.0, -60.0, 0.0], [125.0, 1.0, -33.0]])
    lat, lon = north_east_to_gps(lat0, lon0, north, east)
    assert lat.shape == lon.shape == (2, 3) and lat.dtype == np.float64
    back_north, back_east = gps_to_north_east(lat0, lon0, lat, lon)
    np.testing.assert_allclose(back_north, north, atol=1e-8)
    np.testing.assert_allclose(back_east, east, atol=1e-8)
    np.testing.assert_allclose(haversine_m(lat0, lon0, lat, lon), np.hypot(north, east), rtol=1e-5)


def test_panorama_gps_broadcasts_over_tiles_and_scales():
    tiles = np.array([[[40.7648, -73.9935], [41.896, -87.65]]])  # 1 x 2 tiles
    delta = np.array([[[100.0, 0.0], [0.0, -50.0]]])
    scale = np.array([0.1, 0.2])  # per tile
    gps = panorama_gps(tiles, delta, scale)
    assert gps.shape == (1, 2, 2)
    north, east = gps_to_north_east(tiles[..., 0], tiles[..., 1], gps[..., 0], gps[..., 1])
    np.testing.assert_allclose(north, [[-10.0, 0.0]], atol=1e-9)  # d0 > 0: south
    np.testing.assert_allclose(east, [[0.0, 10.0]], atol=1e-9)  # d1 < 0: east
