"""Instances of a slotted dataclass made with their fields set directly, its __init__ not run (pure-Python twin)."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ("SlotsMaker", "defaults_of")

MAX_FIELDS = 32  # the compiled maker keeps the slots' offsets in a fixed array


def defaults_of(cls: type, given: tuple[str, ...]) -> dict[str, Any]:
    """Return the defaults of cls's fields after the four given; raise when its __init__ does more than set them."""
    # cls must be a dataclass with __slots__ (no instance __dict__), without __post_init__, its own __new__ or
    # __setattr__, a metaclass's __call__ or abstract methods, whose first four fields are given, in that order, as
    # positional parameters, and whose other fields all have a plain default (no default_factory): an instance made by
    # filling its slots is then the instance cls(a, b, c, d) makes (checked once by making one).
    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(given, tuple):
        raise TypeError(f"the given fields must be a tuple, not {type(given).__name__}")
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    if len(names) > MAX_FIELDS:
        raise ValueError(f"{cls.__name__} has more than {MAX_FIELDS} fields")
    if len(given) != 4 or names[:4] != given:
        raise ValueError(f"the given fields {given} are not the first four fields of {cls.__name__}: {names}")
    if any(not f.init or f.kw_only for f in fields[:4]):
        raise ValueError(f"the given fields {given} must be positional parameters of {cls.__name__}.__init__")
    if "__dict__" in dir(cls) or set(getattr(cls, "__slots__", ())) != set(names):
        raise ValueError(f"{cls.__name__} must keep exactly its fields in __slots__ (dataclass(slots=True))")
    own_init = cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
    if hasattr(cls, "__post_init__") or cls.__new__ is not object.__new__ or not own_init:
        raise ValueError(f"{cls.__name__}.__init__ must be the dataclass's own, setting its fields and nothing else")
    # A frozen dataclass's __init__ goes around its __setattr__; any other __setattr__ runs for every field it sets.
    if cls.__setattr__ is not object.__setattr__ and not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise ValueError(f"{cls.__name__} has a __setattr__ of its own")
    if type(cls).__call__ is not type.__call__ or getattr(cls, "__abstractmethods__", None):
        raise ValueError(f"{cls.__name__} is instantiated otherwise than by allocating it and running its __init__")
    defaults: dict[str, Any] = {}
    for f in fields[4:]:
        if f.default is dataclasses.MISSING or f.default_factory is not dataclasses.MISSING or not f.init:
            raise ValueError(f"{cls.__name__}.{f.name} must have a plain default")
        defaults[f.name] = f.default
    # What no attribute shows (an InitVar before a default, an __init__ written in the class body): make one and look.
    sentinels = tuple(object() for _ in given)
    try:
        made = cls(*sentinels)
    except TypeError as e:
        raise ValueError(f"{cls.__name__}(a, b, c, d) fails: {e}") from None
    if any(getattr(made, name, made) is not value for name, value in zip(names, sentinels + tuple(defaults.values()))):
        raise ValueError(f"{cls.__name__}(a, b, c, d) sets other fields than its four given ones and its defaults")
    return defaults


class SlotsMaker:
    """make(a, b, c, d): a new instance of cls, its first four fields set to a, b, c, d and the rest to defaults."""

    __slots__ = ("cls",)

    def __init__(self, cls: type, given: tuple[str, ...]) -> None:
        defaults_of(cls, given)
        self.cls = cls

    def __reduce__(self) -> Any:
        """Refuse to be pickled or copied (the compiled maker's state is raw memory offsets)."""
        raise TypeError("a SlotsMaker cannot be pickled or copied")

    def make(self, a: Any, b: Any, c: Any, d: Any) -> Any:
        """Return a new instance with its first four fields set to a, b, c, d and the rest to their defaults."""
        return self.cls(a, b, c, d)  # the dataclass's own __init__ sets what the compiled maker writes
