#!/usr/bin/env python3
"""How the round-trip suite's interleaving changes its noise: raw nats-py against itself, and the guide's agent.

Usage: python benchmarks/rt_noise.py [--blocks 36] [--loop asyncio|uvloop]

One process and one loop hold two raw nats-py responders (`rt_raw` and `rt_raw2`, the same code on two connections),
the guide's agent with the result cache off (`rt_sync`) and in the default configuration (`rt_default`), and one raw
requester, as in `agentcore bench`. Blocks take three schemes in turn, 1,600 round trips per kind each:
- `8x200`: 8 rounds of 200 round trips per kind, the kinds always in the same order (the suite before);
- `40x40 reversed`: 40 rounds of 40, the order reversed every other round (the first and the last kind run twice in
  a row at every round's edge);
- `40x40 rotated`: 40 rounds of 40, round r starting at the kind after round r-1's first (no kind runs twice in a row,
  each runs in every place equally often).
Each block gives every kind's p50 over `rt_raw`'s (as a block of `agentcore bench` does). It prints, per scheme and
kind, the median, standard deviation and range of those per-block ratios: `rt_raw2` is an A/A comparison, so its
spread is the scheme's noise alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Callable
from typing import Any

import nats

from agentcore import AgentConfig
from agentcore.bench.measure import envelopes, guide_echo, serve_raw, timed_requests
from agentcore.server import NATSServer
from harness import run_on

KINDS = ("rt_raw", "rt_raw2", "rt_sync", "rt_default")
#: scheme -> rounds, round trips per kind per round, the order of round r
SCHEMES: dict[str, tuple[int, int, Callable[[int], tuple[str, ...]]]] = {
    "8x200": (8, 200, lambda r: KINDS),
    "40x40 reversed": (40, 40, lambda r: KINDS[::-1] if r % 2 else KINDS),
    "40x40 rotated": (40, 40, lambda r: KINDS[r % len(KINDS):] + KINDS[:r % len(KINDS)]),
}


async def main(blocks: int) -> None:
    with NATSServer() as server:
        url = server.url
        closers: list[Any] = []
        subjects = {"rt_raw": "bench.raw.a", "rt_raw2": "bench.raw.b", "rt_sync": "agents.noise-sync.task.echo.default",
                    "rt_default": "agents.noise-default.task.echo.default"}
        first, second, requester = await nats.connect(url), await nats.connect(url), await nats.connect(url)
        closers += [first.close, second.close, requester.close]
        await serve_raw(first, subjects["rt_raw"])
        await serve_raw(second, subjects["rt_raw2"])
        for env, default in (("noise-sync", False), ("noise-default", True)):
            settings: dict[str, Any] = {"nats.servers": [url], "nats.environment": env}
            if not default:  # as agentcore bench's rt_sync
                settings.update({"agent.heartbeat_interval": 60.0, "cache.enabled": False, "agent.max_concurrency": 10_000})
            agent = guide_echo()(f"echo-{env}", "bench", AgentConfig(settings, environ={}))
            agent.add_capability("echo")
            await agent.astart()
            closers.insert(0, agent.astop)

        async def run(kind: str, n: int) -> list[float]:
            return await timed_requests(requester, subjects[kind], envelopes("noise", n, distinct=kind == "rt_default"))

        try:
            for kind in KINDS:  # warm up
                await run(kind, 50)
            ratios: dict[str, dict[str, list[float]]] = {s: {k: [] for k in KINDS[1:]} for s in SCHEMES}
            for b in range(blocks):
                scheme = list(SCHEMES)[b % len(SCHEMES)]
                rounds, per_round, order = SCHEMES[scheme]
                samples: dict[str, list[float]] = {k: [] for k in KINDS}
                for r in range(rounds):
                    for kind in order(r):
                        samples[kind] += await run(kind, per_round)
                p50 = {k: statistics.median(v) for k, v in samples.items()}
                for kind in KINDS[1:]:
                    ratios[scheme][kind].append(p50[kind] / p50["rt_raw"])
                print(f"block {b + 1}/{blocks} {scheme}: "
                      + ", ".join(f"{k} {ratios[scheme][k][-1]:.3f}x" for k in KINDS[1:]), flush=True)
        finally:
            for close in closers:
                await close()
    print("\n| scheme | kind | median ratio | sd | range |\n|---|---|---:|---:|---|")
    for scheme, rows in ratios.items():
        for kind, values in rows.items():
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"| {scheme} | {kind} | {statistics.median(values):.3f}x | {sd:.3f} | {min(values):.3f}-{max(values):.3f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=36, help="blocks, taking the schemes in turn")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    run_on(args.loop, main(args.blocks))
