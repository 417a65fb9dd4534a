"""eager_start (compiled and pure twin) at its edges: a first step that cancels its own Task, or raises
KeyboardInterrupt/SystemExit."""

from __future__ import annotations

import asyncio
import contextvars
from types import ModuleType
from typing import Any

import pytest

from agentcore._eager import _Spare


class _Local:
    spare: Any = None


async def _settle() -> None:
    for _ in range(3):  # the spare's own steps: a few loop iterations, each an event (no timing)
        await asyncio.sleep(0)


async def test_a_spare_cancelled_by_a_finished_step_is_not_handed_on(eager_module: ModuleType) -> None:
    local, reported = _Local(), []

    async def cancels_itself() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()

    async def suspends() -> str:
        await asyncio.sleep(0)
        return "done"

    assert eager_module.eager_start(local, _Spare, reported.append, cancels_itself()) is None
    task = eager_module.eager_start(local, _Spare, reported.append, suspends())
    assert task is not None
    assert await asyncio.wait_for(task, 10) == "done"


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
async def test_keyboard_interrupt_and_system_exit_pass_through_unlogged(eager_module: ModuleType, raised: type) -> None:
    local, reported = _Local(), []
    before = asyncio.all_tasks()

    async def interrupted() -> None:
        raise raised()

    try:
        with pytest.raises(raised):
            eager_module.eager_start(local, _Spare, reported.append, interrupted())
        assert reported == []  # raised to the caller, as a Task's step would raise it out of the loop, not logged
    finally:
        await _settle()
        for task in asyncio.all_tasks() - before:
            task.cancel()  # the spare left parked (see the test below)


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
async def test_an_interrupted_first_step_leaves_no_parked_spare(eager_module: ModuleType, raised: type) -> None:
    local = _Local()
    before = asyncio.all_tasks()

    async def interrupted() -> None:
        raise raised()

    with pytest.raises(raised):
        eager_module.eager_start(local, _Spare, lambda exc: None, interrupted())
    await _settle()
    left = [t for t in asyncio.all_tasks() - before if not t.done()]
    try:
        assert left == [], left
    finally:
        for task in left:
            task.cancel()


_STATE: contextvars.ContextVar[list[str]] = contextvars.ContextVar("_STATE")


async def test_a_value_equal_to_the_callers_but_another_object_is_not_handed_on(eager_module: ModuleType) -> None:
    """Each first step sees its caller's values themselves, as a Task of its own would: a step that sets a variable
    to an equal object (a fresh empty list for the caller's empty one) must not hand that object to the next
    handler on the reused spare, and a caller that does so is seen by the next step (values compared by identity)."""
    local, reported = _Local(), []
    original: list[str] = []
    token = _STATE.set(original)
    seen: list[Any] = []

    async def replaces() -> None:
        _STATE.set([])  # a list of its own, equal to the caller's

    async def reads() -> None:
        seen.append(_STATE.get())

    try:
        assert eager_module.eager_start(local, _Spare, reported.append, replaces()) is None
        assert eager_module.eager_start(local, _Spare, reported.append, reads()) is None
        assert seen[-1] is original  # the caller's own list, not the one the step before set
        fresh: list[str] = []
        _STATE.set(fresh)  # the caller's value changes to an equal object
        assert eager_module.eager_start(local, _Spare, reported.append, reads()) is None
        assert seen[-1] is fresh
        assert reported == []
    finally:
        _STATE.reset(token)
        if local.spare is not None:
            local.spare.retire()
        await _settle()


@pytest.mark.xfail(strict=True, reason="by design the spare Task is reused by every first step that finishes: "
                   "asyncio.current_task() is the same object for one handler run and the next (another requester's), "
                   "so state keyed by the Task (async_scoped_session(scopefunc=current_task), a WeakKeyDictionary, a "
                   "task.cancel() kept for later) carries over; a Task per run costs what the spare saves")
async def test_each_first_step_runs_as_a_task_of_its_own(eager_module: ModuleType) -> None:
    local: Any = _Local()
    seen: list[Any] = []

    async def records() -> None:
        seen.append(asyncio.current_task())

    try:
        assert eager_module.eager_start(local, _Spare, lambda exc: None, records()) is None
        assert eager_module.eager_start(local, _Spare, lambda exc: None, records()) is None
        assert seen[0] is not seen[1]  # two handler runs, as two Tasks would be
    finally:
        if local.spare is not None:
            local.spare.retire()
        await _settle()


async def test_a_step_that_sets_a_variable_back_to_the_callers_own_object_keeps_the_spare(eager_module: ModuleType) -> None:
    """Only what the values are counts: set and set back to the caller's own object, the context is unchanged."""
    local, reported = _Local(), []
    original: list[str] = []
    token = _STATE.set(original)
    seen: list[Any] = []

    async def round_trip() -> None:
        seen.append(asyncio.current_task())
        inner = _STATE.set(["other"])
        _STATE.reset(inner)  # back to the caller's own list (a new map of the same values)

    try:
        for _ in range(2):
            assert eager_module.eager_start(local, _Spare, reported.append, round_trip()) is None
        assert seen[0] is seen[1]  # the spare served both: nothing the next step could see was changed
        assert _STATE.get() is original and reported == []
    finally:
        _STATE.reset(token)
        if local.spare is not None:
            local.spare.retire()
        await _settle()
