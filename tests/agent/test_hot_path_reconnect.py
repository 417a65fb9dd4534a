"""What a handler sends while its connection is down takes nc.publish's reconnect buffer: the order is kept after the
reconnect, and a full buffer is a typed error to the handler, never a silent drop (direct writes and queue_now stand
aside while not connected)."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import orjson

from agentcore import AgentConfig, NATSAgent
from agentcore.errors import NotConnectedError
from agentcore.server import NATSServer
from helpers import task_bytes
from nats_fixtures import eventually, within


def _config(server: NATSServer, **extra: Any) -> AgentConfig:
    return AgentConfig({"nats.servers": [server.url], "nats.environment": "rc", "agent.heartbeat_interval": 60.0,
                        "nats.reconnect_time_wait": 0.05, "cache.enabled": False, **extra}, environ={})


async def test_what_a_handler_sends_while_disconnected_arrives_in_order_after_the_reconnect() -> None:
    with NATSServer() as server:
        gate = asyncio.Event()
        started = asyncio.Event()
        worker: NATSAgent

        async def slow(message: dict[str, Any]) -> str:
            started.set()
            await gate.wait()
            for i in range(5):  # written while the connection is down: nats-py's reconnect buffer keeps them
                await worker.publish("progress.rc", {"i": i, "pad": "z" * (40_000 if i % 2 else 3)})
            return "end"

        worker = NATSAgent("rc", config=_config(server))
        worker.add_capability("slow", slow)
        await worker.astart()
        requester = await nats.connect(server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
        try:
            nc = worker.nc  # the worker's own connection: its SUBs are sent again before its buffered PUBs
            order: list[Any] = []

            async def cb(msg: Any) -> None:
                if msg.subject == "answers.rc":
                    order.append(orjson.loads(msg.data)["payload"]["content"])
                elif msg.subject.endswith("progress.rc"):
                    order.append(orjson.loads(msg.data)["payload"]["content"]["i"])

            await nc.subscribe(">", cb=cb)  # the answer and the events, on one subscription: one order
            await nc.flush()
            await requester.publish(worker.topics.task("slow"), task_bytes("rc-1", 1, capability="slow"), reply="answers.rc")
            await requester.flush()
            await within(started.wait(), "the handler to start")
            await asyncio.to_thread(server.stop)
            await eventually(lambda: not nc.is_connected, timeout=20, what="the worker to see the server gone")
            gate.set()
            await eventually(lambda: worker.get_metrics()["messages_processed"] == 1, timeout=20, what="the handler to end")
            assert order == []
            await asyncio.to_thread(server.start)
            await eventually(lambda: "end" in order, timeout=30, what="the buffered answer")
            assert order == [0, 1, 2, 3, 4, "end"]
        finally:
            await requester.close()
            await worker.astop()


async def test_a_full_reconnect_buffer_is_a_typed_error_to_the_handler() -> None:
    with NATSServer() as server:
        gate = asyncio.Event()
        started = asyncio.Event()
        raised: list[BaseException] = []
        worker: NATSAgent

        async def flood(message: dict[str, Any]) -> str:
            started.set()
            await gate.wait()
            try:
                for i in range(40):  # 40 x 50 kB into a 256 kB reconnect buffer
                    await worker.publish("progress.rc", {"i": i, "pad": "z" * 50_000})
            except BaseException as exc:
                raised.append(exc)
                raise
            return "end"

        worker = NATSAgent("rc", config=_config(server, **{"nats.options": {"pending_size": 256 * 1024}}))
        worker.add_capability("flood", flood)
        await worker.astart()
        requester = await nats.connect(server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
        try:
            await requester.publish(worker.topics.task("flood"), task_bytes("rc-2", 1, capability="flood"), reply="answers.x")
            await requester.flush()
            await within(started.wait(), "the handler to start")
            await asyncio.to_thread(server.stop)
            await eventually(lambda: not worker.nc.is_connected, timeout=20, what="the worker to see the server gone")
            gate.set()
            await eventually(lambda: raised, timeout=20, what="the handler to hear of the full buffer")
            from agentcore import errors
            print("RAISED", repr(raised[0]))
            assert isinstance(raised[0], (errors.AgentCoreError, nats.errors.OutboundBufferLimitError)), repr(raised[0])
            assert worker.get_metrics()["messages_failed"] == 1
        finally:
            await requester.close()
            await worker.astop()
