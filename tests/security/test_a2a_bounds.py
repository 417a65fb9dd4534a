"""The a2a.* bounds of an agent serving A2A (agent.serve_a2a), attacked by a plain nats-py client: oversized bodies,
floods of requests, many open streams that never grant credit, a task store filled with tasks. Each is refused at
once with a typed error (the binding's error answer, the SDK's exception class at an a2a-sdk client), counted in
get_metrics(), and the honest request still works afterwards."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import nats
import orjson
import pytest
from a2a.helpers import new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types.a2a_pb2 import ListTasksRequest, TaskState
from a2a.utils.errors import InvalidRequestError
from a2a_support import Echo, factory, into, text_request
from nats.aio.msg import Msg
from nats_fixtures import eventually, subscribed, within

from agentcore import NATSAgent
from agentcore.a2a import OverloadedError
from agentcore.server import NATSServer

PREFIX = "agents.test.a2a-protocol.echo"
HELLO = b'{"message": {"messageId": "m-1", "role": "ROLE_USER", "parts": [{"text": "hello"}]}}'


class Held(AgentExecutor):
    """Start a task and hold it (working) until released; count the executions."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None and context.context_id is not None
        if context.current_task is None:
            await event_queue.enqueue_event(new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED))
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.start_work()
        self.running += 1
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None and context.context_id is not None
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


async def _echo_agent(make_agent: Any, executor: AgentExecutor | None = None, **config: Any) -> NATSAgent:
    agent: NATSAgent = await make_agent("a2a-bounded", start=False, **config)
    agent.serve_a2a(executor or Echo(), name="echo")
    await agent.astart()
    return agent


async def _honest(agent: NATSAgent, nc: nats.NATS, text: str = "still there?") -> None:
    """An a2a-sdk client's SendMessage completes with the echo."""
    client = factory(nc, streaming=False).create(agent.a2a_card())
    events = [e async for e in client.send_message(text_request(text))]
    assert events[0].task.status.state == TaskState.TASK_STATE_COMPLETED


def _reason(msg: Msg) -> tuple[str, str, dict[str, Any]]:
    """The error answer's HTTP code, ErrorInfo reason and metadata."""
    error = orjson.loads(msg.data)["error"]
    info = error["details"][0]
    return (msg.headers or {}).get("Nats-Service-Error-Code", ""), info["reason"], info["metadata"]


async def test_an_oversized_request_is_refused_typed_and_the_honest_one_served(make_agent: Any, raw_nc: nats.NATS) -> None:
    agent = await _echo_agent(make_agent, a2a__max_request_bytes=4096)
    big = b'{"message": {"messageId": "m-big", "role": "ROLE_USER", "parts": [{"text": "' + b"x" * 8000 + b'"}]}}'
    answer = await raw_nc.request(f"{PREFIX}.SendMessage", big, timeout=5,
                                  headers={"A2A-Version": "1.0", "Agent-Request": "a" * 32})
    code, reason, metadata = _reason(answer)
    assert (code, reason) == ("400", "INVALID_REQUEST")
    assert metadata == {"reason": "payload_too_large", "size": metadata["size"], "limit": "4096"}
    assert answer.headers is not None and answer.headers["Agent-Request"] == "a" * 32

    # At an a2a-sdk client: the SDK's own InvalidRequestError, carrying the reason.
    client = factory(raw_nc, streaming=False).create(agent.a2a_card())
    with pytest.raises(InvalidRequestError) as refused:
        await within(client.send_message(text_request("y" * 8000)).__anext__(), "an oversized SendMessage")
    assert refused.value.data is not None and refused.value.data["reason"] == "payload_too_large"
    # A stream too: its one error frame carries the same error.
    streaming = factory(raw_nc, streaming=True).create(agent.a2a_card())
    with pytest.raises(InvalidRequestError):
        await within(streaming.send_message(text_request("z" * 8000)).__anext__(), "an oversized stream")

    await within(_honest(agent, raw_nc), "the honest SendMessage")
    metrics = agent.get_metrics()
    assert metrics["a2a_refused_max_request_bytes"] == 3 and metrics["a2a_errors_invalid_request"] == 3


async def test_a_flood_is_refused_overloaded_at_once_and_the_honest_request_served(
        make_agent: Any, nats_url: str, raw_nc: nats.NATS) -> None:
    held = Held()
    agent = await _echo_agent(make_agent, held, a2a__max_concurrency=2, a2a__max_queued=3)
    attacker = await nats.connect(nats_url)
    answers: list[Msg] = []
    inbox = attacker.new_inbox()
    await attacker.subscribe(inbox, cb=into(answers))
    await subscribed(attacker)
    for i in range(30):  # blocking sends the executor holds: 2 served, 3 waiting, the rest refused
        await attacker.publish(f"{PREFIX}.SendMessage", HELLO.replace(b"m-1", f"m-{i}".encode()), reply=inbox,
                               headers={"A2A-Version": "1.0", "Agent-Request": f"{i:032x}"})
    await eventually(lambda: len(answers) == 25, what="25 refusals")
    assert {_reason(msg)[:2] for msg in answers} == {("503", "OVERLOADED")}
    assert _reason(answers[0])[2] == {"bound": "a2a.max_queued", "limit": "3"}
    metrics = agent.get_metrics()
    assert metrics["a2a_in_flight"] == 2 and metrics["a2a_queued"] == 3 and metrics["a2a_refused_max_queued"] == 25

    # While saturated, an a2a-sdk client is told so at once with a typed error.
    client = factory(raw_nc, streaming=False).create(agent.a2a_card())
    with pytest.raises(OverloadedError) as refused:
        await within(client.send_message(text_request("now?")).__anext__(), "a SendMessage to a saturated agent")
    assert refused.value.data == {"bound": "a2a.max_queued", "limit": "3"}

    held.release.set()  # the held tasks complete; the five admitted ones are answered
    await eventually(lambda: len(answers) == 30, what="the admitted requests answered")
    assert agent.get_metrics()["a2a_queued"] == 0
    await within(_honest(agent, raw_nc), "the honest SendMessage after the flood")
    await attacker.close()


async def _open_stream(nc: nats.NATS, frames: list[Msg]) -> None:
    """A SendStreamingMessage that asks for a window of 1 and never grants credit."""
    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=into(frames))
    await subscribed(nc)
    await nc.publish(f"{PREFIX}.SendStreamingMessage", HELLO, reply=inbox,
                     headers={"A2A-Version": "1.0", "Agent-Request": secrets.token_hex(16), "Agent-Window": "1"})


def _refused_frames(frames: list[Msg]) -> list[dict[str, Any]]:
    return [orjson.loads(m.data) for m in frames if (m.headers or {}).get("Agent-Kind") == "error"]


async def test_streams_are_bounded_per_sender_and_in_all(make_agent: Any, nats_url: str, raw_nc: nats.NATS) -> None:
    held = Held()
    agent = await _echo_agent(make_agent, held, a2a__max_streams=4, a2a__streams_per_sender=2, a2a__idle_timeout=1.0)
    one = await nats.connect(nats_url)
    frames: list[Msg] = []
    for _ in range(3):  # one connection: its third stream is over a2a.streams_per_sender
        await _open_stream(one, frames)
    await eventually(lambda: len(_refused_frames(frames)) == 1, what="the third stream refused")
    refusal = _refused_frames(frames)[0]
    assert refusal["code"] == "OVERLOADED" and refusal["error"]["details"][0]["metadata"]["bound"] == "a2a.streams_per_sender"

    others = [await nats.connect(nats_url) for _ in range(3)]
    more: list[Msg] = []
    for nc in others:  # two more streams fit the agent's four; the third connection's is over a2a.max_streams
        await _open_stream(nc, more)
    await eventually(lambda: len(_refused_frames(more)) == 1, what="the fifth stream refused")
    assert _refused_frames(more)[0]["error"]["details"][0]["metadata"]["bound"] == "a2a.max_streams"
    metrics = agent.get_metrics()
    assert metrics["a2a_streams_open"] == 4 and metrics["a2a_refused_streams_per_sender"] == 1
    assert metrics["a2a_refused_max_streams"] == 1

    # An a2a-sdk client opening a stream now gets the typed error.
    client = factory(raw_nc, streaming=True).create(agent.a2a_card())
    with pytest.raises(OverloadedError):
        await within(client.send_message(text_request("stream?")).__anext__(), "a stream over the bound")

    # The silent streams end: their tasks complete and the streams, given no credit, time out; then an honest
    # stream is served to its end.
    held.release.set()
    await eventually(lambda: agent.get_metrics()["a2a_streams_open"] == 0, timeout=15, what="the silent streams ended")
    held.release = asyncio.Event()
    held.release.set()
    events = await within(_collect(client), "an honest stream")
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    for nc in (one, *others):
        await nc.close()


async def _collect(client: Any) -> list[Any]:
    return [event async for event in client.send_message(text_request("honest stream"))]


async def test_the_task_store_is_bounded_by_bytes(make_agent: Any, raw_nc: nats.NATS) -> None:
    held = Held()
    agent = await _echo_agent(make_agent, held, a2a__max_store_bytes=6000)
    client = factory(raw_nc, streaming=False).create(agent.a2a_card())
    held.release.set()
    for i in range(30):  # finished tasks: the oldest are forgotten to make room
        events = await within(client.send_message(text_request(f"task {i}")).__anext__(), "SendMessage")
        assert events.task.status.state == TaskState.TASK_STATE_COMPLETED
    metrics = agent.get_metrics()
    assert 0 < metrics["a2a_store_bytes"] <= 6000 and metrics["a2a_store_evictions"] > 0

    # Unfinished tasks fill it: a new task is refused typed, the running ones are kept.
    held.release = asyncio.Event()
    attacker_ids = []
    refused: OverloadedError | None = None
    for i in range(30):
        request = text_request(f"held {i}")
        request.configuration.return_immediately = True
        try:
            first = await within(client.send_message(request).__anext__(), "a held task")
        except OverloadedError as exc:
            refused = exc
            break
        attacker_ids.append(first.task.id)
    assert refused is not None and refused.data == {"bound": "a2a.max_store_bytes", "limit": "6000"}
    assert attacker_ids and agent.get_metrics()["a2a_store_bytes"] <= 6000
    held.release.set()
    await eventually(lambda: held.running == 0, what="the held tasks finished")
    await within(_honest(agent, raw_nc), "the honest SendMessage once tasks finished")


async def test_the_jetstream_bucket_is_bounded_by_bytes() -> None:
    with NATSServer(jetstream=True) as server:
        held = Held()
        agent: NATSAgent = NATSAgent("a2a-js-bounded", config={
            "nats.servers": [server.url], "nats.environment": "test", "agent.heartbeat_interval": 60.0,
            "a2a.store": "jetstream", "a2a.jetstream_max_bytes": 16 * 1024})
        agent.serve_a2a(held, name="echo")
        await agent.astart()
        nc = await nats.connect(server.url)
        try:
            client = factory(nc, streaming=False).create(agent.a2a_card())
            refused: OverloadedError | None = None
            admitted = 0
            for i in range(200):  # tasks held running: their writes fill the bucket until it refuses a new one
                request = text_request(f"held {i} " + "x" * 200)
                request.configuration.return_immediately = True
                try:
                    await within(client.send_message(request).__anext__(), "a held task")
                except OverloadedError as exc:
                    refused = exc
                    break
                admitted += 1
            assert refused is not None and refused.data == {"bound": "a2a.jetstream_max_bytes", "limit": "16384"}
            assert admitted > 0
            metrics = agent.get_metrics()
            assert metrics["a2a_store_refused"] >= 1 and metrics["a2a_errors_overloaded"] >= 1
            # The running tasks finish in the room kept for them, and are read back completed.
            held.release.set()
            await eventually(lambda: held.running == 0, what="the held tasks finished")

            async def all_completed() -> bool:
                listed = await client.list_tasks(ListTasksRequest(page_size=100))
                return sum(t.status.state == TaskState.TASK_STATE_COMPLETED for t in listed.tasks) == admitted

            await eventually(all_completed, what="every admitted task completed in the bucket")
        finally:
            held.release.set()
            await nc.close()
            await agent.astop()


async def test_the_bytes_of_admitted_requests_are_bounded(make_agent: Any, nats_url: str, raw_nc: nats.NATS) -> None:
    held = Held()
    agent = await _echo_agent(make_agent, held, a2a__max_queued_bytes=64 * 1024)
    attacker = await nats.connect(nats_url)
    answers: list[Msg] = []
    inbox = attacker.new_inbox()
    await attacker.subscribe(inbox, cb=into(answers))
    await subscribed(attacker)
    padding = b"p" * 20_000  # an unknown field: parsed past, but held with the request until it is answered
    body = HELLO[:-1] + b', "padding": "' + padding + b'"}'
    for i in range(10):  # three fit in 64 KiB, the other seven are refused at once
        await attacker.publish(f"{PREFIX}.SendMessage", body.replace(b"m-1", f"m-{i}".encode()), reply=inbox,
                               headers={"A2A-Version": "1.0", "Agent-Request": f"{i:032x}"})
    await eventually(lambda: len(answers) == 7, what="seven refusals")
    assert {_reason(msg)[2]["bound"] for msg in answers} == {"a2a.max_queued_bytes"}
    metrics = agent.get_metrics()
    assert metrics["a2a_queued_bytes"] <= 64 * 1024 and metrics["a2a_refused_max_queued_bytes"] == 7
    held.release.set()
    await eventually(lambda: len(answers) == 10, what="the admitted requests answered")
    assert agent.get_metrics()["a2a_queued_bytes"] == 0
    await within(_honest(agent, raw_nc), "the honest SendMessage")
    await attacker.close()
