"""A2A served by a NATSAgent (agent.serve_a2a): on the agent's connection and lifecycle, its card in discovery and in
the NATS service API, replicas sharing work and tasks through JetStream, a plain capability served as an A2A agent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import nats
import orjson
import pytest
from a2a.client import A2AClientError
from a2a.helpers import get_artifact_text
from a2a.types.a2a_pb2 import AgentCard, AgentInterface, GetTaskRequest, ListTasksRequest, TaskState
from a2a_support import Echo, factory, text_request
from a2a_support import card as card_for
from google.protobuf.json_format import Parse
from helpers import task_envelope
from nats_fixtures import eventually, subscribed, within

from agentcore import NATSAgent
from agentcore.a2a import BINDING_URI, PROTOCOL_VERSION
from agentcore.errors import ConfigError, PersistenceError
from agentcore.server import NATSServer


async def _send(client: Any, text: str) -> list[Any]:
    return [event async for event in client.send_message(text_request(text))]


async def test_served_with_the_agent_and_gone_when_it_stops(make_agent: Any, raw_nc: nats.NATS) -> None:
    agent: NATSAgent = await make_agent("echoer", start=False)
    agent.serve_a2a(Echo(), name="echo", description="echoes the text")
    await agent.astart()
    card = agent.a2a_card()
    interface = card.supported_interfaces[0]
    assert interface.protocol_binding == BINDING_URI and interface.protocol_version == PROTOCOL_VERSION
    assert interface.url.endswith("/agents.test.a2a-protocol.echo")

    client = factory(raw_nc, streaming=False).create(card)
    events = await within(_send(client, "hello"), "SendMessage to the agent")
    assert events[0].task.status.state == TaskState.TASK_STATE_COMPLETED
    assert get_artifact_text(events[0].task.artifacts[0]) == "hello"
    metrics = agent.get_metrics()
    assert metrics["a2a_requests"] == 1 and metrics["a2a_streams_open"] == 0
    assert metrics["a2a_store_bytes"] > 0

    await agent.astop()
    with pytest.raises(A2AClientError, match="no responders"):
        await within(_send(client, "anyone?"), "SendMessage after the stop")


async def test_served_at_once_when_the_agent_runs(make_agent: Any, raw_nc: nats.NATS) -> None:
    agent: NATSAgent = await make_agent("late")
    await agent.aserve_a2a(Echo(), name="late-echo")
    client = factory(raw_nc, streaming=True).create(agent.a2a_card())
    events = await within(_send(client, "now"), "a streamed send to an agent served while running")
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    with pytest.raises(ConfigError, match="served already"):
        agent.serve_a2a(Echo(), name="late-echo")


async def test_the_card_is_in_discovery_and_the_service_api(make_agent: Any, raw_nc: nats.NATS) -> None:
    agent: NATSAgent = await make_agent("carded", start=False)
    agent.serve_a2a(Echo(), name="echo", title="Echo", description="echoes the text")
    await agent.astart()
    asker: NATSAgent = await make_agent("asker")

    found = await asker.discover(expected=1)
    entry = next(a for a in found if a["id"] == "carded")["a2a"][0]
    assert entry["protocolBinding"] == BINDING_URI and entry["card"] == "agents.test.a2a-protocol.echo.AgentCard"
    assert entry["store"] == "memory" and entry["url"].startswith("nats://")

    # A plain nats-py client asks discovery as any NATS client may, and finds where the card is.
    inbox = raw_nc.new_inbox()
    answers = await raw_nc.subscribe(inbox)
    await subscribed(raw_nc)
    query = task_envelope("d-1", {"capability": None}, type="query")
    await raw_nc.publish("agents.test.discovery.requests", orjson.dumps(query), reply=inbox)
    described = [orjson.loads((await answers.next_msg(timeout=5)).data)["payload"]["content"] for _ in range(2)]
    assert {d["id"]: d.get("a2a") for d in described} == {"carded": [entry], "asker": None}

    # It reads the service API, then the card from the subject the metadata names.
    info = orjson.loads((await raw_nc.request("$SRV.INFO.worker.carded", b"", timeout=5)).data)
    endpoint = next(e for e in info["endpoints"] if e["name"] == "a2a-echo")
    assert endpoint["subject"] == "agents.test.a2a-protocol.echo.*"
    assert endpoint["queue_group"] == "agents.test.a2a-protocol.echo"
    metadata = endpoint["metadata"]
    assert metadata["a2a.protocolBinding"] == BINDING_URI and metadata["a2a.url"] == entry["url"]
    answer = await raw_nc.request(metadata["a2a.card"], b"", timeout=5, headers={"A2A-Version": "1.0"})
    card = Parse(answer.data, AgentCard())
    assert card.name == "Echo" and card.description == "echoes the text"
    assert card.supported_interfaces[0].url == metadata["a2a.url"]

    client = factory(raw_nc, streaming=False).create(card)
    await within(_send(client, "counted"), "SendMessage")
    stats = orjson.loads((await raw_nc.request("$SRV.STATS.worker.carded", b"", timeout=5)).data)
    counted = next(e for e in stats["endpoints"] if e["name"] == "a2a-echo")
    assert counted["num_requests"] == 2 and counted["num_errors"] == 0  # the card, then the message


async def test_a_capability_served_as_an_a2a_agent(make_agent: Any, raw_nc: nats.NATS) -> None:
    async def shout(message: dict[str, Any]) -> str:
        return str(message["payload"]["content"]).upper()

    agent: NATSAgent = await make_agent("shouter", start=False, capabilities={"shout": shout})
    agent.serve_a2a("shout")
    with pytest.raises(ConfigError, match="no such capability"):
        agent.serve_a2a("whisper")
    await agent.astart()
    card = agent.a2a_card("shout")
    assert [skill.id for skill in card.skills] == ["shout"]
    client = factory(raw_nc, streaming=False).create(card)
    events = await within(_send(client, "hello"), "SendMessage to a capability")
    assert get_artifact_text(events[0].task.artifacts[0]) == "HELLO"
    # The capability still answers agentcore's own tasks.
    assert await agent.send_task("shout", "as ever") == "AS EVER"


async def test_memory_mode_refuses_a_second_replica(make_agent: Any) -> None:
    first: NATSAgent = await make_agent("solo", start=False)
    first.serve_a2a(Echo(), name="echo")
    await first.astart()
    second: NATSAgent = await make_agent("solo", start=False, agent__duplicate_id="allow")
    second.serve_a2a(Echo(), name="echo")
    with pytest.raises(ConfigError, match="in memory"):
        await second.astart()
    # On a running agent the refusal reaches the caller, and the agent serves nothing under that name.
    third: NATSAgent = await make_agent("solo-3")
    with pytest.raises(ConfigError, match="in memory"):
        await third.aserve_a2a(Echo(), name="echo")
    assert "a2a" not in third.describe()
    await third.aserve_a2a(Echo(), name="echo-3")
    assert [entry["name"] for entry in third.describe()["a2a"]] == ["echo-3"]


@pytest.fixture
def js_url() -> Iterator[str]:
    with NATSServer(jetstream=True) as server:
        yield server.url


async def test_two_replicas_share_the_work_and_the_tasks_through_jetstream(js_url: str) -> None:
    config = {"nats.servers": [js_url], "nats.environment": "test", "agent.heartbeat_interval": 60.0,
              "agent.duplicate_id": "allow", "jetstream.enabled": True}  # a2a.store "auto": JetStream
    a, b = NATSAgent("worker", config=config), NATSAgent("worker", config=config)
    served = {"a": 0, "b": 0}

    class Counted(Echo):
        def __init__(self, replica: str) -> None:
            self.replica = replica

        async def execute(self, context: Any, event_queue: Any) -> None:
            served[self.replica] += 1
            await super().execute(context, event_queue)

    a.serve_a2a(Counted("a"), name="echo")
    await a.astart()
    b.serve_a2a(Counted("b"), name="echo")
    await b.astart()
    nc = await nats.connect(js_url)
    try:
        assert a.describe()["a2a"][0]["store"] == "jetstream"
        client = factory(nc, streaming=False).create(a.a2a_card())
        for i in range(40):
            await within(_send(client, f"m{i}"), "SendMessage to the replicas")
        assert served["a"] + served["b"] == 40 and served["a"] > 0 and served["b"] > 0  # one queue group
        listed = await within(client.list_tasks(ListTasksRequest(page_size=100)), "ListTasks")
        assert len(listed.tasks) == 40  # the KV bucket holds every replica's tasks

        # With b paused (out of the queue group), a answers for the tasks b ran: they are in the shared bucket.
        await b.pause()
        before = b.get_metrics()["a2a_requests"]
        for task in listed.tasks:
            got = await within(client.get_task(GetTaskRequest(id=task.id)), "GetTask on the other replica")
            assert got.status.state == TaskState.TASK_STATE_COMPLETED
        assert b.get_metrics()["a2a_requests"] == before
        await b.resume()
        assert a.get_metrics()["a2a_requests"] + b.get_metrics()["a2a_requests"] >= 81
    finally:
        await nc.close()
        await a.astop()
        await b.astop()


async def test_no_jetstream_refuses_to_start_in_jetstream_mode(make_agent: Any) -> None:
    agent: NATSAgent = await make_agent("nojs", start=False, a2a__store="jetstream")
    agent.serve_a2a(Echo(), name="echo")
    with pytest.raises(PersistenceError, match="JetStream"):  # the server has none: the store cannot be opened
        await within(agent.astart(), "a start that cannot open the A2A store")
    await eventually(lambda: agent.status == "stopped", what="the failed start to leave the agent stopped")


async def test_served_again_after_a_restart_and_paused_with_the_agent(make_agent: Any, raw_nc: nats.NATS) -> None:
    agent: NATSAgent = await make_agent("restarted", start=False)
    agent.serve_a2a(Echo(), name="echo")
    await agent.astart()
    await agent.astop()
    await agent.astart()
    client = factory(raw_nc, streaming=False).create(agent.a2a_card())
    events = await within(_send(client, "again"), "SendMessage after a restart")
    assert events[0].task.status.state == TaskState.TASK_STATE_COMPLETED

    await agent.pause()  # out of the queue group: nobody answers
    with pytest.raises(A2AClientError, match="no responders"):
        await within(_send(client, "paused?"), "SendMessage to a paused agent")
    await agent.resume()
    events = await within(_send(client, "resumed"), "SendMessage after resume")
    assert events[0].task.status.state == TaskState.TASK_STATE_COMPLETED


def test_served_from_a_plain_script_while_the_agent_runs_on_its_own_thread(agent_config: Any, nats_url: str) -> None:
    agent = NATSAgent("scripted", config=agent_config())
    assert agent.start()
    try:
        agent.serve_a2a(Echo(), name="echo")  # returns once the agent's loop has subscribed it

        async def ask() -> list[Any]:
            nc = await nats.connect(nats_url)
            try:
                return await within(_send(factory(nc, streaming=False).create(agent.a2a_card()), "hi"), "SendMessage")
            finally:
                await nc.close()

        events = asyncio.run(ask())
        assert events[0].task.status.state == TaskState.TASK_STATE_COMPLETED
    finally:
        agent.stop()


async def test_a_given_card_keeps_its_nats_interface_which_must_name_the_served_prefix(
        make_agent: Any, raw_nc: nats.NATS) -> None:
    public = "nats://nats.example.com:4222/agents.test.a2a-protocol.echo"
    given = card_for("nats://ignored:4222")
    del given.supported_interfaces[:]
    given.supported_interfaces.extend([AgentInterface(url=public, protocol_binding=BINDING_URI, protocol_version="1.0")])
    agent: NATSAgent = await make_agent("public", start=False)
    agent.serve_a2a(Echo(), card=given, name="echo")
    await agent.astart()
    assert [i.url for i in agent.a2a_card().supported_interfaces] == [public]  # kept as the author wrote it
    assert agent.describe()["a2a"][0]["url"] == public

    wrong = await make_agent("wrong", start=False)
    wrong.serve_a2a(Echo(), card=given, name="other")
    with pytest.raises(ConfigError, match="subject prefix"):
        await wrong.astart()
