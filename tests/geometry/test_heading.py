"""geometry.heading: the heading error of numpy and torch inputs."""
import numpy as np

from geometry.heading import heading_error


def test_numpy_and_torch_heading_errors_agree():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 360, 50), rng.uniform(0, 360, 50)
    errors = heading_error(a, b)
    assert errors.max() <= 180.0 and np.allclose(errors, heading_error(b, a))
