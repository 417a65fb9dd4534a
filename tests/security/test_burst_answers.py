"""A stranger pipelines requests (one write, many frames, some the reader drops): the answers to a read of several
frames wait for nats-py's flusher together (transport.reader.BURSTS). They still leave in delivery order, all of
them, and the connection never stays marked as reading a burst, after a frame nats-py's parser refuses either."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import nats
import orjson

from agentcore.transport import inline
from agentcore.transport.reader import BURSTS, _Reader
from helpers import task_bytes
from nats_fixtures import eventually, subscribed, within


@contextlib.asynccontextmanager
async def _held_in_a_burst(nc: nats.NATS, reader: _Reader, data: bytes) -> AsyncIterator[asyncio.Future[None]]:
    """Run reader.parse(data) until nats-py's parser waits inside it: on nc's error callback, for a slow consumer
    (data holds a second frame past a subscription's pending limit), a callback that here never returns."""
    held = asyncio.Event()
    error_cb = nc._error_cb

    async def stuck(error: Exception) -> None:
        held.set()
        await asyncio.Event().wait()

    nc._error_cb = stuck
    parse = asyncio.ensure_future(reader.parse(data))
    try:
        await within(held.wait(), "the parse waiting in a burst")
        yield parse
    finally:
        parse.cancel()
        await asyncio.gather(parse, return_exceptions=True)
        nc._error_cb = error_cb


async def test_pipelined_requests_are_answered_in_delivery_order_and_the_burst_mark_is_cleared(
        make_agent: Any, raw_nc: nats.NATS, nats_server: Any) -> None:
    """Many requests in one write, with frames the reader drops between them: every answer, in request order."""

    async def work(message: dict[str, Any]) -> Any:
        return message["payload"]["content"]

    agent = await make_agent("worker", capabilities={"work": work}, cache__enabled=False)
    inbox = raw_nc.new_inbox()
    answers: asyncio.Queue[Any] = asyncio.Queue()
    await raw_nc.subscribe(inbox, cb=answers.put)
    await subscribed(raw_nc)
    subject = agent.topics.task("work").encode()
    count = 200
    frames = []
    for i in range(count):
        body = task_bytes(f"burst-{i}", i)
        frames.append(b"PUB %s %s %d\r\n%s\r\n" % (subject, inbox.encode(), len(body), body))
        if i % 50 == 25:  # frames the reader drops: a reply not UTF-8 (fast path), one nats-py misreads (\x0c)
            frames.append(b"PUB %s _INBOX.\xff %d\r\n%s\r\n" % (subject, len(body), body))
            frames.append(b"HPUB %s _INBOX.a\x0cb 12 %d\r\nNATS/1.0\r\n\r\n%s\r\n" % (subject, len(body) + 12, body))
    reader, writer = await asyncio.open_connection("127.0.0.1", nats_server.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"headers":true}\r\n' + b"".join(frames) + b"PING\r\n")
        await writer.drain()
        assert (await within(reader.readline(), "the stranger's PONG")).startswith(b"PONG")
        got = [orjson.loads((await within(answers.get(), f"answer {i}", 15)).data) for i in range(count)]
    finally:
        writer.close()
    assert [a["payload"]["content"] for a in got] == list(range(count))  # the order the requests were delivered in
    assert [a["correlationId"] for a in got] == [f"burst-{i}" for i in range(count)]
    await eventually(lambda: agent.nc not in BURSTS, what="the burst mark cleared")
    assert agent.get_metrics()["frames_unreadable"] == 2 * len(range(25, count, 50))
    # A lone request afterwards still goes straight out, and is answered.
    await raw_nc.publish(subject.decode(), task_bytes("lone", "x"), reply=inbox)
    lone = orjson.loads((await within(answers.get(), "the lone answer", 15)).data)
    assert lone["correlationId"] == "lone" and agent.nc not in BURSTS


async def test_a_burst_the_parser_refuses_or_a_cancelled_read_leaves_no_mark(raw_nc: nats.NATS) -> None:
    """A frame nats-py's parser raises on, or the read loop cancelled while nats-py's parser waits in a burst
    (a slow consumer's error callback): the connection is not left marked, so its answers go out at once again."""
    sub = await raw_nc.subscribe("x.>")
    await subscribed(raw_nc)
    reader = _Reader(raw_nc)
    got: list[bytes] = []
    reader.targets = {sub._id: lambda s, r, d: got.append(d)}

    def frame(payload: bytes) -> bytes:
        return b"MSG x.a %d %d\r\n%s\r\n" % (sub._id, len(payload), payload)

    try:
        await reader.parse(frame(b"1") + b"FOO BAR\r\n" + frame(b"2"))
    except nats.errors.ProtocolError:
        pass
    assert got == [b"1"] and raw_nc not in BURSTS
    # nats-py's parser waits inside a burst: the second frame past a subscription's pending limit awaits the error
    # callback (a slow consumer), which here never returns; the read loop is then cancelled (a close, a reconnect).
    slow = await raw_nc.subscribe("y.>", pending_msgs_limit=1)
    await subscribed(raw_nc)
    other = b"MSG y.a %d 1\r\nz\r\n" % slow._id
    reader.buf = bytearray()
    async with _held_in_a_burst(raw_nc, reader, frame(b"3") + other + other + frame(b"4")) as parse:
        assert got == [b"1", b"3"] and raw_nc in BURSTS
        parse.cancel()
        await asyncio.gather(parse, return_exceptions=True)
    assert parse.cancelled() and raw_nc not in BURSTS


async def test_forgetting_a_connection_drops_its_burst_mark_too(raw_nc: nats.NATS) -> None:
    """BURSTS holds its clients strongly: a read loop whose loop closes while nats-py's parser waits inside a burst
    never runs its cleanup, and the client (its buffers, its read Task) stayed in the set for good. Forgetting the
    connection (the agent's stop does, as for send_now's own bookkeeping) drops it as well."""
    sub = await raw_nc.subscribe("y.>", pending_msgs_limit=1)
    await subscribed(raw_nc)
    reader = _Reader(raw_nc)
    reader.targets = {}
    other = b"MSG y.a %d 1\r\nz\r\n" % sub._id
    async with _held_in_a_burst(raw_nc, reader, other + other + other):
        assert raw_nc in BURSTS
        inline.forget_connection(raw_nc)
        assert raw_nc not in BURSTS
