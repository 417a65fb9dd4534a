"""Instances of a slotted dataclass made with their fields set directly, its __init__ not run (pure-Python twin)."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ("SlotsMaker", "defaults_of")


def defaults_of(cls: type, given: tuple[str, ...]) -> dict[str, Any]:
    """Return the defaults of cls's fields after the four given ones; raise when its __init__ does more than set them."""
    # cls must be a dataclass with __slots__ (no instance __dict__), without __post_init__ or its own __new__, whose
    # first four fields are given, in that order, and whose other fields all have a plain default (no
    # default_factory): an instance made by filling its slots is then the instance cls(a, b, c, d) makes.
    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    if len(given) != 4 or names[:4] != tuple(given):
        raise ValueError(f"the given fields {given} are not the first four fields of {cls.__name__}: {names}")
    if "__dict__" in dir(cls) or set(getattr(cls, "__slots__", ())) != set(names):
        raise ValueError(f"{cls.__name__} must keep exactly its fields in __slots__ (dataclass(slots=True))")
    if hasattr(cls, "__post_init__") or cls.__new__ is not object.__new__ or cls.__init__.__qualname__ != f"{cls.__qualname__}.__init__":
        raise ValueError(f"{cls.__name__}.__init__ must be the dataclass's own, setting its fields and nothing else")
    defaults: dict[str, Any] = {}
    for f in fields[4:]:
        if f.default is dataclasses.MISSING or f.default_factory is not dataclasses.MISSING or not f.init:
            raise ValueError(f"{cls.__name__}.{f.name} must have a plain default")
        defaults[f.name] = f.default
    return defaults


class SlotsMaker:
    """make(a, b, c, d): a new instance of cls with its first four fields set to a, b, c, d and the rest to their defaults."""

    __slots__ = ("cls",)

    def __init__(self, cls: type, given: tuple[str, ...]) -> None:
        defaults_of(cls, given)
        self.cls = cls

    def make(self, a: Any, b: Any, c: Any, d: Any) -> Any:
        """Return a new instance with its first four fields set to a, b, c, d and the rest to their defaults."""
        return self.cls(a, b, c, d)  # the dataclass's own __init__ sets what the compiled maker writes
