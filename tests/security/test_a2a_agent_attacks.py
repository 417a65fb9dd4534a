"""A stranger (a plain nats-py client) at an agent serving A2A with its default configuration (agent.serve_a2a):
malformed ProtoJSON, wrong and garbage A2A-Version, unknown operations, a spoofed Agent-On-Behalf-Of, huge headers,
requests on the replica's own subjects, and reply subjects that are not inboxes (the agent as a relay onto a
control subject or another operation). Each gets a typed error answer at once (or, for a relay, nothing is sent
anywhere), is counted, and an honest a2a-sdk client is served afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import nats
import orjson
import pytest
from a2a.types.a2a_pb2 import TaskState
from a2a_support import Echo, a2a_server, factory, into, text_request
from nats.aio.msg import Msg
from nats_fixtures import eventually, subscribed, within

from agentcore import NATSAgent
from agentcore.a2a import OverloadedError
from agentcore.a2a.binding import H_DIGEST, H_ON_BEHALF_OF, H_PULL, H_REQUEST, H_SIZE, H_VERSION
from agentcore.server import NATSServer

PREFIX = "agents.test.a2a-protocol.echo"
HELLO = b'{"message": {"messageId": "m-1", "role": "ROLE_USER", "parts": [{"text": "hello"}]}}'


async def _agent(make_agent: Any, **config: Any) -> NATSAgent:
    agent: NATSAgent = await make_agent("a2a-attacked", start=False, **config)
    agent.serve_a2a(Echo(), name="echo")
    await agent.astart()
    return agent


async def _honest(agent: NATSAgent, nc: nats.NATS) -> None:
    client = factory(nc, streaming=False).create(agent.a2a_card())

    async def send() -> list[Any]:
        return [e async for e in client.send_message(text_request("still there?"))]

    events = await within(send(), "an honest SendMessage after the attack")
    assert events[0].task.status.state == TaskState.TASK_STATE_COMPLETED


def _reason(msg: Msg) -> tuple[str, str]:
    """The error answer's ErrorInfo reason and its metadata reason (if any)."""
    info = orjson.loads(msg.data)["error"]["details"][0]
    return info["reason"], info.get("metadata", {}).get("reason", "")


async def test_malformed_requests_get_typed_errors_and_the_honest_one_is_served(make_agent: Any,
                                                                                 raw_nc: nats.NATS) -> None:
    agent = await _agent(make_agent)
    cases: list[tuple[str, bytes, dict[str, str], str]] = [
        ("SendMessage", b'{"message": ', {H_VERSION: "1.0"}, "INVALID_PARAMS"),  # not JSON
        ("SendMessage", b'{"message": {"parts": 7}}', {H_VERSION: "1.0"}, "INVALID_PARAMS"),  # JSON, not the proto
        ("SendMessage", b"\xff\xfe", {H_VERSION: "1.0"}, "INVALID_PARAMS"),  # not UTF-8
        ("SendMessage", HELLO, {H_VERSION: "2.0"}, "VERSION_NOT_SUPPORTED"),
        ("SendMessage", HELLO, {H_VERSION: "one point oh"}, "VERSION_NOT_SUPPORTED"),
        ("SendMessage", HELLO, {}, "VERSION_NOT_SUPPORTED"),  # no version is 0.3 (spec §3.6.2)
        ("DropAllTasks", b"{}", {H_VERSION: "1.0"}, "METHOD_NOT_FOUND"),
        ("GetTask", b'{"id": "no-such-task"}', {H_VERSION: "1.0"}, "TASK_NOT_FOUND"),
    ]
    for operation, body, headers, reason in cases:
        answer = await raw_nc.request(f"{PREFIX}.{operation}", body, timeout=10.0, headers={H_REQUEST: "r" * 32, **headers})
        assert _reason(answer)[0] == reason, (operation, body, headers)
        assert (answer.headers or {}).get(H_REQUEST) == "r" * 32
    # A spoofed Agent-On-Behalf-Of from an unsigned requester: nobody unsigned may act for another user.
    answer = await raw_nc.request(f"{PREFIX}.GetTask", b'{"id": "x"}', timeout=10.0,
                                  headers={H_VERSION: "1.0", H_ON_BEHALF_OF: "alice"})
    assert _reason(answer) == ("PERMISSION_DENIED", "not_a_delegate")
    # The card is public: anyone may ask for it, with or without a version.
    card = orjson.loads((await raw_nc.request(f"{PREFIX}.AgentCard", b"", timeout=10.0)).data)
    assert card["supportedInterfaces"][0]["url"].endswith(PREFIX)
    await _honest(agent, raw_nc)
    assert agent.get_metrics()["a2a_errors"] >= len(cases) + 1


async def test_huge_headers_are_refused_as_too_large(make_agent: Any, raw_nc: nats.NATS) -> None:
    agent = await _agent(make_agent, a2a__max_request_bytes=16 * 1024)
    answer = await raw_nc.request(f"{PREFIX}.SendMessage", HELLO, timeout=10.0,
                                  headers={H_VERSION: "1.0", **{f"X-Pad-{i}": "p" * 1000 for i in range(40)}})
    assert _reason(answer) == ("INVALID_REQUEST", "payload_too_large")
    await _honest(agent, raw_nc)
    assert agent.get_metrics()["a2a_refused_max_request_bytes"] == 1


async def test_the_agent_is_no_relay_for_reply_subjects_that_are_not_inboxes(make_agent: Any, nats_url: str,
                                                                            raw_nc: nats.NATS) -> None:
    """A request whose reply subject is another agent's control subject, an A2A operation (its own or the
    replica's), or a wildcard is dropped: nothing at all is published there, an answer nor an error."""
    agent = await _agent(make_agent, a2a__max_request_bytes=16 * 1024)
    watcher = await nats.connect(nats_url)
    seen: list[Msg] = []
    await watcher.subscribe("agents.>", cb=into(seen))
    await watcher.subscribe("victim.>", cb=into(seen))
    await subscribed(watcher)
    targets = ["agents.test.control.victim", f"{PREFIX}.SendMessage", f"{PREFIX}.replica.x.CancelTask", "victim.*",
               "victim.>"]
    try:
        for target in targets:
            for body in (HELLO, b"x" * 20_000):  # served, and refused by a bound (the refusal is not relayed either)
                await raw_nc.publish(f"{PREFIX}.SendMessage", body, reply=target, headers={H_VERSION: "1.0"})
        await raw_nc.flush()
        await _honest(agent, raw_nc)  # served after the relays were read: they were read and dropped
        relayed = [m for m in seen if not m.reply and (m.subject in targets or m.subject.startswith("victim."))]
        assert relayed == []
        requests = [m for m in seen if m.subject == f"{PREFIX}.SendMessage"]
        assert len(requests) == 2 * len(targets) + 1  # the attacker's (seen by the watcher) and the honest one only
        assert agent.get_metrics()["a2a_relays_refused"] >= 2 * len(targets) - 2  # wildcards: the server may refuse
    finally:
        await watcher.close()


async def test_requests_on_the_replica_subject_are_served_as_on_the_shared_one(make_agent: Any,
                                                                              raw_nc: nats.NATS) -> None:
    """PREFIX.replica.{id}.* is open to anyone who may publish there: it answers the same operations with the
    same checks (a CancelTask there is never forwarded again), so it gives a stranger nothing the shared one does not."""
    agent = await _agent(make_agent, agent__instance="r1")
    subject = f"{PREFIX}.replica.r1"
    for operation, body, reason in (("GetTask", b'{"id": "nope"}', "TASK_NOT_FOUND"),
                                    ("CancelTask", b'{"id": "nope"}', "TASK_NOT_FOUND"),
                                    ("SendMessage", b"{not json", "INVALID_PARAMS")):
        answer = await raw_nc.request(f"{subject}.{operation}", body, timeout=10.0, headers={H_VERSION: "1.0"})
        assert _reason(answer)[0] == reason, operation
    await _honest(agent, raw_nc)


async def test_a_flood_of_offers_nobody_serves_is_bounded(make_agent: Any, raw_nc: nats.NATS) -> None:
    """Offers of bodies beyond max_payload that the stranger never serves: one pull at a time (a2a.max_pulls), the
    rest refused OVERLOADED at once, the stalled one failing after a2a.idle_timeout; honest requests go on."""
    agent = await _agent(make_agent, a2a__max_pulls=1, a2a__idle_timeout=2.0)

    async def offer() -> Msg:
        headers = {H_VERSION: "1.0", H_REQUEST: "o" * 32, H_PULL: raw_nc.new_inbox(), H_SIZE: "10",
                   H_DIGEST: "SHA-256=" + "A" * 43 + "="}
        return await raw_nc.request(f"{PREFIX}.SendMessage", b"", timeout=10.0, headers=headers)

    first = asyncio.ensure_future(offer())
    await eventually(lambda: agent.get_metrics().get("a2a_pulls_active") == 1, what="the first pull in progress")
    refused = [await within(offer(), "another offer") for _ in range(5)]
    assert all(_reason(answer)[0] == "OVERLOADED" for answer in refused)
    assert {orjson.loads(answer.data)["error"]["details"][0]["metadata"]["bound"] for answer in refused} == {"a2a.max_pulls"}
    await _honest(agent, raw_nc)  # served while the stalled pull holds its slot
    assert _reason(await within(first, "the stalled pull failing")) == ("INVALID_REQUEST", "pull_failed")
    await eventually(lambda: agent.get_metrics()["a2a_pulls_active"] == 0, what="the pull slot freed")
    assert agent.get_metrics()["a2a_pulls_refused"] == 5


@pytest.fixture
def js_url() -> Iterator[str]:
    with NATSServer(jetstream=True) as server:
        yield server.url


async def test_large_tasks_are_bounded_by_the_object_stores_too(js_url: str) -> None:
    """Tasks beyond max_payload leave only a small claim in the KV bucket: their bodies go to the _LARGE object
    store, bounded by a2a.jetstream_max_bytes like the bucket, so large messages cannot fill JetStream's storage
    past it: refused OVERLOADED, and a small task is still served."""
    config = {"nats.servers": [js_url], "nats.environment": "test", "jetstream.enabled": True,
              "a2a.jetstream_max_bytes": 4 * 1024 * 1024, "agent.heartbeat_interval": 60.0}
    agent = NATSAgent("large-tasks", config=config)
    agent.serve_a2a(Echo(), name="echo")
    await agent.astart()
    nc = await nats.connect(js_url)
    try:
        client = factory(nc, streaming=False).create(agent.a2a_card())
        for _ in range(3):
            with pytest.raises(OverloadedError):
                await within(client.send_message(text_request("x" * 5_000_000)).__anext__(), "a large task")
        await _honest(agent, nc)
        assert agent.get_metrics()["a2a_errors_overloaded"] == 3
    finally:
        await nc.close()
        await agent.astop()


async def test_a_replica_id_that_is_no_subject_token_is_never_forwarded_to(nats_url: str, raw_nc: nats.NATS) -> None:
    """Whoever can write the task bucket can name any "replica" for a task: one that is no subject token (a wildcard,
    several tokens) gets no forwarded CancelTask; the cancel is handled where it arrived."""
    named: list[str] = []

    async def locate(task_id: str, _context: Any) -> str:
        named.append(task_id)
        return "evil.>"

    seen: list[Msg] = []
    await raw_nc.subscribe(f"{PREFIX}.replica.>", cb=into(seen))
    await subscribed(raw_nc)
    async with a2a_server(nats_url, Echo(), replica="r1", locate=locate):
        answer = await raw_nc.request(f"{PREFIX}.CancelTask", b'{"id": "t-1"}', timeout=10.0, headers={H_VERSION: "1.0"})
        assert _reason(answer)[0] == "TASK_NOT_FOUND" and named == ["t-1"]
        await within(raw_nc.request(f"{PREFIX}.AgentCard", b"", timeout=10.0), "a later request served")
    assert seen == []
