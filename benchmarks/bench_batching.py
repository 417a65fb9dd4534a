"""Batch vs per-message throughput for 10,000 small tasks, and cached vs uncached task latency (same server, same run).

pytest-benchmark rows: group "batching-10k-tasks" times N small tasks (IN_FLIGHT at a time) per round, per
message and with batches of 10 and 100; group "task-latency-1ms-handler" times LATENCY_CALLS sequential round
trips per round to a 1 ms handler with the result cache off, on with every task distinct (misses), and on
with one repeated task (hits). The two print tests interleave the same setups and report the ratios.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from agentcore import AgentConfig, NATSAgent
from agentcore.server import NATSServer
from harness import LoopBench

N = 10_000
IN_FLIGHT = 500
BATCH_SIZES: dict[str, int | None] = {"per_message": None, "batch_10": 10, "batch_100": 100}
LATENCY_KINDS = ("cache_off", "cache_miss", "cache_hit")
LATENCY_CALLS = 100  # sequential round trips per pytest-benchmark round; divide the median by it for one
CONTENT = {"text": "summarise the quarterly numbers for the board " * 4, "lang": "en"}


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as s:
        yield s


def config(url: str, kind: str, **extra: Any) -> AgentConfig:
    # Each setup gets its own environment; a long cache.ttl keeps the cache_hit entry alive for the whole module.
    return AgentConfig({"nats.servers": [url], "nats.environment": f"bench-{kind}", "agent.heartbeat_interval": 60.0,
                        "agent.max_concurrency": 10_000, "cache.ttl": 3600.0, **extra}, environ={})


class Worker(NATSAgent):
    async def process_batch(self, messages: list[dict[str, Any]]) -> list[Any]:
        return [len(m["payload"]["content"]) for m in messages]


class Pair(LoopBench):
    """A worker and a client agent in an environment of their own, driven on one private event loop."""

    def __init__(self, url: str, kind: str) -> None:
        super().__init__()
        self.call: Callable[[], Awaitable[Any]] = self.loop.run_until_complete(self._setup(url, kind))

    async def _setup(self, url: str, kind: str) -> Callable[[], Awaitable[Any]]:
        if kind in BATCH_SIZES:
            return await self._setup_throughput(url, kind)
        return await self._setup_latency(url, kind)

    async def _agents(self, url: str, kind: str, handler: Callable[[dict[str, Any]], Awaitable[Any]], cache: bool) -> tuple[NATSAgent, str]:
        worker = Worker(f"w-{kind}", "worker", config(url, kind, **{"cache.enabled": cache}))
        worker.add_capability("task", handler)
        client = NATSAgent(f"c-{kind}", "client", config(url, kind))
        await worker.astart()
        await client.astart()
        self.closers += [client.astop, worker.astop]
        size = BATCH_SIZES.get(kind)
        if size:
            worker.enable_batch_processing(batch_size=size, batch_timeout=0.05)
        return client, client.topics.task("task")

    async def _setup_throughput(self, url: str, kind: str) -> Callable[[], Awaitable[Any]]:
        async def one(message: dict[str, Any]) -> Any:
            return len(message["payload"]["content"])

        client, subject = await self._agents(url, kind, one, cache=False)

        async def call() -> int:
            for start in range(0, N, IN_FLIGHT):  # IN_FLIGHT requests in flight at a time
                await asyncio.gather(*(client.request(subject, f"t{i}", timeout=30) for i in range(start, start + IN_FLIGHT)))
            return N

        return call

    async def _setup_latency(self, url: str, kind: str) -> Callable[[], Awaitable[Any]]:
        async def slowish(message: dict[str, Any]) -> Any:
            await asyncio.sleep(0.001)  # a handler that does 1 ms of (simulated) work
            return {"ok": message["payload"]["content"]["lang"]}

        client, subject = await self._agents(url, kind, slowish, cache=kind != "cache_off")
        counter = itertools.count()

        async def call() -> Any:
            content = CONTENT if kind == "cache_hit" else dict(CONTENT, n=next(counter))
            return await client.request(subject, content, timeout=5)

        return call

    def run(self, n: int) -> list[float]:
        return self.time_calls(self.call, n)


def pairs(url: str, kinds: Any) -> Iterator[dict[str, Pair]]:
    made = {kind: Pair(url, kind) for kind in kinds}
    for pair in made.values():
        assert pair.run(1)  # warm up (and fill the cache_hit entry) and prove the path works
    yield made
    for pair in made.values():
        pair.close()


@pytest.fixture(scope="module")
def throughput(server: NATSServer) -> Iterator[dict[str, Pair]]:
    yield from pairs(server.url, BATCH_SIZES)


@pytest.fixture(scope="module")
def latency(server: NATSServer) -> Iterator[dict[str, Pair]]:
    yield from pairs(server.url, LATENCY_KINDS)


@pytest.mark.benchmark(group="batching-10k-tasks")
@pytest.mark.parametrize("kind", list(BATCH_SIZES))
def test_batching(benchmark: Any, throughput: dict[str, Pair], kind: str) -> None:
    """Median time of N small tasks, IN_FLIGHT at a time (N / median = tasks/s)."""
    benchmark.extra_info.update(tasks_per_round=N, in_flight=IN_FLIGHT, batch_size=BATCH_SIZES[kind])
    benchmark.pedantic(throughput[kind].run, args=(1,), rounds=5, warmup_rounds=1)
    if benchmark.enabled:
        benchmark.extra_info["tasks_per_s_at_median"] = round(N / benchmark.stats.stats.median)


def test_batch_vs_per_message_throughput(throughput: dict[str, Pair]) -> None:
    """Print tasks/s for per-message handling and for batches of 10 and 100 (best of 3, interleaved)."""
    times: dict[str, list[float]] = {kind: [] for kind in throughput}
    for _ in range(3):
        for kind, pair in throughput.items():
            times[kind] += pair.run(1)
    results = {kind: N / min(t) for kind, t in times.items()}
    base = results["per_message"]
    print(f"\n{N} small tasks, {IN_FLIGHT} in flight: " + "; ".join(f"{k} {v:,.0f} tasks/s ({v / base:.2f}x)" for k, v in results.items()))


@pytest.mark.benchmark(group="task-latency-1ms-handler")
@pytest.mark.parametrize("kind", LATENCY_KINDS)
def test_cache_latency(benchmark: Any, latency: dict[str, Pair], kind: str) -> None:
    """Median time of LATENCY_CALLS sequential round trips to a 1 ms handler (divide by LATENCY_CALLS for one)."""
    benchmark.extra_info["round_trips_per_round"] = LATENCY_CALLS
    benchmark.pedantic(latency[kind].run, args=(LATENCY_CALLS,), rounds=15, warmup_rounds=1)


def test_cached_vs_uncached_latency(latency: dict[str, Pair]) -> None:
    """Print p50 round-trip µs for a 1 ms handler: caching off, on with a miss, on with a hit (blocks interleaved)."""
    samples: dict[str, list[float]] = {kind: [] for kind in latency}
    for _ in range(10):
        for kind, pair in latency.items():
            samples[kind] += pair.run(200)
    result = {kind: statistics.median(times) * 1e6 for kind, times in samples.items()}
    base = result["cache_off"]
    print(f"\ntask round trip p50 (1 ms handler), {len(samples['cache_off'])} calls each: " + "; ".join(
        f"{k} {v:.0f} µs ({v / base:.2f}x)" for k, v in result.items()))
