"""JetStream persistence of tasks, against a real nats-server started with JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from nats_fixtures import eventually

from agentcore import AgentConfig, NATSAgent, PersistenceError
from agentcore.persistence import default_stream_name
from agentcore.server import NATSServer

JS = {"jetstream__enabled": True}


@pytest.fixture
def nats_server() -> Iterator[NATSServer]:
    """This module's agents need JetStream: a fresh server with it for each test."""
    with NATSServer(jetstream=True) as server:
        yield server


async def _stream_messages(agent: NATSAgent) -> int:
    return int((await agent.persistence_info())["messages"])


async def test_a_persisted_task_round_trip_leaves_the_stream_empty(make_agent) -> None:
    worker = await make_agent("worker", capabilities={"double": lambda m: m["payload"]["content"] * 2}, **JS)
    client = await make_agent("client", **JS)
    assert worker.persistent and client.persistent
    assert await client.send_task("double", 21, timeout=5) == 42
    info = await client.persistence_info()
    assert info["stream"] == default_stream_name("test") == "AGENTS_TEST"
    assert info["subjects"] == ["agents.test.task.>"] and info["consumers"] == 1
    await eventually(lambda: worker.get_metrics().get("persisted_acked") == 1)
    assert await _stream_messages(client) == 0  # work queue: an answered task is gone
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
    assert worker.get_metrics()["persisted_acked"] == 20


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
    assert worker.get_metrics()["persisted_acked"] == 2


async def test_replicas_share_one_durable_consumer(make_agent) -> None:
    seen: dict[str, int] = {"a": 0, "b": 0}

    def serve(name: str) -> Any:
        async def handler(message: dict[str, Any]) -> str:
            seen[name] += 1
            await asyncio.sleep(0.005)  # long enough that one replica cannot take all the work
            return name

        return handler

    await make_agent("replica-a", capabilities={"work": serve("a")}, **JS)
    await make_agent("replica-b", capabilities={"work": serve("b")}, **JS)
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
    with pytest.raises(Exception, match="boom"):
        await client.send_task("fail", 1, timeout=5)
    await eventually(lambda: worker.get_metrics().get("persisted_acked") == 1)
    consumer = await client._js.consumer_info(client._js_stream, "fail")
    assert consumer.num_ack_pending == 0 and consumer.num_redelivered == 0 and calls == 1


async def test_a_task_cut_off_by_a_stopping_agent_goes_to_a_replica(make_agent) -> None:
    """The stopping agent hands the task back instead of answering cancelled; the requester never notices."""
    started = asyncio.Event()

    async def stuck(message: dict[str, Any]) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    first = await make_agent("first", capabilities={"work": stuck}, nats__drain_timeout=0.3, **JS)
    client = await make_agent("client", **JS)
    call = asyncio.ensure_future(client.send_task("work", 1, timeout=20))
    await started.wait()
    await first.astop()  # its handler is cancelled past the drain timeout
    assert first.get_metrics()["persisted_nakked"] == 1 and not call.done()
    await make_agent("second", capabilities={"work": lambda m: "second"}, **JS)
    assert await call == "second"


async def test_a_crashed_worker_s_task_is_redelivered_after_ack_wait(make_agent) -> None:
    started = asyncio.Event()

    async def stuck(message: dict[str, Any]) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    config = {"jetstream__ack_wait": 1.0, **JS}
    doomed = await make_agent("doomed", capabilities={"work": stuck}, nats__drain_timeout=0.3, **config)
    client = await make_agent("client", **JS)
    call = asyncio.ensure_future(client.send_task("work", 7, timeout=20))
    await started.wait()
    doomed._stop_persistence()  # no more in-progress reports ...
    await doomed._nc.close()  # ... and the connection dies without an ack, as when the process is killed
    survivor = await make_agent("survivor", capabilities={"work": lambda m: m["payload"]["content"]}, **config)
    assert await call == 7
    assert survivor.get_metrics()["persisted_redelivered"] == 1


async def test_a_long_handler_is_kept_in_progress_and_runs_once(make_agent) -> None:
    calls = 0

    async def slow(message: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(1.5)  # three times ack_wait: without in-progress reports JetStream would redeliver
        return "slow"

    worker = await make_agent("worker", capabilities={"slow": slow}, jetstream__ack_wait=0.5, cache__enabled=False, **JS)
    client = await make_agent("client", **JS)
    assert await client.send_task("slow", 1, timeout=10) == "slow"
    assert calls == 1 and worker.get_metrics().get("persisted_redelivered", 0) == 0


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
    assert await _stream_messages(client) == 0


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
        assert agent._nc is None


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


async def test_a_persisted_task_larger_than_max_payload_is_refused(make_agent) -> None:
    from agentcore import PayloadTooLargeError

    await make_agent("worker", capabilities={"echo": lambda m: 1}, **JS)
    client = await make_agent("client", **JS)
    with pytest.raises(PayloadTooLargeError):
        await client.send_task("echo", "x" * (client.nc.max_payload + 1), timeout=5)
    assert await client.send_task("echo", "small", timeout=5) == 1
