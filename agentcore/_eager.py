"""Run a coroutine inline until it first suspends; only then hand it to a Task (saves an event-loop hop)."""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ("run_eager", "start_eager")

log = logging.getLogger("agentcore.agent")


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


async def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _drive(coro, yielded)


def run_eager(coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any] | asyncio.Task[Any]:
    """Step coro now; return a finished Future if it completed, else a Task that continues it."""
    loop = asyncio.get_running_loop()
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        fut: asyncio.Future[Any] = loop.create_future()
        fut.set_result(stop.value)
        return fut
    except BaseException as exc:
        fut = loop.create_future()
        fut.set_exception(exc)
        return fut
    return loop.create_task(_resume(coro, yielded))


def start_eager(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
    """Step coro now, fire and forget: None if it completed (errors are logged), else the Task that continues it."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None  # the common case on the hot path: no Future is made for it
    except Exception:
        log.exception("background step failed")
        return None
    return asyncio.get_running_loop().create_task(_resume(coro, yielded))
