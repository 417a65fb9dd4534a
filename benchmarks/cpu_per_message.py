#!/usr/bin/env python3
"""CPU time per message on the receiving side: NATSAgent vs a raw nats-py subscriber, frames fed to their parsers.

Usage: python benchmarks/cpu_per_message.py [--n 20000] [--rounds 15] [--kind oneway|reply|guide|both|all] [--loop asyncio|uvloop]
       [--cache]

It measures the agentcore the interpreter imports (run it with another installation's interpreter to compare).

The throughput benchmarks (agentcore bench, benchmarks/ab.py) run the publisher in the same process, so their
ratios mix the publisher's cost into both sides. This one takes the publisher out: it builds the MSG frames the
server would send (guide envelopes, ~340 B) and feeds them, 250 frames per read, straight into each client's
protocol parser -- nats-py's own for the raw subscriber, the agent's frame reader for the agent -- and counts the
process CPU time until every message was handled. Each side runs against a real nats-server (its subscriptions
and, for "reply", its answers are real); kinds alternate within each round.

  oneway  raw: a callback doing orjson.loads; agent: add_capability with an async handler returning NO_REPLY
  reply   raw: orjson.loads + dumps + msg.respond; agent: an async echo capability (the answer is a result
          envelope), each request with its own reply inbox; a message counts once its answer was written
  guide   raw: the same; agent: the guide's example, a sync process_message calling publish_result

With --cache the agent keeps the result cache and duplicate detection at their defaults (on; they are off
otherwise, the dispatch path alone), and each "reply" task has its own content, so every one is a cache miss.

It prints the median and minimum µs per message of each side and raw/agent (above 1: the agent spends less CPU
per message than raw nats-py). It reads nats-py's private parser (`nc._ps`) and subscription table: a measuring
tool, not library code.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Callable
import time
from typing import Any

import nats
import orjson

import agentcore
from agentcore import AgentConfig
from agentcore.bench.measure import envelopes, guide_echo, serve_raw
from agentcore.server import NATSServer

_PER_READ = 250


def _frames(subject: str, sid: int, data: list[bytes], reply: bool) -> list[bytes]:
    """The MSG frames nats-server would send for data, _PER_READ per chunk."""
    frames = [b"MSG %s %d %s%d\r\n%s\r\n" % (subject.encode(), sid, b"_INBOX.cpu.%d " % i if reply else b"", len(d), d)
              for i, d in enumerate(data)]
    return [b"".join(frames[i:i + _PER_READ]) for i in range(0, len(frames), _PER_READ)]


def _sid(nc: Any, prefix: str) -> int:
    return next(sid for sid, sub in nc._subs.items() if sub.subject.startswith(prefix))


async def _run(nc: Any, chunks: list[bytes], n: int, done: Any) -> float:
    """Feed chunks to nc's parser; return CPU µs per message once done() says all n were handled."""
    start = done()
    t0 = time.process_time()
    for chunk in chunks:
        await nc._ps.parse(chunk)
        await asyncio.sleep(0)  # what a read from the socket yields to: answers flush, Tasks run
    while done() - start < n:
        await asyncio.sleep(0)
    return (time.process_time() - t0) / n * 1e6


async def main(n: int, rounds: int, kinds: list[str], cache: bool = False) -> None:
    server = NATSServer().start()
    try:
        url = server.url
        settings: dict[str, Any] = {"nats.servers": [url], "nats.environment": "cpu", "agent.heartbeat_interval": 60.0,
                                    "agent.max_concurrency": 10_000}
        if not cache:
            settings["cache.enabled"] = False
        config = AgentConfig(settings, environ={})
        got = [0]

        async def raw_on(msg: Any) -> None:
            orjson.loads(msg.data)
            got[0] += 1

        async def sink(message: dict[str, Any]) -> Any:
            got[0] += 1
            return agentcore.NO_REPLY

        async def echo(message: dict[str, Any]) -> Any:
            return message["payload"]["content"]

        raw = await nats.connect(url)
        await raw.subscribe("cpu.oneway", cb=raw_on)
        await serve_raw(raw, "cpu.echo")
        agent = guide_echo()("cpu", "bench", config)  # the guide's process_message answers "guide"
        agent.add_capability("sink", sink)
        agent.add_capability("echo", echo)
        agent.add_capability("guide")
        await agent.astart()
        anc = agent.nc
        # kind -> side -> (connection, a function returning the frames of one run, the handled count). With the
        # cache on, every run gets fresh envelopes (new ids: none is a duplicate of an earlier run's), made before
        # the run is timed; otherwise one set serves every run.
        sides: dict[str, dict[str, tuple[Any, Callable[[], list[bytes]], Any]]] = {}

        def frames_of(subject: str, sid: int, make: Callable[[], list[bytes]], reply: bool) -> Callable[[], list[bytes]]:
            if cache:
                return lambda: _frames(subject, sid, make(), reply)
            fixed = _frames(subject, sid, make(), reply)
            return lambda: fixed

        if "oneway" in kinds:
            def oneway_data() -> list[bytes]:
                return envelopes("cpu", n, "sink", {"i": 1})
            sides["oneway"] = {
                "raw": (raw, frames_of("cpu.oneway", _sid(raw, "cpu.oneway"), oneway_data, False), lambda: got[0]),
                "agent": (anc, frames_of("agents.cpu.task.sink.default", _sid(anc, "agents.cpu.task.sink"), oneway_data,
                                         False), lambda: got[0])}
        if "reply" in kinds:
            def reply_data() -> list[bytes]:
                return envelopes("cpu", n, distinct=cache)
            sides["reply"] = {
                "raw": (raw, frames_of("cpu.echo", _sid(raw, "cpu.echo"), reply_data, True), lambda: raw.stats["out_msgs"]),
                "agent": (anc, frames_of("agents.cpu.task.echo.default", _sid(anc, "agents.cpu.task.echo"), reply_data,
                                         True), lambda: anc.stats["out_msgs"])}
        if "guide" in kinds:
            def guide_data() -> list[bytes]:
                return envelopes("cpu", n, "guide", distinct=cache)
            sides["guide"] = {
                "raw": (raw, frames_of("cpu.echo", _sid(raw, "cpu.echo"), guide_data, True), lambda: raw.stats["out_msgs"]),
                "agent": (anc, frames_of("agents.cpu.task.guide.default", _sid(anc, "agents.cpu.task.guide"), guide_data,
                                         True), lambda: anc.stats["out_msgs"])}
        print(f"agentcore {agentcore.__file__} ({agentcore.implementation}), {n} messages per run, {rounds} rounds"
              + (", result cache and duplicate detection on" if cache else ""))
        for kind, pair in sides.items():
            times: dict[str, list[float]] = {"raw": [], "agent": []}
            for side in ("raw", "agent"):  # warm-up
                await _run(pair[side][0], pair[side][1](), n, pair[side][2])
            for _ in range(rounds):
                for side in ("raw", "agent"):
                    times[side].append(await _run(pair[side][0], pair[side][1](), n, pair[side][2]))
            r, a = statistics.median(times["raw"]), statistics.median(times["agent"])
            print(f"{kind:7} µs/msg median raw {r:.2f} agent {a:.2f} raw/agent {r / a:.3f} | "
                  f"min raw {min(times['raw']):.2f} agent {min(times['agent']):.2f} "
                  f"raw/agent {min(times['raw']) / min(times['agent']):.3f}")
        await agent.astop()
        await raw.close()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--kind", choices=("oneway", "reply", "guide", "both", "all"), default="both")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the event loop both sides run on")
    parser.add_argument("--cache", action="store_true", help="result cache and duplicate detection on (their default)")
    args = parser.parse_args()
    run: Any = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    run(main(args.n, args.rounds, {"both": ["oneway", "reply"], "all": ["oneway", "reply", "guide"]}.get(args.kind, [args.kind]), args.cache))
