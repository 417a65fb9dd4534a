"""first_step (compiled and pure twin): a coroutine's first step runs as the given Task, in the given context."""

from __future__ import annotations

import asyncio
import contextvars
import os
import warnings
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


class _Holder:
    spare: Any = None


@pytest.mark.parametrize("slot", [False, True], ids=["any-holder", "thread-slot"])
async def test_eager_start_reuses_its_spare_until_a_step_suspends_or_changes_the_context(eager_module: ModuleType,
                                                                                         slot: bool) -> None:
    from agentcore._eager import _Spare  # the spares agentcore makes (INTERNAL by design: the twins run on them)

    local: Any = eager_module.ThreadSlot() if slot else _Holder()
    reported: list[BaseException] = []
    seen: list[Any] = []

    async def quick() -> None:
        seen.append(asyncio.current_task())

    assert eager_module.eager_start(local, _Spare, reported.append, quick()) is None
    assert eager_module.eager_start(local, _Spare, reported.append, quick()) is None
    assert seen[0] is seen[1] is local.spare.task  # one spare Task served both

    async def sets() -> None:
        var.set("changed")

    first = local.spare
    assert eager_module.eager_start(local, _Spare, reported.append, sets()) is None
    assert local.spare is None and first.step.done  # its context changed: retired, the next start makes another
    assert var.get() == "outer"

    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def slow() -> str:
        seen.append(asyncio.current_task())
        return await fut

    task = eager_module.eager_start(local, _Spare, reported.append, slow())
    assert task is seen[-1]  # the Task the first step ran as carries on with it
    fut.set_result("later")
    assert await task == "later"

    async def fails() -> None:
        raise ValueError("boom")

    async def cancelled() -> None:
        raise asyncio.CancelledError

    assert eager_module.eager_start(local, _Spare, reported.append, fails()) is None
    assert eager_module.eager_start(local, _Spare, reported.append, cancelled()) is None
    assert [type(e) for e in reported] == [ValueError]  # a cancellation is no error to report
    if local.spare is not None:
        local.spare.retire()


def test_a_thread_slot_is_one_per_thread_and_shared_by_its_instances(eager_module: ModuleType) -> None:
    import threading

    first, second = eager_module.ThreadSlot(), eager_module.ThreadSlot()
    before = first.spare
    try:
        marker = object()
        first.spare = marker
        assert second.spare is marker  # the thread's one slot, whichever instance reads it
        seen: list[Any] = []
        worker = threading.Thread(target=lambda: seen.append(eager_module.ThreadSlot().spare))
        worker.start()
        worker.join(timeout=30)
        assert seen == [None]  # another thread has a slot of its own
        first.spare = None
        assert second.spare is None
    finally:
        first.spare = before


def test_the_agents_spares_are_kept_in_the_chosen_implementations_thread_slot() -> None:
    from agentcore import _eager, _impl

    assert type(_eager._local) is _impl.ThreadSlot


def _loop_factories() -> list[Any]:
    factories: list[Any] = [asyncio.new_event_loop]
    try:
        import uvloop
    except ImportError:  # the fast extra is not installed
        return factories
    return [*factories, uvloop.new_event_loop]


@pytest.mark.parametrize("factory", _loop_factories(), ids=lambda f: f.__module__.split(".")[0])
def test_each_loop_run_in_a_thread_starts_its_coroutines_as_its_own_tasks(eager_module: ModuleType, factory: Any) -> None:
    # One thread slot, loops run one after another (and one run again): a spare made on one loop must never
    # carry a coroutine started on another, however cheaply the start tells which loop runs.
    from agentcore._eager import _Spare

    local, reported = eager_module.ThreadSlot(), []
    seen: list[Any] = []

    async def quick() -> None:
        seen.append(asyncio.current_task().get_loop())  # type: ignore[union-attr]

    async def starts() -> Any:
        for _ in range(3):
            assert eager_module.eager_start(local, _Spare, reported.append, quick()) is None
        return asyncio.get_running_loop()

    first, second = factory(), factory()
    try:
        ran = [first.run_until_complete(starts()), second.run_until_complete(starts()),
               first.run_until_complete(starts())]
    finally:
        spare = local.spare
        local.spare = None
        if spare is not None:
            spare.retire()
        first.close()
        second.close()
    assert ran == [first, second, first]
    assert seen == [first] * 3 + [second] * 3 + [first] * 3
    assert reported == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
async def test_a_forked_child_sees_a_running_loop_as_asyncio_tells_it(eager_module: ModuleType) -> None:
    from agentcore._eager import _Spare

    local = eager_module.ThreadSlot()

    async def quick() -> None:
        pass

    for _ in range(2):  # the spare has seen its loop running here
        assert eager_module.eager_start(local, _Spare, lambda exc: None, quick()) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running (the test runner's)
        pid = os.fork()
    if pid == 0:  # the child: the same answer as asyncio's, whether it says a loop runs here or not
        code = 1
        try:
            try:
                asyncio.get_running_loop()
                expected = "runs"
            except RuntimeError:
                expected = "none"
            try:
                coro = quick()
                eager_module.eager_start(local, _Spare, lambda exc: None, coro)
                got = "runs"
            except RuntimeError:
                coro.close()
                got = "none"
            code = 0 if got == expected else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    spare = local.spare
    local.spare = None
    if spare is not None:
        spare.retire()
