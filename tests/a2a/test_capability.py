"""A plain agentcore capability handler served as an A2A agent (CapabilityExecutor) over NATS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from a2a.helpers import get_artifact_text
from a2a.types.a2a_pb2 import CancelTaskRequest, TaskState
from a2a_support import factory, serving, started, text_request
from nats_fixtures import within

from agentcore.a2a.capability import CapabilityExecutor


async def _events(client: Any, text: str) -> list[Any]:
    return [event async for event in client.send_message(text_request(text))]


async def test_a_handlers_answer_is_the_tasks_artifact(nats_url: str) -> None:
    seen: list[dict[str, Any]] = []

    async def summarise(message: dict[str, Any]) -> str:
        seen.append(message)
        return f"summary of {message['payload']['content']}"

    async with serving(nats_url, CapabilityExecutor(summarise, "summarise")) as (nc, card):
        events = await within(_events(factory(nc, streaming=False).create(card), "the report"), "SendMessage")
        task = events[0].task
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert get_artifact_text(task.artifacts[0]) == "summary of the report"
        assert seen[0]["payload"]["content"] == "the report" and seen[0]["id"] == task.id


async def test_a_generators_items_stream_as_artifact_chunks(nats_url: str) -> None:
    async def write(message: dict[str, Any]) -> AsyncIterator[str]:
        for token in ("one ", "two ", "three"):
            yield token

    async with serving(nats_url, CapabilityExecutor(write, "write")) as (nc, card):
        events = await within(_events(factory(nc, streaming=True).create(card), "go"), "SendStreamingMessage")
        chunks = [e.artifact_update for e in events if e.HasField("artifact_update")]
        assert [c.artifact.parts[0].text for c in chunks] == ["one ", "two ", "three"]
        assert [c.append for c in chunks] == [False, True, True]
        assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED


async def test_a_handler_that_raises_fails_the_task_with_its_error(nats_url: str) -> None:
    async def broken(message: dict[str, Any]) -> str:
        raise ValueError("bad input")

    async with serving(nats_url, CapabilityExecutor(broken, "broken")) as (nc, card):
        events = await within(_events(factory(nc, streaming=False).create(card), "x"), "SendMessage")
        status = events[0].task.status
        assert status.state == TaskState.TASK_STATE_FAILED
        assert status.message.parts[0].text == "ValueError: bad input"


async def test_cancel_task_reaches_the_handler_as_cancelled_error(nats_url: str) -> None:
    running, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(message: dict[str, Any]) -> str:
        running.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async with serving(nats_url, CapabilityExecutor(slow, "slow")) as (nc, card):
        client = factory(nc, streaming=False).create(card)
        task_id = await within(started(client, "wait"), "SendMessage return_immediately")
        await within(running.wait(), "the handler running")
        task = await within(client.cancel_task(CancelTaskRequest(id=task_id)), "CancelTask")
        assert task.status.state == TaskState.TASK_STATE_CANCELED
        await within(cancelled.wait(), "CancelledError in the handler")
