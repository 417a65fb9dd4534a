"""Run a handler's coroutine inline until it first suspends, as its own Task: no event-loop hop before the reply.

On Python 3.12+ this is asyncio's own eager task start. Before 3.12 the Task is created first (so
`asyncio.current_task()`, `asyncio.timeout()` and context variables see the handler's own Task and a copy of the
context, never the nats-py subscription task that delivered the message) and its first step is run right away;
the Task's own scheduled first step then just continues from where the inline step stopped.
"""

from __future__ import annotations

import asyncio
import contextvars
import collections.abc
import functools
import logging
import sys
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from ._impl import SpareFields, ThreadSlot, eager_start

__all__ = ("release_spare", "run_eager", "start_eager", "start_now", "step_now")


log = logging.getLogger("agentcore.agent")

_NATIVE = sys.version_info >= (3, 12)


_NOTHING: Any = object()


class _Resume(collections.abc.Coroutine):  # type: ignore[type-arg]
    """What the Task drives before 3.12: the handler's coroutine, picked up after its inline first step.

    The Task speaks the coroutine protocol to it: its first send() gets what the coroutine yielded inline
    (the Future it waits on), later ones go straight through. A throw() reaches the coroutine even before
    that first send, so a Task cancelled before its first step still raises CancelledError in the handler,
    as a native eager Task would.
    """

    __slots__ = ("coro", "first", "done", "result", "error", "gate")

    def __init__(self, coro: Coroutine[Any, Any, Any] | None) -> None:
        self.coro = coro  # None: a spare Task's driver, not bound to a coroutine yet (see start_eager)
        self.gate: asyncio.Future[None] | None = None  # what an unbound spare Task waits on until it is bound
        self.first: Any = _NOTHING  # what the inline step yielded, until the Task takes it
        self.done = False  # the inline step finished the coroutine: the Task only reports the outcome
        self.result: Any = None
        self.error: BaseException | None = None

    def _outcome(self) -> Any:
        self.done = False
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        raise StopIteration(self.result)

    def send(self, value: Any) -> Any:
        if self.done:
            return self._outcome()
        first = self.first
        if first is not _NOTHING:
            self.first = _NOTHING
            return first
        coro = self.coro
        if coro is None:  # a spare Task's first step: park until a coroutine is bound (or it is retired)
            gate = self.gate = asyncio.get_running_loop().create_future()
            gate._asyncio_future_blocking = True  # what `await gate` would set: the Task waits on it
            return gate
        return coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if self.done:
            return self._outcome()
        first = self.first
        if first is not _NOTHING:
            self.first = _NOTHING
            if isinstance(first, asyncio.Future):
                first.cancel()  # what Task.cancel() does to the future it waits on, had it seen this one
        if self.coro is None:  # a spare Task cancelled before any coroutine was bound to it (the loop closing)
            self.done = True  # never bound now: start_eager sees its Task done and makes another
            raise typ if val is None else val
        if val is None and tb is None:
            return self.coro.throw(typ)
        return self.coro.throw(typ, val, tb)

    def close(self) -> None:
        if self.coro is not None:
            self.coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        raise TypeError("_Resume is driven by its Task, never awaited")

    # What asyncio reads for Task reprs and stacks.
    @property
    def __name__(self) -> str:
        return str(getattr(self.coro, "__qualname__", type(self.coro).__name__))

    @property
    def cr_frame(self) -> Any:
        return getattr(self.coro, "cr_frame", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self.coro, "cr_code", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self.coro, "cr_running", False))


_RUNNING, _FINISHED, _FAILED = 0, 1, 2


def _start(coro: Coroutine[Any, Any, Any]) -> tuple[asyncio.Task[Any], int]:
    """Return the Task and the state of its coroutine after the inline step."""
    loop = asyncio.get_running_loop()
    if _NATIVE:
        task = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]  # (eager_start is typeshed-known from 3.12)
        if not task.done():
            return task, _RUNNING
        return task, _FINISHED if task.cancelled() or task.exception() is None else _FAILED
    context = contextvars.copy_context()
    step = _Resume(coro)
    task = loop.create_task(step, context=context)
    outer = asyncio.current_task(loop)
    if outer is not None:
        _leave_task(loop, outer)
    _enter_task(loop, task)
    try:
        step.first = context.run(coro.send, None)
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


class _Spare(SpareFields):  # type: ignore[misc,unused-ignore]  # (Any where mypy cannot follow _ext)
    """A Task made ahead, not yet bound to a coroutine: the Task the next started coroutine runs its first step as."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.base = contextvars.copy_context()  # what a coroutine started in another context must not run in
        self.context = self.base.copy()  # the Task's own context: equal to base until a first step sets a variable
        self.step = _Resume(None)
        self.task = loop.create_task(self.step, context=self.context)

    def retire(self) -> None:
        """End the Task without a coroutine (its context was changed by a step that finished)."""
        step = self.step
        step.done = True
        gate, step.gate = step.gate, None
        if gate is not None and not gate.done():
            gate.set_result(None)


_local = ThreadSlot()  # this thread's spare (a loop runs on one thread), checked against the running loop


def release_spare() -> None:
    """End this thread's spare Task of the running loop (call before that loop closes: no Task is left pending)."""
    spare = _local.spare
    if spare is not None and spare.loop is asyncio.get_running_loop():
        _local.spare = None
        spare.retire()


def _report(error: BaseException) -> None:
    log.error("background step failed", exc_info=error)


def start_eager(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
    """Start coro like run_eager, fire and forget: None when it already finished (errors are logged).

    A returned Task (one that suspended) must be kept alive and checked by the caller.

    A Task costs an allocation, a loop callback and (before 3.12) an event-loop iteration for its first step, so
    a coroutine that finishes without suspending (a handler answering at once) is run without one of its own:
    its first step runs as a spare Task made ahead, inside that Task's context, exactly as it would in its own
    Task. When the step suspends, the spare Task carries on with the coroutine (so what the step saw as
    ``asyncio.current_task()`` -- a timeout's or a cancel scope's target -- is the Task that runs the rest), and
    the next coroutine gets a new spare. When it finishes, the spare is used again for the next one, unless the
    step changed a context variable or the caller's context differs from the one the spare copied (then a new
    spare is made, so each first step sees a fresh copy of its caller's context, as with a Task of its own).
    The step itself runs in the compiled core (agentcore._ext.eager.eager_start, pure twin eager_py).
    """
    started: asyncio.Task[Any] | None = eager_start(_local, _Spare, _report, coro)
    return started


#: start_eager without its Python frame (what the dispatcher calls once per message): the compiled start, bound.
start_now: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any] | None] = functools.partial(eager_start, _local, _Spare,
                                                                                                 _report)


def step_now(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run coro's first step now, without a Task: (True, its result) when that finished it, else (False, a Task).

    The Task carries on from where the step stopped. An error raised in the first step is raised here. Unlike
    run_eager, a coroutine that finishes at once costs no Task and no event-loop iteration on any Python.
    """
    try:
        first = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    step = _Resume(coro)
    step.first = first
    return False, asyncio.get_running_loop().create_task(step)
