"""Settings declared once, on dataclass fields: help text, command-line flag, bounds, sweep role.

A configuration dataclass declares each setting with :func:`setting` and validates itself with
:func:`validate`::

    @dataclass
    class MethodConfig:
        r_text: int = setting(8, help="rank of each text expert", ge=1, sweep="search")

        def __post_init__(self) -> None:
            validate(self)

Everything else reads that one declaration:

- :func:`validate` checks every declared field's type and bounds and raises ``ValueError``
  naming the class, the field and the value (``MethodConfig.r_text must be >= 1, got 0``);
- :func:`add_arguments` adds one argparse argument per field (``--kebab-case`` flag unless the
  field names its own, type, default and help from the declaration; ``list[str]`` fields take
  comma-separated values; ``Optional`` ones default to ``None``), each value checked as it is
  parsed; :func:`namespace_kwargs` turns the parsed namespace back into keyword arguments;
- :func:`settings` lists the declared fields as :class:`Setting` objects (kind, bounds, sweep
  role) for other readers, such as the sweep files' parser.

What :func:`setting` records in a field's ``metadata``:

- ``help``: the field's documentation (``--help`` text);
- ``flag``: its command-line flag (default ``--`` + the name with dashes);
- ``cli`` / ``group``: whether it is on the command line, and in which argument group;
- ``bounds``: what a number must satisfy (the ``ge`` / ``gt`` / ``le`` / ``lt`` arguments);
- ``sweep``: ``"search"`` (a sweep may search it) or ``"fixed"`` (a sweep file may fix it).

Kinds: ``int``, ``float``, ``str``, ``dict`` and ``list[str]`` (a non-empty list of non-empty
strings), each possibly ``Optional`` (``None`` allowed). Booleans are never numbers here.

This module sits at the bottom of the package with :mod:`cl_platform.store`: it imports nothing
else from ``cl_platform``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import math
import numbers
import operator
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Mapping, Optional

#: The kinds :func:`setting` fields may have (``Optional`` of each too).
KINDS = {int: "int", float: "float", str: "str", dict: "dict", list: "list"}

_EXPECTED = {"int": "an integer", "float": "a number", "str": "a string", "dict": "a mapping",
             "list": "a non-empty list of names"}
_METAVAR = {"int": "N", "float": "X", "str": "TEXT", "list": "A,B,..."}
_OPS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def setting(
    default: Any = MISSING,
    *,
    help: str,
    default_factory: Any = MISSING,
    flag: Optional[str] = None,
    cli: bool = True,
    group: str = "",
    ge: Optional[float] = None,
    gt: Optional[float] = None,
    le: Optional[float] = None,
    lt: Optional[float] = None,
    choices: Optional[tuple[str, ...]] = None,
    sweep: Optional[str] = None,
) -> Any:
    """A dataclass field with its documentation, flag, bounds or choices and sweep role (see the module doc)."""
    if sweep not in (None, "search", "fixed"):
        raise ValueError(f"sweep must be None, 'search' or 'fixed', got {sweep!r}")
    bounds = tuple((op, b) for op, b in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if b is not None)
    metadata = {"help": help, "flag": flag, "cli": cli, "group": group, "bounds": bounds, "sweep": sweep,
                "choices": tuple(choices) if choices else ()}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass(frozen=True)
class Setting:
    """One declared field of a configuration dataclass.

    Attributes:
        owner: the dataclass.
        name: the field name.
        kind: ``"int"``, ``"float"``, ``"str"``, ``"dict"`` or ``"list"`` (of strings).
        optional: ``None`` is a valid value.
        default: the default value (a fresh one from ``default_factory``); ``MISSING``: required.
        help: the documentation.
        flag: the command-line flag.
        cli: whether :func:`add_arguments` adds it.
        group: the command-line group it belongs to.
        bounds: ``(op, bound)`` pairs a number must satisfy, op one of ``ge``, ``gt``, ``le``, ``lt``.
        sweep: ``"search"``, ``"fixed"`` or ``None``.
        choices: the values a string setting may take (empty: any string).
    """

    owner: type
    name: str
    kind: str
    optional: bool
    default: Any
    help: str
    flag: str
    cli: bool = True
    group: str = ""
    bounds: tuple[tuple[str, float], ...] = ()
    sweep: Optional[str] = None
    choices: tuple[str, ...] = ()

    def bounds_text(self) -> str:
        """The bounds as text, e.g. ``>= 0 and < 1`` (empty: unbounded)."""
        return " and ".join(f"{_OPS[op][0]} {b:g}" for op, b in self.bounds)

    def problem(self, value: Any) -> Optional[str]:
        """What is wrong with ``value`` for this field (e.g. ``must be >= 1, got 0``); ``None``: nothing."""
        if value is None:
            return None if self.optional else f"must be {_EXPECTED[self.kind]}, got None"
        if not _is_kind(self.kind, value):
            return f"must be {_EXPECTED[self.kind]}, got {value!r}"
        if self.kind in ("int", "float") and not all(_OPS[op][1](value, b) for op, b in self.bounds):
            return f"must be {self.bounds_text()}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        return None

    def check(self, value: Any) -> Any:
        """``value`` if valid, else ``ValueError`` naming the class, the field and the value."""
        problem = self.problem(value)
        if problem:
            raise ValueError(f"{self.owner.__name__}.{self.name} {problem}")
        return value

    def parse(self, text: str) -> Any:
        """The value of a command-line argument (argparse ``type``): converted, then checked."""
        try:
            value = {"int": int, "float": float, "str": str, "list": _split}[self.kind](text)
        except (KeyError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {_EXPECTED[self.kind]}, got {text!r}") from None
        problem = self.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    def describe_default(self) -> str:
        """The default as a command line writes it (empty when there is none or it is ``None``)."""
        d = self.default
        if d is MISSING or d is None:
            return ""
        if self.kind == "list":
            return ",".join(d)
        return f"{d:g}" if self.kind == "float" else str(d)


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _is_kind(kind: str, value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, numbers.Integral)
    if kind == "float":
        return isinstance(value, numbers.Real) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind == "dict":
        return isinstance(value, Mapping)
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(x, str) and x for x in value)


def _kind(annotation: Any, where: str) -> tuple[str, bool]:
    """``(kind, optional)`` of a field annotation."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Optional[X], X | None
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{where}: only Optional[X] unions are supported, got {annotation!r}")
        annotation, optional = args[0], True
    base = typing.get_origin(annotation) or annotation
    if base not in KINDS or (base is list and typing.get_args(annotation) not in ((str,), ())):
        raise TypeError(f"{where}: unsupported setting type {annotation!r} (int, float, str, dict, list[str])")
    return KINDS[base], optional


@functools.cache
def settings(cls: type) -> dict[str, Setting]:
    """The declared (:func:`setting`) fields of dataclass ``cls``, in field order."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        m = f.metadata
        kind, optional = _kind(hints[f.name], f"{cls.__name__}.{f.name}")
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        out[f.name] = Setting(
            owner=cls, name=f.name, kind=kind, optional=optional, default=default, help=m["help"],
            flag=m["flag"] or "--" + f.name.replace("_", "-"), cli=m["cli"], group=m["group"], bounds=m["bounds"],
            sweep=m["sweep"], choices=m.get("choices", ()),
        )
    return out


def validate(obj: Any) -> None:
    """Check every declared field of the dataclass instance ``obj`` (call it in ``__post_init__``)."""
    for name, s in settings(type(obj)).items():
        s.check(getattr(obj, name))


def add_arguments(parser: Any, cls: type, *, group: str = "", notes: Optional[Mapping[str, str]] = None) -> None:
    """Add an argument to ``parser`` (a parser or argument group) per command-line field of ``cls``
    in ``group``: its flag, ``dest`` the field name, default and help from the declaration.

    ``notes`` (field name -> text) adds words to a field's default in the help, e.g. ``12 with --quick``.
    """
    notes = notes or {}
    for s in settings(cls).values():
        if not s.cli or s.group != group:
            continue
        default = ", ".join(x for x in (s.describe_default(), notes.get(s.name, "")) if x)
        text = s.help + (f" (default {default})" if default else "")
        parser.add_argument(s.flag, dest=s.name, type=s.parse, default=copy.deepcopy(s.default),
                            metavar="{" + ",".join(s.choices) + "}" if s.choices else _METAVAR.get(s.kind),
                            help=text.replace("%", "%%"))


def namespace_kwargs(cls: type, namespace: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``cls`` found in a namespace parsed with :func:`add_arguments`."""
    return {name: getattr(namespace, name) for name, s in settings(cls).items()
            if s.cli and hasattr(namespace, name)}


__all__ = ["Setting", "add_arguments", "namespace_kwargs", "setting", "settings", "validate"]
