"""Streaming against a real nats-server: order, duplicates, gaps, errors, timeouts, cancel, backpressure, 20 MB."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import orjson
import pytest

from agentcore import HandlerError, NATSAgent
from agentcore.envelope import encode, new_message
from agentcore.errors import NoRespondersError, StreamError, StreamGapError, StreamTimeoutError
from agentcore.transport.frames import H_CTL, H_FINAL, H_KIND, H_SEQ, H_STREAM
from agentcore.streaming import StreamReceiver
from nats_fixtures import eventually, subscribed, within


async def streamer(make_agent: Any, generator_factory: Any, chunk_size: int = 1024) -> NATSAgent:
    async def handler(message: dict[str, Any]) -> None:
        await agent.stream_response(message["id"], generator_factory(message), chunk_size=chunk_size)

    agent = await make_agent("producer", capabilities={"gen": handler}, cache__enabled=False)
    return agent


async def test_chunks_arrive_in_order_and_coalesced(make_agent: Any) -> None:
    async def parts(message: dict[str, Any]) -> Any:
        for i in range(100):
            yield f"part {i:03d};"  # 9 bytes each

    producer = await streamer(make_agent, parts, chunk_size=100)
    client = await make_agent("client")
    chunks = [c async for c in client.request_stream(producer.topics.task("gen"), None)]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all(len(c.data) == 100 for c in chunks)  # 900 bytes: nine full chunks (the empty final frame is not yielded)
    assert len(chunks) == 9
    assert "".join(c.text for c in chunks) == "".join(f"part {i:03d};" for i in range(100))


async def test_a_token_goes_out_as_soon_as_the_generator_pauses(make_agent: Any) -> None:
    """Each token reaches the requester while the generator waits for the next: it waits until the requester has it."""
    received: list[asyncio.Event] = [asyncio.Event() for _ in range(5)]

    async def tokens(message: dict[str, Any]) -> Any:
        for i in range(5):
            yield f"token {i} "
            # Coalescing until chunk_size (1024) would hold this token back, and the requester would never see it.
            await within(received[i].wait(), f"the requester to receive token {i} while the generator waits", 10)

    producer = await streamer(make_agent, tokens)
    client = await make_agent("client")
    texts = []
    async with client.request_stream(producer.topics.task("gen"), None) as stream:
        async for chunk in stream:
            texts.append(chunk.text)
            received[len(texts) - 1].set()
    assert texts == [f"token {i} " for i in range(5)]


async def test_linger_joins_tokens_that_come_close_together(make_agent: Any) -> None:
    gate = asyncio.Event()

    async def burst(message: dict[str, Any]) -> Any:
        yield "a"
        await gate.wait()  # released below, while the producer lingers on its first token
        yield "b"

    async def handler(message: dict[str, Any]) -> None:
        asyncio.get_running_loop().call_soon(gate.set)
        await agent.stream_response(message["id"], burst(message), linger=30.0)

    agent = await make_agent("producer", capabilities={"gen": handler}, cache__enabled=False)
    client = await make_agent("client")
    chunks = [c.text async for c in client.request_stream(agent.topics.task("gen"), None)]
    assert chunks == ["ab"]


async def test_sync_generators_bytes_and_json_items(make_agent: Any) -> None:
    def mixed(message: dict[str, Any]) -> Any:
        yield {"a": 1}
        yield {"b": [2]}
        yield b"\x00\x01"
        yield "é" * 10  # 20 bytes: split at a character boundary with chunk_size 7

    producer = await streamer(make_agent, mixed, chunk_size=7)
    client = await make_agent("client")
    async with client.request_stream(producer.topics.task("gen"), None) as stream:
        chunks = [c async for c in stream]
    json_data = b"".join(c.data for c in chunks if c.kind == "json")
    assert [__import__("orjson").loads(line) for line in json_data.splitlines()] == [{"a": 1}, {"b": [2]}]
    assert b"".join(c.data for c in chunks if c.kind == "bytes") == b"\x00\x01"
    texts = [c.text for c in chunks if c.kind == "text"]  # every text chunk decodes on its own
    assert "".join(texts) == "é" * 10 and all(len(t.encode()) <= 7 for t in texts)


async def test_generator_error_ends_the_stream_with_an_error_frame(make_agent: Any) -> None:
    async def failing(message: dict[str, Any]) -> Any:
        yield "first"
        raise RuntimeError("model crashed")

    producer = await streamer(make_agent, failing, chunk_size=5)
    client = await make_agent("client")
    received = []
    with pytest.raises(StreamError) as info:
        async for chunk in client.request_stream(producer.topics.task("gen"), None):
            received.append(chunk.text)
    assert received == ["first"]
    assert "model crashed" in str(info.value) and info.value.code == "stream_error"
    await eventually(lambda: producer.get_metrics().get("streams_failed") == 1)


async def test_plain_result_and_handler_error_reach_a_stream_requester(make_agent: Any) -> None:
    async def plain(message: dict[str, Any]) -> Any:
        return {"whole": True}

    async def broken(message: dict[str, Any]) -> Any:
        raise ValueError("nope")

    worker = await make_agent("w", capabilities={"plain": plain, "broken": broken})
    client = await make_agent("client")
    chunks = [c async for c in client.request_stream(worker.topics.task("plain"), None)]
    assert [c.items() for c in chunks] == [[{"whole": True}]]
    with pytest.raises(HandlerError, match="nope"):
        async for _ in client.request_stream(worker.topics.task("broken"), None):
            pass


async def fake_stream(raw_nc: nats.NATS, make_agent: Any, **options: Any) -> tuple[StreamReceiver, asyncio.Queue[Any]]:
    """A client receiving a stream that a raw nats-py publisher writes frame by frame."""
    client = await make_agent("client")
    tasks: asyncio.Queue[Any] = asyncio.Queue()

    async def on_task(msg: Any) -> None:
        await tasks.put(msg.reply)

    await raw_nc.subscribe("raw.task", cb=on_task)
    await subscribed(raw_nc)  # flush() alone can overtake the SUB

    async def start(inbox: str) -> None:
        await client.nc.publish("raw.task", b"{}", reply=inbox)

    return StreamReceiver(client.nc, start=start, **options), tasks


def frame(seq: int, data: bytes, final: bool = False, kind: str = "text") -> dict[str, str]:
    headers = {H_STREAM: "t1", H_SEQ: str(seq), H_KIND: kind, H_CTL: "raw.ctl"}
    if final:
        headers[H_FINAL] = "1"
    return headers


async def test_duplicates_are_dropped_and_reordering_is_repaired(make_agent: Any, raw_nc: nats.NATS) -> None:
    receiver, tasks = await fake_stream(raw_nc, make_agent, gap_timeout=5.0)
    async with receiver:
        inbox = await asyncio.wait_for(tasks.get(), 5)
        for seq, data, final in [(0, b"a", False), (0, b"a", False), (2, b"c", False), (1, b"b", False), (1, b"b", False), (3, b"d", True)]:
            await raw_nc.publish(inbox, data, headers=frame(seq, data, final))
        chunks = [c async for c in receiver]
    assert b"".join(c.data for c in chunks) == b"abcd"
    assert receiver.duplicates == 2


async def test_malformed_frame_headers_are_dropped_not_fatal(make_agent: Any, raw_nc: nats.NATS) -> None:
    receiver, tasks = await fake_stream(raw_nc, make_agent, gap_timeout=5.0)
    async with receiver:
        inbox = await asyncio.wait_for(tasks.get(), 5)
        await raw_nc.publish(inbox, b"a", headers=frame(0, b"a"))
        await raw_nc.publish(inbox, b"?", headers={**frame(1, b"?"), H_SEQ: "not-a-number"})
        await raw_nc.publish(inbox, b"b", headers=frame(1, b"b", final=True))
        chunks = [c async for c in receiver]
    assert b"".join(c.data for c in chunks) == b"ab"
    assert receiver.duplicates == 1


async def test_a_missing_chunk_raises_a_gap_error(make_agent: Any, raw_nc: nats.NATS) -> None:
    receiver, tasks = await fake_stream(raw_nc, make_agent, gap_timeout=0.2)
    cancels: asyncio.Queue[Any] = asyncio.Queue()

    async def on_ctl(msg: Any) -> None:
        if msg.headers and msg.headers.get("Agent-Cancel"):
            await cancels.put(msg)

    await raw_nc.subscribe("raw.ctl", cb=on_ctl)
    await subscribed(raw_nc)  # flush() alone can overtake the SUB
    got = []
    with pytest.raises(StreamGapError):
        async with receiver:
            inbox = await asyncio.wait_for(tasks.get(), 5)
            for seq in (0, 2, 3):  # 1 never comes
                await raw_nc.publish(inbox, b"x", headers=frame(seq, b"x"))
            async for chunk in receiver:
                got.append(chunk.seq)
    assert got == [0]
    await asyncio.wait_for(cancels.get(), 5)  # the producer was told to stop


async def test_idle_timeout(make_agent: Any, raw_nc: nats.NATS) -> None:
    receiver, tasks = await fake_stream(raw_nc, make_agent, idle_timeout=0.2)
    with pytest.raises(StreamTimeoutError):
        async with receiver:
            inbox = await asyncio.wait_for(tasks.get(), 5)
            await raw_nc.publish(inbox, b"x", headers=frame(0, b"x"))
            async for _ in receiver:
                pass


async def test_consumer_cancel_stops_the_producer(make_agent: Any) -> None:
    closed = asyncio.Event()

    async def endless(message: dict[str, Any]) -> Any:
        try:
            i = 0
            while True:
                yield f"{i};"
                i += 1
        finally:
            closed.set()

    producer = await streamer(make_agent, endless, chunk_size=10)
    client = await make_agent("client")
    async with client.request_stream(producer.topics.task("gen"), None, window=4) as stream:
        async for chunk in stream:
            if chunk.seq == 5:
                break
    await asyncio.wait_for(closed.wait(), 5)
    await eventually(lambda: producer.get_metrics().get("streams_cancelled") == 1)


async def test_slow_consumer_bounds_the_producer_to_the_window(make_agent: Any) -> None:
    produced = 0
    window = 4

    async def fast(message: dict[str, Any]) -> Any:
        nonlocal produced
        for i in range(60):
            produced += 1
            yield b"z" * 100  # one item, one chunk

    producer = await streamer(make_agent, fast, chunk_size=100)
    client = await make_agent("client")
    consumed = 0
    ahead = 0
    async with client.request_stream(producer.topics.task("gen"), None, window=window) as stream:
        async for chunk in stream:
            consumed += 1
            ahead = max(ahead, produced - consumed)
            await asyncio.sleep(0.002)  # a deliberately slow consumer (not synchronisation)
        assert stream.max_buffered <= window
    assert consumed == 60
    # The generator runs at most the window (plus the item waiting for credit) ahead of the consumer.
    assert ahead <= window + 1


async def test_20_mb_result_reaches_the_caller_whole(make_agent: Any) -> None:
    blob = bytes(range(256)) * (20 * 1024 * 1024 // 256)

    async def big(message: dict[str, Any]) -> Any:
        return blob.hex()[: 20 * 1024 * 1024]  # a 20 MB string result, 20x max_payload

    worker = await make_agent("big", capabilities={"big": big})
    client = await make_agent("client")
    result = await client.send_task("big", None, timeout=30)
    assert len(result) == 20 * 1024 * 1024 and result == blob.hex()[: 20 * 1024 * 1024]
    assert worker.get_metrics()["large_results_streamed"] == 1


async def test_20_mb_task_reaches_the_handler_whole_and_comes_back(make_agent: Any) -> None:
    """A request larger than max_payload is offered as a stream; the serving agent pulls it before routing."""
    blob = (bytes(range(256)) * (20 * 1024 * 1024 // 256)).hex()[: 20 * 1024 * 1024]
    seen: list[str] = []

    async def echo(message: dict[str, Any]) -> Any:
        seen.append(message["id"])
        return message["payload"]["content"]

    worker = await make_agent("echo", capabilities={"echo": echo})
    client = await make_agent("client")
    result = await client.send_task("echo", blob, timeout=30)
    assert result == blob and len(seen) == 1  # the handler saw the whole task once, and the 20 MB came back
    assert client.get_metrics()["large_requests_streamed"] == 1
    assert worker.get_metrics()["large_requests_pulled"] == 1 and worker.get_metrics()["large_results_streamed"] == 1
    assert await client.send_task("echo", "small") == "small"


async def test_a_large_task_nobody_pulls_times_out_typed(make_agent: Any, raw_nc: Any) -> None:
    from agentcore import RequestTimeoutError
    from nats_fixtures import subscribed

    offers: list[dict[str, Any]] = []

    async def silent(msg: Any) -> None:  # a subscriber that takes the offer and never pulls it
        offers.append(orjson.loads(msg.data))

    await raw_nc.subscribe("agents.test.task.mute.>", cb=silent)
    await subscribed(raw_nc)
    client = await make_agent("client")
    with pytest.raises(RequestTimeoutError):
        await client.send_task("mute", "z" * 2_000_000, timeout=0.5)
    await eventually(lambda: len(offers) == 1)
    assert offers[0]["payload"]["content"] is None and offers[0]["payload"]["stream"]["size"] > 2_000_000


async def test_receive_stream_of_a_task_sent_with_publish(make_agent: Any) -> None:
    async def parts(message: dict[str, Any]) -> Any:
        for i in range(50):
            yield f"{i:02d};"

    producer = await streamer(make_agent, parts, chunk_size=30)
    client = await make_agent("client")
    async with client.receive_stream() as stream:  # subscribed before the task goes out
        task_id = await client.publish(producer.topics.task("gen"), None, type="task",
                                       message_id=stream.task_id, reply_to=stream.reply_to)
        chunks = [c async for c in stream]
    assert task_id == stream.task_id and all(c.task_id == task_id for c in chunks)
    assert [c.seq for c in chunks] == list(range(5))
    assert "".join(c.text for c in chunks) == "".join(f"{i:02d};" for i in range(50))


async def test_receive_stream_of_a_stamped_task_from_another_client_is_flow_controlled(
    make_agent: Any, raw_nc: nats.NATS
) -> None:
    produced = 0

    async def fast(message: dict[str, Any]) -> Any:
        nonlocal produced
        for _ in range(40):
            produced += 1
            yield b"z" * 100

    producer = await streamer(make_agent, fast, chunk_size=100)
    client = await make_agent("client")
    window, consumed, ahead = 4, 0, 0
    async with client.receive_stream(window=window) as stream:
        task = stream.stamp(new_message("task", None, source_id="raw-client"))
        assert task["routing"]["stream"] == {"window": window} and task["id"] == stream.task_id
        await raw_nc.publish(producer.topics.task("gen"), encode(task))  # not the agent's connection
        async for chunk in stream:
            consumed += 1
            ahead = max(ahead, produced - consumed)
            await asyncio.sleep(0.002)  # a deliberately slow consumer (not synchronisation)
    assert consumed == 40 and stream.max_buffered <= window and ahead <= window + 1


async def test_receive_stream_on_a_shared_subject_takes_only_its_task(make_agent: Any, raw_nc: nats.NATS) -> None:
    client = await make_agent("client")
    async with client.receive_stream("mine", reply_to="results.shared", gap_timeout=5.0) as stream:
        other = {**frame(0, b"theirs", True), H_STREAM: "theirs"}
        await raw_nc.publish("results.shared", b"theirs", headers=other)
        not_ours = new_message("result", "theirs", source_id="w", correlation_id="theirs")
        await raw_nc.publish("results.shared", encode(not_ours))
        ours = {**frame(0, b"mine", True), H_STREAM: "mine"}
        await raw_nc.publish("results.shared", b"mine", headers=ours)
        chunks = [c async for c in stream]
    assert [(c.task_id, c.data) for c in chunks] == [("mine", b"mine")]

    async with client.receive_stream("mine-too", reply_to="results.shared") as stream:
        await raw_nc.publish("results.shared", encode(not_ours))
        await raw_nc.publish("results.shared", encode(new_message("result", {"ok": 1}, source_id="w", correlation_id="mine-too")))
        assert [c.items() async for c in stream] == [[{"ok": 1}]]


async def test_an_oversized_plain_result_reaches_a_stream_consumer_whole(make_agent: Any) -> None:
    blob = "x" * (3 * 1024 * 1024)  # three times max_payload, returned rather than streamed

    async def big(message: dict[str, Any]) -> Any:
        return {"blob": blob}

    worker = await make_agent("big", capabilities={"big": big}, cache__enabled=False)
    client = await make_agent("client")
    chunks = [c async for c in client.request_stream(worker.topics.task("big"), None, window=4)]
    assert len(chunks) == 1 and chunks[0].final and chunks[0].items() == [{"blob": blob}]
    assert "stream" not in chunks[0].data[:100].decode()  # the data, not the offer envelope

    async with client.receive_stream() as stream:
        await client.nc.publish(worker.topics.task("big"), encode(stream.stamp(new_message("task", None, source_id="client"))))
        assert [c.items() async for c in stream] == [[{"blob": blob}]]
    assert worker.get_metrics()["large_results_streamed"] == 2


async def test_a_stream_nobody_serves_is_no_responders_at_once(make_agent) -> None:
    client = await make_agent("client")
    with pytest.raises(NoRespondersError, match="stream's task subject"):
        async with client.request_stream(client.topics.task("nobody"), {}) as stream:
            await within(stream.__anext__(), "the no-responders answer", timeout=5)
