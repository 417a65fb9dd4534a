"""Answers near the server's max_payload: headers the agent adds to an answer count toward it too.

nats-server refuses a PUB/HPUB whose payload (headers and body) passes max_payload and closes the publishing
connection. A stranger steers the size of an answer (the content a capability returns grows with what it was
asked) and sends W3C trace headers within their limits: the answer's body fits, body and copied headers do not.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import nats
import nkeys
import orjson
import pytest

from agentcore import AgentConfig, NATSAgent
from agentcore.server import NATSServer
from agentcore.transport.tracecontext import CURRENT
from helpers import task_bytes
from nats_fixtures import within

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MAX_PAYLOAD = 64 * 1024


@pytest.mark.parametrize("signed", [False, True], ids=["trace-headers", "signed"])
async def test_headers_never_push_an_answer_past_max_payload(signed: bool) -> None:
    """Trace headers the stranger sent (copied onto the answer, the bare path) or the agent's own signature
    (signed identities: through Connection.publish): before, the server closed the agent's connection."""
    with NATSServer(max_payload=MAX_PAYLOAD) as server:
        values: dict[str, Any] = {"nats.servers": [server.url], "nats.environment": "test",
                                  "agent.heartbeat_interval": 60.0, "cache.enabled": False}
        if signed:
            values["identity.seed"] = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
        config = AgentConfig(values, environ={})
        agent = NATSAgent("generator", config=config)
        agent.add_capability("gen", lambda m: "x" * m["payload"]["content"])  # an answer as long as it is asked for
        await agent.astart()
        nc = await nats.connect(server.url)
        try:
            inbox = nc.new_inbox()
            answers: asyncio.Queue[Any] = asyncio.Queue()
            await nc.subscribe(inbox, cb=answers.put)
            subject = agent.topics.task("gen")
            await nc.publish(subject, task_bytes("probe", 0, capability="gen"), reply=inbox)
            base = len((await within(answers.get(), "the probe's answer", 15)).data)  # an answer's envelope alone
            reconnects = agent.nc.stats["reconnects"]
            # within W3C's 8,192: passed on (the signed agent's own headers are enough there)
            headers = None if signed else {"traceparent": GOOD, "baggage": "k=" + "v" * 8000}
            await nc.publish(subject, task_bytes("steered", MAX_PAYLOAD - base - 64, capability="gen"), reply=inbox,
                             headers=headers)
            answer = orjson.loads((await within(answers.get(), "the steered answer", 15)).data)
            assert answer["payload"]["error"]["code"] == "payload_too_large", answer["payload"].get("error")
            await nc.publish(subject, task_bytes("honest", 3, capability="gen"), reply=inbox, headers=headers)
            honest = await within(answers.get(), "the honest answer", 15)
            assert orjson.loads(honest.data)["payload"]["content"] == "xxx"
            assert agent.nc.stats["reconnects"] == reconnects and agent.nc.is_connected
        finally:
            await nc.close()
            await agent.astop()


async def test_requests_and_streamed_results_leave_room_for_the_trace_headers_they_carry() -> None:
    """A handler of a traced task (its trace headers, a stranger's, within W3C's limits, in CURRENT) sends a request
    just under max_payload, and asks for a result streamed in frames: each carries the trace headers. Before, the
    request went as one message (body alone counted) and frames kept 1,024 bytes for headers: the server closed
    the connection of the agent sending them (the requester's, then the serving agent's)."""
    with NATSServer(max_payload=MAX_PAYLOAD) as server:
        def config() -> AgentConfig:
            return AgentConfig({"nats.servers": [server.url], "nats.environment": "test",
                                "agent.heartbeat_interval": 60.0, "cache.enabled": False}, environ={})

        worker = NATSAgent("worker", config=config())
        worker.add_capability("size", lambda m: len(m["payload"]["content"]))
        worker.add_capability("big", lambda m: "x" * m["payload"]["content"])
        client = NATSAgent("client", config=config())
        await worker.astart()
        await client.astart()
        token = CURRENT.set({"traceparent": GOOD, "baggage": "k=" + "v" * 8000})
        try:
            assert await within(client.send_task("size", "x" * (MAX_PAYLOAD - 2000), timeout=10), "the request") \
                == MAX_PAYLOAD - 2000
            assert len(await within(client.send_task("big", 3 * MAX_PAYLOAD, timeout=10), "the streamed result")) \
                == 3 * MAX_PAYLOAD
            assert worker.nc.stats["reconnects"] == 0 and client.nc.stats["reconnects"] == 0
        finally:
            CURRENT.reset(token)
            await client.astop()
            await worker.astop()
