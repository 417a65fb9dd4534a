"""first_step (compiled and pure twin): a coroutine's first step runs as the given Task, in the given context."""

from __future__ import annotations

import asyncio
import contextvars
from types import ModuleType
from typing import Any

import pytest

var: contextvars.ContextVar[str] = contextvars.ContextVar("first_step_var", default="outer")


async def _parked() -> None:
    await asyncio.Event().wait()


async def test_a_finished_step_returns_finished_as_the_given_task_in_the_given_context(eager_module: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    task = loop.create_task(_parked())
    context = contextvars.copy_context()
    outer = asyncio.current_task()
    seen: list[Any] = []

    async def step() -> str:
        seen.append(asyncio.current_task())
        var.set("inner")
        return "ignored"

    assert eager_module.first_step(loop, task, context, step()) is eager_module.FINISHED
    assert seen == [task]
    assert context[var] == "inner"  # the step ran inside context
    assert var.get() == "outer"  # and the caller's own context is untouched
    assert asyncio.current_task() is outer  # the caller's Task is current again
    task.cancel()


async def test_a_suspended_step_returns_what_it_waits_on(eager_module: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    task = loop.create_task(_parked())
    fut: asyncio.Future[int] = loop.create_future()

    async def step() -> int:
        return await fut

    coro = step()
    assert eager_module.first_step(loop, task, contextvars.copy_context(), coro) is fut
    assert asyncio.current_task() is not task
    coro.close()
    task.cancel()


async def test_an_error_in_the_step_is_raised_and_the_caller_task_restored(eager_module: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    task = loop.create_task(_parked())
    outer = asyncio.current_task()
    context = contextvars.copy_context()

    async def fails() -> None:
        var.set("set before failing")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        eager_module.first_step(loop, task, context, fails())
    assert asyncio.current_task() is outer
    assert context[var] == "set before failing"
    assert var.get() == "outer"
    # The context was left: it can be entered again (a context entered twice raises RuntimeError).
    assert eager_module.first_step(loop, task, context, _returns()) is eager_module.FINISHED
    task.cancel()


async def _returns() -> None:
    return None


async def test_a_context_already_entered_is_refused(eager_module: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    task = loop.create_task(_parked())
    context = contextvars.copy_context()
    outer = asyncio.current_task()

    def inside() -> None:
        coro = _returns()
        with pytest.raises(RuntimeError):
            eager_module.first_step(loop, task, context, coro)
        coro.close()

    context.run(inside)
    assert asyncio.current_task() is outer
    task.cancel()
