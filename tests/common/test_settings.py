"""Typed settings: one field defines the flag, its default and its rules for every boundary."""
import argparse
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest

from common.errors import UserError
from common.settings import add_settings, as_plain, check_settings, setting


@dataclass(frozen=True)
class Example:
    count: int = setting(3, "a count", minimum=1)
    ratio: float = setting(0.5, "a ratio", above=0.0, maximum=1.0)
    flag: bool = setting(False, "a switch")
    mode: str = setting("a", "a choice", choices=lambda: ("a", "b"))
    size: Tuple[int, int] = setting((32, 64), "a size", minimum=32)
    names: Tuple[str, ...] = setting(("x", "y"), "some names")
    ratios: Tuple[float, ...] = setting((1.0, 0.5), "some ratios", above=0.0, maximum=1.0)
    rate: Optional[float] = setting(None, "derived when absent", above=0.0, default_text="twice the ratio")

    def __post_init__(self):
        check_settings(self)


def test_values_are_normalised_and_plain():
    value = Example(size=[40, 50], names=["p"], ratios=[1, 0.25], ratio=1)
    assert value.size == (40, 50) and value.names == ("p",) and value.ratios == (1.0, 0.25)
    assert isinstance(value.ratio, float)
    assert as_plain(value)["size"] == [40, 50]


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 0}, "--count must be an integer >= 1, got 0"),
    ({"count": 1.5}, "--count must be an integer >= 1, got 1.5"),
    ({"count": True}, "--count must be an integer"),
    ({"ratio": 0.0}, "--ratio must be a number in (0, 1], got 0.0"),
    ({"ratio": math.nan}, "--ratio must be a finite number in (0, 1]"),
    ({"ratio": None}, "--ratio must be a number"),
    ({"flag": "no"}, "--flag must be true or false, got 'no'"),
    ({"mode": "c"}, "--mode = 'c' is not one of a, b"),
    ({"size": [16, 64]}, "--size must be integers >= 32, got [16, 64]"),
    ({"size": [64]}, "--size must be two integers H,W"),
    ({"names": "xy"}, "--names must be a non-empty list"),
    ({"ratios": [1.0, 0.0]}, "--ratios must be numbers in (0, 1], got [1.0, 0.0]"),
    ({"rate": -1.0}, "--rate must be a number > 0"),
])
def test_every_rule_is_a_user_error_naming_the_flag(kwargs, message):
    with pytest.raises(UserError) as info:
        Example(**kwargs)
    assert message in str(info.value)


def test_the_command_line_applies_the_same_rules(capsys):
    parser = argparse.ArgumentParser(prog="x")
    add_settings(parser, Example, defaults={"count": 7})
    args = parser.parse_args(["--size", "48", "--names", "a,b", "--no-flag", "--ratios", "1,0.1"])
    assert args.count == 7 and args.size == (48, 48) and args.names == ("a", "b") and args.flag is False
    assert Example(**vars(args)).ratios == (1.0, 0.1)
    with pytest.raises(SystemExit):
        parser.parse_args(["--ratio", "1.5"])
    assert "argument --ratio: must be a number in (0, 1], got 1.5" in capsys.readouterr().err
    help_text = " ".join(parser.format_help().split())
    assert "a count (default: 7)" in help_text and "(default: twice the ratio)" in help_text
    assert "(default: None)" not in help_text


def test_a_failed_write_is_one_user_error_and_leaves_the_old_file(tmp_path, monkeypatch):
    """Disk full (ENOSPC) while writing any output: a UserError naming the file; the old one intact."""
    import errno

    from common import fileio

    path = tmp_path / "out.json"
    path.write_text("old")
    real_open = open

    def full_disk(name, *args, **kwargs):
        handle = real_open(name, *args, **kwargs)
        if str(name).startswith(str(path)) and "w" in (args[0] if args else kwargs.get("mode", "r")):
            handle.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return handle

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(UserError, match=r"cannot write .*out.json: No space left on device"):
        fileio.write_json_atomic(str(path), {"new": 1})
    monkeypatch.undo()
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
