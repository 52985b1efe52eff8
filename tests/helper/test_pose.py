"""The results' ``pose`` block against a brute-force computation."""
import math

import numpy as np
import pytest

from helper.pose import pose_results


def _brute(predicted, truth, scale, unit, heading=None, true_heading=None):
    n = len(truth)
    err, centre = [], []
    for i in range(n):
        err.append(math.sqrt((predicted[i][0] - truth[i][0]) ** 2 + (predicted[i][1] - truth[i][1]) ** 2) * scale[i])
        centre.append(math.sqrt(truth[i][0] ** 2 + truth[i][1] ** 2) * scale[i])
    out = {"queries": n, f"mean_{unit}": sum(err) / n, f"median_{unit}": sorted(err)[n // 2] if n % 2 else
           (sorted(err)[n // 2 - 1] + sorted(err)[n // 2]) / 2,
           f"within_{unit}": {t: 100.0 * sum(e < float(t) for e in err) / n for t in ("1", "3", "5", "10")},
           f"centre_mean_{unit}": sum(centre) / n,
           f"centre_median_{unit}": (sorted(centre)[n // 2 - 1] + sorted(centre)[n // 2]) / 2}
    if heading is not None:
        h = []
        for a, b in zip(heading, true_heading):
            d = abs(a - b) % 360
            h.append(min(d, 360 - d))
        out.update({"heading_mean_deg": sum(h) / n,
                    "heading_median_deg": (sorted(h)[n // 2 - 1] + sorted(h)[n // 2]) / 2,
                    "heading_within_deg": {t: 100.0 * sum(e <= float(t) for e in h) / n for t in ("5", "10")}})
    return out


@pytest.mark.parametrize("unit,with_heading", [("m", False), ("m", True), ("px", True)])
def test_pose_block_is_the_brute_force_one(unit, with_heading):
    rng = np.random.default_rng(3)
    n = 40
    truth = rng.uniform(-60, 60, (n, 2))
    predicted = truth + rng.normal(0, 30, (n, 2))
    scale = rng.uniform(0.09, 0.12, n) if unit == "m" else np.ones(n)
    heading = rng.uniform(0, 360, n) if with_heading else None
    true_heading = (heading + rng.normal(0, 15, n)) % 360 if with_heading else None
    block = pose_results(predicted, truth, scale, unit, heading, true_heading)
    expected = _brute(predicted.tolist(), truth.tolist(), scale.tolist(), unit,
                      None if heading is None else heading.tolist(),
                      None if true_heading is None else true_heading.tolist())
    assert block.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            assert block[key] == pytest.approx(value), key
        else:
            assert block[key] == pytest.approx(value, rel=1e-12), key
    assert ("heading_median_deg" in block) == with_heading
