"""BoundedTaskStore: a2a-sdk's in-memory task store bounded by bytes (a2a.max_store_bytes)."""

from __future__ import annotations

import pytest
from a2a.auth.user import UnauthenticatedUser
from a2a.server.context import ServerCallContext
from a2a.types.a2a_pb2 import ListTasksRequest, Task, TaskState, TaskStatus

from agentcore.a2a import OverloadedError
from agentcore.a2a.store import OVERHEAD, BoundedTaskStore


def _task(task_id: str, state: TaskState = TaskState.TASK_STATE_COMPLETED, pad: int = 0) -> Task:
    return Task(id=task_id, context_id="c" * pad, status=TaskStatus(state=state))


CTX = ServerCallContext(user=UnauthenticatedUser())
SIZE = _task("a").ByteSize() + OVERHEAD  # every task below has a one-letter id: the same size


async def test_finished_tasks_are_forgotten_least_recently_used_first() -> None:
    store = BoundedTaskStore(3 * SIZE)
    for task_id in "abc":
        await store.save(_task(task_id), CTX)
    assert await store.get("a", CTX) is not None  # a is now used more recently than b
    await store.save(_task("d"), CTX)
    assert await store.get("b", CTX) is None and store.evictions == 1
    assert {t.id for t in (await store.list(ListTasksRequest(), CTX)).tasks} == {"a", "c", "d"}
    assert store.bytes == 3 * SIZE


async def test_unfinished_tasks_are_kept_and_a_new_one_refused() -> None:
    store = BoundedTaskStore(2 * SIZE)
    await store.save(_task("a", TaskState.TASK_STATE_WORKING), CTX)
    await store.save(_task("b", TaskState.TASK_STATE_INPUT_REQUIRED), CTX)
    with pytest.raises(OverloadedError) as refused:
        await store.save(_task("c"), CTX)
    assert refused.value.data == {"bound": "a2a.max_store_bytes", "limit": str(2 * SIZE)}
    assert store.refused == 1 and store.bytes == 2 * SIZE
    # A stored task is always updated, even past the bound (its executor runs on); finished, it can be forgotten.
    await store.save(_task("a", TaskState.TASK_STATE_COMPLETED, pad=100), CTX)
    assert store.bytes > 2 * SIZE
    await store.save(_task("c"), CTX)
    assert await store.get("a", CTX) is None and await store.get("c", CTX) is not None
    assert store.bytes == 2 * SIZE


async def test_delete_frees_its_bytes() -> None:
    store = BoundedTaskStore(10 * SIZE)
    await store.save(_task("a"), CTX)
    await store.delete("a", CTX)
    assert store.bytes == 0 and await store.get("a", CTX) is None
