"""Memory a stranger can fill is bounded by bytes: a plain nats-py client attacks each bound (docs/limits.md).

Each test has the attacker try to make the serving agent hold more than a bound allows (reassembly of offers,
pull slots, stream frames, forged credit, the result cache, the duplicate store, the queue), asserts that the
attack is refused with a typed error (or aborted, with what it buffered freed) and counted, and that an honest
request still works afterwards.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest

from agentcore import DuplicateMessageError, LimitExceededError, NATSAgent, OverloadedError, StreamLimitError
from agentcore.envelope import decode, encode, new_message, raise_for_error
from agentcore.transport.frames import ENVELOPE, H_ACK, H_CANCEL, H_CTL, H_KIND, H_SEQ, H_STREAM, H_WINDOW
from helpers import task_bytes
from nats_fixtures import eventually, subscribed, within

BIG = "q" * 2_000_000  # an honest 2 MB request: over the test server's 1 MB max_payload, so it is offered and pulled


async def replies_inbox(raw_nc: nats.NATS) -> tuple[str, asyncio.Queue[dict[str, Any]]]:
    """Subscribe an inbox whose messages (decoded envelopes) land in a queue."""
    inbox = raw_nc.new_inbox()
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_reply(msg: Any) -> None:
        replies.put_nowait(decode(msg.data))

    await raw_nc.subscribe(inbox, cb=on_reply)
    return inbox, replies


async def offer(raw_nc: nats.NATS, subject: str, source: str, size: int, reply: str) -> tuple[str, str]:
    """Publish an offer of a large request whose pull subject the attacker holds; return (message id, pull subject)."""
    envelope = new_message("task", None, source_id=source)
    ctl = raw_nc.new_inbox()
    envelope["payload"] = {"content": None, "stream": {"pull": ctl, "size": size}}
    await raw_nc.publish(subject, encode(envelope), reply=reply)
    return envelope["id"], ctl


def echo_len(message: dict[str, Any]) -> int:
    return len(message["payload"]["content"])


async def test_an_offer_whose_frames_never_include_frame_0_is_aborted(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker = await make_agent("worker", capabilities={"echo": echo_len})
    inbox, replies = await replies_inbox(raw_nc)
    cancels: list[Any] = []
    served = asyncio.get_running_loop().create_future()

    async def on_pull(msg: Any) -> None:  # the attacker serves frames 1..40 (never 0) as the agent pulls
        if (msg.headers or {}).get(H_CANCEL):
            cancels.append(msg)
            return
        if msg.reply and not served.done():
            for seq in range(1, 41):
                headers = {H_STREAM: message_id, H_SEQ: str(seq), H_KIND: ENVELOPE, H_CTL: ctl}
                await raw_nc.publish(msg.reply, b"x" * 100_000, headers=headers)
            served.set_result(None)

    envelope = new_message("task", None, source_id="attacker")
    message_id, ctl = envelope["id"], raw_nc.new_inbox()
    await raw_nc.subscribe(ctl, cb=on_pull)
    await subscribed(raw_nc)
    envelope["payload"] = {"content": None, "stream": {"pull": ctl, "size": 60 * 1024 * 1024}}  # declares 60 MB
    await raw_nc.publish(worker.topics.task("echo"), encode(envelope), reply=inbox)
    reply = await within(replies.get(), "the refusal of the offer")
    with pytest.raises(LimitExceededError) as refused:
        raise_for_error(reply)
    assert refused.value.details == {"reason": "pull_frames"} and "beyond the credit" in refused.value.remote_message
    await eventually(lambda: cancels, what="the attacker's producer to be told to stop")
    metrics = worker.get_metrics()
    assert metrics["pull_limit_aborts"] == 1 and metrics["pull_bytes"] == 0 and metrics["pulls_active"] == 0
    # The honest path: a 2 MB request is pulled and answered.
    client: NATSAgent = await make_agent("client")
    assert await client.send_task("echo", BIG, timeout=10) == len(BIG)


async def test_offers_never_served_hold_no_reassembly_slot(make_agent: Any, raw_nc: nats.NATS) -> None:
    # A long idle deadline: the honest request gets through because waiting offers hold no slot, not because they expire.
    # The attacker's offers are never served: the worker's stop waits out its drain timeout for their pulls.
    worker = await make_agent("worker", capabilities={"echo": echo_len}, agent__pull_idle_timeout=60.0,
                              nats__drain_timeout=0.5)
    inbox, replies = await replies_inbox(raw_nc)
    pulls: list[Any] = []

    async def on_pull(msg: Any) -> None:
        pulls.append(msg)  # never answered

    ctls = []
    for n in range(8):
        _, ctl = await offer(raw_nc, worker.topics.task("echo"), f"attacker-{n}", 2_000_000, inbox)
        ctls.append(ctl)
    for ctl in ctls:
        await raw_nc.subscribe(ctl, cb=on_pull)
    await subscribed(raw_nc)
    await eventually(lambda: worker.get_metrics()["pulls_active"] == 8, what="the eight offers to be pulled")
    client: NATSAgent = await make_agent("client")
    assert await client.send_task("echo", BIG, timeout=10) == len(BIG)
    assert worker.get_metrics()["pulls_active"] == 8 and replies.empty()  # the attacker's offers still wait


async def test_an_offer_whose_producer_idles_is_dropped_with_a_typed_error(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker = await make_agent("worker", capabilities={"echo": echo_len}, agent__pull_idle_timeout=1.0)
    inbox, replies = await replies_inbox(raw_nc)
    await subscribed(raw_nc)
    for n in range(3):
        await offer(raw_nc, worker.topics.task("echo"), f"attacker-{n}", 2_000_000, inbox)
    for _ in range(3):
        with pytest.raises(LimitExceededError) as refused:
            raise_for_error(await within(replies.get(), "the idle offer to be dropped"))
        assert refused.value.details == {"reason": "pull_idle"}
    await eventually(lambda: worker.get_metrics()["pulls_active"] == 0, what="the pulls to end")
    assert worker.get_metrics()["pull_idle_aborts"] == 3
    client: NATSAgent = await make_agent("client")
    assert await client.send_task("echo", BIG, timeout=10) == len(BIG)


async def test_one_sender_gets_only_its_share_of_pulls(make_agent: Any, raw_nc: nats.NATS) -> None:
    # The two offers pulled are never served: the worker's stop waits out its drain timeout for their pulls.
    worker = await make_agent("worker", capabilities={"echo": echo_len}, agent__pulls_per_sender=2,
                              agent__pull_idle_timeout=60.0, nats__drain_timeout=0.5)
    inbox, replies = await replies_inbox(raw_nc)
    await subscribed(raw_nc)
    for _ in range(5):
        await offer(raw_nc, worker.topics.task("echo"), "attacker", 2_000_000, inbox)
    for _ in range(3):
        with pytest.raises(OverloadedError) as refused:
            raise_for_error(await within(replies.get(), "the offers over the sender's share to be refused"))
        assert refused.value.details == {"reason": "pulls_per_sender"}
    metrics = worker.get_metrics()
    assert metrics["pulls_active"] == 2 and metrics["pulls_refused"] == 3
    client: NATSAgent = await make_agent("client")
    assert await client.send_task("echo", BIG, timeout=10) == len(BIG)


@pytest.mark.parametrize("stamped", [True, False], ids=["window-granted", "window-not-told"])
async def test_gap_frames_to_a_stream_consumer_abort_it(make_agent: Any, raw_nc: nats.NATS, stamped: bool) -> None:
    consumer: NATSAgent = await make_agent("consumer")
    receiver = consumer.receive_stream(window=4)
    if stamped:
        receiver.stamp(new_message("task", None, source_id="consumer", message_id=receiver.task_id))
    cancels: list[Any] = []
    ctl = raw_nc.new_inbox()

    async def on_ctl(msg: Any) -> None:
        if (msg.headers or {}).get(H_CANCEL):
            cancels.append(msg)

    await raw_nc.subscribe(ctl, cb=on_ctl)
    await subscribed(raw_nc)
    async with receiver:
        for seq in range(1, 400):  # frame 0 never comes; each later one is 100 KB
            headers = {H_STREAM: str(receiver.task_id), H_SEQ: str(seq), H_KIND: "bytes", H_CTL: ctl}
            await raw_nc.publish(receiver.reply_to, b"g" * 100_000, headers=headers)
        with pytest.raises(StreamLimitError):
            await within(receiver.__anext__(), "the stream to abort")
    assert len(receiver._frames) == 0  # what it buffered is freed
    await eventually(lambda: cancels, what="the producer to be told to stop")
    assert consumer.get_metrics()["stream_limit_aborts"] == 1
    # The honest path: a stream from a real producer arrives whole.
    async def gen(message: dict[str, Any]) -> None:
        await producer.stream_response(message["id"], iter(["a", "b", "c"] * 10), chunk_size=1)

    producer = await make_agent("producer", capabilities={"gen": gen}, cache__enabled=False)
    async with consumer.request_stream(producer.topics.task("gen"), None, window=4) as stream:
        assert "".join([c.text async for c in stream]) == "abc" * 10


async def test_forged_credit_cannot_widen_a_producers_window(make_agent: Any, raw_nc: nats.NATS) -> None:
    ended = asyncio.get_running_loop().create_future()

    async def gen(message: dict[str, Any]) -> None:
        try:
            await producer.stream_response(message["id"], iter([f"{n:03d}" for n in range(300)]), chunk_size=3,
                                           idle_timeout=2.0)
        except Exception as exc:  # no honest credit comes: the producer gives up at its idle timeout
            ended.set_result(exc)

    async def honest(message: dict[str, Any]) -> None:
        await producer.stream_response(message["id"], iter([f"{n:03d}" for n in range(60)]), chunk_size=3)

    producer = await make_agent("producer", capabilities={"gen": gen, "honest": honest}, cache__enabled=False)
    frames: list[Any] = []
    forged = asyncio.Event()

    async def on_frame(msg: Any) -> None:  # a consumer that never grants credit, and forges 10^9 once
        frames.append(msg)
        if not forged.is_set():
            forged.set()
            await raw_nc.publish(msg.headers[H_CTL], b"", headers={H_ACK: str(10**9), H_WINDOW: str(10**9)})

    inbox = raw_nc.new_inbox()
    await raw_nc.subscribe(inbox, cb=on_frame)
    await subscribed(raw_nc)
    task = new_message("task", None, source_id="attacker")
    task["routing"]["stream"] = {"window": 4}
    await raw_nc.publish(producer.topics.task("gen"), encode(task), reply=inbox)
    await within(ended, "the producer to stop at its idle timeout")
    assert len(frames) <= 8  # its window of 4, plus at most one window for the forged credit (was 297 frames)
    assert producer.get_metrics()["credit_clamped"] >= 1
    client: NATSAgent = await make_agent("client")
    async with client.request_stream(producer.topics.task("honest"), None, window=4) as stream:
        assert "".join([c.text async for c in stream]) == "".join(f"{n:03d}" for n in range(60))


async def test_the_result_cache_is_bounded_by_bytes_and_swept(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker = await make_agent("worker", capabilities={"big": lambda m: "r" * 300_000}, cache__max_bytes=1_000_000,
                              cache__ttl=5.0)
    for n in range(12):  # distinct contents: each result would be kept
        reply = await raw_nc.request(worker.topics.task("big"), task_bytes(f"m{n}", n, capability="big"), timeout=10)
        assert len(decode(reply.data)["payload"]["content"]) == 300_000
        assert worker.get_metrics()["cache_bytes"] <= 1_000_000
    metrics = worker.get_metrics()
    assert metrics["cache_entries"] == 3 and metrics["cache_evictions"] == 9
    # Nobody reads them again: the sweep drops them at their TTL all the same.
    await eventually(lambda: worker.get_metrics()["cache_bytes"] == 0, 20.0, "the expired results to be swept")
    assert worker.get_metrics()["cache_expired"] == 3
    client: NATSAgent = await make_agent("client")
    assert await client.send_task("big", 1) == "r" * 300_000
    assert await client.send_task("big", 1) == "r" * 300_000
    assert worker.get_metrics()["cache_hits"] == 1


async def test_duplicates_of_large_answers_are_kept_as_a_marker(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker = await make_agent("worker", capabilities={"big": lambda m: "r" * m["payload"]["content"]},
                              cache__duplicate_bytes=2_000_000)
    inbox, replies = await replies_inbox(raw_nc)
    await subscribed(raw_nc)
    for n in range(30):  # 30 answers of 300 KB, asked at one inbox (so a duplicate would be replayed there)
        await raw_nc.publish(worker.topics.task("big"), task_bytes(f"d{n}", 300_000, capability="big"), reply=inbox)
        assert len((await within(replies.get(), "the answer"))["payload"]["content"]) == 300_000
    assert worker.get_metrics()["duplicate_bytes"] < 30 * 1024  # markers, not 9 MB of copies
    for n in range(30):  # then their duplicates
        await raw_nc.publish(worker.topics.task("big"), task_bytes(f"d{n}", 300_000, capability="big"), reply=inbox)
        with pytest.raises(DuplicateMessageError) as refused:
            raise_for_error(await within(replies.get(), "the duplicate's answer"))
        assert refused.value.details == {"reason": "not_kept"}
    assert worker.get_metrics()["duplicates_not_kept"] == 30
    # The honest path: a small answer is still replayed to a retry.
    answers = []
    for _ in range(2):  # a retry after the answer, asked where the original was: the same reply inbox
        await raw_nc.publish(worker.topics.task("big"), task_bytes("small", 10, capability="big"), reply=inbox)
        answers.append(await within(replies.get(), "the answer, then its replay"))
    first, again = answers
    assert first["payload"]["content"] == again["payload"]["content"] == "r" * 10
    assert worker.get_metrics()["duplicates_replayed"] == 1


async def test_the_queue_is_bounded_by_bytes(make_agent: Any, raw_nc: nats.NATS) -> None:
    release = asyncio.Event()

    async def slow(message: dict[str, Any]) -> str:
        await release.wait()
        return "done"

    worker = await make_agent("worker", capabilities={"slow": slow}, agent__max_concurrency=1,
                              agent__max_queued_bytes=1_000_000)
    inbox, replies = await replies_inbox(raw_nc)
    await subscribed(raw_nc)
    for n in range(12):  # 12 tasks of 200 KB behind one that blocks: about 4 fit
        await raw_nc.publish(worker.topics.task("slow"), task_bytes(f"q{n}", "p" * 200_000, capability="slow"), reply=inbox)
    refusals = []
    await eventually(lambda: replies.qsize() >= 7, what="the tasks over the bytes bound to be refused")
    while not replies.empty():
        try:
            raise_for_error(replies.get_nowait())
        except OverloadedError as exc:
            refusals.append(exc.details)
    assert refusals and all(d == {"reason": "max_queued_bytes"} for d in refusals)
    metrics = worker.get_metrics()
    assert metrics["queued_bytes"] <= 1_000_000 and metrics["overloaded_bytes"] == len(refusals)
    release.set()
    await eventually(lambda: worker.get_metrics()["queued_bytes"] == 0, what="the queue to drain")
    client: NATSAgent = await make_agent("client")
    assert await client.send_task("slow", "honest") == "done"


async def test_a_result_offer_larger_than_allowed_is_refused_before_pulling(make_agent: Any, raw_nc: nats.NATS) -> None:
    pulls: list[Any] = []
    ctl = raw_nc.new_inbox()

    async def on_pull(msg: Any) -> None:
        pulls.append(msg)

    async def answer_with_a_huge_offer(msg: Any) -> None:  # a raw responder: its answer is an offer of 10 GB
        task = decode(msg.data)
        offer_ = new_message("result", None, source_id="liar", correlation_id=task["id"])
        offer_["payload"]["stream"] = {"pull": ctl, "size": 10 * 1024**3}
        await raw_nc.publish(msg.reply, encode(offer_))

    await raw_nc.subscribe(ctl, cb=on_pull)
    await raw_nc.subscribe("agents.test.task.huge.>", cb=answer_with_a_huge_offer)
    await subscribed(raw_nc)
    client: NATSAgent = await make_agent("client")
    with pytest.raises(StreamLimitError, match="agent.max_request_bytes"):
        await client.send_task("huge", None, timeout=10)
    assert pulls == []  # refused before any pull
    # The honest path: a real 2.5 MB result is offered and pulled.
    await make_agent("worker", capabilities={"big": lambda m: "b" * 2_500_000})
    assert await client.send_task("big", None, timeout=10) == "b" * 2_500_000


async def test_a_slow_answer_kept_after_faster_ones_is_swept_at_its_ttl(make_agent: Any, raw_nc: nats.NATS) -> None:
    """An answer kept after the sweep went past its message (in flight then) is not held beyond cache.ttl."""
    release = asyncio.Event()

    async def work(message: dict[str, Any]) -> str:
        if message["payload"]["content"] == "slow":
            await release.wait()
        return "answer " + message["payload"]["content"]

    worker = await make_agent("worker", capabilities={"work": work}, cache__ttl=0.4)
    inbox, replies = await replies_inbox(raw_nc)
    await subscribed(raw_nc)
    await raw_nc.publish(worker.topics.task("work"), task_bytes("slow-1", "slow", capability="work"), reply=inbox)
    await raw_nc.publish(worker.topics.task("work"), task_bytes("fast-1", "fast", capability="work"), reply=inbox)
    assert (await within(replies.get(), "the fast answer"))["payload"]["content"] == "answer fast"
    # The fast answer's time runs out: the sweep drops it, stepping over the slow message still in flight.
    await eventually(lambda: worker.get_metrics()["duplicate_kept"] == 0, 10.0, "the fast answer to be swept")
    release.set()
    assert (await within(replies.get(), "the slow answer"))["payload"]["content"] == "answer slow"
    assert worker.get_metrics()["duplicate_kept"] == 1
    await eventually(lambda: worker.get_metrics()["duplicate_kept"] == 0, 10.0, "the slow answer to be swept")


async def test_answers_kept_before_a_restart_are_swept_after_it(make_agent: Any, raw_nc: nats.NATS) -> None:
    """Stopping stops the sweep; starting again sweeps what was kept before (and after) at its ttl."""
    worker = await make_agent("worker", start=False, cache__ttl=0.4)
    worker.add_capability("roll", lambda message: "rolled", cache=False)  # no result cache to arm the sweep
    await worker.astart()
    inbox, replies = await replies_inbox(raw_nc)
    await subscribed(raw_nc)
    await raw_nc.publish(worker.topics.task("roll"), task_bytes("before", 1, capability="roll"), reply=inbox)
    await within(replies.get(), "the answer before the restart")
    assert worker.get_metrics()["duplicate_kept"] == 1
    await worker.astop()
    await worker.astart()
    await raw_nc.publish(worker.topics.task("roll"), task_bytes("after", 2, capability="roll"), reply=inbox)
    await within(replies.get(), "the answer after the restart")
    await eventually(lambda: worker.get_metrics()["duplicate_kept"] == 0, 10.0, "the kept answers to be swept")
