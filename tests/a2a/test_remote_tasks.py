"""A task read or followed from another replica than the one running it (docs/a2a-binding.md §10.2), when the
writer dies and when the task is larger than one JetStream message.

Replica B follows a task running on replica A through the event stream and a watch of the task's KV key. If A
writes a final state and dies before publishing its event, B sends that state from the KV and ends; if A dies
mid-task, B notices that nobody answers on A's own subject and ends with A2AReplicaGoneError. A task whose value
or events exceed max_payload is kept in the replicas' object stores and read back whole on B. Real nats-server
with JetStream; A "dies" by closing its connection (its subscriptions go with it), as a killed process would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import orjson
import pytest
from a2a.types.a2a_pb2 import GetTaskRequest, ListTasksRequest, TaskState
from a2a_support import Gate, Replica, card, factory, held_task, watching
from nats.aio.client import Client as NATSClient
from nats_fixtures import eventually, within

from agentcore.a2a.binding import A2AReplicaGoneError
from agentcore.a2a.jetstream import _token
from agentcore.server import NATSServer


@pytest.fixture
def js_url() -> Iterator[str]:
    with NATSServer(jetstream=True) as server:
        yield server.url


@asynccontextmanager
async def following(url: str, gate: Gate | None = None) -> AsyncIterator[tuple[Gate, Replica, Replica, NATSClient, str,
                                                                            list[Any], Any]]:
    """A task running on A (held by its gate), B alone in the queue, and a client following the task through B."""
    gate = gate or Gate()
    a = await Replica.start(url, gate, "a", watch=True)
    client_nc = await nats.connect(url)
    b: Replica | None = None
    try:
        task_id = await held_task(client_nc, url, gate)
        await a.server.leave_queue()
        b = await Replica.start(url, Gate(), "b", watch=True)
        events, watcher = watching(factory(client_nc, streaming=True).create(card(url)), task_id)
        await eventually(lambda: bool(events), what="B's first event: the Task")
        yield gate, a, b, client_nc, task_id, events, watcher
    finally:
        gate.release.set()
        if b is not None:
            await b.close()
        await a.close()
        await client_nc.close()


async def test_a_final_state_written_without_its_event_ends_the_remote_stream(js_url: str) -> None:
    async with following(js_url) as (_gate, a, _b, _nc, task_id, events, watcher):
        # A's write of the final state, with no event published after it (A died in between): done here by hand.
        key = f"_.{_token(task_id)}"
        entry = await a.store.kv.get(key)
        stored = orjson.loads(entry.value or b"{}")
        stored["task"]["status"] = {"state": "TASK_STATE_COMPLETED", "timestamp": "2026-11-30T20:00:00Z"}
        await a.store.kv.update(key, orjson.dumps(stored), last=entry.revision)
        await within(watcher, "the stream on B ending from the KV")
        assert events[-1].status_update.task_id == task_id
        assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED


async def test_a_replica_dying_mid_task_ends_the_remote_stream_with_the_reason(js_url: str) -> None:
    async with following(js_url) as (_gate, a, _b, _nc, task_id, events, watcher):
        await a.nc.close()  # A is killed mid-task: no final write, no event, nobody on its subject
        with pytest.raises(A2AReplicaGoneError) as gone:
            await within(watcher, "the stream on B ending once A is gone")
        assert "'a'" in str(gone.value) and task_id in str(gone.value)
        assert [event.WhichOneof("payload") for event in events] == ["task"]


async def test_the_events_still_end_the_stream_while_the_writer_lives(js_url: str) -> None:
    async with following(js_url) as (gate, _a, _b, _nc, _task_id, events, watcher):
        gate.release.set()  # A completes normally: the terminal event ends the stream, with nothing synthesized
        await within(watcher, "the stream on B ending at A's terminal event")
        assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
        assert sum(event.WhichOneof("payload") == "status_update" and event.status_update.status.state ==
                   TaskState.TASK_STATE_COMPLETED for event in events) == 1


BIG = "z" * 1_500_000  # over the default 1 MiB max_payload: the task's KV value and its artifact event both exceed it


async def test_a_task_larger_than_a_message_is_read_and_followed_from_another_replica(js_url: str) -> None:
    async with following(js_url, Gate(artifact=BIG)) as (gate, _a, _b, client_nc, task_id, events, watcher):
        gate.release.set()
        await within(watcher, "the stream on B ending at A's terminal event")
        assert [e.artifact_update.artifact.parts[0].text for e in events if e.HasField("artifact_update")] == [BIG]
        client = factory(client_nc, streaming=False).create(card(js_url))
        got = await within(client.get_task(GetTaskRequest(id=task_id)), "GetTask on B")
        assert got.status.state == TaskState.TASK_STATE_COMPLETED and got.artifacts[0].parts[0].text == BIG
        page = await within(client.list_tasks(ListTasksRequest(include_artifacts=True)), "ListTasks on B")
        assert [t.artifacts[0].parts[0].text for t in page.tasks] == [BIG]
