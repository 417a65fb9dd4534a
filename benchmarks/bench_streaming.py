"""Stream throughput (MB/s): stream_response -> request_stream against raw nats-py publishing the same bytes, same server, same run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from agentcore import AgentConfig, NATSAgent
from agentcore.server import NATSServer

TOTAL = 32 * 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as s:
        yield s


async def raw_mb_s(url: str) -> float:
    pub, sub_nc = await nats.connect(url), await nats.connect(url)
    done = asyncio.Event()
    got = 0

    async def on(msg: Any) -> None:
        nonlocal got
        got += len(msg.data)
        if got >= TOTAL:
            done.set()

    await sub_nc.subscribe("bench.stream", cb=on)
    await sub_nc.flush()
    block = b"x" * CHUNK
    t0 = time.perf_counter()
    for _ in range(TOTAL // CHUNK):
        await pub.publish("bench.stream", block)
    await done.wait()
    elapsed = time.perf_counter() - t0
    await pub.close()
    await sub_nc.close()
    return TOTAL / elapsed / 1e6


async def agent_mb_s(url: str, window: int) -> float:
    config = AgentConfig({"nats.servers": [url], "nats.environment": "bench", "agent.heartbeat_interval": 60.0, "cache.enabled": False}, environ={})
    block = b"x" * CHUNK

    async def produce(message: dict[str, Any]) -> None:
        async def gen() -> Any:
            for _ in range(TOTAL // CHUNK):
                yield block

        await worker.stream_response(message["id"], gen(), chunk_size=CHUNK)

    worker = NATSAgent("stream-worker", "worker", config)
    worker.add_capability("blob", produce)
    client = NATSAgent("stream-client", "client", config)
    await worker.astart()
    await client.astart()
    t0 = time.perf_counter()
    got = 0
    async with client.request_stream(client.topics.task("blob"), None, window=window) as stream:
        async for chunk in stream:
            got += len(chunk.data)
    elapsed = time.perf_counter() - t0
    assert got == TOTAL
    await client.astop()
    await worker.astop()
    return TOTAL / elapsed / 1e6


def test_stream_throughput(server: NATSServer) -> None:
    """Print MB/s for raw nats-py publish and for agent streams with several credit windows (best of 3 each)."""
    results = {"raw": max(asyncio.run(raw_mb_s(server.url)) for _ in range(3))}
    for window in (4, 16, 64):
        results[f"stream w={window}"] = max(asyncio.run(agent_mb_s(server.url, window)) for _ in range(3))
    print(f"\nstream throughput, {TOTAL >> 20} MB in {CHUNK >> 10} KB chunks: " + "; ".join(
        f"{k} {v:.0f} MB/s ({v / results['raw']:.2f}x raw)" for k, v in results.items()))
