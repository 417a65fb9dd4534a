"""Replicas of one A2A agent share its tasks through JetStream (KVTaskStore, JetStreamEventStream): a task started on
replica A is answered by replica B for GetTask, ListTasks and SubscribeToTask (the Task first, then A's events).

Replica A serves alone until the task runs; then A stops taking requests (its task runs on) and B starts, so each
request below can only have been answered by B.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("a2a", reason="a2a-sdk (extra 'a2a') is not installed")

import nats  # noqa: E402
from a2a.server.agent_execution import AgentExecutor  # noqa: E402
from a2a.server.request_handlers import DefaultRequestHandler  # noqa: E402
from a2a.types.a2a_pb2 import GetTaskRequest, ListTasksRequest, TaskState  # noqa: E402
from a2a_support import PREFIX, Gate, card, factory, started, watching  # noqa: E402
from nats.aio.client import Client as NATSClient  # noqa: E402
from nats_fixtures import eventually, within  # noqa: E402

from agentcore.a2a import A2ANatsServer  # noqa: E402
from agentcore.a2a.jetstream import JetStreamEventStream, KVTaskStore  # noqa: E402
from agentcore.server import NATSServer  # noqa: E402


@pytest.fixture
def js_url() -> Iterator[str]:
    with NATSServer(jetstream=True) as server:
        yield server.url


class Replica:
    """One replica: its own connection and DefaultRequestHandler, the shared KV bucket and event stream."""

    def __init__(self, nc: NATSClient, handler: DefaultRequestHandler, server: A2ANatsServer) -> None:
        self.nc, self.handler, self.server = nc, handler, server

    @classmethod
    async def start(cls, url: str, executor: AgentExecutor) -> Replica:
        nc = await nats.connect(url)
        js = nc.jetstream()
        agent_card = card(url)
        handler = DefaultRequestHandler(
            agent_executor=executor, agent_card=agent_card,
            task_store=await KVTaskStore.open(js, "A2A_TASKS_echo"),
            event_stream=await JetStreamEventStream.open(js, "A2A_EVENTS_echo", PREFIX))
        server = A2ANatsServer(nc, handler, agent_card, PREFIX)
        await server.start()
        return cls(nc, handler, server)

    async def close(self) -> None:
        await self.server.stop()
        await self.handler.aclose()
        await self.nc.close()


async def test_a_second_replica_answers_for_a_task_running_on_the_first(js_url: str) -> None:
    gate = Gate()
    a = await Replica.start(js_url, gate)
    client_nc = await nats.connect(js_url)
    b: Replica | None = None
    try:
        agent_card = card(js_url)
        client = factory(client_nc, streaming=False).create(agent_card)
        task_id = await within(started(client, "run on A"), "SendMessage on A")
        await within(gate.started.wait(), "the executor starting on A")

        await a.server.stop()  # A takes no more requests; its task runs on
        b = await Replica.start(js_url, Gate())

        got = await within(client.get_task(GetTaskRequest(id=task_id)), "GetTask on B")
        assert got.id == task_id and got.status.state == TaskState.TASK_STATE_WORKING
        page = await within(client.list_tasks(ListTasksRequest()), "ListTasks on B")
        assert [t.id for t in page.tasks] == [task_id] and page.next_page_token == ""

        events, watcher = watching(factory(client_nc, streaming=True).create(agent_card), task_id)
        await eventually(lambda: bool(events), what="B's first event: the Task")
        assert events[0].WhichOneof("payload") == "task" and events[0].task.id == task_id
        gate.release.set()  # A completes the task; B relays A's events from JetStream
        await within(watcher, "the subscription on B ending at the terminal event")
        assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED

        done = await within(client.get_task(GetTaskRequest(id=task_id)), "GetTask on B after completion")
        assert done.status.state == TaskState.TASK_STATE_COMPLETED
    finally:
        if b is not None:
            await b.close()
        await a.handler.aclose()
        await a.nc.close()
        await client_nc.close()
