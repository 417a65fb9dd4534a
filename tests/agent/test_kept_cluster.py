"""A result produced while its requester is away, on a 3-node JetStream cluster: the requester's node dies mid-task."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from agentcore import AgentConfig, NATSAgent
from agentcore.server import NATSServer
from nats_fixtures import eventually, within


@contextlib.contextmanager
def _cluster() -> Iterator[list[NATSServer]]:
    """Three JetStream servers routed to each other; --no_advertise keeps clients on the servers they were given."""
    servers = [NATSServer(jetstream=True, cluster_name="kept", server_name=name, extra_args=["--no_advertise"])
               for name in "abc"]
    for server in servers:
        server.routes = [other.cluster_url for other in servers if other is not server]  # type: ignore[misc]
        server.args += ["--routes", ",".join(server.routes)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.close()


async def _jetstream_ready(url: str) -> None:
    """Wait until the cluster places a 3-replica stream: a meta leader is elected and all three peers are known."""
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=2.0)
    try:
        async def ready() -> bool:
            try:
                await js.add_stream(api.StreamConfig(name="READY", subjects=["ready.probe"], num_replicas=3))
                await js.delete_stream("READY")
                return True
            except (nats.errors.Error, nats.js.errors.Error):
                return False

        await eventually(ready, timeout=60, what="the cluster to place a 3-replica stream")
    finally:
        await nc.close()


def _config(url: str) -> AgentConfig:
    return AgentConfig({"nats.servers": [url], "nats.environment": "kept", "agent.heartbeat_interval": 60.0,
                        "nats.connect_timeout": 2.0, "nats.reconnect_time_wait": 0.1, "nats.max_reconnect_attempts": -1,
                        "jetstream.enabled": True, "jetstream.replicas": 3, "jetstream.pull_expires": 0.5}, environ={})


async def test_results_produced_while_the_requester_s_node_is_down_reach_it_when_it_is_back() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def double(message: dict[str, Any]) -> Any:
        started.set()
        await release.wait()
        return message["payload"]["content"] * 2

    with _cluster() as (a, b, c):
        await _jetstream_ready(a.url)
        worker = NATSAgent("worker", "worker", _config(a.url))
        worker.add_capability("double", double)
        client = NATSAgent("client", "client", _config(c.url))  # knows only c, and learns no other server
        await within(worker.astart(), "the worker to start", 60)
        try:
            await within(client.astart(), "the client to start", 60)
            waiting = asyncio.ensure_future(asyncio.gather(*(client.send_task("double", i, timeout=120) for i in range(20))))
            await within(started.wait(), "the task to reach the worker", 60)
            await asyncio.to_thread(c.kill)  # the requester's node dies mid-task
            await eventually(lambda: client.get_metrics()["disconnects"] >= 1, timeout=30, what="the client to notice")
            release.set()
            # The worker keeps the results (R3, on a and b) and sends them live to an inbox nobody reads now.
            await eventually(lambda: worker.get_metrics().get("results_kept") == 20, timeout=60, what="the results kept")
            assert not waiting.done()
            await asyncio.to_thread(c.start, 30.0)
            results = await within(waiting, "the waiting requests to get their results after the reconnect", 90)
            assert results == [2 * i for i in range(20)]  # 20 of 20, all produced while the requester was away
            assert client.get_metrics()["results_recovered"] == 20
        finally:
            if not waiting.done():
                waiting.cancel()
            await client.astop()
            await worker.astop()
