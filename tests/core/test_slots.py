"""Instances made by SlotsMaker, compiled and pure twin alike: the instance the dataclass's own __init__ makes."""

from __future__ import annotations

import abc
import copy
import dataclasses
import gc
import pickle
import sys
from types import ModuleType
from typing import Any

import pytest

from agentcore import _impl
from agentcore.core.records import Delivery, new_delivery

GIVEN = ("message", "reply", "subject", "fallback")


def fields_of(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def test_a_made_delivery_is_the_one_its_init_makes(slots_module: ModuleType) -> None:
    message, fallback = {"id": "m1"}, lambda m: "somewhere"
    made = slots_module.SlotsMaker(Delivery, GIVEN).make(message, "_INBOX.x", "agents.e.task.c.default", fallback)
    expected = Delivery(message, "_INBOX.x", "agents.e.task.c.default", fallback)
    assert type(made) is Delivery
    assert fields_of(made) == fields_of(expected)
    assert made.message is message and made.fallback is fallback
    assert made.destination == "_INBOX.x"
    assert gc.is_tracked(made)  # a cycle through it (a Task holding its delivery) is still collected
    made.answered, made.size = True, 12  # every field is an ordinary slot afterwards
    assert made.answered is True and made.size == 12
    with pytest.raises(AttributeError):
        made.other = 1  # type: ignore[attr-defined]


def test_the_fields_it_writes_hold_one_reference_each(slots_module: ModuleType) -> None:
    maker = slots_module.SlotsMaker(Delivery, GIVEN)
    message, reply, subject = {"id": "m2"}, "".join(["_INBOX.", "y"]), "".join(["a.", "b"])
    before = [sys.getrefcount(o) for o in (message, reply, subject)]
    made = [maker.make(message, reply, subject, None) for _ in range(1000)]
    assert [sys.getrefcount(o) for o in (message, reply, subject)] == [n + 1000 for n in before]
    del made
    assert [sys.getrefcount(o) for o in (message, reply, subject)] == before


def test_the_dispatcher_makes_deliveries_with_the_chosen_implementation() -> None:
    assert isinstance(new_delivery.__self__, _impl.SlotsMaker)  # type: ignore[attr-defined]
    assert fields_of(new_delivery({"id": 1}, None, "s", None)) == fields_of(Delivery({"id": 1}, None, "s", None))


@dataclasses.dataclass(slots=True)
class Four:
    a: Any
    b: Any
    c: Any
    d: Any
    e: int = 5
    f: Any = None


@dataclasses.dataclass(slots=True)
class WithPostInit(Four):
    def __post_init__(self) -> None:
        self.e = 6


@dataclasses.dataclass(slots=True)
class WithFactory:
    a: Any
    b: Any
    c: Any
    d: Any
    e: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class NoSlots:
    a: Any
    b: Any
    c: Any
    d: Any


class NotADataclass:
    __slots__ = ("a", "b", "c", "d")


def test_any_slotted_dataclass_with_plain_defaults_is_made_alike(slots_module: ModuleType) -> None:
    made = slots_module.SlotsMaker(Four, ("a", "b", "c", "d")).make(1, 2, 3, 4)
    assert made == Four(1, 2, 3, 4) and made.e == 5 and made.f is None


@pytest.mark.parametrize("cls, given, error", [
    (WithPostInit, ("a", "b", "c", "d"), ValueError),  # its __init__ does more than set the fields
    (WithFactory, ("a", "b", "c", "d"), ValueError),  # a default made per instance, not one shared value
    (NoSlots, ("a", "b", "c", "d"), ValueError),
    (NotADataclass, ("a", "b", "c", "d"), TypeError),
    (Four, ("a", "b", "c"), ValueError),  # four fields are given, no fewer
    (Four, ("b", "a", "c", "d"), ValueError),  # in the order of the dataclass's fields
    (Four, ("a", "b", "c", "e"), ValueError),
])
def test_a_class_whose_init_does_more_is_refused(slots_module: ModuleType, cls: type, given: tuple[str, ...],
                                                 error: type[Exception]) -> None:
    with pytest.raises(error):
        slots_module.SlotsMaker(cls, given)


@dataclasses.dataclass(slots=True, frozen=True)
class Frozen:
    a: Any
    b: Any
    c: Any
    d: Any
    e: int = 5


@dataclasses.dataclass(slots=True)
class AnAbc(abc.ABC):
    a: Any
    b: Any
    c: Any
    d: Any
    e: int = 5


@pytest.mark.parametrize("cls", [Frozen, AnAbc])
def test_frozen_dataclasses_and_other_metaclasses_are_made_alike(slots_module: ModuleType, cls: type) -> None:
    made = slots_module.SlotsMaker(cls, ("a", "b", "c", "d")).make(1, 2, 3, 4)
    assert type(made) is cls and fields_of(made) == fields_of(cls(1, 2, 3, 4))


@dataclasses.dataclass(slots=True)
class OwnInit:
    a: Any
    b: Any
    c: Any
    d: Any
    e: int = 5

    def __init__(self, a: Any, b: Any, c: Any, d: Any) -> None:
        self.a, self.b, self.c, self.d, self.e = a, b, c, d, 6


@dataclasses.dataclass(slots=True)
class KwOnly:
    a: Any
    b: Any
    _: dataclasses.KW_ONLY
    c: Any = None
    d: Any = None


@dataclasses.dataclass(slots=True)
class NotInInit:
    a: Any
    b: Any
    c: Any = dataclasses.field(init=False, default=None)
    d: Any = None
    e: Any = None


@dataclasses.dataclass(slots=True)
class WithInitVar:
    a: Any
    b: Any
    x: dataclasses.InitVar[Any]
    c: Any = None
    d: Any = None


@dataclasses.dataclass(slots=True)
class WithSetattr:
    a: Any
    b: Any
    c: Any
    d: Any

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, str(value))


class Counting(type):
    def __call__(cls, *args: Any) -> Any:
        made = super().__call__(*args)
        made.e += 1
        return made


@dataclasses.dataclass(slots=True)
class WithMetaCall(metaclass=Counting):
    a: Any
    b: Any
    c: Any
    d: Any
    e: int = 0


@dataclasses.dataclass(slots=True)
class Abstract(abc.ABC):
    a: Any
    b: Any
    c: Any
    d: Any

    @abc.abstractmethod
    def run(self) -> None: ...


Many = dataclasses.make_dataclass("Many", [*"abcd", *((f"e{i}", int, dataclasses.field(default=0)) for i in range(29))],
                                  slots=True)


@pytest.mark.parametrize("cls, given, error", [
    (OwnInit, ("a", "b", "c", "d"), ValueError),  # an __init__ written in the class body, not the dataclass's
    (KwOnly, ("a", "b", "c", "d"), ValueError),  # cls(a, b, c, d) fails: c and d are keyword-only
    (NotInInit, ("a", "b", "c", "d"), ValueError),  # c is no parameter of __init__
    (WithInitVar, ("a", "b", "c", "d"), ValueError),  # cls(a, b, c, d) gives x=c, c=d
    (WithSetattr, ("a", "b", "c", "d"), ValueError),  # __init__ sets the fields through it
    (WithMetaCall, ("a", "b", "c", "d"), ValueError),  # cls(...) is the metaclass's __call__
    (Abstract, ("a", "b", "c", "d"), ValueError),  # cls(...) raises
    (Many, ("a", "b", "c", "d"), ValueError),  # more fields than the compiled maker keeps offsets for
    (Four, ["a", "b", "c", "d"], TypeError),  # given as a list, not a tuple
])
def test_both_twins_refuse_what_either_would_make_otherwise(slots_module: ModuleType, cls: type,
                                                            given: tuple[str, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        slots_module.SlotsMaker(cls, given)


def test_a_maker_cannot_be_pickled_copied_or_forged(slots_module: ModuleType) -> None:
    maker = slots_module.SlotsMaker(Four, ("a", "b", "c", "d"))
    with pytest.raises(TypeError):
        pickle.dumps(maker)
    with pytest.raises(TypeError):
        copy.copy(maker)
    assert not hasattr(maker, "__setstate_cython__")  # a forged state would be offsets to write anywhere


def test_a_maker_never_initialised_makes_nothing(slots_module: ModuleType) -> None:
    maker = slots_module.SlotsMaker.__new__(slots_module.SlotsMaker)
    with pytest.raises(AttributeError):
        maker.make(1, 2, 3, 4)
