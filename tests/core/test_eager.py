"""Handlers start inline as their own Task: natively on 3.12+, emulated before (and tested on every version)."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from typing import Any

import pytest

from agentcore import _eager

MODES = [False] + ([True] if sys.version_info >= (3, 12) else [])
var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")


@pytest.fixture(params=MODES, ids=lambda native: "native" if native else "emulated")
def eager(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(_eager, "_NATIVE", request.param)
    return _eager


async def test_first_step_runs_inline_in_its_own_task(eager: Any) -> None:
    seen: list[Any] = []

    async def handler() -> str:
        seen.append(asyncio.current_task())
        var.set("inner")
        await asyncio.sleep(0)
        return "done"

    task = eager.run_eager(handler())
    assert seen == [task]  # ran before run_eager returned, as the Task it returned
    assert await task == "done"
    assert var.get() == "outer"  # the handler's context is a copy


async def test_finished_and_failed_coroutines(eager: Any) -> None:
    async def quick() -> int:
        return 42

    async def fails() -> None:
        raise ValueError("boom")

    assert await eager.run_eager(quick()) == 42
    with pytest.raises(ValueError, match="boom"):
        await eager.run_eager(fails())
    assert eager.start_eager(quick()) is None  # nothing to keep alive


async def test_cancel_before_the_first_step_reaches_the_handler(eager: Any) -> None:
    """A Task cancelled right after its inline start still runs the handler's except/finally blocks."""
    log: list[str] = []

    async def handler() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        finally:
            log.append("finally")

    task = eager.run_eager(handler())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["cancelled", "finally"]
    assert task.cancelled()


async def test_a_handler_that_suspends_many_times_gets_every_value(eager: Any) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def consumer() -> list[int]:
        return [await queue.get() for _ in range(5)]

    task = eager.run_eager(consumer())
    for i in range(5):
        queue.put_nowait(i)
    assert await task == [0, 1, 2, 3, 4]
    waiting = eager.run_eager(consumer())
    assert "consumer" in repr(waiting)  # reprs name the handler, not a wrapper
    waiting.cancel()


async def test_step_now_returns_at_once_what_needs_no_waiting_and_a_task_for_the_rest() -> None:
    async def now() -> str:
        return "here"

    gate = asyncio.Event()

    async def later() -> str:
        await gate.wait()
        return "later"

    async def fails() -> None:
        raise ValueError("boom")

    assert _eager.step_now(now()) == (True, "here")
    done, task = _eager.step_now(later())
    assert not done and isinstance(task, asyncio.Task) and not task.done()
    gate.set()
    assert await task == "later"
    with pytest.raises(ValueError, match="boom"):
        _eager.step_now(fails())
    done, task = _eager.step_now(later())  # the gate is open: it finishes in the first step
    assert done and task == "later"


async def test_start_eager_runs_what_finishes_at_once_without_a_task_of_its_own() -> None:
    """Handlers that answer at once share one spare Task as current_task(); none is left pending by them."""
    seen: list[Any] = []

    async def quick() -> None:
        seen.append(asyncio.current_task())

    before = len(asyncio.all_tasks())
    for _ in range(50):
        assert _eager.start_eager(quick()) is None
    assert len(set(map(id, seen))) == 1 and seen[0] is not asyncio.current_task()
    assert len(asyncio.all_tasks()) <= before + 1  # the one spare
    _eager.release_spare()
    await asyncio.sleep(0)
    assert seen[0].done()  # released: it ends rather than stay pending when the loop closes


async def test_a_suspending_coroutine_keeps_the_task_its_first_step_saw() -> None:
    """asyncio.timeout() (or anything else holding current_task()) entered in the first step targets the right Task."""
    seen: list[Any] = []

    async def slow() -> str:
        seen.append(asyncio.current_task())
        try:
            async with asyncio.timeout(0.01):
                await asyncio.Event().wait()
        except TimeoutError:
            return "timed out"
        return "no"

    async def quick() -> None:
        seen.append(asyncio.current_task())

    task = _eager.start_eager(slow())
    assert task is not None and seen == [task]
    assert _eager.start_eager(quick()) is None
    assert seen[1] is not task  # the next coroutine got a new spare
    assert await within_bounds(task) == "timed out"
    _eager.release_spare()


async def within_bounds(task: asyncio.Task[Any]) -> Any:
    return await asyncio.wait_for(task, 30)


async def test_each_first_step_sees_its_callers_context_and_changes_none_for_the_next() -> None:
    values: list[str] = []

    async def reads_and_sets() -> None:
        values.append(var.get())
        var.set("leaked?")

    async def reads() -> None:
        values.append(var.get())

    assert _eager.start_eager(reads_and_sets()) is None
    assert _eager.start_eager(reads()) is None
    var.set("caller")
    assert _eager.start_eager(reads()) is None
    assert values == ["outer", "outer", "caller"]
    assert var.get() == "caller"
    _eager.release_spare()


async def test_nested_starts_and_failures(caplog: pytest.LogCaptureFixture) -> None:
    inner: list[Any] = []

    async def child() -> None:
        inner.append(asyncio.current_task())

    async def parent() -> None:
        assert _eager.start_eager(child()) is None  # started from inside another first step
        inner.append(asyncio.current_task())
        raise ValueError("boom")

    assert _eager.start_eager(parent()) is None
    assert inner[0] is not inner[1]
    assert "background step failed" in caplog.text and "boom" in caplog.text
    gate = asyncio.Event()

    async def cancelled_later() -> None:
        await gate.wait()

    task = _eager.start_eager(cancelled_later())
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _eager.release_spare()
