"""No open relays: replyTo is honoured only for reply inboxes, result subjects and configured patterns.

The attacker (a plain nats-py client) aims an agent's answer at another capability's task subject, at a control
subject, or (with NATS permissions that deny it the admin capability) uses an agent as its deputy. Each test
asserts that the attack fails and that the honest path still works.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from agentcore import AgentConfig, ForbiddenError, NATSAgent
from agentcore.envelope import decode, raise_for_error
from agentcore.server import NATSServer
from helpers import task_envelope
from nats_fixtures import eventually, subscribed


def admin_and_echo(ran: list[Any]) -> dict[str, Any]:
    async def admin(message: dict[str, Any]) -> str:
        ran.append(message)
        return "admin did it"

    async def echo(message: dict[str, Any]) -> Any:
        return message["payload"]["content"]

    return {"admin": admin, "echo": echo}


def refusal(data: bytes) -> ForbiddenError:
    with pytest.raises(ForbiddenError) as info:
        raise_for_error(decode(data))
    return info.value


async def test_reply_to_another_capabilitys_task_subject_runs_nothing(make_agent: Any, raw_nc: nats.NATS) -> None:
    ran: list[Any] = []
    worker = await make_agent("worker", capabilities=admin_and_echo(ran))
    for i in range(10):
        relay = task_envelope(f"relay-{i}", {"drop": "tables"}, capability="echo", replyTo="agents.test.task.admin.default")
        answer = await raw_nc.request(worker.topics.task("echo"), orjson.dumps(relay), timeout=5)
        error = refusal(answer.data)
        assert error.details == {"reason": "reply_to"} and "agents.test.task.admin.default" in error.remote_message
    await raw_nc.publish(worker.topics.task("echo"), orjson.dumps(  # with no NATS reply subject: silently refused
        task_envelope("relay-quiet", "x", capability="echo", replyTo="agents.test.task.admin.default")))
    await eventually(lambda: worker.get_metrics()["replies_refused"] == 11, what="the refusals to be counted")
    assert ran == []
    # The honest paths: a reply inbox, a result subject.
    inbox = raw_nc.new_inbox()
    answers = await raw_nc.subscribe(inbox)
    await raw_nc.publish(worker.topics.task("echo"), orjson.dumps(task_envelope("ok-1", "hi", capability="echo", replyTo=inbox)))
    assert decode((await answers.next_msg(timeout=5)).data)["payload"]["content"] == "hi"
    results = await raw_nc.subscribe("agents.test.result.plain-client.echo")
    await raw_nc.publish(worker.topics.task("echo"), orjson.dumps(
        task_envelope("ok-2", "hello", capability="echo", replyTo="agents.test.result.plain-client.echo")))
    assert decode((await results.next_msg(timeout=5)).data)["payload"]["content"] == "hello"
    client: NATSAgent = await make_agent("client")
    assert await client.send_task("admin", {}) == "admin did it"
    assert worker.get_metrics()["replies_refused"] == 11


async def test_reply_to_a_control_subject_or_through_discovery_is_refused(make_agent: Any, raw_nc: nats.NATS) -> None:
    victim: NATSAgent = await make_agent("victim", control__allow=["echoer"])
    echoer = await make_agent("echoer", capabilities={"echo": lambda m: m["payload"]["content"]})
    # The echo's result would land on the victim's control subject in the echoer's name (which the victim allows).
    forged = task_envelope("f-1", {"command": "shutdown"}, capability="echo", replyTo="agents.test.control.victim")
    refusal((await raw_nc.request(echoer.topics.task("echo"), orjson.dumps(forged), timeout=5)).data)
    query = task_envelope("d-1", {"capability": None}, type="query", replyTo="agents.test.control.victim")
    inbox = raw_nc.new_inbox()
    answers = await raw_nc.subscribe(inbox)
    await raw_nc.publish("agents.test.discovery.requests", orjson.dumps(query), reply=inbox)
    refusals = [refusal((await answers.next_msg(timeout=5)).data) for _ in range(2)]  # every agent refuses
    assert {e.source for e in refusals} == {"victim", "echoer"}
    assert victim.status == "running"
    client: NATSAgent = await make_agent("client")
    assert [a["id"] for a in await client.discover(expected=2)] == ["echoer", "victim"]  # the honest path


async def test_configured_reply_subjects_are_honoured(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker = await make_agent("worker", capabilities={"echo": lambda m: m["payload"]["content"]},
                              agent__reply_subjects=["results.shared.>"])
    sub = await raw_nc.subscribe("results.shared.alice")
    await raw_nc.publish(worker.topics.task("echo"), orjson.dumps(
        task_envelope("c-1", "via config", capability="echo", replyTo="results.shared.alice")))
    assert decode((await sub.next_msg(timeout=5)).data)["payload"]["content"] == "via config"
    for bad in ("results.other", "_INBOX.a b", "_INBOX.*"):  # not configured; an inbox that is no valid subject
        answer = await raw_nc.request(worker.topics.task("echo"), orjson.dumps(
            task_envelope(f"c-{bad}", "x", capability="echo", replyTo=bad)), timeout=5)
        refusal(answer.data)


async def test_a_result_reflected_by_a_nats_reply_subject_is_never_work(make_agent: Any, raw_nc: nats.NATS) -> None:
    ran: list[Any] = []
    worker = await make_agent("worker", capabilities=admin_and_echo(ran))
    # The NATS reply subject is the publisher's to choose: the echo's result (content chosen by the attacker) goes
    # to the admin task subject, as a result envelope. A task handler never runs a result.
    for i in range(10):
        await raw_nc.publish(worker.topics.task("echo"), orjson.dumps(task_envelope(f"r-{i}", {"drop": "tables"}, capability="echo")),
                             reply="agents.test.task.admin.default")
    await eventually(lambda: worker.get_metrics().get("results_ignored") == 10, what="the reflected results to be ignored")
    assert ran == []
    observer: list[dict[str, Any]] = []  # a subscribe() handler (an observer) still sees results
    watcher = await make_agent("watcher")
    await watcher.asubscribe("agents.test.result.>", lambda topic, message: observer.append(message) or True)
    await raw_nc.publish("agents.test.result.x.y", orjson.dumps(task_envelope("res-1", "r", type="result")))
    await eventually(lambda: len(observer) == 1, what="the observer to see the result")


# --------------------------------------------------------------------------------------------- a confused deputy

MALLORY_CONFIG = """
authorization {
  users = [
    {user: agent, password: agent-pw}
    {user: mallory, password: mallory-pw, permissions: {publish: {deny: ["agents.test.task.admin.>"]}}}
  ]
}
"""


@pytest.fixture
def locked_server(tmp_path: Path) -> Iterator[NATSServer]:
    conf = tmp_path / "nats.conf"
    conf.write_text(MALLORY_CONFIG)
    with NATSServer(extra_args=["-c", str(conf)]) as server:
        yield server


async def test_an_agent_is_no_deputy_for_a_user_denied_the_admin_capability(locked_server: NATSServer) -> None:
    ran: list[Any] = []
    config = AgentConfig({"nats.servers": [locked_server.url], "nats.environment": "test", "nats.user": "agent",
                          "nats.password": "agent-pw", "agent.heartbeat_interval": 60.0}, environ={})
    worker = NATSAgent("worker", "worker", config)
    for name, handler in admin_and_echo(ran).items():
        worker.add_capability(name, handler)
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    mallory = await nats.connect(locked_server.url, user="mallory", password="mallory-pw", error_cb=on_error)
    async with worker:
        try:
            # Directly: the server refuses mallory's publish.
            await mallory.publish("agents.test.task.admin.default", orjson.dumps(task_envelope("m-0", {}, capability="admin")))
            await subscribed(mallory)
            # Through the echo capability, replyTo = the admin subject: refused by the agent, 10 of 10.
            for i in range(10):
                relay = task_envelope(f"m-{i}", {"drop": "tables"}, source="mallory", capability="echo",
                                      replyTo="agents.test.task.admin.default")
                refusal((await mallory.request(worker.topics.task("echo"), orjson.dumps(relay), timeout=5)).data)
                # ... and with the NATS reply subject aimed there: the reflected result is no work.
                await mallory.publish(worker.topics.task("echo"), orjson.dumps(task_envelope(f"n-{i}", {}, capability="echo")),
                                      reply="agents.test.task.admin.default")
            await eventually(lambda: worker.get_metrics().get("results_ignored") == 10, what="the reflected results")
            await asyncio.sleep(0.05)  # nothing else is on its way to the admin handler
            assert ran == []
            assert any("permissions violation" in str(e).lower() for e in errors)
            # The honest path: mallory's allowed requests are answered; an agent user reaches admin.
            echo = task_envelope("m-ok", "fine", source="mallory", capability="echo")
            assert decode((await mallory.request(worker.topics.task("echo"), orjson.dumps(echo), timeout=5)).data)["payload"]["content"] == "fine"
            assert await worker.send_task("admin", {}) == "admin did it"
        finally:
            await mallory.close()
