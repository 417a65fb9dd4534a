"""A remote SubscribeToTask ends even when the replica writing the task dies (docs/a2a-binding.md §10.2).

Replica B follows a task running on replica A through the event stream and a watch of the task's KV key. If A
writes a final state and dies before publishing its event, B sends that state from the KV and ends; if A dies
mid-task, B notices that nobody answers on A's own subject and ends with A2AReplicaGoneError. Real nats-server with
JetStream; A "dies" by closing its connection (its subscriptions go with it), as a killed process would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import nats
import nats.errors
import orjson
import pytest
from a2a.server.agent_execution import AgentExecutor
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.types.a2a_pb2 import TaskState
from a2a_support import PREFIX, Gate, card, factory, started, watching
from nats.aio.client import Client as NATSClient
from nats_fixtures import eventually, within

from agentcore.a2a import A2ANatsServer
from agentcore.a2a.binding import A2AReplicaGoneError
from agentcore.a2a.jetstream import JetStreamEventStream, KVTaskStore, _token
from agentcore.a2a.watch import replica_probe
from agentcore.server import NATSServer


@pytest.fixture
def js_url() -> Iterator[str]:
    with NATSServer(jetstream=True) as server:
        yield server.url


class Replica:
    """A replica whose event stream watches the task bucket and probes writers (short intervals for the test)."""

    def __init__(self, nc: NATSClient, handler: DefaultRequestHandler, server: A2ANatsServer, store: KVTaskStore) -> None:
        self.nc, self.handler, self.server, self.store = nc, handler, server, store

    @classmethod
    async def start(cls, url: str, executor: AgentExecutor, name: str) -> Replica:
        nc = await nats.connect(url)
        js = nc.jetstream()
        agent_card = card(url)
        store = await KVTaskStore.open(js, "A2A_TASKS_echo", replica=name)
        events = await JetStreamEventStream.open(js, "A2A_EVENTS_echo", PREFIX, tasks=store.kv,
                                                 probe=replica_probe(nc, PREFIX), probe_interval=0.5, grace=0.5)
        handler = DefaultRequestHandler(agent_executor=executor, agent_card=agent_card, task_store=store,
                                        event_stream=events)
        server = A2ANatsServer(nc, handler, agent_card, PREFIX, replica=name, locate=store.replica_of)
        await server.start()
        return cls(nc, handler, server, store)

    async def close(self) -> None:
        if self.nc.is_closed:  # killed: what it ran dies with it (its writes fail on the closed connection)
            with contextlib.suppress(nats.errors.Error):
                await self.handler.aclose()
            return
        await self.server.stop()
        await self.handler.aclose()
        await self.nc.close()


async def following(url: str) -> tuple[Gate, Replica, Replica, NATSClient, str, list[Any], Any]:
    """A task running on A (held by its gate), B alone in the queue, and a client following the task through B."""
    gate = Gate()
    a = await Replica.start(url, gate, "a")
    client_nc = await nats.connect(url)
    task_id = await within(started(factory(client_nc, streaming=False).create(card(url)), "run on A"), "SendMessage on A")
    await within(gate.started.wait(), "the executor running on A")
    await a.server.leave_queue()
    b = await Replica.start(url, Gate(), "b")
    events, watcher = watching(factory(client_nc, streaming=True).create(card(url)), task_id)
    await eventually(lambda: bool(events), what="B's first event: the Task")
    return gate, a, b, client_nc, task_id, events, watcher


async def test_a_final_state_written_without_its_event_ends_the_remote_stream(js_url: str) -> None:
    gate, a, b, client_nc, task_id, events, watcher = await following(js_url)
    try:
        # A's write of the final state, with no event published after it (A died in between): done here by hand.
        key = f"_.{_token(task_id)}"
        entry = await a.store.kv.get(key)
        stored = orjson.loads(entry.value or b"{}")
        stored["task"]["status"] = {"state": "TASK_STATE_COMPLETED", "timestamp": "2026-11-30T20:00:00Z"}
        await a.store.kv.update(key, orjson.dumps(stored), last=entry.revision)
        await within(watcher, "the stream on B ending from the KV")
        assert events[-1].status_update.task_id == task_id
        assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    finally:
        gate.release.set()
        await b.close()
        await a.close()
        await client_nc.close()


async def test_a_replica_dying_mid_task_ends_the_remote_stream_with_the_reason(js_url: str) -> None:
    gate, a, b, client_nc, task_id, events, watcher = await following(js_url)
    try:
        await a.nc.close()  # A is killed mid-task: no final write, no event, nobody on its subject
        with pytest.raises(A2AReplicaGoneError) as gone:
            await within(watcher, "the stream on B ending once A is gone")
        assert "'a'" in str(gone.value) and task_id in str(gone.value)
        assert [event.WhichOneof("payload") for event in events] == ["task"]
    finally:
        gate.release.set()
        await b.close()
        await a.close()
        await client_nc.close()


async def test_the_events_still_end_the_stream_while_the_writer_lives(js_url: str) -> None:
    gate, a, b, client_nc, task_id, events, watcher = await following(js_url)
    try:
        gate.release.set()  # A completes normally: the terminal event ends the stream, with nothing synthesized
        await within(watcher, "the stream on B ending at A's terminal event")
        assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
        assert sum(event.WhichOneof("payload") == "status_update" and event.status_update.status.state ==
                   TaskState.TASK_STATE_COMPLETED for event in events) == 1
    finally:
        gate.release.set()
        await b.close()
        await a.close()
        await client_nc.close()
