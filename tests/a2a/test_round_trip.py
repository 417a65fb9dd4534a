"""The A2A binding over a real nats-server: an unmodified a2a-sdk client (ClientFactory + our transport) against an
unmodified DefaultRequestHandler (AgentExecutor + InMemoryTaskStore) served by A2ANatsServer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest


from a2a.client import ClientCallContext
from a2a.helpers import get_artifact_text
from a2a.types.a2a_pb2 import (
    AgentCard, CancelTaskRequest, GetTaskRequest, SubscribeToTaskRequest, Task, TaskState,
)
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError, VersionNotSupportedError
from a2a_support import Gate, factory, serving, started, text_request, watching
from nats.aio.client import Client as NATSClient
from nats_fixtures import eventually, within


@pytest.fixture
async def served(nats_url: str) -> AsyncIterator[tuple[NATSClient, AgentCard]]:
    """An echo agent served over NATS, and a separate client connection."""
    async with serving(nats_url) as pair:
        yield pair


async def test_send_message_returns_the_completed_task(served: tuple[NATSClient, AgentCard]) -> None:
    nc, card = served
    client = factory(nc, streaming=False).create(card)

    async def send() -> list[Any]:
        return [event async for event in client.send_message(text_request("hello over NATS"))]

    events = await within(send(), "SendMessage")
    assert len(events) == 1 and events[0].HasField("task")
    task: Task = events[0].task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert get_artifact_text(task.artifacts[0]) == "hello over NATS"
    again = await within(client.get_task(GetTaskRequest(id=task.id)), "GetTask")
    assert again.id == task.id and again.status.state == TaskState.TASK_STATE_COMPLETED


async def test_streamed_send_arrives_in_order_and_ends(served: tuple[NATSClient, AgentCard]) -> None:
    nc, card = served
    client = factory(nc, streaming=True).create(card)

    async def send() -> list[Any]:
        return [event async for event in client.send_message(text_request("streamed"))]

    events = await within(send(), "SendStreamingMessage")
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds[0] == "task"
    assert "artifact_update" in kinds
    assert kinds[-1] == "status_update" and events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED


async def test_errors_reach_the_client_as_the_sdks_own_exceptions(served: tuple[NATSClient, AgentCard]) -> None:
    nc, card = served
    client = factory(nc, streaming=False).create(card)
    with pytest.raises(TaskNotFoundError):
        await within(client.get_task(GetTaskRequest(id="no-such-task")), "GetTask")
    for name, version in (("A2A-Version", "0.3"), ("a2a-version", "2.0"), ("A2A-Version", "")):  # names: any case
        old = ClientCallContext(service_parameters={name: version})
        with pytest.raises(VersionNotSupportedError):
            await within(client.get_task(GetTaskRequest(id="no-such-task"), context=old), f"GetTask {version!r}")


async def test_streams_refuse_an_unknown_task_with_its_error(served: tuple[NATSClient, AgentCard]) -> None:
    nc, card = served
    client = factory(nc, streaming=True).create(card)

    async def subscribe() -> None:
        async for _event in client.subscribe(SubscribeToTaskRequest(id="no-such-task")):
            pass

    with pytest.raises(TaskNotFoundError):
        await within(subscribe(), "SubscribeToTask")


async def test_subscribe_sends_the_task_first_and_cancel_reaches_the_executor(nats_url: str) -> None:
    gate = Gate()
    async with serving(nats_url, gate) as (nc, card):
        client = factory(nc, streaming=False).create(card)
        task_id = await within(started(client, "wait"), "SendMessage return_immediately")
        await within(gate.started.wait(), "the executor starting")

        events, watcher = watching(factory(nc, streaming=True).create(card), task_id)
        await eventually(lambda: bool(events), what="the subscription's first event")
        assert events[0].WhichOneof("payload") == "task" and events[0].task.id == task_id

        cancelled = await within(client.cancel_task(CancelTaskRequest(id=task_id)), "CancelTask")
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        await within(gate.cancelled_in_execute.wait(), "CancelledError in execute")
        assert gate.cancel_calls == 1
        await within(watcher, "the subscription ending after the cancel")
        with pytest.raises(TaskNotCancelableError):
            await within(client.cancel_task(CancelTaskRequest(id=task_id)), "a second CancelTask")


async def test_closing_a_stream_leaves_its_task_running(nats_url: str) -> None:
    gate = Gate()
    async with serving(nats_url, gate) as (nc, card):
        client = factory(nc, streaming=True).create(card)
        stream = client.send_message(text_request("leave early"))
        first = await within(anext(aiter(stream)), "the stream's first event")
        await stream.aclose()  # the client stops reading: its stream is cancelled, not the task
        await within(gate.started.wait(), "the executor starting")
        gate.release.set()
        task_id = first.task.id

        async def completed() -> bool:
            task = await client.get_task(GetTaskRequest(id=task_id))
            return task.status.state == TaskState.TASK_STATE_COMPLETED

        await eventually(completed, what="the task completing after its stream was closed")
        assert not gate.cancelled_in_execute.is_set() and gate.cancel_calls == 0
