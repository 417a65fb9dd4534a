"""Streaming against a real nats-server: order, duplicates, gaps, errors, timeouts, cancel, backpressure, 20 MB."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest

from agentcore import NATSAgent
from agentcore.errors import StreamError, StreamGapError, StreamTimeoutError
from agentcore.stream_frames import H_CTL, H_FINAL, H_KIND, H_SEQ, H_STREAM
from agentcore.streaming import StreamReceiver
from nats_fixtures import eventually


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
    with pytest.raises(Exception, match="nope"):
        async for _ in client.request_stream(worker.topics.task("broken"), None):
            pass


async def fake_stream(raw_nc: nats.NATS, make_agent: Any, **options: Any) -> tuple[StreamReceiver, asyncio.Queue[Any]]:
    """A client receiving a stream that a raw nats-py publisher writes frame by frame."""
    client = await make_agent("client")
    tasks: asyncio.Queue[Any] = asyncio.Queue()

    async def on_task(msg: Any) -> None:
        await tasks.put(msg.reply)

    await raw_nc.subscribe("raw.task", cb=on_task)
    await raw_nc.flush()

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
        inbox = await tasks.get()
        for seq, data, final in [(0, b"a", False), (0, b"a", False), (2, b"c", False), (1, b"b", False), (1, b"b", False), (3, b"d", True)]:
            await raw_nc.publish(inbox, data, headers=frame(seq, data, final))
        chunks = [c async for c in receiver]
    assert b"".join(c.data for c in chunks) == b"abcd"
    assert receiver.duplicates == 2


async def test_a_missing_chunk_raises_a_gap_error(make_agent: Any, raw_nc: nats.NATS) -> None:
    receiver, tasks = await fake_stream(raw_nc, make_agent, gap_timeout=0.2)
    cancels: asyncio.Queue[Any] = asyncio.Queue()

    async def on_ctl(msg: Any) -> None:
        if msg.headers and msg.headers.get("Agent-Cancel"):
            await cancels.put(msg)

    await raw_nc.subscribe("raw.ctl", cb=on_ctl)
    await raw_nc.flush()
    got = []
    with pytest.raises(StreamGapError):
        async with receiver:
            inbox = await tasks.get()
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
            inbox = await tasks.get()
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
