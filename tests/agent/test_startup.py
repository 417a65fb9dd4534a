"""Starting up: a second live agent with the same id, instance ids of replicas, the subject root, a start that
fails at once with its reason, and the guide's logger name."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from agentcore import AgentConfig, DuplicateAgentError, NATSAgent, NotConnectedError
from agentcore.persistence import default_stream_name
from agentcore.server import NATSServer, free_port
from nats_fixtures import subscribed, within

DUPLICATE = "another live agent already uses the id"


async def test_a_second_agent_with_the_same_id_is_reported_at_start(make_agent, caplog: pytest.LogCaptureFixture) -> None:
    first = await make_agent("twin", capabilities={"work": lambda m: "first"})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agentcore"):
        second = await make_agent("twin", capabilities={"work": lambda m: "second"})
    warned = [r.getMessage() for r in caplog.records if DUPLICATE in r.getMessage()]
    assert len(warned) == 1 and f"instance {first.describe()['instance']}, running" in warned[0]
    assert "agent.duplicate_id" in warned[0]
    assert second.status == "running"  # a warning by default: replicas that share work may mean it

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agentcore"):
        await make_agent("twin", **{"agent__duplicate_id": "allow"})
    assert DUPLICATE not in caplog.text


async def test_a_duplicate_id_refuses_to_start_when_configured(make_agent, caplog: pytest.LogCaptureFixture) -> None:
    first = await make_agent("only-one", capabilities={"work": lambda m: "first"})
    second = await make_agent("only-one", start=False, capabilities={"work": lambda m: "second"},
                              **{"agent__duplicate_id": "error"})
    with caplog.at_level(logging.WARNING, logger="agentcore"), \
            pytest.raises(DuplicateAgentError, match="another live agent already uses the id 'only-one'"):
        await second.astart()
    assert "disconnected" not in caplog.text  # closing after a failed start is no outage
    assert second.status != "running"
    client = await make_agent("client")
    assert {await client.send_task("work", i) for i in range(10)} == {"first"}  # the refused one never subscribed
    assert first.status == "running"


async def test_a_unique_id_costs_no_waiting(make_agent) -> None:
    """Nobody on the control subject is a no-responders answer at once, not a discovery window."""
    t0 = time.perf_counter()
    await make_agent("alone", **{"agent__discovery_timeout": 5.0})
    assert time.perf_counter() - t0 < 2.0


async def test_replicas_sharing_an_id_have_distinct_instances_in_discovery(make_agent) -> None:
    replicas = [await make_agent("worker", capabilities={"work": lambda m: 1}, **{"agent__duplicate_id": "allow"})
                for _ in range(3)]
    named = await make_agent("solo", **{"agent__instance": "pod-7"})
    client = await make_agent("client")
    found = await client.discover(expected=4, timeout=5)
    workers = [info for info in found if info["id"] == "worker"]
    assert len(workers) == 3
    assert {info["instance"] for info in workers} == {r.describe()["instance"] for r in replicas}
    assert len({info["instance"] for info in workers}) == 3
    assert [info["instance"] for info in found if info["id"] == "solo"] == ["pod-7"] == [named.describe()["instance"]]
    assert all("p50_latency_ms" in info for info in found)


async def test_the_subject_root_keeps_two_products_apart(make_agent, raw_nc) -> None:
    seen: list[str] = []

    async def see(msg: Any) -> None:
        seen.append(msg.subject)

    sub = await raw_nc.subscribe("acme.>", cb=see)
    await subscribed(raw_nc)
    ours = await make_agent("worker", capabilities={"work": lambda m: "acme"}, **{"nats__subject_prefix": "acme"})
    theirs = await make_agent("worker", capabilities={"work": lambda m: "agents"})  # same env and id, default root
    client = await make_agent("client", **{"nats__subject_prefix": "acme"})
    assert ours.topics.task("work") == "acme.test.task.work.default"
    assert [await client.send_task("work", i) for i in range(5)] == ["acme"] * 5
    assert [info["id"] for info in await client.discover(expected=1, timeout=2)] == ["worker"]
    assert await client.control("worker", "ping") == {"pong": True, "agent_id": "worker", "status": "running"}
    assert theirs.get_metrics()["messages_processed"] == 0
    assert all(subject.startswith("acme.test.") for subject in seen) and "acme.test.status.worker" in seen
    assert ours.topics.to_topic("acme.test.task.work.x") == "agents/task/work/x"  # guide topics keep their root
    assert ours.topics.to_subject("agents/task/work/*") == "acme.test.task.work.*"
    await sub.unsubscribe()


async def test_the_subject_root_names_its_own_task_stream() -> None:
    assert default_stream_name("prod") == "AGENTS_PROD"
    assert default_stream_name("prod", "acme.agents") == "ACME_AGENTS_PROD"
    with NATSServer(jetstream=True) as server:
        config = AgentConfig({"nats.servers": [server.url], "nats.environment": "test", "nats.subject_prefix": "acme",
                              "jetstream.enabled": True}, environ={})
        worker = NATSAgent("w", config=config)
        worker.add_capability("work", lambda m: m["payload"]["content"] * 2)
        async with worker, NATSAgent("c", config=config) as client:
            assert await client.send_task("work", 21) == 42
            info = await client.persistence_info()
            assert info["stream"] == "ACME_TEST" and info["subjects"] == ["acme.test.task.>"]


async def test_a_start_without_a_server_fails_at_once_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    agent = NATSAgent("lonely", config=AgentConfig({"nats.servers": [url]}, environ={}))
    t0 = time.perf_counter()
    with caplog.at_level(logging.DEBUG, logger="agentcore"), pytest.raises(NotConnectedError) as info:
        await agent.astart()
    assert time.perf_counter() - t0 < 0.5  # nats-py alone retries for the whole connect bound (3 s)
    assert str(info.value) == f"agent lonely cannot connect to {url}: connection refused (no nats-server listens there)"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []  # one error, not a warning per retry


async def test_a_refused_password_fails_at_once_with_its_reason() -> None:
    with NATSServer(user="agent", password="s3cret") as server:
        intruder = NATSAgent("x", config=AgentConfig({"nats.servers": [server.url], "nats.user": "agent",
                                                      "nats.password": "wrong"}, environ={}))
        t0 = time.perf_counter()
        with pytest.raises(NotConnectedError, match="Authorization Violation"):
            await within(intruder.astart(), "the refused start")
        assert time.perf_counter() - t0 < 1.0


def test_the_guides_logger_name_reaches_agentcores_loggers() -> None:
    guide = logging.getLogger("AgentFramework.Messaging.NATSProvider")
    ours = logging.getLogger("agentcore.agent")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    assert not ours.isEnabledFor(logging.DEBUG)
    guide.setLevel(logging.DEBUG)  # the guide's troubleshooting line
    guide.addHandler(handler)
    try:
        assert ours.isEnabledFor(logging.DEBUG)
        ours.debug("connection details")
        assert [r.getMessage() for r in records] == ["connection details"]
    finally:
        guide.removeHandler(handler)
        guide.setLevel(logging.NOTSET)
    assert not ours.isEnabledFor(logging.DEBUG)


def test_agents_started_in_the_thread_facade_check_their_id_too(nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    def agent(**extra: Any) -> NATSAgent:
        return NATSAgent("threaded", config=AgentConfig({"nats.servers": [nats_url], "agent.heartbeat_interval": 60.0,
                                                         **extra}, environ={}))

    first, second, third = agent(), agent(), agent(**{"agent.duplicate_id": "error"})
    assert first.start()
    try:
        with caplog.at_level(logging.WARNING, logger="agentcore"):
            assert second.start()
        assert DUPLICATE in caplog.text
        second.stop()
        assert third.start() is False
        assert "DuplicateAgentError" in caplog.text or DUPLICATE in caplog.text
    finally:
        first.stop()
