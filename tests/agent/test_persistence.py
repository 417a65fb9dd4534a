"""JetStream persistence of tasks, against a real nats-server started with JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from helpers import Deferring, Never
from nats_fixtures import eventually, within

from agentcore import AgentConfig, HandlerError, NATSAgent, NotConnectedError, PersistenceError, RemoteError
from agentcore.persistence import default_stream_name
from agentcore.server import NATSServer

JS = {"jetstream__enabled": True, "jetstream__pull_expires": 0.3}  # a stop waits out one pull request: keep it short


@pytest.fixture
def nats_server() -> Iterator[NATSServer]:
    """This module's agents need JetStream: a fresh server with it for each test."""
    with NATSServer(jetstream=True) as server:
        yield server


async def _stream_messages(agent: NATSAgent) -> int:
    return int((await agent.persistence_info())["messages"])


async def _consumer(agent: NATSAgent, capability: str) -> Any:
    """The server's view of capability's durable consumer on agent's task stream (asked on agent's connection)."""
    stream = (await agent.persistence_info())["stream"]
    return await agent.nc.jetstream().consumer_info(stream, capability)


async def _emptied(agent: NATSAgent) -> None:
    """Wait until the stream holds no task: acks come from the worker's connection, this asks on another."""

    async def empty() -> bool:
        return await _stream_messages(agent) == 0

    await eventually(empty, what="the stream to hold no task")


class _Slow:
    """An async handler that takes its time and counts its runs."""

    def __init__(self, seconds: float, result: str) -> None:
        self.seconds, self.result, self.calls = seconds, result, 0

    async def __call__(self, message: dict[str, Any]) -> str:
        self.calls += 1
        await asyncio.sleep(self.seconds)
        return self.result


async def test_a_persisted_task_round_trip_leaves_the_stream_empty(make_agent) -> None:
    worker = await make_agent("worker", capabilities={"double": lambda m: m["payload"]["content"] * 2}, **JS)
    client = await make_agent("client", **JS)
    assert worker.persistent and client.persistent
    assert await client.send_task("double", 21, timeout=5) == 42
    info = await client.persistence_info()
    assert info["stream"] == default_stream_name("test") == "AGENTS_TEST"
    assert info["subjects"] == ["agents.test.task.>"] and info["consumers"] == 1
    await eventually(lambda: worker.get_metrics().get("persisted_acked") == 1)
    await _emptied(client)  # work queue: an answered task is gone
    assert client.get_metrics()["persisted_sent"] == 1


async def test_tasks_sent_while_no_worker_runs_are_answered_when_one_starts(make_agent) -> None:
    client = await make_agent("client", **JS)
    worker = await make_agent("worker", capabilities={"echo": lambda m: m["payload"]["content"]}, start=False, **JS)
    calls = [asyncio.ensure_future(client.send_task("echo", i, timeout=20)) for i in range(50)]
    await eventually(lambda: client.get_metrics().get("persisted_sent") == 50)
    assert not any(c.done() for c in calls)
    assert await _stream_messages(client) == 50  # kept, although nobody serves echo
    await worker.astart()
    assert sorted(await asyncio.gather(*calls)) == list(range(50))


async def test_no_task_is_lost_across_a_server_restart(make_agent, nats_server) -> None:
    """Core NATS loses what is in flight in a restart; stored tasks come back with the server's file store."""
    fast = {"nats__reconnect_time_wait": 0.05, **JS}
    client = await make_agent("client", **fast)
    calls = [asyncio.ensure_future(client.send_task("work", i, timeout=30)) for i in range(20)]
    await eventually(lambda: client.get_metrics().get("persisted_sent") == 20)
    await asyncio.to_thread(nats_server.restart)
    await eventually(lambda: client.get_metrics()["reconnects"] >= 1, 10)
    worker = await make_agent("worker", capabilities={"work": lambda m: m["payload"]["content"] + 1000}, **fast)
    assert sorted(await asyncio.gather(*calls)) == list(range(1000, 1020))
    await eventually(lambda: worker.get_metrics().get("persisted_acked") == 20)


async def test_a_task_published_during_a_restart_is_stored_once_it_is_back(make_agent, nats_server) -> None:
    fast = {"nats__reconnect_time_wait": 0.05, **JS}
    worker = await make_agent("worker", capabilities={"work": lambda m: "done"}, **fast)
    client = await make_agent("client", **fast)
    assert await client.send_task("work", 0, timeout=5) == "done"
    nats_server.stop()
    await eventually(lambda: client.get_metrics()["disconnects"] >= 1, 10)
    call = asyncio.ensure_future(client.send_task("work", 1, timeout=30))  # retried until JetStream stores it
    await asyncio.to_thread(nats_server.start)
    assert await call == "done"
    await eventually(lambda: worker.get_metrics().get("persisted_acked") == 2)


async def test_replicas_share_one_durable_consumer(make_agent) -> None:
    seen: dict[str, int] = {"a": 0, "b": 0}
    both = asyncio.Event()

    def serve(name: str) -> Any:
        async def handler(message: dict[str, Any]) -> str:
            seen[name] += 1
            if seen["a"] and seen["b"]:
                both.set()
            # Each replica holds at most 8 tasks (2 x max_concurrency) while its handlers wait for the other
            # replica's first task: whoever pulled first cannot take all the work, however the pulls interleave.
            await asyncio.wait_for(both.wait(), 10)
            return name

        return handler

    await make_agent("replica-a", capabilities={"work": serve("a")}, agent__max_concurrency=4, **JS)
    await make_agent("replica-b", capabilities={"work": serve("b")}, agent__max_concurrency=4, **JS)
    client = await make_agent("client", **JS)
    results = await asyncio.gather(*(client.send_task("work", i, timeout=10, metadata={"n": i}) for i in range(100)))
    assert sorted(set(results)) == ["a", "b"] and seen["a"] + seen["b"] == 100
    assert (await client.persistence_info())["consumers"] == 1


async def test_a_handler_error_is_answered_and_not_run_again(make_agent) -> None:
    calls = 0

    def fail(message: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    worker = await make_agent("worker", capabilities={"fail": fail}, jetstream__ack_wait=0.5, **JS)
    client = await make_agent("client", **JS)
    with pytest.raises(HandlerError, match="boom"):
        await client.send_task("fail", 1, timeout=5)
    await _emptied(client)  # acked, not handed back: nothing left to redeliver
    consumer = await _consumer(client, "fail")
    assert consumer.num_ack_pending == 0 and consumer.num_redelivered == 0 and calls == 1


async def test_a_task_cut_off_by_a_stopping_agent_goes_to_a_replica(make_agent) -> None:
    """The stopping agent hands the task back instead of answering cancelled; the requester never notices."""
    stuck = Never()
    first = await make_agent("first", capabilities={"work": stuck}, nats__drain_timeout=0.3, **JS)
    client = await make_agent("client", **JS)
    call = asyncio.ensure_future(client.send_task("work", 1, timeout=20))
    await stuck.wait_started()
    await first.astop()  # its handler is cancelled past the drain timeout
    assert first.get_metrics()["persisted_nakked"] == 1 and not call.done()
    await make_agent("second", capabilities={"work": lambda m: "second"}, **JS)
    assert await call == "second"


async def test_a_crashed_worker_s_task_is_redelivered_after_ack_wait(make_agent) -> None:
    stuck = Never()
    config = {"jetstream__ack_wait": 1.0, **JS}
    doomed = await make_agent("doomed", capabilities={"work": stuck}, nats__drain_timeout=0.3, **config)
    client = await make_agent("client", **JS)
    call = asyncio.ensure_future(client.send_task("work", 7, timeout=20))
    await stuck.wait_started()
    # The connection dies without an ack, as when the process is killed: no in-progress report gets out either.
    await doomed.nc.close()
    survivor = await make_agent("survivor", capabilities={"work": lambda m: m["payload"]["content"]}, **config)
    assert await call == 7
    assert survivor.get_metrics()["persisted_redelivered"] == 1


async def test_a_long_handler_is_kept_in_progress_and_runs_once(make_agent) -> None:
    slow = _Slow(2.2, "slow")  # twice ack_wait: without in-progress reports JetStream would redeliver
    worker = await make_agent("worker", capabilities={"slow": slow}, jetstream__ack_wait=1.0, cache__enabled=False, **JS)
    client = await make_agent("client", **JS)
    assert await client.send_task("slow", 1, timeout=10) == "slow"
    assert slow.calls == 1 and worker.get_metrics().get("persisted_redelivered", 0) == 0


async def test_a_malformed_stored_task_is_terminated_and_the_agent_serves_on(make_agent, nats_url) -> None:
    worker = await make_agent("worker", capabilities={"echo": lambda m: m["payload"]["content"]}, **JS)
    client = await make_agent("client", **JS)
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish("agents.test.task.echo.default", b"{not json")
    finally:
        await nc.close()
    await eventually(lambda: worker.get_metrics().get("persisted_terminated") == 1)
    assert await client.send_task("echo", "still here", timeout=5) == "still here"
    await _emptied(client)


async def test_pause_keeps_tasks_in_the_stream_until_resume(make_agent) -> None:
    worker = await make_agent("worker", capabilities={"echo": lambda m: m["payload"]["content"]}, **JS)
    client = await make_agent("client", **JS)
    await worker.pause()
    call = asyncio.ensure_future(client.send_task("echo", "later", timeout=20))
    await eventually(lambda: client.get_metrics().get("persisted_sent") == 1)
    assert await _stream_messages(client) == 1 and not call.done()
    await worker.resume()
    assert await call == "later"


async def test_non_task_traffic_is_untouched(make_agent) -> None:
    """Control, discovery and events stay core NATS: only tasks persist."""
    worker = await make_agent("worker", capabilities={"echo": lambda m: 1}, **JS)
    client = await make_agent("client", **JS)
    assert (await client.control("worker", "ping"))["status"] == "running"
    [found] = await client.discover("echo")
    assert found["id"] == "worker" and found["persistent_stream"] == "AGENTS_TEST"
    assert worker.get_metrics().get("persisted_acked", 0) == 0


async def test_a_server_without_jetstream_is_a_clear_error(agent_config) -> None:
    with NATSServer() as plain:  # no -js
        config = agent_config(jetstream__enabled=True)
        config.set("nats.servers", [plain.url])
        agent = NATSAgent("worker", config=config)
        with pytest.raises(PersistenceError, match="JetStream"):
            await agent.astart()
        with pytest.raises(NotConnectedError):
            agent.nc  # the failed start left no connection open
        assert agent.status != "running"


async def test_a_missing_stream_is_an_error_when_agents_may_not_create_it(make_agent) -> None:
    with pytest.raises(PersistenceError, match="does not exist"):
        await make_agent("worker", jetstream__create_stream=False, **JS)


def test_config_validates_the_jetstream_keys() -> None:
    from agentcore import ConfigError

    config = AgentConfig({"jetstream.enabled": "yes", "jetstream.ack_wait": 2}, environ={})
    assert config["jetstream.enabled"] is True and config["jetstream.ack_wait"] == 2.0
    with pytest.raises(ConfigError, match="jetstream.max_deliver"):
        AgentConfig({"jetstream.max_deliver": 0}, environ={})


async def test_a_requester_without_persistence_hears_why_it_got_no_answer(make_agent) -> None:
    await make_agent("worker", capabilities={"echo": lambda m: m["payload"]["content"]}, **JS)
    plain = await make_agent("plain")  # jetstream.enabled left off: its request is stored, and JetStream acks it
    with pytest.raises(PersistenceError, match="set jetstream.enabled"):
        await plain.send_task("echo", 1, timeout=5)


async def test_a_redelivery_while_the_task_runs_is_not_run_twice(make_agent) -> None:
    """Without in-progress reports JetStream redelivers a slow task; the first delivery still answers and acks."""
    slow = _Slow(1.2, "once")
    worker = await make_agent("worker", capabilities={"slow": slow}, jetstream__ack_wait=0.4, **JS)
    # INTERNAL: no public way to turn the in-progress reports off; without them JetStream redelivers at ack_wait
    worker._core.settlement.stop()
    client = await make_agent("client", **JS)
    assert await client.send_task("slow", 1, timeout=10) == "once"
    assert slow.calls == 1 and worker.get_metrics()["persisted_redelivered"] >= 1
    assert (await worker.persistence_info())["held"] == 0  # the redelivered copies were dropped, not held forever
    # A redelivery that lands just after the answer is acked too (a replay): one ack or two.
    await eventually(lambda: worker.get_metrics().get("persisted_acked", 0) >= 1)
    await _emptied(client)  # the first delivery's ack took the task off the stream


async def test_replicas_starting_at_once_all_receive_tasks(make_agent) -> None:
    """Each creates the consumer; with a random delivery inbox each, the last would win and strand the rest."""
    seen: dict[str, int] = {}
    spread = asyncio.Event()

    def serve(name: str) -> Any:
        async def handler(message: dict[str, Any]) -> str:
            seen[name] = seen.get(name, 0) + 1
            if len(seen) >= 3:
                spread.set()
            # Each replica holds at most 8 tasks (2 x max_concurrency) until three have some: the 60 tasks must
            # reach at least three replicas unless one was stranded (the bug), however fast the first ones pull.
            await asyncio.wait_for(spread.wait(), 10)
            return name

        return handler

    replicas = await asyncio.gather(*(make_agent(f"r{i}", capabilities={"work": serve(f"r{i}")}, cache__enabled=False,
                                                 agent__max_concurrency=4, **JS) for i in range(4)))
    client = await make_agent("client", **JS)
    await asyncio.gather(*(client.send_task("work", i, timeout=10) for i in range(60)))
    assert len(seen) >= 3, seen  # the work spreads (one replica taking it all was the bug)
    busiest = max(seen, key=lambda name: seen[name])
    await next(r for r in replicas if r.agent_id == busiest).astop()
    assert set(await asyncio.gather(*(client.send_task("work", i, timeout=10) for i in range(10)))) - {busiest}


async def test_a_busy_agent_is_never_offered_more_than_it_can_hold(make_agent) -> None:
    """max_ack_pending follows the agent's own limits, so no task is refused until its deliveries run out."""

    async def slow(message: dict[str, Any]) -> int:
        await asyncio.sleep(0.01)
        return int(message["payload"]["content"])

    worker = await make_agent("worker", capabilities={"slow": slow}, agent__max_concurrency=1, agent__max_queued=1,
                              cache__enabled=False, **JS)
    client = await make_agent("client", **JS)
    assert sorted(await asyncio.gather(*(client.send_task("slow", i, timeout=15) for i in range(20)))) == list(range(20))
    assert worker.get_metrics().get("overloaded", 0) == 0


async def test_the_last_delivery_of_a_task_that_cannot_be_taken_is_answered(make_agent) -> None:
    """A task handed back max_deliver times is not left in the stream unanswered: its requester hears why."""

    async def cancelled(message: dict[str, Any]) -> None:
        raise asyncio.CancelledError  # the handler's own doing: handed back on every delivery

    worker = await make_agent("worker", capabilities={"work": cancelled}, jetstream__max_deliver=2, **JS)
    client = await make_agent("client", **JS)
    with pytest.raises(RemoteError, match="cancelled") as info:
        await client.send_task("work", 1, timeout=10)
    assert info.value.code == "cancelled"
    m = worker.get_metrics()
    assert m["persisted_nakked"] == 1 and m["persisted_terminated"] == 1
    await _emptied(client)


async def test_handlers_draining_at_stop_stay_in_progress(make_agent) -> None:
    """In-progress reports go on while a stopping agent drains, so a replica does not run the task again."""
    started = asyncio.Event()

    async def slow(message: dict[str, Any]) -> str:
        started.set()
        await asyncio.sleep(2.2)
        return "first"

    config = {"jetstream__ack_wait": 1.0, "cache__enabled": False, **JS}
    first = await make_agent("first", capabilities={"work": slow}, nats__drain_timeout=5, **config)
    client = await make_agent("client", **JS)
    call = asyncio.ensure_future(client.send_task("work", 1, timeout=10))
    await within(started.wait(), "the first agent's handler to start")
    second = await make_agent("second", capabilities={"work": lambda m: "second"}, **config)
    await first.astop()
    assert await call == "first"
    assert second.get_metrics().get("persisted_acked", 0) == 0


async def test_the_consumer_s_own_ack_wait_is_what_counts(make_agent) -> None:
    """An agent configured with a longer ack_wait than the existing consumer reports progress often enough."""
    creator = await make_agent("creator", capabilities={"work": lambda m: 0}, jetstream__ack_wait=1.0, **JS)
    await creator.astop()
    slow = _Slow(2.2, "once")
    await make_agent("worker", capabilities={"work": slow}, jetstream__ack_wait=30, cache__enabled=False, **JS)
    client = await make_agent("client", **JS)
    assert await client.send_task("work", 1, timeout=10) == "once"
    assert slow.calls == 1


async def test_a_deferred_answer_is_acked_when_it_is_published(make_agent) -> None:
    """process_message may answer later with publish_result: the task stays held until then."""

    class Answering(Deferring):
        answer_after, answer = 0.05, {"later": True}  # publish_result from another thread, 50 ms after returning

    worker = await make_agent("worker", cls=Answering, capabilities={"work": None}, **JS)
    client = await make_agent("client", **JS)
    assert await client.send_task("work", 1, timeout=5) == {"later": True}
    await eventually(lambda: worker.get_metrics().get("persisted_acked") == 1)
    await _emptied(client)


async def test_pausing_under_load_strands_no_task(make_agent) -> None:
    """Tasks the server sent before the pause are handled; none waits out ack_wait on a dropped inbox."""
    paused = asyncio.Event()
    taken = 0

    async def work(message: dict[str, Any]) -> int:
        nonlocal taken
        taken += 1
        if taken == 50:
            paused.set()
        await asyncio.sleep(0.001)
        return int(message["payload"]["content"])

    worker = await make_agent("worker", capabilities={"work": work}, cache__enabled=False, **JS)
    client = await make_agent("client", **JS)
    calls = [asyncio.ensure_future(client.send_task("work", i, timeout=25)) for i in range(1200)]

    async def nothing_out() -> bool:
        return (await _consumer(client, "work")).num_ack_pending == 0

    async def nothing_held() -> bool:
        return (await worker.persistence_info())["held"] == 0

    for _ in range(4):  # pause and resume in the thick of it, four times
        paused.clear()
        taken = 0
        await within(paused.wait(), "the 50th task since the last resume")
        await worker.pause()
        await eventually(nothing_held, what="the tasks taken before the pause answered")  # and once their
        await eventually(nothing_out, what="no task stranded on the paused agent's inbox")  # acks are in, no more
        await worker.resume()
    assert sorted(await asyncio.gather(*calls)) == list(range(1200))  # well before ack_wait (30 s)
    assert worker.get_metrics().get("persisted_redelivered", 0) == 0
