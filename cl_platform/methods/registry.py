"""Name -> method class, so entry points and sweeps pick methods by name."""

from __future__ import annotations

from typing import Optional, TypeVar

from cl_platform.methods.base import ContinualMethod, MethodConfig

_METHODS: dict[str, type[ContinualMethod]] = {}

M = TypeVar("M", bound=type[ContinualMethod])


def register_method(cls: M) -> M:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not name:
        raise ValueError(f"{cls.__name__} has no name")
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(f"a method named {name!r} is already registered ({_METHODS[name].__name__})")
    _METHODS[name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str, config: Optional[MethodConfig] = None) -> ContinualMethod:
    """Instantiate the method called ``name``; unknown names list the known ones."""
    try:
        cls = _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available_methods())}") from None
    return cls(config)
