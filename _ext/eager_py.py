"""Run a coroutine's first step as a given Task inside a given context, as that Task's own step would (pure-Python twin)."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Coroutine
from typing import Any

__all__ = ("FINISHED", "first_step")

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
