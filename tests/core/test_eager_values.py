"""eager_start (compiled and pure twin) decides whether a first step left its context as it found it by the values
themselves: a variable map rebuilt with the same objects (a set then a reset) keeps the spare, a value whose == raises
or lies is never asked, on both twins alike."""

from __future__ import annotations

import asyncio
import contextvars
from types import ModuleType
from typing import Any

from agentcore._eager import _Spare

_VALUE: contextvars.ContextVar[Any] = contextvars.ContextVar("agentcore.tests.eager_values")


class _Local:
    spare: Any = None


class _Hostile:
    """A value whose == raises (and whose != says equal): comparing contexts with == would raise or be fooled."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("compared with ==")

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__


async def test_same_objects_in_a_rebuilt_map_keep_the_spare_and_eq_is_never_asked(eager_module: ModuleType) -> None:
    local, reported = _Local(), []
    caller = _Hostile()
    token = _VALUE.set(caller)
    seen: list[Any] = []

    async def sets_and_resets() -> None:  # the same values afterwards, in a map of its own
        inner = _VALUE.set(_Hostile())
        _VALUE.reset(inner)
        seen.append(asyncio.current_task())

    async def replaces() -> None:  # another object that says it is not unequal: still another object
        _VALUE.set(_Hostile())

    async def reads() -> None:
        seen.append((asyncio.current_task(), _VALUE.get()))

    try:
        assert eager_module.eager_start(local, _Spare, reported.append, sets_and_resets()) is None
        assert eager_module.eager_start(local, _Spare, reported.append, reads()) is None
        assert seen[1] == (seen[0], caller)  # the same spare served both: nothing the step set was kept
        assert eager_module.eager_start(local, _Spare, reported.append, replaces()) is None
        assert eager_module.eager_start(local, _Spare, reported.append, reads()) is None
        assert seen[-1][1] is caller and seen[-1][0] is not seen[0]  # the step's object was not handed on
        assert reported == []
    finally:
        _VALUE.reset(token)
        if local.spare is not None:
            local.spare.retire()
        for _ in range(3):  # the spare's own steps: a few loop iterations, each an event (no timing)
            await asyncio.sleep(0)
