"""Pause, stop and overload lose nothing: every requester gets its result or a typed error, never silence."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict

import nats
import nats.errors
import orjson
import pytest

from agentcore import (
    AgentCoreError,
    NATSAgent,
    NoRespondersError,
    NotConnectedError,
    OverloadedError,
    RequestTimeoutError,
    ShuttingDownError,
)
from helpers import Deferring, Never, task_bytes
from nats_fixtures import eventually


async def test_pausing_under_load_loses_no_task(make_agent) -> None:
    """Tasks already on their way to a pausing agent are still handled; the replica takes the rest."""
    agents: dict[str, NATSAgent] = {}

    def worker(name: str) -> Any:
        taken = 0

        async def work(message: dict[str, Any]) -> int:
            nonlocal taken
            taken += 1
            if name == "first" and taken == 300:
                await agents[name].pause()  # mid-stream: more tasks are on the wire to this agent right now
            return message["payload"]["content"]
        return work

    for name in ("first", "second"):
        agents[name] = await make_agent(name, capabilities={"work": worker(name)}, cache__enabled=False)
    first, second = agents["first"], agents["second"]
    client = await make_agent("client")
    calls = [asyncio.ensure_future(client.send_task("work", i, timeout=20)) for i in range(6000)]
    assert await asyncio.gather(*calls) == list(range(6000))
    assert first.status == "paused"
    assert first.get_metrics()["messages_processed"] + second.get_metrics()["messages_processed"] == 6000
    served = first.get_metrics()["messages_processed"]
    assert await client.send_task("work", -1) == -1
    assert first.get_metrics()["messages_processed"] == served  # paused: the replica took it
    await first.resume()
    assert first.status == "running"


async def test_stop_never_subscribes_again(make_agent, caplog: pytest.LogCaptureFixture) -> None:
    """A subscription change racing stop() does not bring drained subscriptions back."""
    worker = await make_agent("worker", capabilities={"work": lambda m: 1})
    worker.subscribe("agents/event/news/*", lambda topic, message: True)  # its sync is still to run
    pausing = asyncio.ensure_future(worker.pause())
    with caplog.at_level(logging.ERROR, logger="agentcore"):
        await worker.astop()
        await pausing
        await worker.asubscribe("agents/event/late/*", lambda topic, message: True)  # a late sync: it does nothing
    assert worker.get_metrics()["subscriptions"] == 0 and worker.status == "stopped"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_stop_answers_requests_still_owed_a_published_result(make_agent) -> None:
    worker = await make_agent("worker", cls=Deferring, capabilities={"analysis": None})  # publish_result never comes
    client = await make_agent("client")
    pending = asyncio.ensure_future(client.send_task("analysis", "later", timeout=30))
    # Handled (process_message returned True): the answer is owed, with a no_result timer running.
    await eventually(lambda: worker.get_metrics()["messages_processed"] == 1)
    [taken] = worker.taken_ids()
    assert worker.get_metrics()["results_owed"] == 1
    delivery = worker._core.replies.pending[taken]  # INTERNAL: its no_result timer is not public
    assert delivery.timer is not None
    await worker.astop()
    with pytest.raises(ShuttingDownError) as info:
        await pending  # at the stop, not after 30 s
    assert info.value.code == "shutting_down"
    assert delivery.answered and delivery.timer is None  # its no_result timer was cancelled (INTERNAL, as above)
    assert worker.get_metrics()["results_owed"] == 0
    with pytest.raises(AgentCoreError, match="no pending message"):
        worker.publish_result(taken, "too late")  # nothing is owed any more


async def test_a_batch_cancelled_at_stop_answers_its_requesters(make_agent) -> None:
    stuck = Never()
    worker = await make_agent("worker", capabilities={"work": None}, nats__drain_timeout=0.2)
    worker.process_batch = stuck  # the batch hook never finishes
    worker.enable_batch_processing(batch_size=2, batch_timeout=30)
    client = await make_agent("client")
    calls = [asyncio.ensure_future(client.send_task("work", i, timeout=30)) for i in range(2)]
    await stuck.wait_started()
    await worker.astop()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert [getattr(e, "code", e) for e in outcomes] == ["cancelled", "cancelled"]


async def test_a_full_queue_refuses_work_as_overloaded(make_agent) -> None:
    gate = asyncio.Event()

    async def work(message: dict[str, Any]) -> int:
        await gate.wait()
        return message["payload"]["content"]

    worker = await make_agent("worker", capabilities={"work": work}, agent__max_concurrency=1, agent__max_queued=5,
                              cache__enabled=False)
    client = await make_agent("client")
    calls = [asyncio.ensure_future(client.send_task("work", i, timeout=20)) for i in range(11)]
    await eventually(lambda: worker.get_metrics().get("overloaded") == 5)
    gate.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, OverloadedError)]
    assert len(refused) == 5 and all(e.code == "overloaded" for e in refused)
    assert sorted(o for o in outcomes if isinstance(o, int)) == sorted(set(range(11)) - {e for e in range(11) if isinstance(outcomes[e], OverloadedError)})
    assert worker.get_metrics()["queued"] == 0
    assert await client.send_task("work", 99) == 99  # overload passed, work is taken again


async def test_a_request_racing_an_unsubscribe_is_answered(make_agent, raw_nc) -> None:
    worker = await make_agent("worker")
    await worker.asubscribe("agents/task/old/*", lambda topic, message: True)
    # INTERNAL: holding the subscription sync back is the only way to keep the wire subscription past its handler
    async with worker._core.registry.lock:  # the wire subscription outlives its handler until the sync runs
        worker.unsubscribe("agents/task/old/*")
        reply = orjson.loads((await raw_nc.request("agents.test.task.old.x", task_bytes("u-1", 1, source="raw"), timeout=5)).data)
    assert reply["correlationId"] == "u-1"
    assert reply["payload"]["error"]["code"] == "unhandled"

    async def unsubscribed() -> bool:  # the old subject's wire subscription goes, the agent's others stay
        try:
            await raw_nc.request("agents.test.task.old.x", task_bytes("u-2", 1, source="raw"), timeout=5)
        except nats.errors.NoRespondersError:
            return True
        return False

    await eventually(unsubscribed, what="the old subscription to leave the server")
    client = await make_agent("client")
    assert (await client.control("worker", "ping"))["pong"] is True


async def test_one_answer_per_message(make_agent, raw_nc) -> None:
    """A handler that publishes its result and also returns one: the requester gets exactly one reply."""
    class Both(NATSAgent):
        async def process_message(self, topic: str, message: Dict[str, Any]) -> bool:
            await self.publish_result(message["id"], "published")
            return True

    worker = await make_agent("worker", cls=Both, capabilities={"work": None})
    inbox = raw_nc.new_inbox()
    replies: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        replies.append(orjson.loads(msg.data))

    sub = await raw_nc.subscribe(inbox, cb=collect)
    await raw_nc.publish("agents.test.task.work.default", task_bytes("once-1", 1, source="raw"), reply=inbox)
    await eventually(lambda: len(replies) == 1)
    ping = orjson.loads(task_bytes("ping-1", {"command": "ping"}, source="raw"))
    ping["type"] = "query"
    # Replies from one connection arrive in order: once the ping's answer is here, any second answer would be too.
    await raw_nc.publish(worker.topics.control("worker"), orjson.dumps(ping), reply=inbox)
    await eventually(lambda: any(r["correlationId"] == "ping-1" for r in replies))
    assert [r["payload"]["content"] for r in replies if r["correlationId"] == "once-1"] == ["published"]
    with pytest.raises(AgentCoreError, match="no pending message"):
        worker.publish_error("once-1", "late", "too late")
    await sub.unsubscribe()


async def _alice_and_bob_send_one_id(make_agent: Any, raw_nc: Any, bob_timeout_ms: float) -> tuple[NATSAgent, Any, Any]:
    """A deferring worker that took alice's and then bob's message, both with the id "same"; their pending requests."""
    worker = await make_agent("worker", cls=Deferring, capabilities={"work": None})

    def senders() -> list[str]:
        return [m["source"]["id"] for m in worker.taken]

    first = asyncio.ensure_future(raw_nc.request("agents.test.task.work.default", task_bytes("same", 1, source="alice"), timeout=20))
    await eventually(lambda: senders() == ["alice"])
    second = asyncio.ensure_future(raw_nc.request(
        "agents.test.task.work.default", task_bytes("same", 2, source="bob", timeout_ms=bob_timeout_ms), timeout=20))
    await eventually(lambda: senders() == ["alice", "bob"])
    return worker, first, second


async def test_a_reused_id_from_another_sender_does_not_steal_the_pending_answer(make_agent, raw_nc) -> None:
    worker, first, second = await _alice_and_bob_send_one_id(make_agent, raw_nc, bob_timeout_ms=800)
    await worker.publish_result("same", "for alice")
    assert orjson.loads((await first).data)["payload"]["content"] == "for alice"
    answer = orjson.loads((await second).data)  # bob's own handler owes him: no_result when his time is up
    assert answer["target"] == "bob" and answer["payload"]["error"]["code"] == "no_result"


async def test_stop_answers_a_deferred_request_whose_id_another_holds(make_agent, raw_nc) -> None:
    worker, first, second = await _alice_and_bob_send_one_id(make_agent, raw_nc, bob_timeout_ms=30000)
    await worker.astop()
    answers = [orjson.loads((await call).data) for call in (first, second)]
    assert [(a["target"], a["payload"]["error"]["code"]) for a in answers] == [("alice", "shutting_down"), ("bob", "shutting_down")]


async def test_transport_failures_on_requests_are_typed(make_agent, monkeypatch: pytest.MonkeyPatch) -> None:
    await make_agent("worker", capabilities={"work": lambda m: 1})
    client = await make_agent("client")

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise nats.errors.OutboundBufferLimitError  # what nats-py raises when its reconnect buffer is full

    monkeypatch.setattr(client.nc, "publish", refuse)  # this connection's publishes fail as nats-py's would
    with pytest.raises(NotConnectedError, match="could not request"):
        await client.send_task("work", 1)


async def test_a_batch_flushed_at_stop_answers_handlers_still_waiting_for_a_slot(make_agent, raw_nc) -> None:
    from agentcore.core.caching import MISS

    worker = await make_agent("worker", capabilities={"work": Never()}, agent__max_concurrency=1, nats__drain_timeout=0.3)
    worker.enable_batch_processing(batch_size=100, batch_timeout=30)
    # INTERNAL: the wire subscription's key, for the duplicate-detection query below
    (key,) = [k for k in worker._core.registry.subs if k[0].startswith("agents.test.task.work.")]
    calls = [asyncio.ensure_future(raw_nc.request("agents.test.task.work.default", task_bytes(f"b-{i}", i, source="raw"), timeout=20))
             for i in range(3)]
    # Batching on and nothing flushed yet: every task the worker received waits in the batch.
    await eventually(lambda: worker.get_metrics()["messages_received"] == 3 and not worker.get_metrics().get("batches"))
    await worker.astop()  # runs the pending batch's handlers one at a time, then cancels them at the deadline
    answers = [orjson.loads((await call).data) for call in calls]
    assert [a["payload"]["error"]["code"] for a in answers] == ["cancelled"] * 3
    # None of them ran to the end: each is forgotten by duplicate detection, so a retry would run it.
    # INTERNAL: no public member says whether duplicate detection holds a message id
    assert [worker._core.work.cache.seen(key, {"id": f"b-{i}", "source": {"id": "raw"}}) for i in range(3)] == [MISS] * 3


async def test_stop_ends_a_stream_in_progress_with_an_error_frame(make_agent) -> None:
    from agentcore import StreamError

    async def endless() -> Any:
        i = 0
        while True:
            yield f"{i};"
            i += 1
            await asyncio.sleep(0.01)  # a producer that takes its time (not synchronisation)

    producer: NATSAgent = await make_agent("producer", start=False, cache__enabled=False, nats__drain_timeout=0.2)

    async def handler(message: dict[str, Any]) -> None:
        await producer.stream_response(message["id"], endless(), chunk_size=2)

    producer.add_capability("gen", handler)
    await producer.astart()
    client = await make_agent("client")
    got: list[int] = []

    async def consume() -> None:
        async with client.request_stream(producer.topics.task("gen"), None, idle_timeout=30) as stream:
            async for chunk in stream:
                got.append(chunk.seq)

    consuming = asyncio.ensure_future(consume())
    await eventually(lambda: len(got) >= 3)
    await producer.astop()
    with pytest.raises(StreamError, match="cancelled"):
        await asyncio.wait_for(consuming, 10)  # at the stop, not after the 30 s idle timeout


async def test_stop_after_the_connection_is_gone_still_ends_every_handler(make_agent) -> None:
    gate = asyncio.Event()

    async def work(message: dict[str, Any]) -> int:
        await gate.wait()
        return 1

    worker = await make_agent("worker", capabilities={"work": work}, agent__max_concurrency=1, nats__drain_timeout=0.2,
                              cache__enabled=False)
    client = await make_agent("client")
    calls = [asyncio.ensure_future(client.send_task("work", i, timeout=2)) for i in range(3)]
    await eventually(lambda: worker.get_metrics()["queued"] == 2)
    await worker.nc.close()  # what nats-py does once its reconnect attempts are exhausted
    await worker.astop()  # nobody can be told any more, but the stop completes and nothing keeps running
    metrics = worker.get_metrics()
    assert worker.status == "stopped" and metrics["in_flight"] == 0 and metrics["queued"] == 0
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    # Nobody could tell them: each requester ends at its own timeout, with the typed error, none with a result.
    assert all(isinstance(o, RequestTimeoutError) for o in outcomes), outcomes


async def test_stop_is_bounded_when_the_server_stalls(make_agent, tmp_path) -> None:
    """A server that stops answering (SIGSTOP) cannot hold stop() past its deadlines, even mid-pause."""
    import os
    import signal

    from agentcore.server import NATSServer

    pid_file = tmp_path / "nats-server.pid"
    with NATSServer(extra_args=["--pid", str(pid_file)]) as server:  # its own server: this test needs its pid
        await eventually(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit(), what="the server's pid file")
        pid = int(pid_file.read_text())
        worker = await make_agent("worker", capabilities={"work": lambda m: 1}, nats__drain_timeout=0.5,
                                  nats__servers=[server.url])
        os.kill(pid, signal.SIGSTOP)
        # kill() returns before the server's threads have stopped: on a loaded box the server still answered
        # pause()'s PING. waitpid(WUNTRACED) returns once the child really is stopped.
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        try:
            pausing = asyncio.ensure_future(worker.pause())
            # pause() marks the agent paused, then (without suspending) takes the subscription lock and waits
            # for a PONG that will not come.
            await eventually(lambda: worker.status == "paused")
            # nats-py's own flushes wait 10 s each: without the bounds, this stop took 30 s.
            await asyncio.wait_for(worker.astop(timeout=0.5), 15)  # ~2-4.5 s here; generous for a loaded box
        finally:
            os.kill(pid, signal.SIGCONT)
        assert worker.status == "stopped"
        pausing.cancel()  # its flush belongs to a connection that is gone; nats-py would let it wait out 10 s
        await asyncio.gather(pausing, return_exceptions=True)


async def test_pause_drains_in_order_through_nats_py_internals(make_agent, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lossless drain needs nats-py's _send_unsubscribe/_remove_sub: fail loudly if it silently stops being used."""
    import agentcore.transport.subscriptions as subscriptions  # INTERNAL by design: this test watches the drain path itself

    used: list[str] = []
    real = subscriptions.drain

    async def spy(nc: Any, sub: Any) -> None:
        used.append(sub.subject)
        await real(nc, sub)

    monkeypatch.setattr(subscriptions, "drain", spy)
    worker = await make_agent("worker", capabilities={"work": lambda m: 1})
    subs = dict(worker.nc._subs)
    await worker.pause()
    assert used == ["agents.test.task.work.*"]
    assert len(worker.nc._subs) == len(subs) - 1  # gone from nats-py too
    client = await make_agent("client")
    with pytest.raises(NoRespondersError):
        await client.send_task("work", 1, timeout=2)
