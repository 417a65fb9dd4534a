"""End to end: agent request/reply round trip against raw nats-py request/reply, same server, same payload, same run."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import nats
import orjson
import pytest

from agentcore import AgentConfig
from agentcore.server import NATSServer
from harness import KindBench, interleaved, opened, summarise_pair

CONTENT = {"text": "summarise the quarterly numbers for the board " * 4, "lang": "en"}
ROUND_TRIPS = 200  # per pytest-benchmark round; the median over rounds is what to compare


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as s:
        yield s


class Pair(KindBench):
    """A requester and a responder on separate connections, driven on one private event loop."""

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
        client = await summarise_pair(self, config)
        subject = client.topics.task("summarise")
        counter = iter(range(1 << 62))

        async def call() -> Any:
            content = {**CONTENT, "n": next(counter)} if self.kind == "agent_cache" else CONTENT
            return await client.request(subject, content, timeout=5)

        return call


@pytest.fixture(scope="module")
def pairs(server: NATSServer) -> Iterator[dict[str, KindBench]]:
    yield from opened({kind: Pair(server.url, kind) for kind in ("raw", "agent", "agent_cache")})


@pytest.mark.parametrize("kind", ["raw", "agent", "agent_cache"])
def test_roundtrip(benchmark: Any, pairs: dict[str, KindBench], kind: str) -> None:
    """Median time of ROUND_TRIPS sequential round trips (divide by ROUND_TRIPS for one)."""
    pair = pairs[kind]
    benchmark.group = "roundtrip"
    benchmark.extra_info["round_trips_per_round"] = ROUND_TRIPS
    benchmark.pedantic(pair.run, args=(ROUND_TRIPS,), rounds=15, warmup_rounds=2)


def test_roundtrip_ratio(pairs: dict[str, KindBench]) -> None:
    """Interleave raw and agent blocks so machine noise hits both alike; print p50/p99 and their ratios."""
    stats = interleaved(pairs, blocks=20, per_block=250)
    raw = stats["raw"]
    print(f"\nround trip over {raw[2]} calls each: raw nats-py p50 {raw[0]:.1f} µs p99 {raw[1]:.1f} µs")
    for kind in ("agent", "agent_cache"):
        p50, p99, _ = stats[kind]
        print(f"  {kind:<12} p50 {p50:.1f} µs p99 {p99:.1f} µs; ratio p50 {p50 / raw[0]:.3f}x p99 {p99 / raw[1]:.3f}x")
