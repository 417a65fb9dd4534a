"""Invariants of the serving hot path (inline eager start, lazy task records, direct and queued answers), checked
against a real nats-server with a plain nats-py client as the requester. tests/test_pure_core.py reruns this file
on the pure-Python twins."""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from typing import Any

import nats
import orjson
import pytest

from agentcore import NATSAgent
from agentcore.core.records import Delivery
from agentcore.core.tasks import CANCELLED, DONE, FAILED, QUEUED, RUNNING, TaskTable
from agentcore.transport.tracecontext import CURRENT
from helpers import task_bytes
from nats_fixtures import eventually, subscribed, within

_SEEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("hot_path_seen", default=None)


async def _collect(nc: nats.NATS, subject: str, count: int) -> tuple[Any, list[Any]]:
    got: list[Any] = []
    done = asyncio.Event()

    async def cb(msg: Any) -> None:
        got.append(msg)
        if len(got) >= count:
            done.set()

    sub = await nc.subscribe(subject, cb=cb)
    await subscribed(nc)
    return (sub, done), got


# ------------------------------------------------------------------ ordering


async def test_answers_to_pipelined_requests_keep_the_order_of_the_requests(make_agent: Any, raw_nc: nats.NATS) -> None:
    """Answers written directly, queued behind pending ones (queue_now) and large ones leave in request order."""

    async def echo(message: dict[str, Any]) -> Any:
        n = message["payload"]["content"]
        return {"n": n, "pad": "x" * (200_000 if n % 7 == 0 else 10)}  # a mix of large and small answers

    worker = await make_agent("worker", capabilities={"echo": echo}, cache__enabled=False)
    inbox = raw_nc.new_inbox()
    (sub, done), got = await _collect(raw_nc, inbox, 300)
    subject = worker.topics.task("echo")
    for n in range(300):  # all in nats-py's pending buffer, written in one or a few chunks
        await raw_nc.publish(subject, task_bytes(f"o-{n}", n), reply=inbox)
    await raw_nc.flush()
    await within(done.wait(), "300 answers")
    order = [orjson.loads(m.data)["payload"]["content"]["n"] for m in got]
    assert order == list(range(300))
    await sub.unsubscribe()


async def test_what_a_handler_publishes_precedes_its_answer(make_agent: Any, raw_nc: nats.NATS) -> None:
    """Several publishes (large and small) from a handler, then its answer: one connection, one order."""
    worker: NATSAgent

    async def chatty(message: dict[str, Any]) -> Any:
        n = message["payload"]["content"]
        for i in range(20):
            await worker.publish("progress.hot", {"n": n, "i": i, "pad": "y" * (150_000 if i % 3 == 0 else 5)})
        return {"n": n, "end": True}

    worker = await make_agent("worker", capabilities={"chatty": chatty}, cache__enabled=False)
    inbox = raw_nc.new_inbox()
    order: list[tuple[int, Any]] = []
    done = asyncio.Event()

    async def cb(msg: Any) -> None:
        if msg.subject != inbox and not msg.subject.endswith("progress.hot"):
            return
        content = orjson.loads(msg.data)["payload"]["content"]
        order.append((content["n"], "end" if msg.subject == inbox else content["i"]))
        if sum(1 for _, i in order if i == "end") == 3:
            done.set()

    await raw_nc.subscribe(">", cb=cb)
    await subscribed(raw_nc)
    for n in range(3):
        await raw_nc.publish(worker.topics.task("chatty"), task_bytes(f"c-{n}", n), reply=inbox)
    await raw_nc.flush()
    await within(done.wait(), "three answers")
    for n in range(3):  # each handler's publishes in the order it made them, then its answer
        assert [i for m, i in order if m == n] == [*range(20), "end"], order


# ------------------------------------------------------------------ context does not leak between inline messages


async def test_context_variables_and_trace_context_do_not_leak_between_messages(make_agent: Any, raw_nc: nats.NATS) -> None:
    seen: list[tuple[Any, Any]] = []

    async def sets(message: dict[str, Any]) -> str:
        content = message["payload"]["content"]
        seen.append((_SEEN.get(), CURRENT.get()))
        _SEEN.set(f"set-by-{content}")
        if content % 2:
            await asyncio.sleep(0)  # this one suspends: it continues as its own Task
        return "ok"

    worker = await make_agent("worker", capabilities={"sets": sets}, cache__enabled=False)
    inbox = raw_nc.new_inbox()
    (sub, done), got = await _collect(raw_nc, inbox, 8)
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for n in range(8):
        headers = {"traceparent": trace} if n == 2 else None
        await raw_nc.publish(worker.topics.task("sets"), task_bytes(f"cv-{n}", n), reply=inbox, headers=headers)
    await raw_nc.flush()
    await within(done.wait(), "eight answers")
    assert [v for v, _ in seen] == [None] * 8  # no message sees what the one before it set
    assert [t is not None for _, t in seen] == [n == 2 for n in range(8)]  # the trace context of message 2 alone
    await sub.unsubscribe()


# ------------------------------------------------------------------ failures in the first step


class _Odd(BaseException):
    """Neither Exception nor a cancellation: what a handler might raise by mistake."""


@pytest.mark.parametrize("raised", [StopIteration, ValueError])
async def test_an_error_in_the_first_step_reaches_the_requester_typed(make_agent: Any, raw_nc: nats.NATS, raised: type) -> None:
    async def bad(message: dict[str, Any]) -> Any:
        raise raised("first step")

    def bad_sync(message: dict[str, Any]) -> Any:
        raise raised("first step, sync")

    worker = await make_agent("worker", capabilities={"bad": bad, "bad_sync": bad_sync}, cache__enabled=False)
    for capability in ("bad", "bad_sync"):
        reply = await within(raw_nc.request(worker.topics.task(capability), task_bytes(f"{capability}-1", 1), timeout=10),
                             "an error answer")
        body = orjson.loads(reply.data)
        assert body["payload"]["error"]["code"] == "handler_error", body
    assert worker.get_metrics()["messages_failed"] == 2


async def test_weird_return_values_answer_with_a_typed_error(make_agent: Any, raw_nc: nats.NATS) -> None:
    async def weird(message: dict[str, Any]) -> Any:
        return object()  # not JSON

    worker = await make_agent("worker", capabilities={"weird": weird}, cache__enabled=False)
    reply = await within(raw_nc.request(worker.topics.task("weird"), task_bytes("w-1", 1), timeout=10), "an answer")
    assert orjson.loads(reply.data)["payload"]["error"]["code"] == "result_invalid"
    # and the agent still serves the next one
    reply = await within(raw_nc.request(worker.topics.task("weird"), task_bytes("w-2", 1), timeout=10), "an answer")
    assert "error" in orjson.loads(reply.data)["payload"]


@pytest.mark.parametrize("raised", [
    pytest.param(GeneratorExit, marks=pytest.mark.xfail(strict=True, reason=(
        "GeneratorExit is what closing a coroutine throws into it: the handler path re-raises it unanswered, as it "
        "cannot tell a handler raising it from its coroutine being closed (where nothing may be awaited)"))),
    _Odd])
async def test_a_base_exception_in_the_first_step_is_answered(make_agent: Any, raw_nc: nats.NATS, raised: type) -> None:
    async def odd(message: dict[str, Any]) -> Any:
        raise raised()

    worker = await make_agent("worker", capabilities={"odd": odd}, cache__enabled=False)
    reply = await raw_nc.request(worker.topics.task("odd"), task_bytes("b-1", 1), timeout=3)
    assert "error" in orjson.loads(reply.data)["payload"]


# ------------------------------------------------------------------ lazy task records


async def test_a_task_that_suspended_after_an_inline_start_is_running_then_cancelled(make_agent: Any) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(message: dict[str, Any]) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    server = await make_agent("server", capabilities={"slow": slow, "quick": lambda m: "q"}, cache__enabled=False)
    client = await make_agent("client")
    # a few that finish inline first, so the spare Task is reused before the one that suspends takes it
    for _ in range(3):
        assert await client.send_task("quick", 1) == "q"
    async with client.request_stream(server.topics.task("slow"), None) as stream:
        await within(started.wait(), "the handler to start")
        assert stream.task_id is not None
        assert (await client.task_status(stream.task_id))["state"] == "running"
        await client.cancel(stream.task_id)
        await within(cancelled.wait(), "the handler to see its cancellation")
        assert (await client.task_status(stream.task_id))["state"] == "cancelled"
    assert await client.send_task("quick", 2) == "q"  # and the next one starts fine


def test_finished_records_found_before_and_after_their_generation_was_indexed() -> None:
    table = TaskTable(64 * 1024, Counter(), {})
    table.finished({"source": {"id": "a"}, "id": "t1"}, DONE, None)
    assert table.status("a", "t1")[0] == DONE  # the young generation is indexed from now on
    table.finished({"source": {"id": "a"}, "id": "t2"}, FAILED, None)
    table.finished({"source": {"id": "a"}, "id": "t1"}, FAILED, None)  # the same id again: the later record wins
    assert table.status("a", "t2")[0] == FAILED
    assert table.status("a", "t1")[0] == FAILED
    assert table.status("b", "t1") is None  # another requester's id is another task
    assert table.status_any("t2")[0] == FAILED
    for n in range(5000):  # a flood: the indexed generation turns old, the new young one is not indexed yet
        table.finished({"source": {"id": "stranger"}, "id": f"f{n}"}, DONE, None)
        assert table.bytes <= table.max_bytes
    assert table.status("stranger", "f4999")[0] == DONE
    assert table.status_any("f4999")[0] == DONE
    assert table.status("a", "t1") is None  # long dropped: the bound holds the most recent ones


def test_status_for_control_allow_finds_a_queued_running_or_finished_task_of_any_requester() -> None:
    pending: dict[str, Delivery] = {}
    table = TaskTable(64 * 1024, Counter(), pending)
    table.queued({"source": {"id": "a"}, "id": "q1"}, "inbox.a", None)
    assert table.status_any("q1")[0] == QUEUED
    pending["r1"] = Delivery({"source": {"id": "b"}, "id": "r1"}, "inbox.b", "agents.t.task.x.y", None)
    assert table.status_any("r1") == (RUNNING, None)
    shadowed = Delivery({"source": {"id": "c"}, "id": "s1"}, "inbox.c", "agents.t.task.x.y", None)
    shadowed.cancelled = True
    table.shadowed[("c", "s1")] = shadowed  # running while another requester's task holds the id in pending
    assert table.status_any("s1") == (CANCELLED, None)
    table.finished({"source": {"id": "d"}, "id": "f1"}, DONE, None)
    assert table.status_any("f1")[0] == DONE
    assert table.status_any("nothing") is None


async def test_a_strangers_task_flood_keeps_status_records_within_bytes(make_agent: Any, raw_nc: nats.NATS) -> None:
    server = await make_agent("server", capabilities={"echo": lambda m: m["payload"]["content"]}, cache__enabled=True,
                              tasks__max_status_bytes=8192)
    inbox = raw_nc.new_inbox()
    (sub, done), got = await _collect(raw_nc, inbox, 2000)
    for n in range(2000):
        await raw_nc.publish(server.topics.task("echo"), task_bytes(f"fl-{n}", n, source=f"s{n % 50}"), reply=inbox)
    await raw_nc.flush()
    await within(done.wait(), "2000 answers")
    metrics = server.get_metrics()
    assert metrics["task_records_bytes"] <= 8192
    assert metrics["task_records_evicted"] > 0
    # duplicate detection still holds for a recent id: asked again at the same inbox, the answer is replayed and
    # the handler not run again; asked at another inbox, it is refused as a duplicate (typed), never handed over
    processed = metrics["messages_processed"]
    await raw_nc.publish(server.topics.task("echo"), task_bytes("fl-1999", 1999, source="s49"), reply=inbox)
    await eventually(lambda: len(got) == 2001, what="the replay")
    assert orjson.loads(got[-1].data)["payload"]["content"] == 1999
    reply = await within(raw_nc.request(server.topics.task("echo"), task_bytes("fl-1999", 1999, source="s49"), timeout=10),
                         "the refusal")
    assert orjson.loads(reply.data)["payload"]["error"]["code"] == "duplicate"
    assert server.get_metrics()["messages_processed"] == processed
    assert server.get_metrics()["duplicates_replayed"] == 1
    await sub.unsubscribe()


def test_finished_records_never_pass_their_byte_bound() -> None:
    table = TaskTable(4096, Counter(), {})
    for n in range(200):  # long ids cost nothing more: a record holds their hashes, not the ids
        table.finished({"source": {"id": "s" * 100}, "id": f"{n:0100d}"}, DONE, None)
        assert table.bytes <= table.max_bytes
    assert 0 < len(table) and table.status("s" * 100, f"{199:0100d}")[0] == DONE


# ------------------------------------------------------------------ the watchdog


@pytest.mark.parametrize("suspend_first", [False, True])
async def test_the_watchdog_names_a_handler_blocking_in_or_after_its_inline_first_step(
        make_agent: Any, caplog: pytest.LogCaptureFixture, suspend_first: bool) -> None:
    """Blocking in the inline first step, or after it suspended (its rest runs in the spare Task): named either way."""
    import logging
    import time

    async def hogging_handler(message: dict[str, Any]) -> str:
        if suspend_first:
            await asyncio.sleep(0)
        time.sleep(0.6)  # the bug: a blocking call inside an async handler
        return "late"

    worker = await make_agent("w", capabilities={"hog": hogging_handler}, agent__loop_lag_warn=0.1, cache__enabled=False)
    client = await make_agent("c", agent__loop_lag_warn=0)
    with caplog.at_level(logging.WARNING, logger="agentcore.agent"):
        assert await client.send_task("hog", 1, timeout=30) == "late"
        await eventually(lambda: worker.get_metrics()["loop_lag_events"] >= 1, what="the lag event")
        await eventually(lambda: any("event loop was held" in r.getMessage() for r in caplog.records), what="the warning")
    warnings = [r.getMessage() for r in caplog.records if "event loop was held" in r.getMessage()]
    assert "hogging_handler" in warnings[0] and "agents.test.task.hog" in warnings[0], warnings


# ------------------------------------------------------------------ a Task's own doings stay its own


async def test_a_handler_cancelling_its_own_task_inline_cancels_no_other_message(make_agent: Any, raw_nc: nats.NATS) -> None:
    """A first step that cancels asyncio.current_task() and returns: with a Task of its own only that Task is hit.

    Inline, that Task is the spare the next message's first step runs as (and carries on in when it suspends).
    """
    async def self_cancelling(message: dict[str, Any]) -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # e.g. a library's cancel scope aimed at "this task", left pending as the handler returns
        return "a"

    async def suspending(message: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        return "b"

    worker = await make_agent("worker", capabilities={"a": self_cancelling, "b": suspending}, cache__enabled=False)
    inbox = raw_nc.new_inbox()
    (sub, done), got = await _collect(raw_nc, inbox, 40)
    for n in range(20):  # pairs in one write: most b's first step follows an a's in the same read chunk
        await raw_nc.publish(worker.topics.task("a"), task_bytes(f"a-{n}", n, capability="a"), reply=inbox)
        await raw_nc.publish(worker.topics.task("b"), task_bytes(f"b-{n}", n, capability="b"), reply=inbox)
    await raw_nc.flush()
    await within(done.wait(), "40 answers")
    payloads = [orjson.loads(m.data)["payload"] for m in got]
    outcomes = sorted(p["content"] if "error" not in p else p["error"]["code"] for p in payloads)
    assert outcomes == ["a"] * 20 + ["b"] * 20, outcomes
    assert worker.get_metrics()["messages_failed"] == 0


async def test_a_timeout_scope_opened_in_the_first_step_hits_its_own_handler_only(make_agent: Any, raw_nc: nats.NATS) -> None:
    """asyncio.timeout() targets asyncio.current_task(): the Task the handler carries on in, never the next one's."""
    async def bounded(message: dict[str, Any]) -> str:
        if message["payload"]["content"] % 2:
            async with asyncio.timeout(0.05):
                await asyncio.Event().wait()  # expires: TimeoutError in this handler
        async with asyncio.timeout(30):  # finishes inline: its timer is cancelled on exit
            pass
        await asyncio.sleep(0)
        return "ok"

    worker = await make_agent("worker", capabilities={"bounded": bounded}, cache__enabled=False)
    inbox = raw_nc.new_inbox()
    (sub, done), got = await _collect(raw_nc, inbox, 10)
    for n in range(10):
        await raw_nc.publish(worker.topics.task("bounded"), task_bytes(f"t-{n}", n, capability="bounded"), reply=inbox)
    await raw_nc.flush()
    await within(done.wait(), "ten answers")
    outcomes = {orjson.loads(m.data)["correlationId"]: orjson.loads(m.data)["payload"] for m in got}
    for n in range(10):
        payload = outcomes[f"t-{n}"]
        if n % 2:
            assert payload["error"]["code"] == "handler_error" and "TimeoutError" in payload["error"]["message"]
        else:
            assert payload["content"] == "ok", payload
