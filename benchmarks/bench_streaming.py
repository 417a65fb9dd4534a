"""Stream throughput (MB/s): stream_response -> request_stream against raw nats-py publishing the same bytes, same server, same run.

pytest-benchmark rows (group "stream-32MB") time one whole transfer of TOTAL bytes per round: raw nats-py
publish -> subscriber, and agent streams with credit windows 4, 16 and 64. test_stream_throughput interleaves
the same transfers and prints MB/s (best of 3) with the ratio to raw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any

import nats
import pytest

from agentcore import AgentConfig, NATSAgent
from agentcore.server import NATSServer
from harness import LoopBench

TOTAL = 32 * 1024 * 1024
CHUNK = 64 * 1024
BLOCK = b"x" * CHUNK
WINDOWS = (4, 16, 64)
KINDS = ("raw", *(f"stream_w{window}" for window in WINDOWS))


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as s:
        yield s


class Streams(LoopBench):
    """A raw nats-py publisher and subscriber, and a streaming worker and client agent, on one private event loop."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.calls: dict[str, Callable[[], Awaitable[int]]] = self.loop.run_until_complete(self._setup(url))

    async def _setup(self, url: str) -> dict[str, Callable[[], Awaitable[int]]]:
        calls = {"raw": await self._setup_raw(url)}
        stream = await self._setup_agents(url)
        for window in WINDOWS:
            calls[f"stream_w{window}"] = partial(stream, window)
        return calls

    async def _setup_raw(self, url: str) -> Callable[[], Awaitable[int]]:
        pub, sub_nc = await nats.connect(url), await nats.connect(url)
        self.closers += [pub.close, sub_nc.close]
        done = asyncio.Event()
        got = 0

        async def on(msg: Any) -> None:
            nonlocal got
            got += len(msg.data)
            if got >= TOTAL:
                done.set()

        await sub_nc.subscribe("bench.stream", cb=on)
        await sub_nc.flush()

        async def raw() -> int:
            nonlocal got
            got = 0
            done.clear()
            for _ in range(TOTAL // CHUNK):
                await pub.publish("bench.stream", BLOCK)
            await done.wait()
            return got

        return raw

    async def _setup_agents(self, url: str) -> Callable[[int], Awaitable[int]]:
        config = AgentConfig({"nats.servers": [url], "nats.environment": "bench-stream", "agent.heartbeat_interval": 60.0,
                              "cache.enabled": False}, environ={})

        async def produce(message: dict[str, Any]) -> None:
            async def gen() -> Any:
                for _ in range(TOTAL // CHUNK):
                    yield BLOCK

            await worker.stream_response(message["id"], gen(), chunk_size=CHUNK)

        worker = NATSAgent("stream-worker", "worker", config)
        worker.add_capability("blob", produce)
        client = NATSAgent("stream-client", "client", config)
        for agent in (worker, client):  # stopped in reverse order
            await agent.astart()
            self.closers.insert(0, agent.astop)
        subject = client.topics.task("blob")

        async def stream(window: int) -> int:
            got = 0
            async with client.request_stream(subject, None, window=window) as chunks:
                async for chunk in chunks:
                    got += len(chunk.data)
            assert got == TOTAL
            return got

        return stream

    def run(self, kind: str, n: int) -> list[float]:
        return self.time_calls(self.calls[kind], n)


@pytest.fixture(scope="module")
def streams(server: NATSServer) -> Iterator[Streams]:
    made = Streams(server.url)
    for kind in KINDS:
        assert made.run(kind, 1)  # warm up and prove the path works
    yield made
    made.close()


@pytest.mark.benchmark(group="stream-32MB")
@pytest.mark.parametrize("kind", KINDS)
def test_stream(benchmark: Any, streams: Streams, kind: str) -> None:
    """Median time of one TOTAL-byte transfer in CHUNK-byte messages; MB/s at the median goes to extra_info."""
    benchmark.extra_info.update(bytes_per_round=TOTAL, chunk_bytes=CHUNK)
    benchmark.pedantic(streams.run, args=(kind, 1), rounds=20, warmup_rounds=1)
    if benchmark.enabled:
        benchmark.extra_info["mb_s_at_median"] = round(TOTAL / benchmark.stats.stats.median / 1e6, 1)


def test_stream_throughput(streams: Streams) -> None:
    """Print MB/s for raw nats-py publish and for agent streams with several credit windows (best of 3, interleaved)."""
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(3):
        for kind in KINDS:
            times[kind] += streams.run(kind, 1)
    results = {kind: TOTAL / min(t) / 1e6 for kind, t in times.items()}
    print(f"\nstream throughput, {TOTAL >> 20} MB in {CHUNK >> 10} KB chunks: " + "; ".join(
        f"{k} {v:.0f} MB/s ({v / results['raw']:.2f}x raw)" for k, v in results.items()))
