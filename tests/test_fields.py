"""cl_platform.fields: one declaration per setting -> validation, argparse arguments and back."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass
from typing import Optional

import pytest

from cl_platform.fields import add_arguments, namespace_kwargs, setting, settings, validate


@dataclass
class Toy:
    name: str = setting(help="a name", cli=False)
    count: int = setting(3, ge=1, help="how many")
    ratio: float = setting(0.5, ge=0, lt=1, flag="--fraction", group="extra", help="a share, 50% by default")
    names: list[str] = setting(default_factory=lambda: ["a", "b"], help="some names")
    limit: Optional[float] = setting(None, gt=0, sweep="search", help="a limit (none: unlimited)")
    table: dict | None = setting(default_factory=dict, cli=False, help="a mapping")
    plain: int = 7  # not declared: not a setting

    def __post_init__(self) -> None:
        validate(self)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(p, Toy)
    add_arguments(p.add_argument_group("extra"), Toy, group="extra", notes={"ratio": "0.9 in a hurry"})
    return p


def test_declarations_are_read_once():
    s = settings(Toy)
    assert list(s) == ["name", "count", "ratio", "names", "limit", "table"]
    assert [(x.kind, x.optional) for x in s.values()] == [("str", False), ("int", False), ("float", False),
                                                           ("list", False), ("float", True), ("dict", True)]
    assert s["ratio"].flag == "--fraction" and s["count"].flag == "--count" and s["ratio"].bounds_text() == ">= 0 and < 1"
    assert s["names"].default == ["a", "b"] and s["name"].default is MISSING and s["limit"].sweep == "search"


@pytest.mark.parametrize("field, value, words", [
    ("name", 3, "Toy.name must be a string, got 3"),
    ("count", 0, "Toy.count must be >= 1, got 0"),
    ("count", 2.0, "Toy.count must be an integer, got 2.0"),
    ("count", True, "Toy.count must be an integer, got True"),
    ("ratio", 1.0, "Toy.ratio must be >= 0 and < 1, got 1.0"),
    ("ratio", float("nan"), "Toy.ratio must be a number, got nan"),
    ("names", [], "Toy.names must be a non-empty list of names, got []"),
    ("names", "a", "Toy.names must be a non-empty list of names, got 'a'"),
    ("names", ["a", ""], "Toy.names must be a non-empty list of names"),
    ("limit", 0, "Toy.limit must be > 0, got 0"),
    ("table", [], "Toy.table must be a mapping, got []"),
])
def test_validation_names_the_field_and_the_value(field, value, words):
    with pytest.raises(ValueError) as e:
        Toy(**{"name": "x", field: value})
    assert words in str(e.value)


def test_valid_values_and_optional_none():
    t = Toy(name="x", count=1, ratio=0, names=("q",), limit=None, plain=-5)  # ints are numbers; undeclared unchecked
    assert t.limit is None and Toy(name="x", limit=2).limit == 2


def test_parser_round_trip_defaults_flags_and_help():
    p = _parser()
    args = p.parse_args([])
    assert Toy(name="x", **namespace_kwargs(Toy, args)) == Toy(name="x")
    assert "name" not in namespace_kwargs(Toy, args) and "table" not in namespace_kwargs(Toy, args)
    args = p.parse_args(["--count", "4", "--fraction", "0.25", "--names", "x, y,", "--limit", "2.5"])
    assert namespace_kwargs(Toy, args) == {"count": 4, "ratio": 0.25, "names": ["x", "y"], "limit": 2.5}
    text = " ".join(p.format_help().split())
    for doc in ("how many (default 3)", "a share, 50% by default (default 0.5, 0.9 in a hurry)",
                "--names A,B,... some names (default a,b)", "a limit (none: unlimited)"):
        assert doc in text
    assert "(default None" not in text


@pytest.mark.parametrize("argv, words", [
    (["--count", "0"], "argument --count: must be >= 1, got 0"),
    (["--count", "two"], "argument --count: must be an integer, got 'two'"),
    (["--fraction", "1"], "argument --fraction: must be >= 0 and < 1, got 1.0"),
    (["--names", ","], "argument --names: must be a non-empty list of names, got []"),
    (["--cou", "2"], "unrecognized arguments: --cou"),
])
def test_parser_checks_values_as_it_parses(argv, words, capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(argv)
    assert words in capsys.readouterr().err


def test_unsupported_declarations_are_refused():
    @dataclass
    class Bad:
        flags: set = setting(default_factory=set, help="a set")

    with pytest.raises(TypeError, match=r"Bad\.flags: unsupported setting type"):
        settings(Bad)
    with pytest.raises(ValueError, match="sweep must be"):
        setting(1, help="x", sweep="maybe")
