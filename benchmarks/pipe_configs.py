#!/usr/bin/env python3
"""What each part of an agent's configuration costs pipelined throughput: one raw requester, one agent per variant.

Usage: python benchmarks/pipe_configs.py [--rounds 9] [--n 6000] [--inflight 200] [--loop asyncio|uvloop]

A raw nats-py requester keeps --inflight guide envelopes in flight (each with its own content and id, so none is a
cache hit or a duplicate) and decodes every answer, as in `agentcore bench`, to:

  raw            a raw nats-py responder: orjson.loads, then respond {"ok": content}
  async_off      NATSAgent, add_capability("echo", async handler returning the content), result cache off
  async_default  the same agent in the default configuration (result cache and duplicate detection on)
  guide_off      the guide's example (sync process_message calling publish_result), result cache off
  guide_default  the guide's example in the default configuration

Everything runs in one process on one loop against a local nats-server. Rounds alternate the order of the variants;
it prints each variant's median req/s, the median of its rounds' ratios to raw, and the median process CPU time per
request and the part of it the garbage collector took (gc.callbacks): both cover the requester too, which is the same
for every variant. --result str makes the async capabilities return a string (a result the collector does not track)
instead of the task's content (a dict).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

import nats
import orjson

from agentcore import AgentConfig, NATSAgent
from agentcore.bench.measure import envelopes, guide_echo, serve_raw
from agentcore.server import NATSServer


class _GCTime:
    """Process CPU seconds spent in garbage collections, from gc.callbacks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0
        gc.callbacks.append(self._on)

    def _on(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.seconds += time.process_time() - self._start


async def main(rounds: int, n: int, inflight: int, result: str) -> None:
    gc_time = _GCTime()
    with NATSServer() as server:
        requester, responder = await nats.connect(server.url), await nats.connect(server.url)
        await serve_raw(responder, "configs.raw")

        async def echo(message: dict[str, Any]) -> Any:
            content = message["payload"]["content"]
            return content["text"] if result == "str" else content

        guide = guide_echo()
        variants: dict[str, str] = {"raw": "configs.raw"}
        agents: list[NATSAgent] = []
        for name, cls, handler, cache in (("async_off", NATSAgent, echo, False), ("async_default", NATSAgent, echo, True),
                                          ("guide_off", guide, None, False), ("guide_default", guide, None, True)):
            env = "configs-" + name.replace("_", "-")
            settings: dict[str, Any] = {"nats.servers": [server.url], "nats.environment": env}
            if not cache:
                settings["cache.enabled"] = False
            agent = cls(env, "bench", AgentConfig(settings, environ={}))
            if handler is None:
                agent.add_capability("echo")  # the guide's process_message answers
            else:
                agent.add_capability("echo", handler)
            await agent.astart()
            agents.append(agent)
            variants[name] = f"agents.{env}.task.echo.default"

        async def pipe(name: str, count: int) -> tuple[float, float, float]:
            """Return req/s, process CPU µs per request and GC µs per request."""
            data = envelopes("configs", count, distinct=True)
            subject = variants[name]
            it = iter(range(count))

            async def lane() -> None:
                for i in it:
                    orjson.loads((await requester.request(subject, data[i], timeout=30)).data)

            t0, cpu0, gc0 = time.perf_counter(), time.process_time(), gc_time.seconds
            await asyncio.gather(*(lane() for _ in range(inflight)))
            return (count / (time.perf_counter() - t0), (time.process_time() - cpu0) / count * 1e6,
                    (gc_time.seconds - gc0) / count * 1e6)

        for name in variants:  # warm up
            await pipe(name, 400)
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
        for i in range(rounds):
            for name in (list(variants) if i % 2 == 0 else list(reversed(variants))):
                runs[name].append(await pipe(name, n))
        for name, mine in runs.items():
            ratios = [run[0] / raw[0] for run, raw in zip(mine, runs["raw"])]
            print(f"{name:14} {statistics.median(r[0] for r in mine):9,.0f} req/s   vs raw {statistics.median(ratios):.3f} "
                  f"(range {min(ratios):.3f}-{max(ratios):.3f})   CPU {statistics.median(r[1] for r in mine):5.1f} µs/req, "
                  f"GC {statistics.median(r[2] for r in mine):4.2f} µs/req")
        for agent in agents:
            await agent.astop()
        await requester.close()
        await responder.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--n", type=int, default=6_000, help="requests per variant and round")
    parser.add_argument("--inflight", type=int, default=200)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--result", choices=("dict", "str"), default="dict", help="what the async capabilities return")
    args = parser.parse_args()
    run: Any = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    run(main(args.rounds, args.n, args.inflight, args.result))
