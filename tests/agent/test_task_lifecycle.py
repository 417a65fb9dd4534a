"""Task lifecycle against a real nats-server: cancellation reaching the handler from each call site, task_status
through the lifecycle, the guide's stream_response snippet verbatim, and send_task to a streaming capability."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import nats
import orjson
import pytest

from agentcore import HandlerError, NATSAgent, RequestTimeoutError, TaskNotFoundError
from agentcore.envelope import decode, encode, new_message
from nats_fixtures import eventually, within
from task_helpers import Blocking, server_and_client


# ------------------------------------------------------------------ cancellation from each call site


async def test_cancelling_an_awaiting_send_task_cancels_the_handler(make_agent: Any) -> None:
    blocking = Blocking()
    server, client = await server_and_client(make_agent, blocking)
    call = asyncio.ensure_future(client.send_task("slow", {"x": 1}, timeout=30))
    await within(blocking.started.wait(), "the handler to start")
    call.cancel()
    await within(blocking.cancelled.wait(), "the handler to see CancelledError", 10)
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(lambda: server.get_metrics()["tasks_cancelled"] == 1, what="the server to count it")
    assert server.get_metrics()["cancels_rejected"] == 0


async def test_a_request_timeout_cancels_the_handler(make_agent: Any) -> None:
    blocking = Blocking()
    server, client = await server_and_client(make_agent, blocking)
    with pytest.raises(RequestTimeoutError):
        await client.request(server.topics.task("slow"), None, timeout=0.5)
    await within(blocking.cancelled.wait(), "the handler to see CancelledError", 10)


async def test_closing_a_request_stream_early_cancels_the_handler(make_agent: Any) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(message: dict[str, Any]) -> None:
        async def tokens() -> Any:
            yield "first "
            await asyncio.Event().wait()  # the next token never comes
            yield "never"

        try:
            started.set()
            await server.stream_response(message["id"], tokens())
        except asyncio.CancelledError:
            cancelled.set()
            raise

    server, client = await server_and_client(make_agent, handler)
    async with client.request_stream(server.topics.task("slow"), None) as stream:
        async for chunk in stream:
            assert chunk.text == "first "
            break
    await within(cancelled.wait(), "the streaming handler to see CancelledError", 10)
    await eventually(lambda: server.get_metrics()["tasks_cancelled"] == 1, what="the server to count it")


async def test_cancelling_the_task_that_reads_a_request_stream_cancels_the_handler(make_agent: Any) -> None:
    blocking = Blocking()
    server, client = await server_and_client(make_agent, blocking)

    async def read() -> list[Any]:
        async with client.request_stream(server.topics.task("slow"), None) as stream:
            return [c async for c in stream]

    reader = asyncio.ensure_future(read())
    await within(blocking.started.wait(), "the handler to start")
    reader.cancel()
    await within(blocking.cancelled.wait(), "the handler to see CancelledError", 10)


async def test_agent_cancel_names_a_stream_task_by_its_id(make_agent: Any) -> None:
    blocking = Blocking()
    server, client = await server_and_client(make_agent, blocking)
    stream = client.request_stream(server.topics.task("slow"), None)
    async with stream:
        await within(blocking.started.wait(), "the handler to start")
        assert stream.task_id is not None
        answer = await client.cancel(stream.task_id)
        assert answer == {"task_id": stream.task_id, "state": "cancelled", "agent": "server", "since": answer["since"]}
        await within(blocking.cancelled.wait(), "the handler to see CancelledError", 10)
    with pytest.raises(TaskNotFoundError):
        await client.cancel("no-such-task", reply_to="_INBOX.nowhere", timeout=0.3)


async def test_a_task_cancelled_while_queued_never_runs(make_agent: Any) -> None:
    blocking = Blocking()
    server = await make_agent("server", capabilities={"slow": blocking}, cache__enabled=False, agent__max_concurrency=1)
    client = await make_agent("client")
    first = asyncio.ensure_future(client.send_task("slow", 1, timeout=30))
    await within(blocking.started.wait(), "the first task to start")
    second = asyncio.ensure_future(client.send_task("slow", 2, timeout=30))
    await eventually(lambda: server.get_metrics()["queued"] == 1, what="the second task to queue")
    second.cancel()
    await eventually(lambda: server.get_metrics()["tasks_cancelled"] == 1, what="the queued task cancelled")
    blocking.release.set()
    assert await within(first, "the first answer") == "finished"
    await eventually(lambda: server.get_metrics()["queued"] == 0, what="the queue to drain")
    assert len(blocking.ids) == 1  # the cancelled one never reached the handler


# ------------------------------------------------------------------ status


async def test_task_status_through_the_lifecycle(make_agent: Any) -> None:
    blocking = Blocking()

    async def failing(message: dict[str, Any]) -> Any:
        raise ValueError("no")

    server = await make_agent("server", capabilities={"slow": blocking, "failing": failing}, cache__enabled=False,
                              agent__max_concurrency=1)
    client = await make_agent("client")
    stream = client.request_stream(server.topics.task("slow"), None)
    async with stream:
        await within(blocking.started.wait(), "the handler to start")
        task_id = stream.task_id
        assert task_id is not None
        assert (await client.task_status(task_id))["state"] == "running"
        queued = client.request_stream(server.topics.task("slow"), None)
        async with queued:
            await eventually(lambda: server.get_metrics()["queued"] == 1, what="the second task to queue")
            assert queued.task_id is not None
            assert (await client.task_status(queued.task_id))["state"] == "queued"
            blocking.release.set()
            assert [c.items() for c in [c async for c in stream]] == [["finished"]]
            assert (await client.task_status(task_id)) == {"task_id": task_id, "state": "done", "agent": "server",
                                                           "since": (await client.task_status(task_id))["since"]}
            [c async for c in queued]
    blocking.release.clear()
    async with client.request_stream(server.topics.task("slow"), None) as third:
        await within(eventually(lambda: len(blocking.ids) == 3), "the third task to start")
        assert third.task_id is not None
        await client.cancel(third.task_id)
        assert (await client.task_status(third.task_id))["state"] == "cancelled"

    failed = client.request_stream(server.topics.task("failing"), None)
    with pytest.raises(HandlerError):
        async with failed:
            [c async for c in failed]
    assert failed.task_id is not None
    assert (await client.task_status(failed.task_id))["state"] == "failed"
    with pytest.raises(TaskNotFoundError):
        await client.task_status("never-sent", timeout=0.3)


async def test_status_records_are_bounded_in_bytes(make_agent: Any) -> None:
    server = await make_agent("server", capabilities={"echo": lambda m: m["payload"]["content"]}, cache__enabled=False,
                              tasks__max_status_bytes=2048)
    client = await make_agent("client")
    for i in range(100):
        await client.send_task("echo", i)
    metrics = server.get_metrics()
    assert metrics["task_records_bytes"] <= 2048
    assert metrics["task_records_evicted"] > 0
    assert 0 < metrics["task_records"] < 100


# ------------------------------------------------------------------ streams and one-result callers


async def test_the_guides_stream_response_snippet_runs_as_written(make_agent: Any) -> None:
    agent = await make_agent("analyst")
    reader = await make_agent("reader")

    async def generate_analysis() -> Any:
        for i in range(10):
            yield f"Analysis part {i}\n"

    async with reader.receive_stream("task-123", source="analyst") as stream:
        # Stream the response
        await agent.stream_response(
            task_id="task-123",
            response_generator=generate_analysis(),
            chunk_size=1024
        )
        text = "".join([chunk.text async for chunk in stream])
    assert text == "".join(f"Analysis part {i}\n" for i in range(10))


async def test_any_subscriber_of_the_result_topic_reads_an_unserved_stream(make_agent: Any, raw_nc: nats.NATS) -> None:
    from nats_fixtures import subscribed

    agent = await make_agent("analyst")
    seen: list[Any] = []
    done = asyncio.Event()

    async def on(msg: Any) -> None:
        seen.append((msg.headers.get("Agent-Seq"), msg.data))
        if msg.headers.get("Agent-Final"):
            done.set()

    await raw_nc.subscribe("agents.test.result.*.stream", cb=on)
    await subscribed(raw_nc)

    async def parts() -> Any:
        yield "a"
        await asyncio.sleep(0)
        yield "b"

    await agent.stream_response("task-9", parts(), chunk_size=1024)
    await within(done.wait(), "the final frame")
    assert b"".join(data for _seq, data in seen) == b"ab"
    assert [seq for seq, _data in seen] == [str(i) for i in range(len(seen))]


async def test_send_task_to_a_streaming_capability_returns_the_assembled_result(make_agent: Any, raw_nc: nats.NATS) -> None:
    async def text(message: dict[str, Any]) -> None:
        async def tokens() -> Any:
            for word in ("one ", "two ", "three"):
                await asyncio.sleep(0)
                yield word

        await server.stream_response(message["id"], tokens(), chunk_size=1024)

    async def items(message: dict[str, Any]) -> None:
        await server.stream_response(message["id"], iter([{"a": 1}, [2], 3]))

    async def raw(message: dict[str, Any]) -> None:
        await server.stream_response(message["id"], iter([b"\x00\x01", b"\x02"]))

    server = await make_agent("server", capabilities={"text": text, "items": items, "raw": raw}, cache__enabled=False)
    client = await make_agent("client")
    assert await client.send_task("text", None) == "one two three"
    assert await client.request(server.topics.task("items"), None) == [{"a": 1}, [2], 3]
    assert base64.b64decode((await client.send_task("raw", None))["base64"]) == b"\x00\x01\x02"
    # A plain NATS request (no agentcore on that side) gets one result envelope with the assembled content.
    task = new_message("task", None, source_id="plain")
    reply = await raw_nc.request(server.topics.task("text"), encode(task), timeout=10)
    answer = decode(reply.data)
    assert answer["correlationId"] == task["id"] and answer["payload"]["content"] == "one two three"
    assert orjson.loads(reply.data)["type"] == "result"
