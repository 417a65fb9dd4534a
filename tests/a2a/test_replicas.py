"""Replicas of one A2A agent share its tasks through JetStream (KVTaskStore, JetStreamEventStream): a task started on
replica A is answered by replica B for GetTask, ListTasks and SubscribeToTask (the Task first, then A's events).

Replica A serves alone until the task runs; then A stops taking requests (its task runs on) and B starts, so each
request below can only have been answered by B.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest


import nats
from a2a.client import Client
from a2a.types.a2a_pb2 import CancelTaskRequest, GetTaskRequest, ListTasksRequest, TaskState
from a2a.utils.errors import TaskNotCancelableError
from a2a_support import Gate, Replica, card, factory, started, watching
from nats.aio.client import Client as NATSClient
from nats_fixtures import eventually, within

from agentcore.server import NATSServer


@pytest.fixture
def js_url() -> Iterator[str]:
    with NATSServer(jetstream=True) as server:
        yield server.url


@dataclass
class Scene:
    """A task running on replica A (held by its gate), a client, and replica B once started."""

    gate: Gate
    a: Replica
    client: Client
    client_nc: NATSClient
    task_id: str
    b: Replica | None = None


@asynccontextmanager
async def task_on_a(url: str) -> AsyncIterator[Scene]:
    """Start replica A alone and a task on it (returnImmediately), held running until the scene ends."""
    gate = Gate()
    a = await Replica.start(url, gate, "a")
    client_nc = await nats.connect(url)
    scene: Scene | None = None
    try:
        client = factory(client_nc, streaming=False).create(card(url))
        task_id = await within(started(client, "run on A"), "SendMessage on A")
        await within(gate.started.wait(), "the executor starting on A")
        scene = Scene(gate, a, client, client_nc, task_id)
        yield scene
    finally:
        gate.release.set()
        if scene is not None and scene.b is not None:
            await scene.b.close()
        await a.server.stop()
        await a.handler.aclose()
        if not a.nc.is_closed:
            await a.nc.close()
        await client_nc.close()


async def test_a_second_replica_answers_for_a_task_running_on_the_first(js_url: str) -> None:
    async with task_on_a(js_url) as scene:
        client, task_id = scene.client, scene.task_id
        await scene.a.server.stop()  # A takes no more requests; its task runs on
        scene.b = await Replica.start(js_url, Gate(), "b")

        got = await within(client.get_task(GetTaskRequest(id=task_id)), "GetTask on B")
        assert got.id == task_id and got.status.state == TaskState.TASK_STATE_WORKING
        page = await within(client.list_tasks(ListTasksRequest()), "ListTasks on B")
        assert [t.id for t in page.tasks] == [task_id] and page.next_page_token == ""

        events, watcher = watching(factory(scene.client_nc, streaming=True).create(card(js_url)), task_id)
        await eventually(lambda: bool(events), what="B's first event: the Task")
        assert events[0].WhichOneof("payload") == "task" and events[0].task.id == task_id
        scene.gate.release.set()  # A completes the task; B relays A's events from JetStream
        await within(watcher, "the subscription on B ending at the terminal event")
        assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED

        done = await within(client.get_task(GetTaskRequest(id=task_id)), "GetTask on B after completion")
        assert done.status.state == TaskState.TASK_STATE_COMPLETED


@pytest.mark.parametrize("runner_alive", [True, False], ids=["forwarded", "runner-gone"])
async def test_cancel_reaching_another_replica(js_url: str, runner_alive: bool) -> None:
    """CancelTask landing on B for a task running on A is forwarded to A, whose executor is cancelled; with A gone,
    B cancels it in the store itself. Either way the task ends CANCELED and a second cancel is refused."""
    async with task_on_a(js_url) as scene:
        client, task_id = scene.client, scene.task_id
        if runner_alive:
            await scene.a.server.leave_queue()  # only B takes queued requests; A still answers its own subject
        else:
            await scene.a.server.stop()
            await scene.a.nc.close()  # A is gone from the bus (its task is orphaned)
        scene.b = await Replica.start(js_url, Gate(), "b")

        cancelled = await within(client.cancel_task(CancelTaskRequest(id=task_id)), "CancelTask on B")
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        if runner_alive:
            await within(scene.gate.cancelled_in_execute.wait(), "CancelledError in A's executor")
            assert scene.gate.cancel_calls == 1
        got = await within(client.get_task(GetTaskRequest(id=task_id)), "GetTask after the cancel")
        assert got.status.state == TaskState.TASK_STATE_CANCELED
        with pytest.raises(TaskNotCancelableError):
            await within(client.cancel_task(CancelTaskRequest(id=task_id)), "a second CancelTask")
