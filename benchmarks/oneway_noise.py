#!/usr/bin/env python3
"""How the one-way suite's order and estimator change its noise: raw nats-py against itself, and the agents.

Usage: python benchmarks/oneway_noise.py [--blocks 16] [--reps 12] [--n 20000] [--loop asyncio|uvloop]

One process and one loop hold a raw nats-py publisher, two raw nats-py subscribers (`oneway_raw` and `oneway_raw2`,
the same code on two connections: an A/A comparison), an agent with the result cache off (`oneway_agent`) and one in
the default configuration (`oneway_default`), as in `agentcore bench`. A run publishes n envelopes to one kind and
times them from the first publish until the last is handled. A block runs every kind once per repetition, in one of
two orders, the blocks taking them in turn:
- `reversed`: the order reversed every other repetition (the suite's; the first and the last kind run twice in a row
  at every repetition's edge);
- `rotated`: repetition r starting at the kind after repetition r-1's first (no kind runs twice in a row).
Each block gives every kind's rate over `oneway_raw`'s by two estimators: `medians` (the median rate over the
repetitions, over raw's: the suite's) and `paired` (the median over repetitions of the rate over raw's rate in the
same repetition). It prints, per order, estimator and kind, the median, standard deviation and range of those
per-block ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import nats
import orjson

from agentcore import NO_REPLY, AgentConfig, NATSAgent
from agentcore.bench.measure import envelopes
from agentcore.server import NATSServer
from harness import run_on

KINDS = ("oneway_raw", "oneway_raw2", "oneway_agent", "oneway_default")
ORDERS: dict[str, Callable[[int], tuple[str, ...]]] = {
    "reversed": lambda r: KINDS[::-1] if r % 2 else KINDS,
    "rotated": lambda r: KINDS[r % len(KINDS):] + KINDS[:r % len(KINDS)],
}


async def main(blocks: int, reps: int, n: int) -> None:
    with NATSServer() as server:
        url = server.url
        closers: list[Any] = []
        done = asyncio.Event()
        state = {"got": 0, "want": 0}

        def arrived() -> None:
            state["got"] += 1
            if state["got"] >= state["want"]:
                done.set()

        async def raw_on(msg: Any) -> None:
            orjson.loads(msg.data)
            arrived()

        async def sink(message: dict[str, Any]) -> Any:
            arrived()
            return NO_REPLY

        pub = await nats.connect(url)
        closers.append(pub.close)
        subjects = {"oneway_raw": "bench.oneway.a", "oneway_raw2": "bench.oneway.b",
                    "oneway_agent": "agents.noise-sink.task.sink.default",
                    "oneway_default": "agents.noise-sink-default.task.sink.default"}
        for kind in ("oneway_raw", "oneway_raw2"):
            nc = await nats.connect(url)
            closers.append(nc.close)
            await nc.subscribe(subjects[kind], cb=raw_on)
            await nc.flush()
        for env, default in (("noise-sink", False), ("noise-sink-default", True)):
            settings: dict[str, Any] = {"nats.servers": [url], "nats.environment": env}
            if not default:  # as agentcore bench's oneway_agent
                settings.update({"agent.heartbeat_interval": 60.0, "cache.enabled": False, "agent.max_concurrency": 10_000})
            agent = NATSAgent(f"sink-{env}", "bench", AgentConfig(settings, environ={}))
            agent.add_capability("sink", sink)
            await agent.astart()
            closers.insert(0, agent.astop)

        async def run(kind: str, count: int) -> float:
            data = envelopes("noise", count, "sink", {"i": 1})
            state["got"], state["want"] = 0, count
            done.clear()
            t0 = time.perf_counter()
            for d in data:
                await pub.publish(subjects[kind], d)
            await asyncio.wait_for(done.wait(), 60)
            return count / (time.perf_counter() - t0)

        ratios: dict[tuple[str, str], dict[str, list[float]]] = {
            (o, e): {k: [] for k in KINDS[1:]} for o in ORDERS for e in ("medians", "paired")}
        try:
            for kind in KINDS:  # warm up
                await run(kind, 200)
            for b in range(blocks):
                order = list(ORDERS)[b % len(ORDERS)]
                rates: dict[str, list[float]] = {k: [] for k in KINDS}
                for r in range(reps):
                    for kind in ORDERS[order](r):
                        rates[kind].append(await run(kind, n))
                raw = rates["oneway_raw"]
                for kind in KINDS[1:]:
                    ratios[(order, "medians")][kind].append(statistics.median(rates[kind]) / statistics.median(raw))
                    ratios[(order, "paired")][kind].append(statistics.median([a / b for a, b in zip(rates[kind], raw)]))
                print(f"block {b + 1}/{blocks} {order}: " + ", ".join(
                    f"{k} {ratios[(order, 'medians')][k][-1]:.3f}x/{ratios[(order, 'paired')][k][-1]:.3f}x"
                    for k in KINDS[1:]), flush=True)
        finally:
            for close in closers:
                await close()
    print("\n| order | estimator | kind | median ratio | sd | range |\n|---|---|---|---:|---:|---|")
    for (order, estimator), rows in ratios.items():
        for kind, values in rows.items():
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"| {order} | {estimator} | {kind} | {statistics.median(values):.3f}x | {sd:.3f} | "
                  f"{min(values):.3f}-{max(values):.3f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=16, help="blocks, taking the orders in turn")
    parser.add_argument("--reps", type=int, default=12, help="repetitions per block")
    parser.add_argument("--n", type=int, default=20_000, help="messages per run")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    run_on(args.loop, main(args.blocks, args.reps, args.n))
