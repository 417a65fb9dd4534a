"""Run a handler's coroutine inline until it first suspends, as its own Task: no event-loop hop before the reply.

On Python 3.12+ this is asyncio's own eager task start. Before 3.12 the Task is created first (so
`asyncio.current_task()`, `asyncio.timeout()` and context variables see the handler's own Task and a copy of the
context, never the nats-py subscription task that delivered the message) and its first step is run right away;
the Task's own scheduled first step then just continues from where the inline step stopped.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import types
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ("run_eager", "start_eager")

log = logging.getLogger("agentcore.agent")

_NATIVE = sys.version_info >= (3, 12)


@types.coroutine
def _drive(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    # Pass what the coroutine yielded (a Future, or None for a bare yield) up to the Task, and pass the
    # Task's send/throw back down: the same protocol `await` speaks, resumed mid-way.
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class _Step:
    """The outcome of the inline first step, read by the Task when it first runs."""

    __slots__ = ("coro", "done", "result", "error", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.yielded: Any = None


async def _continue(step: _Step) -> Any:
    if step.done:
        if step.error is not None:
            raise step.error
        return step.result
    return await _drive(step.coro, step.yielded)


_RUNNING, _FINISHED, _FAILED = 0, 1, 2


def _start(coro: Coroutine[Any, Any, Any]) -> tuple[asyncio.Task[Any], int]:
    """Return the Task and the state of its coroutine after the inline step."""
    loop = asyncio.get_running_loop()
    if _NATIVE:
        task = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
        if not task.done():
            return task, _RUNNING
        return task, _FINISHED if task.cancelled() or task.exception() is None else _FAILED
    context = contextvars.copy_context()
    step = _Step(coro)
    task = loop.create_task(_continue(step), context=context)
    outer = asyncio.current_task(loop)
    if outer is not None:
        _leave_task(loop, outer)
    _enter_task(loop, task)
    try:
        step.yielded = context.run(coro.send, None)
    except StopIteration as stop:
        step.done, step.result = True, stop.value
    except BaseException as exc:  # handed to the Task, which raises it where awaiters can see it
        step.done, step.error = True, exc
    finally:
        _leave_task(loop, task)
        if outer is not None:
            _enter_task(loop, outer)
    return task, _RUNNING if not step.done else _FAILED if step.error is not None else _FINISHED


def run_eager(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Start coro as a Task whose first step runs now; await the Task for its result."""
    return _start(coro)[0]


def _report(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background step failed", exc_info=task.exception())


def start_eager(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
    """Start coro like run_eager, fire and forget: None when it already finished (errors are logged).

    A returned Task (one that suspended, or before 3.12 one that still owes its cheap first step) must be
    kept alive and checked by the caller.
    """
    task, state = _start(coro)
    if state == _RUNNING:
        return task
    if state == _FAILED:
        if task.done():
            _report(task)
        else:  # before 3.12 the Task raises it in its first step, still to come
            task.add_done_callback(_report)
    # Finished: before 3.12 the loop holds the Task until its trivial first step hands over the outcome.
    return None
