"""Batch vs per-message throughput for 10,000 small tasks, and cached vs uncached task latency (same server, same run)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentcore import AgentConfig, NATSAgent
from agentcore.server import NATSServer

N = 10_000
CONTENT = {"text": "summarise the quarterly numbers for the board " * 4, "lang": "en"}


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as s:
        yield s


def config(url: str, **extra: Any) -> AgentConfig:
    return AgentConfig({"nats.servers": [url], "nats.environment": "bench", "agent.heartbeat_interval": 60.0,
                        "agent.max_concurrency": 10_000, **extra}, environ={})


class Worker(NATSAgent):
    async def process_batch(self, messages: list[dict[str, Any]]) -> list[Any]:
        return [len(m["payload"]["content"]) for m in messages]


async def tasks_per_second(url: str, batch_size: int | None) -> float:
    async def one(message: dict[str, Any]) -> Any:
        return len(message["payload"]["content"])

    worker = Worker("batch-worker", "worker", config(url, **{"cache.enabled": False}))
    worker.add_capability("count", one)
    client = NATSAgent("batch-client", "client", config(url))
    await worker.astart()
    await client.astart()
    if batch_size:
        worker.enable_batch_processing(batch_size=batch_size, batch_timeout=0.05)
    subject = client.topics.task("count")
    t0 = time.perf_counter()
    for start in range(0, N, 500):  # 500 requests in flight at a time
        await asyncio.gather(*(client.request(subject, f"t{i}", timeout=30) for i in range(start, start + 500)))
    elapsed = time.perf_counter() - t0
    await client.astop()
    await worker.astop()
    return N / elapsed


def test_batch_vs_per_message_throughput(server: NATSServer) -> None:
    """Print tasks/s for per-message handling and for batches of 10 and 100 (best of 3)."""
    results = {}
    for name, size in (("per-message", None), ("batch 10", 10), ("batch 100", 100)):
        results[name] = max(asyncio.run(tasks_per_second(server.url, size)) for _ in range(3))
    base = results["per-message"]
    print(f"\n{N} small tasks, 500 in flight: " + "; ".join(f"{k} {v:,.0f} tasks/s ({v / base:.2f}x)" for k, v in results.items()))


async def latencies(url: str) -> dict[str, float]:
    async def slowish(message: dict[str, Any]) -> Any:
        await asyncio.sleep(0.001)  # a handler that does 1 ms of (simulated) work
        return {"ok": message["payload"]["content"]["lang"]}

    out: dict[str, list[float]] = {"cache off": [], "cache miss": [], "cache hit": []}
    for name, enabled in (("cache off", False), ("cache on", True)):
        worker = NATSAgent(f"w-{enabled}", "worker", config(url, **{"cache.enabled": enabled}))
        worker.add_capability("s", slowish)
        client = NATSAgent(f"c-{enabled}", "client", config(url))
        await worker.astart()
        await client.astart()
        subject = client.topics.task("s")
        for i in range(2000):
            content = dict(CONTENT, n=i) if name == "cache off" or i % 2 == 0 else CONTENT
            t0 = time.perf_counter()
            await client.request(subject, content, timeout=5)
            sample = time.perf_counter() - t0
            key = "cache off" if name == "cache off" else ("cache miss" if i % 2 == 0 else "cache hit")
            out[key].append(sample)
        await client.astop()
        await worker.astop()
    return {k: statistics.median(v) * 1e6 for k, v in out.items()}


def test_cached_vs_uncached_latency(server: NATSServer) -> None:
    """Print p50 round-trip µs for a 1 ms handler: caching off, on with a miss, on with a hit."""
    result = asyncio.run(latencies(server.url))
    print("\ntask round trip p50 (1 ms handler): " + "; ".join(f"{k} {v:.0f} µs" for k, v in result.items()))
