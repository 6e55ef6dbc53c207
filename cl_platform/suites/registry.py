"""The suite registry: name -> suite class, imported on first use.

Built in: ``digits`` (the default suite of a run that names neither tasks nor a model) and
``tasks`` (a user's tasks, streams and model in the store). A new suite subclasses
:class:`~cl_platform.suites.base.Suite` and calls :func:`register_suite` (see
``docs/architecture.md``, "Adding a suite").
"""

from __future__ import annotations

import importlib
from typing import Union

from cl_platform.suites.base import Suite

#: Suite of a run that names neither a suite, nor tasks, nor a model.
DEFAULT_SUITE = "digits"

_SUITES: dict[str, Union[str, type[Suite]]] = {
    "digits": "cl_platform.suites.digits.plugin:Digits",
    "tasks": "cl_platform.suites.store_tasks:StoreTasks",
}


def register_suite(cls: type[Suite]) -> type[Suite]:
    """Register a :class:`Suite` subclass under its ``name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Suite)) or not cls.name:
        raise TypeError(f"register_suite: {cls!r} is not a Suite subclass with a name")
    _SUITES[cls.name] = cls
    return cls


def available_suites() -> list[str]:
    """Registered suite names, sorted."""
    return sorted(_SUITES)


def get_suite(name: str) -> Suite:
    """A new instance of the suite registered as ``name``; ``ValueError`` naming the known ones."""
    entry = _SUITES.get(name)
    if entry is None:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(available_suites())}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = _SUITES[name] = getattr(importlib.import_module(module), attr)
    return entry()


__all__ = ["DEFAULT_SUITE", "available_suites", "get_suite", "register_suite"]
