"""End to end: time to finalize a Contract Net negotiation with 1, 5 and 20 targets, against a raw nats-py floor.

One negotiation = cfp to every target, every target proposes, the cheapest is sent accept-proposal and
confirms (a request/reply), the others get reject-proposal. The raw floor is the same fan-out done with
bare nats-py: one publish per target with a per-target reply subject on one inbox, waiting for every
answer, then one request/reply to the winner. Same server, same run, so the ratio can be read.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import nats
import orjson
import pytest

from agentcore import AgentConfig, NATSAgent
from agentcore.server import NATSServer
from harness import LoopBench

TARGETS = (1, 5, 20)
PER_ROUND = 20  # negotiations per pytest-benchmark round; divide by it for one
PROPOSAL = {"task": "analyze_data", "data_size": "10GB", "deadline": "2 hours"}
CONSTRAINTS = {"max_cost": 100}


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as s:
        yield s


class Setup(LoopBench):
    """A coordinator and n workers (each on its own connection), driven on one private event loop."""

    def __init__(self, url: str, kind: str, n: int) -> None:
        super().__init__()
        self.call: Callable[[], Awaitable[Any]] = self.loop.run_until_complete(self._setup(url, kind, n))

    async def _setup(self, url: str, kind: str, n: int) -> Callable[[], Awaitable[Any]]:
        if kind == "raw":
            return await self._setup_raw(url, n)
        config = AgentConfig({"nats.servers": [url], "nats.environment": "bench", "agent.heartbeat_interval": 60.0}, environ={})
        ids = [f"bench-w{i}" for i in range(n)]
        for i, aid in enumerate(ids):
            worker = NATSAgent(aid, "worker", config)

            async def bid(negotiation: dict[str, Any], cost: int = 10 + i) -> dict[str, Any]:
                return {"accept": True, "terms": {"cost": cost, "eta_s": 5}}

            worker.register_a2a_handler("task_assignment", bid)
            await worker.astart()
            self.closers.append(worker.astop)
        coordinator = NATSAgent("bench-coordinator", "coordinator", config)
        await coordinator.astart()
        self.closers.insert(0, coordinator.astop)

        async def call() -> Any:
            result = await coordinator.negotiate_with_agents(ids, "task_assignment", PROPOSAL, CONSTRAINTS, timeout=5.0, max_winners=1)
            assert result["state"] == "finalized", result
            return result

        return call

    async def _setup_raw(self, url: str, n: int) -> Callable[[], Awaitable[Any]]:
        initiator = await nats.connect(url)
        self.closers.append(initiator.close)
        for i in range(n):
            nc = await nats.connect(url)
            self.closers.append(nc.close)

            async def respond(msg: Any, cost: int = 10 + i) -> None:
                request = orjson.loads(msg.data)
                await msg.respond(orjson.dumps({"id": request["id"], "accept": True, "terms": {"cost": cost}}))

            await nc.subscribe(f"bench.raw.negotiate.{i}", cb=respond)
            await nc.flush()
        body = orjson.dumps({"id": "x", "proposal": PROPOSAL, "constraints": CONSTRAINTS})

        async def call() -> Any:
            inbox = initiator.new_inbox()
            answers: dict[str, Any] = {}
            done = asyncio.Event()

            async def collect(msg: Any) -> None:
                answers[msg.subject.rsplit(".", 1)[1]] = orjson.loads(msg.data)
                if len(answers) == n:
                    done.set()

            sub = await initiator.subscribe(inbox + ".*", cb=collect)
            for i in range(n):
                await initiator.publish(f"bench.raw.negotiate.{i}", body, reply=f"{inbox}.{i}")
            await asyncio.wait_for(done.wait(), 5.0)
            await sub.unsubscribe()
            winner = min(answers, key=lambda k: answers[k]["terms"]["cost"])
            return await initiator.request(f"bench.raw.negotiate.{winner}", body, timeout=5.0)

        return call

    def run(self, k: int) -> list[float]:
        return self.time_calls(self.call, k)


@pytest.fixture(scope="module")
def setups(server: NATSServer) -> Iterator[dict[tuple[str, int], Setup]]:
    made = {(kind, n): Setup(server.url, kind, n) for n in TARGETS for kind in ("raw", "agent")}
    for setup in made.values():
        assert setup.run(2)  # warm up and prove the path works
    yield made
    for setup in made.values():
        setup.close()


@pytest.mark.parametrize("n", TARGETS)
@pytest.mark.parametrize("kind", ["raw", "agent"])
def test_negotiation_finalize(benchmark: Any, setups: dict[tuple[str, int], Setup], kind: str, n: int) -> None:
    """Median time of PER_ROUND sequential negotiations with n targets (divide by PER_ROUND for one)."""
    benchmark.group = f"negotiation-{n}-targets"
    benchmark.extra_info["negotiations_per_round"] = PER_ROUND
    benchmark.pedantic(setups[(kind, n)].run, args=(PER_ROUND,), rounds=10, warmup_rounds=1)


def test_negotiation_ratio(setups: dict[tuple[str, int], Setup]) -> None:
    """Interleave raw and agent blocks per target count; print p50/p99 per negotiation and the ratios."""
    for n in TARGETS:
        samples: dict[str, list[float]] = {"raw": [], "agent": []}
        for _ in range(10):
            for kind in ("raw", "agent"):
                samples[kind] += setups[(kind, n)].run(20)
        stats = {}
        for kind, times in samples.items():
            times.sort()
            stats[kind] = (statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6)
        raw, agent = stats["raw"], stats["agent"]
        print(
            f"\nnegotiation with {n:>2} targets over {len(samples['raw'])} runs each: raw fan-out p50 {raw[0]:.0f} µs "
            f"p99 {raw[1]:.0f} µs; agentcore finalize p50 {agent[0]:.0f} µs p99 {agent[1]:.0f} µs; "
            f"ratio p50 {agent[0] / raw[0]:.2f}x p99 {agent[1] / raw[1]:.2f}x"
        )
