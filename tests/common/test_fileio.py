"""The JSON writers of common.fileio write strict JSON: no NaN or Infinity token reaches a file."""
import json
import math

import pytest

from common.fileio import write_json_atomic, write_jsonl_atomic


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_json_writers_refuse_non_finite_numbers_and_keep_the_old_file(tmp_path, bad):
    for writer, good, value in ((write_json_atomic, {"R@1": 1.0}, {"R@1": bad}),
                                (write_jsonl_atomic, [{"R@1": 1.0}], [{"R@1": 1.0}, {"median": {"m": bad}}])):
        path = tmp_path / "out.json"
        writer(str(path), good)
        before = path.read_bytes()
        with pytest.raises(ValueError, match="not JSON compliant"):
            writer(str(path), value)
        assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_undefined_values_are_null(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(str(path), {"median_deg": None, "R@1": 12.5})
    assert path.read_text() == '{\n  "R@1": 12.5,\n  "median_deg": null\n}\n'
    assert not math.isnan(json.loads(path.read_text())["R@1"])
