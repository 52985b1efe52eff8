"""Typed settings: dataclass fields that are also command-line flags (standard library only).

Each layer declares its settings as a frozen dataclass whose fields are made with
:func:`setting`; the field's type annotation and metadata define, once, the flag
(``--<field name>``), its help text and default, and the value rules (type, range,
choices). The same rules run at every boundary: argparse applies them while parsing
(an ``error:`` line, exit 2) and :func:`check_settings`, called by each dataclass's
``__post_init__``, applies them to values from ``--config`` files, ``config.json`` and
checkpoints (a :class:`common.errors.UserError` naming the key).

Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``Optional[...]`` of those
(None means "derived, see the help"), ``Tuple[int, int]`` (written ``H,W``; one number is
a square), ``Tuple[str, ...]`` and ``Tuple[float, ...]`` (comma-separated).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import typing
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from common.errors import UserError

_KINDS = {int: "int", float: "float", bool: "bool", str: "str", Tuple[int, int]: "pair",
          Tuple[str, ...]: "names", Tuple[float, ...]: "numbers"}


def setting(default: Any, help: str, *, choices: Any = None,
            minimum: Optional[float] = None, maximum: Optional[float] = None, above: Optional[float] = None,
            evaluation: bool = False, default_text: Optional[str] = None,
            datasets: Optional[Tuple[str, ...]] = None) -> Any:
    """A dataclass field that is also a flag.

    ``choices``: a callable returning the valid strings (read late), or a registry (its
    ``names()``; its ``get`` raises the error for an unknown name).
    ``minimum``/``maximum`` (inclusive) and ``above`` (exclusive) bound numbers, and each
    element of pairs and number lists. ``evaluation``: the test scripts take this flag too.
    ``default_text``: how ``--help`` states a derived default (for ``None`` defaults).
    ``datasets``: the only datasets whose entry points take this flag (None: all); elsewhere the field
    keeps its default and its flag is absent.
    """
    metadata = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "above": above,
                "evaluation": evaluation, "default_text": default_text, "datasets": datasets}
    return dataclasses.field(default=default, metadata=metadata)


def _kind(annotation) -> Tuple[str, bool]:
    """``(kind, optional)`` of a field annotation."""
    optional = False
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, args[0]
    return _KINDS[annotation], optional


@functools.lru_cache(maxsize=None)
def fields_of(cls) -> Dict[str, Tuple[dataclasses.Field, str, bool]]:
    """``{name: (field, kind, optional)}`` of a settings dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, *_kind(hints[f.name])) for f in dataclasses.fields(cls) if "help" in f.metadata}


def _number_rule(meta: Mapping) -> str:
    """The bounds as text: ``in (0, 1]``, ``>= 1``, ``> 0``, or ``""``."""
    def shown(bound: float) -> str:
        return str(bound) if isinstance(bound, int) else f"{bound:g}"

    low = (f"({shown(meta['above'])}" if meta["above"] is not None
           else f"[{shown(meta['minimum'])}" if meta["minimum"] is not None else None)
    if meta["maximum"] is not None:
        return f"in {low}, {shown(meta['maximum'])}]" if low else f"<= {shown(meta['maximum'])}"
    if low is None:
        return ""
    return ("> " if low[0] == "(" else ">= ") + low[1:]


def _check_number(name: str, meta: Mapping, value: Any, integer: bool, many: bool = False) -> Any:
    what = ("integers" if integer else "numbers") if many else ("an integer" if integer else "a number")
    rule = _number_rule(meta)
    text = f"{what} {rule}".strip()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise UserError(f"--{name} must be {text}, got {value!r}")
    if not integer:
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f"--{name} must be a finite number{' ' + rule if rule else ''}, got {value!r}")
    if ((meta["above"] is not None and not value > meta["above"])
            or (meta["minimum"] is not None and value < meta["minimum"])
            or (meta["maximum"] is not None and value > meta["maximum"])):
        raise UserError(f"--{name} must be {text}, got {value!r}")
    return value


def check_value(name: str, meta: Mapping, kind: str, optional: bool, value: Any) -> Any:
    """``value`` checked against the field's rules and normalised (lists become tuples);
    a :class:`UserError` naming ``--name`` otherwise."""
    if value is None and optional:
        return None
    if kind in ("int", "float"):
        return _check_number(name, meta, value, kind == "int")
    if kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"--{name} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise UserError(f"--{name} must be a string, got {value!r}")
        registry = meta["choices"]
        if hasattr(registry, "get"):
            registry.get(value)  # a registry names the valid entries itself
        elif registry is not None and value not in registry():
            raise UserError(f"--{name} = {value!r} is not one of {', '.join(registry())}")
        return value
    if not isinstance(value, (list, tuple)) or not value:
        raise UserError(f"--{name} must be a non-empty list, got {value!r}")
    if kind in ("pair", "numbers"):
        if kind == "pair" and len(value) != 2:
            raise UserError(f"--{name} must be two integers H,W, got {value!r}")
        try:
            return tuple(_check_number(name, meta, v, integer=kind == "pair", many=True) for v in value)
        except UserError as exc:
            raise UserError(f"{str(exc).rsplit(', got ', 1)[0]}, got {list(value)!r}") from None
    if not all(isinstance(v, str) and v.strip() and "," not in v for v in value):
        raise UserError(f"--{name} must be a list of names, got {value!r}")
    return tuple(v.strip() for v in value)


def check_settings(obj) -> None:
    """Check and normalise every field of the (frozen) settings dataclass ``obj`` in place."""
    for name, (field, kind, optional) in fields_of(type(obj)).items():
        object.__setattr__(obj, name, check_value(name, field.metadata, kind, optional, getattr(obj, name)))


def _parse_text(kind: str, text: str) -> Any:
    """Command-line text -> the Python value of ``kind`` (the rules are checked afterwards)."""
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "str":
        return text
    items = [item.strip() for item in text.split(",") if item.strip()]
    if kind == "pair":
        values = [int(item) for item in items]
        return tuple(values * 2 if len(values) == 1 else values)
    if kind == "numbers":
        return tuple(float(item) for item in items)
    return tuple(items)


def _argparse_type(name: str, meta: Mapping, kind: str, optional: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return check_value(name, meta, kind, optional, _parse_text(kind, text))
        except ValueError as exc:  # UserError is a ValueError
            detail = str(exc) if isinstance(exc, UserError) else f"cannot read {text!r} as {kind}"
            # argparse names the flag itself: "argument --x: must be ...", "argument --x: 'v' is not one of ..."
            raise argparse.ArgumentTypeError(detail.replace(f"--{name} = ", "", 1).replace(f"--{name} ", "", 1)) from None

    parse.__name__ = kind  # argparse names the type in its messages
    return parse


def shown(value: Any) -> str:
    """A setting's value as it is written on the command line (lists as ``a,b``)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def add_settings(parser, cls, defaults: Optional[Mapping[str, Any]] = None,
                 names: Optional[Iterable[str]] = None, flags: Optional[Mapping[str, str]] = None,
                 default_text: Optional[Mapping[str, str]] = None) -> None:
    """Add one ``--<field>`` flag per field of ``cls`` (all, or only ``names``) to ``parser``.

    ``defaults`` override the dataclass defaults (e.g. a dataset's input sizes); ``flags``
    gives a field another option name (its destination stays the field name);
    ``default_text`` says in words what a default is. The help text ends with the default once.
    """
    defaults, flags, texts = dict(defaults or {}), dict(flags or {}), dict(default_text or {})
    wanted = None if names is None else set(names)
    for name, (field, kind, optional) in fields_of(cls).items():
        if wanted is not None and name not in wanted:
            continue
        meta = field.metadata
        default = defaults.get(name, field.default)
        stated = texts.get(name) or meta["default_text"] or shown(default)
        help_text = f"{meta['help']} (default: {stated})".replace("%", "%%")
        option = f"--{flags.get(name, name)}"
        if kind == "bool":
            parser.add_argument(option, dest=name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
            continue
        choices = _choices(meta["choices"])
        parser.add_argument(option, dest=name, type=_argparse_type(name, meta, kind, optional), default=default,
                            choices=choices, metavar=None if choices else _metavar(kind), help=help_text)


def _choices(choices) -> Optional[Sequence[str]]:
    if choices is None:
        return None
    return choices.names() if hasattr(choices, "names") else choices()


def _metavar(kind: str) -> str:
    return {"int": "N", "float": "X", "str": "TEXT", "pair": "H,W", "names": "A,B,...", "numbers": "X,Y,..."}[kind]


def pick(cls, values: Mapping[str, Any]) -> Dict[str, Any]:
    """The entries of ``values`` that are fields of ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def as_plain(obj) -> Dict[str, Any]:
    """The fields of a settings dataclass as a JSON-able dict (tuples become lists)."""
    return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v for f in dataclasses.fields(obj)}
