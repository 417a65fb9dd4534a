"""Run a coroutine's first step as a given Task inside a given context, as that Task's own step would (pure-Python twin)."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ("FINISHED", "SpareFields", "ThreadSlot", "eager_start", "first_step")

#: What first_step returns when the coroutine finished in its first step (its return value is not kept).
FINISHED: Any = object()

if sys.version_info >= (3, 12):
    _current_task = asyncio.current_task  # implemented in C from 3.12
else:  # a Python function before 3.12 that reads this dict (C, from _asyncio): read it directly
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined,unused-ignore]

    _current_task = _current_tasks.get


def first_step(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], context: contextvars.Context,
               coro: Coroutine[Any, Any, Any]) -> Any:
    """Send coro its first None as task (asyncio.current_task() is task) inside context.

    Return FINISHED when that finished it, else what it yielded (the Future it waits on); raise what it raised.
    Whatever Task was current before is current again afterwards.
    """
    outer = _current_task(loop)
    if outer is not None:
        _leave_task(loop, outer)
    _enter_task(loop, task)
    try:
        return context.run(coro.send, None)
    except StopIteration:
        return FINISHED
    finally:
        _leave_task(loop, task)
        if outer is not None:
            _enter_task(loop, outer)


class SpareFields:
    """What eager_start reads of a spare (agentcore._eager's spares derive from it)."""

    __slots__ = ("loop", "task", "step", "context", "base")

    loop: Any
    task: Any
    step: Any
    context: Any
    base: Any


_per_thread = threading.local()


class ThreadSlot:
    """Where this thread's spare is kept (a loop runs on one thread): eager_start's local (one per thread, shared)."""

    @property
    def spare(self) -> Any:
        return getattr(_per_thread, "spare", None)

    @spare.setter
    def spare(self, value: Any) -> None:
        _per_thread.spare = value


_MISSING: Any = object()


def _same_values(a: contextvars.Context, b: contextvars.Context) -> bool:
    """Whether a and b hold the same variables, set to the same objects (never ==: an equal object is another)."""
    return len(a) == len(b) and all(b.get(var, _MISSING) is value for var, value in a.items())


def eager_start(local: Any, make_spare: Callable[[asyncio.AbstractEventLoop], Any], report: Callable[[BaseException], None],
          coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
    """Run coro's first step as local.spare's Task (made by make_spare(loop) when there is none to use).

    Return None when the step finished it (its error, unless a cancellation, goes to report), the spare kept
    for the next coroutine when its context is unchanged; else bind coro to the spare, whose Task carries on
    with it, and return that Task. A spare has loop, task, context (the Task's), base (the caller context it
    copied), step (the Task's driver: done, coro, first, gate) and retire(); agentcore._eager makes them.
    """
    loop = asyncio.get_running_loop()
    spare = local.spare
    if spare is None or spare.loop is not loop or spare.step.done or not _same_values(contextvars.copy_context(), spare.base):
        if spare is not None and spare.loop is loop and not spare.step.done:
            spare.retire()
        spare = local.spare = make_spare(loop)
    task: asyncio.Task[Any] = spare.task
    step, context = spare.step, spare.context
    local.spare = None  # taken while its step runs: a coroutine started from inside that step gets a spare of its own
    error: BaseException | None = None
    try:
        first = first_step(loop, task, context, coro)
    except (KeyboardInterrupt, SystemExit):
        spare.retire()  # its Task ends instead of waiting on its gate for good
        raise
    except BaseException as exc:  # reported below, as a Task of its own would report it
        first, error = FINISHED, exc
    if first is FINISHED:  # finished in the first step: the spare serves the next coroutine
        # Retired when its context changed, a nested start left a spare already, or the step cancelled its own
        # Task (asyncio.current_task().cancel()): that cancellation must not reach the next coroutine's handler.
        if not _same_values(context, spare.base) or local.spare is not None or task.cancelling():
            spare.retire()
        else:
            local.spare = spare
        if error is not None and not isinstance(error, asyncio.CancelledError):
            report(error)
        return None
    # Suspended: the spare Task becomes this coroutine's Task and picks it up where the step stopped.
    step.coro, step.first = coro, first
    gate, step.gate = step.gate, None
    if gate is not None and not gate.done():  # the Task already parked: wake it to take over (a cancelled gate
        gate.set_result(None)                 # wakes it already, with the step's own cancellation)
    return task
