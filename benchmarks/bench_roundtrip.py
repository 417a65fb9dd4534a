"""End to end: agent request/reply round trip against raw nats-py request/reply, same server, same payload, same run."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import nats
import orjson
import pytest

from agentcore import AgentConfig, NATSAgent
from agentcore.server import NATSServer
from harness import LoopBench

CONTENT = {"text": "summarise the quarterly numbers for the board " * 4, "lang": "en"}
ROUND_TRIPS = 200  # per pytest-benchmark round; the median over rounds is what to compare


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as s:
        yield s


class Pair(LoopBench):
    """A requester and a responder on separate connections, driven on one private event loop."""

    def __init__(self, url: str, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.url = url
        self.call: Callable[[], Awaitable[Any]] = self.loop.run_until_complete(self._setup())

    async def _setup(self) -> Callable[[], Awaitable[Any]]:
        if self.kind == "raw":
            responder = await nats.connect(self.url)
            requester = await nats.connect(self.url)
            payload = orjson.dumps(CONTENT)

            async def respond(msg: Any) -> None:
                await msg.respond(orjson.dumps({"ok": orjson.loads(msg.data)["lang"]}))

            await responder.subscribe("bench.raw", cb=respond)
            await responder.flush()
            self.closers += [responder.close, requester.close]

            async def call() -> Any:
                return orjson.loads((await requester.request("bench.raw", payload, timeout=5)).data)

            return call
        # "agent": the dispatch path alone (result cache off). "agent_cache": the default configuration, with
        # the content-hash cache and duplicate detection on, every task's content distinct (all misses).
        config = AgentConfig({"nats.servers": [self.url], "nats.environment": f"bench-{self.kind}", "agent.heartbeat_interval": 60.0,
                              "cache.enabled": self.kind == "agent_cache"}, environ={})

        async def summarise(message: dict[str, Any]) -> dict[str, Any]:
            return {"ok": message["payload"]["content"]["lang"]}

        worker = NATSAgent("bench-worker", "worker", config)
        worker.add_capability("summarise", summarise)
        client = NATSAgent("bench-client", "client", config)
        await worker.astart()
        await client.astart()
        self.closers += [worker.astop, client.astop]
        subject = client.topics.task("summarise")
        counter = iter(range(1 << 62))

        async def call() -> Any:
            content = {**CONTENT, "n": next(counter)} if self.kind == "agent_cache" else CONTENT
            return await client.request(subject, content, timeout=5)

        return call

    def run(self, n: int) -> list[float]:
        return self.time_calls(self.call, n)


@pytest.fixture(scope="module")
def pairs(server: NATSServer) -> Iterator[dict[str, Pair]]:
    made = {kind: Pair(server.url, kind) for kind in ("raw", "agent", "agent_cache")}
    for pair in made.values():
        assert pair.run(1)  # warm up and prove the path works
    yield made
    for pair in made.values():
        pair.close()


@pytest.mark.parametrize("kind", ["raw", "agent", "agent_cache"])
def test_roundtrip(benchmark: Any, pairs: dict[str, Pair], kind: str) -> None:
    """Median time of ROUND_TRIPS sequential round trips (divide by ROUND_TRIPS for one)."""
    pair = pairs[kind]
    benchmark.group = "roundtrip"
    benchmark.extra_info["round_trips_per_round"] = ROUND_TRIPS
    benchmark.pedantic(pair.run, args=(ROUND_TRIPS,), rounds=15, warmup_rounds=2)


def test_roundtrip_ratio(pairs: dict[str, Pair]) -> None:
    """Interleave raw and agent blocks so machine noise hits both alike; print p50/p99 and their ratios."""
    samples: dict[str, list[float]] = {kind: [] for kind in pairs}
    for _ in range(20):
        for kind in pairs:
            samples[kind] += pairs[kind].run(250)
    stats = {}
    for kind, times in samples.items():
        times.sort()
        stats[kind] = (statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6)
    raw = stats["raw"]
    print(f"\nround trip over {len(samples['raw'])} calls each: raw nats-py p50 {raw[0]:.1f} µs p99 {raw[1]:.1f} µs")
    for kind in ("agent", "agent_cache"):
        p50, p99 = stats[kind]
        print(f"  {kind:<12} p50 {p50:.1f} µs p99 {p99:.1f} µs; ratio p50 {p50 / raw[0]:.3f}x p99 {p99 / raw[1]:.3f}x")
