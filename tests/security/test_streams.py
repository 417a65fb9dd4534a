"""Stream frames are bound to their producer: a bystander cannot inject into a stream (a plain nats-py client attacks).

The attacker subscribes to the task subjects, so it sees each streamed task (its id and the consumer's inbox),
and to that inbox, so it sees the producer's frames. It injects frames with another stream id, frames with the
right stream id but its own Agent-Ctl, and a plain result that correlates with the task. None is yielded, each
is counted, the credit goes to the real producer only, and the honest stream arrives whole.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import orjson
import pytest

from agentcore.envelope import encode, new_message
from agentcore.errors import StreamTimeoutError
from agentcore.transport.frames import H_CTL, H_FINAL, H_KIND, H_SEQ, H_STREAM
from helpers import paced_producer, watch_streams
from nats_fixtures import eventually, subscribed, within


def frame(stream: str, seq: int, ctl: str, *, final: bool = False) -> dict[str, str]:
    headers = {H_STREAM: stream, H_SEQ: str(seq), H_KIND: "text", H_CTL: ctl}
    if final:
        headers[H_FINAL] = "1"
    return headers


async def test_frames_injected_into_a_request_stream_inbox_are_not_yielded(make_agent: Any, raw_nc: nats.NATS) -> None:
    watching, injected = asyncio.Event(), asyncio.Event()
    producer = await paced_producer(make_agent, watching, injected)
    client = await make_agent("client")
    attacker_ctl = raw_nc.new_inbox()
    credit_stolen: list[Any] = []
    sent = [0]

    async def on_credit(msg: Any) -> None:
        credit_stolen.append(msg)

    await raw_nc.subscribe(attacker_ctl, cb=on_credit)

    async def inject(task_id: str, inbox: str, headers: dict[str, str]) -> None:
        # The honest stream has begun: inject the next frames, and a result that correlates with the task.
        forgeries = [
            (b"X", frame(task_id, 1, attacker_ctl)),  # the right stream, another producer
            (b"Y", frame(task_id, 2, attacker_ctl, final=True)),
            (b"Z", frame("another-task", 1, headers[H_CTL])),  # the producer's Agent-Ctl, another stream
            (b"W", {H_STREAM: task_id, H_SEQ: "1", H_KIND: "text"}),  # no Agent-Ctl at all
            (encode(new_message("result", "forged", source_id="producer", correlation_id=task_id)), None),
        ]
        for data, forged_headers in forgeries:
            await raw_nc.publish(inbox, data, headers=forged_headers)
            sent[0] += 1

    await watch_streams(raw_nc, watching, injected, attacker_ctl, inject)

    async with client.request_stream(producer.topics.task("gen"), None, window=2) as stream:
        chunks = [c async for c in stream]
    assert "".join(c.text for c in chunks) == "abcde"
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert sent[0] == 5 and stream.rejected == 5
    assert client.get_metrics()["replies_rejected"] == 5
    assert credit_stolen == []  # every credit message went to the producer, none to the attacker's Agent-Ctl


async def test_a_plain_result_on_a_stream_inbox_must_correlate(make_agent: Any, raw_nc: nats.NATS) -> None:
    forged: dict[str, asyncio.Event] = {}  # task id -> its forgeries are at the server: the answer comes after them

    async def plain(message: dict[str, Any]) -> Any:
        await within(forged.setdefault(message["id"], asyncio.Event()).wait(), "the forgeries to reach the server")
        return {"honest": True}

    worker = await make_agent("worker", capabilities={"plain": plain}, cache__enabled=False)
    client = await make_agent("client")

    async def on_task(msg: Any) -> None:
        task_id = orjson.loads(msg.data)["id"]
        for data in (encode(new_message("result", "forged", source_id="worker", correlation_id="not-" + task_id)),
                     b"not an envelope"):
            await raw_nc.publish(msg.reply, data)
        await subscribed(raw_nc)  # the server has routed them
        forged.setdefault(task_id, asyncio.Event()).set()

    await raw_nc.subscribe("agents.test.task.>", cb=on_task)
    await subscribed(raw_nc)
    for _ in range(3):
        chunks = [c async for c in client.request_stream(worker.topics.task("plain"), None)]
        assert [c.items() for c in chunks] == [[{"honest": True}]]
    assert client.get_metrics()["replies_rejected"] == 6


async def test_a_receive_stream_takes_frames_from_one_producer_only(make_agent: Any, raw_nc: nats.NATS) -> None:
    """receive_stream on a subject of the caller's choosing: once the first frame bound the stream, frames with
    the same stream id but another Agent-Ctl are dropped; the honest ones still complete it."""
    client = await make_agent("client")
    honest_ctl, other_ctl = raw_nc.new_inbox(), raw_nc.new_inbox()
    async with client.receive_stream("mine", reply_to="results.mine", gap_timeout=5.0) as stream:
        await raw_nc.publish("results.mine", b"1", headers=frame("mine", 0, honest_ctl))
        await raw_nc.publish("results.mine", b"evil", headers=frame("mine", 1, other_ctl, final=True))
        await raw_nc.publish("results.mine", b"2", headers=frame("mine", 1, honest_ctl, final=True))
        chunks = [c async for c in stream]
    assert b"".join(c.data for c in chunks) == b"12" and stream.rejected == 1


async def test_nothing_but_forgeries_is_a_timeout_not_an_answer(make_agent: Any, raw_nc: nats.NATS) -> None:
    client = await make_agent("client")
    async with client.receive_stream("lonely", reply_to="results.lonely", idle_timeout=0.5) as stream:
        await raw_nc.publish("results.lonely", b"x", headers=frame("someone-else", 0, raw_nc.new_inbox(), final=True))
        await raw_nc.publish("results.lonely", encode(new_message("result", 1, source_id="m", correlation_id="nope")))
        with pytest.raises(StreamTimeoutError):
            [c async for c in stream]
    await eventually(lambda: stream.rejected == 2, what="both forgeries counted")
