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
