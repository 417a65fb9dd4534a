"""Kept results and statuses published without a request each: acknowledgements on one inbox, bounded in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nats
import pytest
from nats.js import api
from nats_fixtures import within

from agentcore.server import NATSServer
from agentcore.transport.acked import TIMED_OUT, AckedPublisher


@pytest.fixture
def nats_server() -> Iterator[NATSServer]:
    """JetStream is needed: a fresh server with it for each test."""
    with NATSServer(jetstream=True) as server:
        yield server


def _outcome() -> tuple[asyncio.Future[tuple[int | None, int | None]], object]:
    fut: asyncio.Future[tuple[int | None, int | None]] = asyncio.get_running_loop().create_future()

    def done(seq: int | None, code: int | None) -> None:
        fut.set_result((seq, code))

    return fut, done


async def test_a_write_learns_its_sequence_and_a_lost_compare_and_set_its_code(raw_nc: nats.NATS) -> None:
    await raw_nc.jetstream().add_stream(api.StreamConfig(name="W", subjects=["w.>"]))
    acked = AckedPublisher(raw_nc, limit=8, timeout=5.0)
    await acked.start()
    first, done = _outcome()
    assert await acked.publish("w.a", b"1", done)  # type: ignore[arg-type]
    assert await within(first, "the first acknowledgement") == (1, None)
    stale, done = _outcome()
    assert await acked.publish("w.a", b"2", done, {"Nats-Expected-Last-Subject-Sequence": "0"})  # type: ignore[arg-type]
    assert await within(stale, "the refusal") == (None, 10071)  # the entry moved on: the writer re-reads it
    assert acked.in_flight == 0


async def test_a_write_nothing_stores_fails_and_the_bound_holds(raw_nc: nats.NATS) -> None:
    acked = AckedPublisher(raw_nc, limit=1, timeout=5.0)
    await acked.start()
    lost, done = _outcome()
    assert await acked.publish("nowhere.x", b"1", done)  # type: ignore[arg-type]
    assert not await acked.publish("nowhere.y", b"2", done)  # type: ignore[arg-type]  # one in flight at most
    seq, code = await within(lost, "the no-responders answer")
    assert seq is None and code == TIMED_OUT  # the caller writes it the awaited way
    assert acked.in_flight == 0


async def test_a_forged_acknowledgement_is_no_sequence(raw_nc: nats.NATS, nats_url: str) -> None:
    acked = AckedPublisher(raw_nc, limit=8, timeout=5.0)
    await acked.start()
    forged, done = _outcome()
    assert await acked.publish("nowhere.z", b"1", done)  # type: ignore[arg-type]
    reply = f"{acked._prefix}.1"
    stranger = await nats.connect(nats_url)
    try:
        # Someone who learnt the inbox answers first with garbage: it is no acknowledgement, so nothing counts as kept.
        await stranger.publish(reply, b"not json")
        await stranger.flush()
        seq, _code = await within(forged, "the forged answer")
        assert seq is None
    finally:
        await stranger.close()
