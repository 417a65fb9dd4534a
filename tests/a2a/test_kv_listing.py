"""ListTasks on the JetStream store sees every task saved before it, by any replica (agentcore.a2a.snapshot).

nats-py's KV watch can send its "all current values delivered" marker before the values (the server had sent them,
the client had not read them yet): a listing that stopped there returned no tasks at all, now and then, while every
one was in the bucket. The listing reads a pull consumer's snapshot instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from a2a.auth.user import User
from a2a.server.cluster import TaskVersion
from a2a.server.context import ServerCallContext
from a2a.types.a2a_pb2 import ListTasksRequest, Task, TaskState, TaskStatus
from nats.js.kv import KeyValue
from nats_fixtures import within

from agentcore.a2a.jetstream import KVTaskStore
from agentcore.a2a.snapshot import BATCH
from agentcore.server import NATSServer


class Named(User):
    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def user_name(self) -> str:
        return self.name


ALICE, BOB = ServerCallContext(user=Named("alice")), ServerCallContext(user=Named("bob"))


@pytest.fixture
def js_url() -> Iterator[str]:
    with NATSServer(jetstream=True) as server:
        yield server.url


@pytest.fixture
async def connections(js_url: str) -> AsyncIterator[tuple[nats.NATS, nats.NATS]]:
    """Two connections: two replicas of one A2A agent, each with its own view of the bucket."""
    a, b = await nats.connect(js_url), await nats.connect(js_url)
    yield a, b
    await a.close()
    await b.close()


async def _bucket(nc: nats.NATS) -> KeyValue:
    return await nc.jetstream().create_key_value(bucket="A2A_TASKS_listing", history=1)


async def _save(store: KVTaskStore, task_id: str, context: ServerCallContext = ALICE) -> None:
    task = Task(id=task_id, context_id="c", status=TaskStatus(state=TaskState.TASK_STATE_COMPLETED))
    await store.save(task, event=None, prev=None, prev_version=TaskVersion.MISSING, context=context)


async def _listed(store: KVTaskStore, context: ServerCallContext = ALICE) -> set[str]:
    page = await within(store.list(ListTasksRequest(page_size=100), context), "ListTasks on the bucket")
    assert page.total_size == len(page.tasks)
    return {task.id for task in page.tasks}


async def test_every_listing_sees_the_tasks_both_replicas_saved(connections: tuple[nats.NATS, nats.NATS]) -> None:
    a = KVTaskStore(await _bucket(connections[0]), "a")
    b = KVTaskStore(await _bucket(connections[1]), "b")
    for i in range(40):
        await _save(a if i % 2 else b, f"t{i}")
    saved = {f"t{i}" for i in range(40)}
    # The watch's early marker came on a few listings in a hundred: each listing here must see all 40.
    for _ in range(150):
        assert await _listed(a) == saved
        assert await _listed(b) == saved


class EarlyMarker(KeyValue):
    """A bucket whose watches say "all delivered" before any value, as nats-py's watch may (the race made certain)."""

    async def watch(self, keys: Any, **kwargs: Any) -> Any:
        watcher = await super().watch(keys, **kwargs)
        early = KeyValue.KeyWatcher(self)
        early._sub = watcher._sub  # stopping the early watcher stops the real one
        await early._updates.put(None)
        return early


async def test_a_listing_does_not_stop_at_a_watch_marker_that_comes_first(connections: tuple[nats.NATS, nats.NATS]) -> None:
    kv = await _bucket(connections[0])
    store = KVTaskStore(EarlyMarker(kv._name, kv._stream, kv._pre, kv._js, kv._direct), "a")
    for i in range(3):
        await _save(store, f"t{i}")
    assert await _listed(store) == {"t0", "t1", "t2"}


async def test_deleted_tasks_and_other_owners_tasks_are_left_out(connections: tuple[nats.NATS, nats.NATS]) -> None:
    store = KVTaskStore(await _bucket(connections[0]), "a")
    for task_id in ("kept", "deleted"):
        await _save(store, task_id)
    await _save(store, "bobs", BOB)
    await store.delete("deleted", ALICE)
    assert await _listed(store) == {"kept"}
    assert await _listed(store, BOB) == {"bobs"}
    assert await _listed(store, ServerCallContext(user=Named("nobody"))) == set()


async def test_tasks_written_while_the_listing_reads_are_listed_once_in_their_latest_state(
        connections: tuple[nats.NATS, nats.NATS], monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the listing's consumer being made and its first pull, another replica creates two tasks and updates
    one, and one's age passes (its value removed, no tombstone): all listed once, latest state, the removed one not."""
    kv = await _bucket(connections[0])
    store, other = KVTaskStore(kv, "a"), KVTaskStore(await _bucket(connections[1]), "b")
    for task_id in ("updated", "kept", "expired"):
        await _save(store, task_id)
    js = connections[1].jetstream()
    make = kv._js.add_consumer

    async def then_write(*args: Any, **kwargs: Any) -> Any:
        info = await make(*args, **kwargs)
        for task_id in ("new", "newer"):  # written before the update: a listing stopping at 3 values misses it
            await _save(other, task_id)
        stored = await other.get("updated", ALICE)
        assert stored is not None
        working = Task(id="updated", context_id="c", status=TaskStatus(state=TaskState.TASK_STATE_WORKING))
        await other.save(working, event=None, prev=stored.task, prev_version=stored.version, context=ALICE)
        await js.purge_stream(kv._stream, subject=f"{kv._pre}{other._key('expired', ALICE)}")  # as max_age does
        return info

    monkeypatch.setattr(kv._js, "add_consumer", then_write)
    page = await within(store.list(ListTasksRequest(), ALICE), "ListTasks while the bucket changes", timeout=2.0)
    states = {task.id: task.status.state for task in page.tasks}
    assert states == {"updated": TaskState.TASK_STATE_WORKING, "kept": TaskState.TASK_STATE_COMPLETED,
                      "new": TaskState.TASK_STATE_COMPLETED, "newer": TaskState.TASK_STATE_COMPLETED}
    assert len(page.tasks) == 4


async def test_more_tasks_than_one_pull_are_all_read(connections: tuple[nats.NATS, nats.NATS]) -> None:
    store = KVTaskStore(await _bucket(connections[0]), "a")
    count = BATCH + 20
    for i in range(count):
        await _save(store, f"t{i}")
    page = await within(store.list(ListTasksRequest(page_size=100), ALICE), "ListTasks over two pulls")
    assert page.total_size == count and len(page.tasks) == 100 and page.next_page_token
