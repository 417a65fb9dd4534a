"""Requests larger than max_payload travel as an offer the serving agent pulls: bounded, validated, answered."""

from __future__ import annotations

import asyncio
from typing import Any

from agentcore import NATSAgent
from agentcore.envelope import decode, encode, new_message
from agentcore.transport.frames import ENVELOPE, H_CTL, H_FINAL, H_KIND, H_SEQ, H_STREAM
from nats_fixtures import eventually, subscribed, within

BIG = "q" * 2_500_000  # over the default 1 MB max_payload


async def _serve_offer(raw_nc: Any, subject: str, envelope: dict[str, Any], *, declared: int | None = None,
                       before_frames: Any = None, frame_size: int = 900_000) -> tuple[Any, Any]:
    """A raw requester: offers envelope (declaring its size, or declared), serves the pull itself (frames after before_frames)."""
    data = encode(envelope)
    ctl = raw_nc.new_inbox()
    pulled = asyncio.get_running_loop().create_future()

    async def on_ctl(msg: Any) -> None:
        if msg.reply and not pulled.done():
            pulled.set_result(msg.reply)

    await raw_nc.subscribe(ctl, cb=on_ctl)
    await subscribed(raw_nc)
    offer = {**envelope, "payload": {"content": None, "stream": {"pull": ctl, "size": declared or len(data)}}}

    async def frames() -> None:
        dest = await pulled
        if before_frames is not None:
            await before_frames()
        chunks = [data[i:i + frame_size] for i in range(0, len(data), frame_size)]
        for seq, chunk in enumerate(chunks):
            headers = {H_STREAM: envelope["id"], H_SEQ: str(seq), H_KIND: ENVELOPE, H_CTL: ctl}
            if seq == len(chunks) - 1:
                headers[H_FINAL] = "1"
            await raw_nc.publish(dest, chunk, headers=headers)

    serving = asyncio.ensure_future(frames())
    inbox = raw_nc.new_inbox()
    replies: asyncio.Queue[Any] = asyncio.Queue()

    async def on_reply(msg: Any) -> None:
        replies.put_nowait(decode(msg.data))

    await raw_nc.subscribe(inbox, cb=on_reply)
    await subscribed(raw_nc)
    await raw_nc.publish(subject, encode(offer), reply=inbox)
    return serving, replies


async def test_only_subscriptions_that_answer_pull_an_offer(make_agent: Any) -> None:
    """An observer (a plain subscription, here on the serving agent itself and on another agent) sees the offer
    as it is; only the capability's queue subscription pulls, so the observer cannot take the stream from it."""
    seen: list[Any] = []

    def watch(topic: str, message: dict[str, Any]) -> bool:
        seen.append(message["payload"].get("stream", {}).get("size"))
        return True

    worker = await make_agent("worker", capabilities={"echo": lambda m: len(m["payload"]["content"])})
    await worker.asubscribe("agents.test.task.>", watch)
    observer = await make_agent("observer")
    await observer.asubscribe(worker.topics.task("echo"), watch)
    client = await make_agent("client")
    for _ in range(3):
        assert await client.send_task("echo", BIG, timeout=10) == len(BIG)
    assert worker.get_metrics()["large_requests_pulled"] == 3
    assert observer.get_metrics().get("large_requests_pulled", 0) == 0
    await eventually(lambda: len(seen) == 6)
    assert all(size > len(BIG) for size in seen)  # what the observers saw: the offer and its size


async def test_malformed_and_forged_offers_are_refused_and_answered(make_agent: Any, raw_nc: Any) -> None:
    worker = await make_agent("worker", capabilities={"echo": lambda m: 1})
    leaked: list[str] = []

    async def on_leak(msg: Any) -> None:
        leaked.append(msg.subject)

    await raw_nc.subscribe("billing.>", cb=on_leak)
    await subscribed(raw_nc)
    for stream in ("x", {}, {"pull": 123, "size": 1}, {"pull": ["a"], "size": 1}, {"pull": "billing.charge.c42", "size": 1},
                   {"pull": "_INBOX.*", "size": 1}):
        offer = new_message("task", None, source_id="raw")
        offer["payload"]["stream"] = stream
        reply = decode((await raw_nc.request(worker.topics.task("echo"), encode(offer), timeout=5)).data)
        assert reply["correlationId"] == offer["id"] and reply["payload"]["error"]["code"] == "invalid_message", stream
    ping = await raw_nc.request(worker.topics.control("worker"), encode(new_message("query", "ping", source_id="raw")), timeout=5)
    assert decode(ping.data)["payload"]["content"]["pong"] is True
    assert leaked == []  # the forged pull subject never received anything from the agent


async def test_an_offer_larger_than_allowed_or_than_declared_is_refused(make_agent: Any, raw_nc: Any) -> None:
    sizes: list[int] = []

    async def echo(message: dict[str, Any]) -> str:
        sizes.append(len(message["payload"]["content"]))
        return "ok"

    worker = await make_agent("worker", capabilities={"echo": echo}, cache__enabled=False, agent__max_request_bytes=3_000_000)
    client = await make_agent("client")
    from agentcore import RemoteError

    try:
        await client.send_task("echo", "z" * 4_000_000, timeout=10)
    except RemoteError as exc:
        assert exc.code == "payload_too_large" and "agent.max_request_bytes" in exc.remote_message
    else:
        raise AssertionError("a request over agent.max_request_bytes was taken")
    # A raw offer that declares less than it sends: the pull stops at the declared size.
    envelope = new_message("task", "z" * 2_000_000, source_id="raw")
    serving, replies = await _serve_offer(raw_nc, worker.topics.task("echo"), envelope, declared=100)
    reply = await asyncio.wait_for(replies.get(), 10)
    assert reply["payload"]["error"]["code"] == "limit_exceeded" and "exceed the 100 bytes" in reply["payload"]["error"]["message"]
    assert reply["payload"]["error"]["reason"] == "pull_frames"
    serving.cancel()
    assert sizes == []


async def test_a_stop_during_a_pull_answers_the_requester(make_agent: Any, raw_nc: Any) -> None:
    worker = await make_agent("worker", capabilities={"echo": lambda m: "ok"}, nats__drain_timeout=0.3)
    pulling, never = asyncio.Event(), asyncio.Event()

    async def hold() -> None:  # the worker's pull request has arrived: never send it the frames
        pulling.set()
        await never.wait()

    serving, replies = await _serve_offer(raw_nc, worker.topics.task("echo"), new_message("task", BIG, source_id="raw"),
                                          before_frames=hold)
    await within(pulling.wait(), "the pull in progress")
    await worker.astop()
    reply = await asyncio.wait_for(replies.get(), 5)
    assert reply["payload"]["error"]["code"] == "cancelled"
    serving.cancel()


async def test_a_pull_finishing_during_a_batching_stop_is_still_handled(make_agent: Any, raw_nc: Any) -> None:
    worker: NATSAgent = await make_agent("worker", capabilities={"echo": lambda m: "ok"}, cache__enabled=False)
    worker.enable_batch_processing(10, 30.0)
    client = await make_agent("client")
    # A small task waits in the batch, so the stop's flush of it shows in the metrics (batch_flush_stop).
    small = asyncio.ensure_future(client.send_task("echo", "small", timeout=20))
    await eventually(lambda: worker.get_metrics()["messages_received"] == 1, what="the small task in the batch")
    pulling, gate = asyncio.Event(), asyncio.Event()

    async def hold() -> None:  # the worker's pull request has arrived: send the frames once the gate opens
        pulling.set()
        await gate.wait()

    serving, replies = await _serve_offer(raw_nc, worker.topics.task("echo"), new_message("task", BIG, source_id="raw"),
                                          before_frames=hold)
    await within(pulling.wait(), "the pull in progress")
    stopping = asyncio.ensure_future(worker.astop(timeout=5.0))
    await eventually(lambda: worker.get_metrics().get("batch_flush_stop") == 1, what="the stop to flush the pending batch")
    gate.set()  # the pull completes after the stop flushed the pending batch
    reply = await asyncio.wait_for(replies.get(), 10)
    await stopping
    assert reply["payload"]["content"] == "ok"
    assert await small == "ok"
