#!/usr/bin/env python3
"""Instructions per message on each side, counted by valgrind's callgrind: raw nats-py against the agent, no timers.

Usage: python benchmarks/instructions.py [--n 3000] [--only responder,requester,receiver] [--jobs 2] [--cache]

Throughput on a shared 2-core machine moves 5-8% between identical runs; instruction counts do not. Each measured
side runs in a process of its own under callgrind, while its peer runs natively in another process against the same
local nats-server, so the count covers that side alone: its nats-py or agentcore code, orjson, the event loop and the
socket calls (not the kernel). Every variant is counted twice, with n and with no measured messages (both after the
same 200 warm-up ones), and the difference over n is what one message costs. Counts are instructions, not time: they
leave out cache misses and the kernel, and weigh SIMD code (orjson, xxhash) above its time, but two runs of every
side differed by 2% at most (most rows by under 0.5%), with the other core busy or not. With --cache, callgrind also
simulates the caches and each row adds the first-level misses per message: instruction fetches (I1) and data reads and
writes (D1), which a count of instructions leaves out and which cost about a dozen cycles each when the next level has
the line.

Sides (the ratio is raw nats-py's count over the variant's: above 1, the variant executes fewer instructions):
  responder  a raw nats-py requester (native) keeps 200 guide task envelopes in flight, each with its own content,
             to one of: raw (orjson.loads, respond {"ok": content}), rawenv (the same, answering with the guide's
             result envelope), async_off / async_default (NATSAgent, an async capability returning the content;
             result cache off / the default configuration), guide_off / guide_default (the guide's sync
             process_message calling publish_result)
  requester  the raw nats-py requester itself (it decodes every answer), against raw, rawenv, async_off and
             guide_default: what the guide's result envelope, raw nats-py's or the agent's, costs a requester
  receiver   one-way: a raw nats-py publisher (native) sends guide envelopes to a raw subscriber (orjson.loads) or to
             an agent's async capability returning NO_REPLY (oneway_off, oneway_default)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

WARM = 200  # messages before the count can differ: connections, first calls, caches filled
# Each pair of processes has its own environment (the tag): pairs counted at once must not serve each other.
SUBJECT = "agents.{}.task.echo.default"
ONEWAY = "agents.{}.task.sink.default"
STOP = "{}.stop"
RESPONDERS = ("raw", "rawenv", "async_off", "async_default", "guide_off", "guide_default")
REQUESTER_PEERS = ("raw", "rawenv", "async_off", "guide_default")
RECEIVERS = ("oneway_raw", "oneway_off", "oneway_default")


# ---------------------------------------------------------------------------------------------------------------------
# The two sides, each a process of its own


async def _respond(kind: str, tag: str, url: str) -> None:
    """Answer requests on SUBJECT as kind does until the requester says it has every answer (STOP), then exit."""
    import nats
    import orjson

    from agentcore import AgentConfig, NATSAgent
    from agentcore.bench.measure import guide_echo

    async def stop(msg: Any) -> None:
        os._exit(0)  # callgrind writes its counts at exit

    stopper = await nats.connect(url)
    await stopper.subscribe(STOP.format(tag), cb=stop)
    await stopper.flush()
    if kind in ("raw", "rawenv"):
        nc = await nats.connect(url)

        async def respond(msg: Any) -> None:
            d = orjson.loads(msg.data)
            if kind == "raw":
                await msg.respond(orjson.dumps({"ok": d["payload"]["content"]}))
            else:  # the envelope as a nats-py user following the guide builds it (benchmark's serve_raw)
                await msg.respond(orjson.dumps({
                    "id": os.urandom(16).hex(), "timestamp": time.time(), "version": "1.0", "type": "result",
                    "source": {"id": "raw-responder", "type": "bench"}, "target": d["source"]["id"], "replyTo": None,
                    "correlationId": d["id"], "context": {"conversationId": None, "metadata": {}},
                    "payload": {"content": d["payload"]["content"]}, "routing": None}))

        await nc.subscribe(SUBJECT.format(tag), cb=respond)
        await nc.flush()
    else:
        settings: dict[str, Any] = {"nats.servers": [url], "nats.environment": tag}
        if kind.endswith("_off"):
            settings["cache.enabled"] = False
        agent: Any
        if kind.startswith("guide"):
            agent = guide_echo()(tag, "bench", AgentConfig(settings, environ={}))
            agent.add_capability("echo")
        else:
            async def echo(message: dict[str, Any]) -> Any:
                return message["payload"]["content"]

            agent = NATSAgent(tag, "bench", AgentConfig(settings, environ={}))
            agent.add_capability("echo", echo)
        await agent.astart()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _request(tag: str, total: int, url: str) -> None:
    """Send total requests to SUBJECT, 200 in flight, decoding every answer; then exit."""
    import nats
    import orjson

    from agentcore.bench.measure import envelopes

    nc = await nats.connect(url)
    data = envelopes("cgi", total, distinct=True)
    print("ready", flush=True)
    it = iter(range(total))

    async def lane() -> None:
        for i in it:
            orjson.loads((await nc.request(SUBJECT.format(tag), data[i], timeout=600)).data)

    await asyncio.gather(*(lane() for _ in range(200)))
    await nc.publish(STOP.format(tag), b"")  # every answer is in: the responder may exit
    await nc.flush()
    os._exit(0)


async def _receive(kind: str, tag: str, total: int, url: str) -> None:
    """Take total one-way messages on ONEWAY as kind does, then exit."""
    import nats
    import orjson

    from agentcore import NO_REPLY, AgentConfig, NATSAgent

    done = asyncio.Event()
    count = [0]

    def tick() -> None:
        count[0] += 1
        if count[0] >= total:
            done.set()

    if kind == "oneway_raw":
        nc = await nats.connect(url)

        async def on(msg: Any) -> None:
            orjson.loads(msg.data)
            tick()

        await nc.subscribe(ONEWAY.format(tag), cb=on)
        await nc.flush()
    else:
        async def sink(message: dict[str, Any]) -> Any:
            tick()
            return NO_REPLY

        settings: dict[str, Any] = {"nats.servers": [url], "nats.environment": tag}
        if kind == "oneway_off":
            settings["cache.enabled"] = False
        agent = NATSAgent(tag, "bench", AgentConfig(settings, environ={}))
        agent.add_capability("sink", sink)
        await agent.astart()
    print("ready", flush=True)
    await done.wait()
    os._exit(0)


async def _publish(tag: str, total: int, url: str) -> None:
    """Publish total one-way guide envelopes to ONEWAY, then exit."""
    import nats

    from agentcore.bench.measure import envelopes

    nc = await nats.connect(url)
    for data in envelopes("cgi", total, "sink", {"i": 1}):
        await nc.publish(ONEWAY.format(tag), data)
    await nc.flush()
    await nc.close()


# ---------------------------------------------------------------------------------------------------------------------
# The parent: pairs of processes, one of them under callgrind


def _child(role: str, kind: str, tag: str, total: int, url: str, out: str | None,
           cache: bool = False) -> subprocess.Popen[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", role, "--kind", kind, "--tag", tag, "--total",
           str(total), "--url", url]
    if out is not None:
        cmd = ["valgrind", "--tool=callgrind", f"--cache-sim={'yes' if cache else 'no'}",
               f"--callgrind-out-file={out}"] + cmd
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _ready(proc: subprocess.Popen[str]) -> None:
    line = proc.stdout.readline() if proc.stdout is not None else ""
    if line.strip() != "ready":
        raise RuntimeError(f"a benchmark process did not start (exit code {proc.wait()})")


def count(side: str, kind: str, n: int, url: str, workdir: str, cache: bool = False) -> dict[str, int]:
    """Return the events (Ir: instructions; with cache, also the caches' misses) of side/kind's measured process."""
    total = n + WARM
    tag = f"cgi-{side}-{kind}-{n}".replace("_", "-")
    out = os.path.join(workdir, f"{tag}.out")
    if side == "responder":
        measured = _child("respond", kind, tag, total, url, out, cache)
        _ready(measured)
        peer = _child("request", "", tag, total, url, None)
    elif side == "requester":
        server_side = _child("respond", kind, tag, total, url, None)
        _ready(server_side)
        measured = _child("request", "", tag, total, url, out, cache)
        peer = server_side
    else:
        measured = _child("receive", kind, tag, total, url, out, cache)
        _ready(measured)
        peer = _child("publish", "", tag, total, url, None)
    try:
        if measured.wait(timeout=900) != 0 or peer.wait(timeout=60) != 0:
            raise RuntimeError(f"{side} {kind}: a benchmark process failed")
    finally:
        for proc in (measured, peer):
            if proc.poll() is None:
                proc.kill()
    events: list[str] = []
    with open(out) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                return dict(zip(events, map(int, line.split()[1:])))
    raise RuntimeError(f"{out}: callgrind wrote no totals")


def main(n: int, sides: list[str], jobs: int, cache: bool = False) -> None:
    from agentcore.server import NATSServer

    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: this benchmark counts instructions with valgrind's callgrind")
    plan = [(side, kind) for side, kinds in (("responder", RESPONDERS), ("requester", REQUESTER_PEERS),
                                              ("receiver", RECEIVERS)) if side in sides for kind in kinds]
    with tempfile.TemporaryDirectory() as workdir:
        conf = os.path.join(workdir, "server.conf")
        with open(conf, "w") as f:  # a side under callgrind reads slowly: not a slow consumer to be cut off at 2 s
            f.write('write_deadline: "600s"\n')
        with NATSServer(extra_args=["-c", conf]) as server, concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            runs = {(side, kind, m): pool.submit(count, side, kind, m, server.url, workdir, cache)
                    for side, kind in plan for m in (0, n)}
            per = {(side, kind): {event: (value - runs[side, kind, 0].result()[event]) / n
                                  for event, value in runs[side, kind, n].result().items()}
                   for side, kind in plan}
    misses_too = "; then first-level cache misses per message" if cache else ""
    print(f"instructions per message (callgrind; {n} messages counted after {WARM}; ratio: raw nats-py's count over "
          f"the row's, above 1 = fewer than raw{misses_too})")
    for side, kind in plan:
        row, base = per[side, kind], per[side, "oneway_raw" if side == "receiver" else "raw"]
        misses = (f"   I1 {row['I1mr']:>6,.0f}  D1 read {row['D1mr']:>5,.0f}  D1 write {row['D1mw']:>5,.0f}"
                  if cache else "")
        print(f"  {side:9} {kind:15} {row['Ir']:>10,.0f}   {base['Ir'] / row['Ir']:.3f}{misses}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="messages counted per variant")
    parser.add_argument("--only", default="responder,requester,receiver", help="sides to count, comma-separated")
    parser.add_argument("--jobs", type=int, default=2, help="variants counted at once")
    parser.add_argument("--cache", action="store_true", help="simulate the caches too: first-level misses per message")
    parser.add_argument("--child", choices=("respond", "request", "receive", "publish"), help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "respond":
        asyncio.run(_respond(args.kind, args.tag, args.url))
    elif args.child == "request":
        asyncio.run(_request(args.tag, args.total, args.url))
    elif args.child == "receive":
        asyncio.run(_receive(args.kind, args.tag, args.total, args.url))
    elif args.child == "publish":
        asyncio.run(_publish(args.tag, args.total, args.url))
    else:
        main(args.n, [s.strip() for s in args.only.split(",") if s.strip()], args.jobs, args.cache)
