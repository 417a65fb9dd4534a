"""Shared benchmark plumbing: a private event loop that times sequential calls and closes what a setup opened."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from agentcore.bench import history
from agentcore.loops import new_event_loop

T = TypeVar("T")


class LoopBench:
    """Drive one benchmark setup on its own event loop; closers run on close()."""

    def __init__(self) -> None:
        self.loop = new_event_loop()  # uvloop when installed, as the agent's own loop thread would be
        self.closers: list[Callable[[], Awaitable[Any]]] = []

    def time_calls(self, call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
        """Await call() n times in sequence and return each one's duration in seconds."""

        async def many() -> list[float]:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                await call()
                times.append(time.perf_counter() - t0)
            return times

        return self.loop.run_until_complete(many())

    def close(self) -> None:
        for close in self.closers:
            self.loop.run_until_complete(close())
        self.loop.close()


class KindBench(LoopBench):
    """One of several paths ("kinds") to compare; _setup() opens it and returns the call that times one use."""

    def __init__(self, url: str, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.url = url
        self.call: Callable[[], Awaitable[Any]] = self.loop.run_until_complete(self._setup())

    async def _setup(self) -> Callable[[], Awaitable[Any]]:
        raise NotImplementedError

    def run(self, n: int) -> list[float]:
        return self.time_calls(self.call, n)


def opened(benches: dict[Any, KindBench], warmup: int = 1) -> Iterator[dict[Any, KindBench]]:
    """Warm each bench up (proving its path works), yield them all, then close them: a module fixture's body."""
    for bench in benches.values():
        assert bench.run(warmup)
    yield benches
    for bench in benches.values():
        bench.close()


def interleaved(benches: dict[str, KindBench], blocks: int, per_block: int) -> dict[str, tuple[float, float, int]]:
    """Run the benches in alternating blocks so machine noise hits them alike; return kind -> (p50 µs, p99 µs, calls).

    The result also goes into the session's history file (agentcore.bench.history); $AGENTCORE_BENCH_QUICK makes
    it a smoke of 2 blocks of at most 20 calls.
    """
    if history.quick():
        blocks, per_block = min(blocks, 2), min(per_block, 20)
    samples: dict[str, list[float]] = {kind: [] for kind in benches}
    for _ in range(blocks):
        for kind, bench in benches.items():
            samples[kind] += bench.run(per_block)
    stats = {}
    for kind, times in samples.items():
        times.sort()
        stats[kind] = (statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6, len(times))
    history.record_interleaved({str(kind): value for kind, value in stats.items()})
    return stats


async def summarise_pair(bench: LoopBench, config: Any) -> Any:
    """Start a worker serving "summarise" and a client, each on its own connection; return the client."""
    from agentcore import NATSAgent

    async def summarise(message: dict[str, Any]) -> dict[str, Any]:
        return {"ok": message["payload"]["content"]["lang"]}

    worker = NATSAgent("bench-worker", "worker", config)
    worker.add_capability("summarise", summarise)
    client = NATSAgent("bench-client", "client", config)
    await worker.astart()
    await client.astart()
    bench.closers += [worker.astop, client.astop]
    return client


def run_on(loop: str, main: Coroutine[Any, Any, T]) -> T:
    """Run main to its end on a new event loop of the named kind ("asyncio" or "uvloop", which must be installed)."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise SystemExit("uvloop is not installed (pip install uvloop)") from None
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
