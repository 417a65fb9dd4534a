"""Measure agentcore against raw nats-py on one server, in one process and one event loop, kinds interleaved.

This file is self-contained on purpose: it uses only agentcore's public API (NATSAgent, AgentConfig,
add_capability, process_message, publish_result, send_task, stream_response, request_stream, astart/astop,
new_message, NO_REPLY), nats-py and orjson, so benchmarks/ab.py can load it by path and run it against an
older installation of agentcore. Agents run with the result cache off (the dispatch path alone), except those of
rt_default, oneway_default, pipe_default and pipe_guide (the default configuration: result cache and duplicate detection
on).

Metrics (lower is better for µs, higher for rates); each is compared with the raw nats-py metric named in
METRICS, measured in the same run. A throughput or stream metric is the median over its repetitions; measure() also
returns each repetition's rate ("reps"), so that a block's ratio to raw pairs every repetition with raw's own in the
same repetition (agentcore.bench.run.block_ratio):
  rt_*      sequential request/reply round trip p50, ~200 B content; the requester is a raw nats-py client
            sending guide envelopes for every kind:
              rt_raw     responder = raw nats-py subscriber (orjson loads + dumps + respond)
              rt_async   responder = NATSAgent, add_capability("echo", async handler)
              rt_sync    responder = the guide's style: a NATSAgent subclass with a sync process_message that
                         calls publish_result(id, result) and returns True
              rt_client  requester = a second NATSAgent (send_task) -> the async responder
              rt_default responder = the guide's style in the default configuration (result cache and duplicate
                         detection on; every task's content distinct, so every task is a cache miss)
  oneway_*  fire-and-forget: raw nats-py publishes N envelopes; a raw subscriber (orjson loads) vs a NATSAgent with
            a trivial async handler (returns NO_REPLY); msgs/s from the first publish until the last is handled;
            oneway_default: the same agent in the default configuration. Each repetition runs every kind in turn,
            the order reversed every other repetition (oneway_* and pipe_* alike), so no kind always runs first.
  pipe_*    request/reply with W requests in flight, req/s: raw requester -> raw responder (pipe_raw),
            NATSAgent.send_task -> NATSAgent (pipe_agent), raw requester (envelopes) -> NATSAgent (pipe_rawreq),
            raw requester -> a raw responder answering with the guide's result envelope, the agent's answer
            (pipe_rawenv: what pipe_rawreq's job costs raw nats-py; pipe_raw's responder answers {"ok": content}),
            raw requester (envelopes, each with its own content) -> rt_default's agent (pipe_default: the guide's
            sync style in the default configuration, every task a cache miss), and a NATSAgent in the default
            configuration (send_task, each task with its own content) -> rt_default's agent (pipe_guide: agentcore
            on both sides as the guide sets it up, every task a cache miss)
  stream_*  8 MB in 64 KB chunks, MB/s: raw publish -> subscriber vs stream_response -> request_stream (window 16)

DefaultInstall opens rt_raw's and rt_default's paths on a loop and keeps them across blocks: agentcore.bench.run's
suite "uvloop" holds one on uvloop and one on asyncio and alternates between them (the default install against raw
nats-py on plain asyncio).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ("CONTENT", "METRICS", "QUICK", "SIZES", "SUITES", "UV_KINDS", "DefaultInstall", "envelopes", "guide_echo",
           "measure", "serve_raw", "steps", "timed_requests")

CONTENT = {"text": "summarise the quarterly numbers for the board " * 4, "lang": "en"}

SUITES = ("roundtrip", "throughput", "stream")

SIZES: dict[str, int] = {
    "rt_rounds": 40,         # rounds; each round runs every round-trip kind in turn (the order rotated every round)
    "rt_per_round": 40,      # sequential round trips per kind per round
    "oneway_n": 20_000,
    "oneway_reps": 10,
    "pipe_n": 6_000,
    "pipe_inflight": 200,
    "pipe_reps": 8,
    "stream_total": 8 * 1024 * 1024,
    "stream_chunk": 64 * 1024,
    "stream_window": 16,
    "stream_reps": 7,
    "uv_rounds": 20,         # suite uvloop: rounds, each on uvloop and on asyncio (which goes first alternates)
    "uv_per_round": 200,     # sequential round trips per kind and loop per round
    "rss_tasks": 1_000_000,  # suite rss (agentcore.bench.rss)
    "rss_warmup": 20_000,
}

#: A smoke: seconds, not a measurement.
QUICK: dict[str, int] = {**SIZES, "rt_rounds": 1, "rt_per_round": 30, "oneway_n": 1000, "oneway_reps": 1, "pipe_n": 400,
                         "pipe_inflight": 50, "pipe_reps": 1, "stream_total": 1024 * 1024, "stream_reps": 1,
                         "uv_rounds": 2, "uv_per_round": 20, "rss_tasks": 2000, "rss_warmup": 500}

#: metric -> (unit, higher is better, the raw nats-py metric it is compared with, suite)
METRICS: dict[str, tuple[str, bool, str, str]] = {
    "rt_raw": ("p50 µs", False, "rt_raw", "roundtrip"),
    "rt_async": ("p50 µs", False, "rt_raw", "roundtrip"),
    "rt_sync": ("p50 µs", False, "rt_raw", "roundtrip"),
    "rt_client": ("p50 µs", False, "rt_raw", "roundtrip"),
    "rt_default": ("p50 µs", False, "rt_raw", "roundtrip"),
    "oneway_raw": ("msg/s", True, "oneway_raw", "throughput"),
    "oneway_agent": ("msg/s", True, "oneway_raw", "throughput"),
    "oneway_default": ("msg/s", True, "oneway_raw", "throughput"),
    "pipe_raw": ("req/s", True, "pipe_raw", "throughput"),
    "pipe_agent": ("req/s", True, "pipe_raw", "throughput"),
    "pipe_rawreq": ("req/s", True, "pipe_raw", "throughput"),
    "pipe_rawenv": ("req/s", True, "pipe_raw", "throughput"),
    "pipe_default": ("req/s", True, "pipe_raw", "throughput"),
    "pipe_guide": ("req/s", True, "pipe_raw", "throughput"),
    "stream_raw": ("MB/s", True, "stream_raw", "stream"),
    "stream_agent": ("MB/s", True, "stream_raw", "stream"),
}

_COUNTER = itertools.count()  # distinct task content for the default configuration's agent, across blocks: no cache hit
_RT_KINDS = ("rt_raw", "rt_async", "rt_sync", "rt_client", "rt_default")
UV_KINDS = ("rt_raw", "rt_default")  # the suite "uvloop"
_ONEWAY_KINDS = ("oneway_raw", "oneway_agent", "oneway_default")
_PIPE_KINDS = ("pipe_raw", "pipe_agent", "pipe_rawreq", "pipe_rawenv", "pipe_default", "pipe_guide")
_STREAM_KINDS = ("stream_raw", "stream_agent")


def _in_turn(kinds: tuple[str, ...], rep: int) -> tuple[str, ...]:
    """Return kinds in the order of repetition rep: as given, then reversed, and so on (no kind always runs first)."""
    return kinds if rep % 2 == 0 else kinds[::-1]


def _rotated(kinds: tuple[str, ...], rnd: int) -> tuple[str, ...]:
    """Return kinds in the order of round rnd: rotated by rnd places (each kind in every place, never twice in a row)."""
    i = rnd % len(kinds)
    return kinds[i:] + kinds[:i]


def steps(sizes: dict[str, int], suites: tuple[str, ...] = SUITES) -> int:
    """Return how many progress steps measure() reports for these sizes and suites."""
    n = 0
    if "roundtrip" in suites:
        n += sizes["rt_rounds"] * len(_RT_KINDS)
    if "throughput" in suites:
        n += sizes["oneway_reps"] * len(_ONEWAY_KINDS) + sizes["pipe_reps"] * len(_PIPE_KINDS)
    if "stream" in suites:
        n += sizes["stream_reps"] * len(_STREAM_KINDS)
    return n


def guide_echo() -> Any:
    """Return the guide's example agent class, word for word: a sync process_message that calls publish_result."""
    from agentcore import NATSAgent

    class GuideEcho(NATSAgent):
        def process_message(self, topic: str, message: dict[str, Any]) -> bool:
            self.publish_result(message["id"], message["payload"]["content"])
            return True

    return GuideEcho


async def serve_raw(nc: Any, subject: str, envelope: bool = False) -> None:
    """Answer requests on subject as a raw nats-py responder does: orjson loads, dumps and respond.

    With envelope, each answer is the guide's result envelope (the fields the agent's answer has), built as a nats-py
    user following the guide would: a dict with a fresh random id and the time, dumped by orjson.
    """
    import orjson

    async def respond(msg: Any) -> None:
        d = orjson.loads(msg.data)
        await msg.respond(orjson.dumps({"ok": d["payload"]["content"]}))

    async def respond_envelope(msg: Any) -> None:
        d = orjson.loads(msg.data)
        await msg.respond(orjson.dumps({
            "id": os.urandom(16).hex(), "timestamp": time.time(), "version": "1.0", "type": "result",
            "source": {"id": "raw-responder", "type": "bench"}, "target": d["source"]["id"], "replyTo": None,
            "correlationId": d["id"], "context": {"conversationId": None, "metadata": {}},
            "payload": {"content": d["payload"]["content"]}, "routing": None}))

    await nc.subscribe(subject, cb=respond_envelope if envelope else respond)
    await nc.flush()


def envelopes(tag: str, n: int, capability: str = "echo", content: Any = CONTENT, distinct: bool = False) -> list[bytes]:
    """Return n encoded task envelopes a raw requester sends (distinct: each with its own content)."""
    import orjson

    from agentcore import new_message

    return [orjson.dumps(new_message("task", {**content, "n": next(_COUNTER)} if distinct else content,
                                     source_id=f"rawreq-{tag}", source_type="bench", capabilities=[capability]))
            for _ in range(n)]


async def timed_requests(requester: Any, subject: str, data: list[bytes]) -> list[float]:
    """Send each of data as a request in turn, decode each answer; return each round trip's seconds."""
    import orjson

    times = []
    for payload in data:
        t0 = time.perf_counter()
        orjson.loads((await requester.request(subject, payload, timeout=5)).data)
        times.append(time.perf_counter() - t0)
    return times


class DefaultInstall:
    """rt_raw's and rt_default's paths opened on the running loop and kept open: a raw responder and the guide's agent."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tag = f"{os.getpid()}x{id(self):x}"
        self.closers: list[Any] = []
        self.subjects: dict[str, str] = {}
        self.requester: Any = None

    async def open(self) -> DefaultInstall:
        import nats

        from agentcore import AgentConfig

        env = f"bench-default-{self.tag}"
        responder, self.requester = await nats.connect(self.url), await nats.connect(self.url)
        self.closers += [responder.close, self.requester.close]
        self.subjects = {"rt_raw": f"bench.raw.{self.tag}", "rt_default": f"agents.{env}.task.echo.default"}
        await serve_raw(responder, self.subjects["rt_raw"])
        # The configuration a guide user gets: everything at its default but where to connect.
        agent = guide_echo()(f"echo-default-{self.tag}", "bench",
                             AgentConfig({"nats.servers": [self.url], "nats.environment": env}, environ={}))
        agent.add_capability("echo")
        await agent.astart()
        self.closers.insert(0, agent.astop)
        return self

    async def block(self, kind: str, n: int) -> list[float]:
        """Time n sequential round trips of kind (rt_raw or rt_default)."""
        data = envelopes(self.tag, n, distinct=kind == "rt_default")
        return await timed_requests(self.requester, self.subjects[kind], data)

    async def close(self) -> None:
        for close in self.closers:
            try:
                await asyncio.wait_for(close(), 10)
            except Exception as exc:  # a slow stop must not lose the measurement
                print(f"close failed: {exc!r}", file=sys.stderr)


async def measure(url: str, sizes: dict[str, int], suites: tuple[str, ...] = SUITES,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the suites against the server at url; return {"metrics": {...}, "extra": {...}, ...}."""
    import nats
    import orjson

    import agentcore
    from agentcore import AgentConfig, NATSAgent

    step = progress or (lambda label: None)
    no_reply = getattr(agentcore, "NO_REPLY", None)
    tag = f"{os.getpid()}x{int(time.time() * 1000) % 100000}"
    closers: list[Any] = []
    out: dict[str, float] = {}
    extra: dict[str, float] = {}
    reps: dict[str, list[float]] = {}  # each repetition's rate per kind, in order: a block's paired ratios

    def cfg(env: str, default: bool = False) -> Any:
        if default:  # the configuration a guide user gets: everything at its default but where to connect
            return AgentConfig({"nats.servers": [url], "nats.environment": env}, environ={})
        return AgentConfig({"nats.servers": [url], "nats.environment": env, "agent.heartbeat_interval": 60.0,
                            "cache.enabled": False, "agent.max_concurrency": 10_000}, environ={})

    async def agent(cls: Any, agent_id: str, env: str, capability: str, handler: Any = None, default: bool = False) -> Any:
        a = cls(f"{agent_id}-{tag}", "bench", cfg(env, default))
        if handler is None:
            a.add_capability(capability)
        else:
            a.add_capability(capability, handler)
        await a.astart()
        closers.insert(0, a.astop)
        return a

    async def connect() -> Any:
        nc = await nats.connect(url)
        closers.append(nc.close)
        return nc

    async def echo(message: dict[str, Any]) -> Any:
        return message["payload"]["content"]

    GuideEcho = guide_echo()

    try:
        env_async, env_sync, env_sink, env_sink_default, env_stream, env_default = (
            f"bench-{k}-{tag}" for k in ("async", "sync", "sink", "sink-default", "stream", "default"))
        raw_subject, rawenv_subject = f"bench.raw.{tag}", f"bench.rawenv.{tag}"
        subjects = {"rt_raw": raw_subject, "rt_async": f"agents.{env_async}.task.echo.default",
                    "rt_sync": f"agents.{env_sync}.task.echo.default",
                    "rt_default": f"agents.{env_default}.task.echo.default"}
        client: Any = None
        requester: Any = None
        if "roundtrip" in suites or "throughput" in suites:
            await agent(NATSAgent, "echo-async", env_async, "echo", echo)
            client = await agent(NATSAgent, "client", env_async, "unused", echo)
            raw_resp, requester = await connect(), await connect()
            await serve_raw(raw_resp, raw_subject)
            await serve_raw(raw_resp, rawenv_subject, envelope=True)
            await agent(GuideEcho, "echo-default", env_default, "echo", default=True)

        # ------------------------------------------------------------------ round trips
        if "roundtrip" in suites:
            await agent(GuideEcho, "echo-sync", env_sync, "echo")

            async def rt_block(kind: str, n: int) -> list[float]:
                times = []
                if kind == "rt_client":
                    for _ in range(n):
                        t0 = time.perf_counter()
                        await client.send_task("echo", CONTENT, timeout=5)
                        times.append(time.perf_counter() - t0)
                    return times
                return await timed_requests(requester, subjects[kind], envelopes(tag, n, distinct=kind == "rt_default"))

            for kind in _RT_KINDS:  # warm up and prove each path works
                await rt_block(kind, 20)
            samples: dict[str, list[float]] = {k: [] for k in _RT_KINDS}
            # Short rounds in rotated order: a burst of load on the box falls on every kind alike, and no kind runs
            # twice in a row (benchmarks/rt_noise.py: the spread of raw nats-py against itself was 40-46% smaller than
            # with 8 rounds of 200 in a fixed order).
            for rnd in range(sizes["rt_rounds"]):
                for kind in _rotated(_RT_KINDS, rnd):
                    samples[kind] += await rt_block(kind, sizes["rt_per_round"])
                    step(kind)
            for kind, times in samples.items():
                times.sort()
                out[kind] = statistics.median(times) * 1e6
                extra[kind + "_p99"] = times[int(len(times) * 0.99)] * 1e6

        # ------------------------------------------------------------------ throughput
        if "throughput" in suites:
            pub, raw_sink = await connect(), await connect()
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
                return no_reply

            raw_oneway = f"bench.oneway.{tag}"
            await raw_sink.subscribe(raw_oneway, cb=raw_on)
            await raw_sink.flush()
            await agent(NATSAgent, "sink", env_sink, "sink", sink)
            await agent(NATSAgent, "sink-default", env_sink_default, "sink", sink, default=True)
            oneway_subjects = {"oneway_raw": raw_oneway, "oneway_agent": f"agents.{env_sink}.task.sink.default",
                               "oneway_default": f"agents.{env_sink_default}.task.sink.default"}

            async def oneway(kind: str, n: int) -> float:
                data = envelopes(tag, n, "sink", {"i": 1})
                subject = oneway_subjects[kind]
                state["got"], state["want"] = 0, n
                done.clear()
                t0 = time.perf_counter()
                for d in data:
                    await pub.publish(subject, d)
                await asyncio.wait_for(done.wait(), 60)
                return n / (time.perf_counter() - t0)

            for kind in _ONEWAY_KINDS:
                await oneway(kind, 200)
            rates: dict[str, list[float]] = {k: [] for k in _ONEWAY_KINDS}
            for rep in range(sizes["oneway_reps"]):
                for kind in _in_turn(_ONEWAY_KINDS, rep):
                    rates[kind].append(await oneway(kind, sizes["oneway_n"]))
                    step(kind)
            for kind, r in rates.items():
                out[kind] = statistics.median(r)
                reps[kind] = r

            # The guide's set-up end to end: a requester agent in the default configuration, in rt_default's
            # environment (its send_task reaches rt_default's agent).
            guide_client = await agent(NATSAgent, "client-default", env_default, "unused", echo, default=True)

            async def pipe(kind: str, n: int, width: int) -> float:
                data = (envelopes(tag, n, distinct=kind == "pipe_default")
                        if kind not in ("pipe_raw", "pipe_agent", "pipe_guide") else None)
                contents = [{**CONTENT, "n": next(_COUNTER)} for _ in range(n)] if kind == "pipe_guide" else []
                data_raw = envelopes(tag, 1)[0]
                subject = {"pipe_raw": raw_subject, "pipe_rawenv": rawenv_subject,
                           "pipe_default": subjects["rt_default"]}.get(kind, subjects["rt_async"])
                it = iter(range(n))

                async def lane() -> None:
                    for i in it:
                        if kind == "pipe_agent":
                            await client.send_task("echo", CONTENT, timeout=30)
                        elif kind == "pipe_guide":
                            await guide_client.send_task("echo", contents[i], timeout=30)
                        else:
                            payload = data[i] if data is not None else data_raw
                            orjson.loads((await requester.request(subject, payload, timeout=30)).data)

                t0 = time.perf_counter()
                await asyncio.gather(*(lane() for _ in range(width)))
                return n / (time.perf_counter() - t0)

            for kind in _PIPE_KINDS:
                await pipe(kind, min(400, sizes["pipe_n"]), sizes["pipe_inflight"])
            rates = {k: [] for k in _PIPE_KINDS}
            for rep in range(sizes["pipe_reps"]):
                for kind in _in_turn(_PIPE_KINDS, rep):
                    rates[kind].append(await pipe(kind, sizes["pipe_n"], sizes["pipe_inflight"]))
                    step(kind)
            for kind, r in rates.items():
                out[kind] = statistics.median(r)
                reps[kind] = r

        # ------------------------------------------------------------------ streams
        if "stream" in suites:
            total, chunk = sizes["stream_total"], sizes["stream_chunk"]
            block = b"x" * chunk
            spub, ssub = await connect(), await connect()
            sdone = asyncio.Event()
            sgot = [0]

            async def on_chunk(msg: Any) -> None:
                sgot[0] += len(msg.data)
                if sgot[0] >= total:
                    sdone.set()

            raw_stream = f"bench.stream.{tag}"
            await ssub.subscribe(raw_stream, cb=on_chunk)
            await ssub.flush()

            async def produce(message: dict[str, Any]) -> None:
                async def gen() -> Any:
                    for _ in range(total // chunk):
                        yield block

                await streamer.stream_response(message["id"], gen(), chunk_size=chunk)

            streamer = await agent(NATSAgent, "streamer", env_stream, "blob", produce)
            stream_client = await agent(NATSAgent, "sclient", env_stream, "unused2", echo)
            blob = f"agents.{env_stream}.task.blob.default"

            async def stream(kind: str) -> float:
                t0 = time.perf_counter()
                if kind == "stream_raw":
                    sgot[0] = 0
                    sdone.clear()
                    for _ in range(total // chunk):
                        await spub.publish(raw_stream, block)
                    await asyncio.wait_for(sdone.wait(), 60)
                else:
                    got = 0
                    async with stream_client.request_stream(blob, None, window=sizes["stream_window"]) as chunks:
                        async for c in chunks:
                            got += len(c.data)
                    if got != total:
                        raise RuntimeError(f"the stream brought {got} bytes of {total}")
                return total / (time.perf_counter() - t0) / 1e6

            for kind in _STREAM_KINDS:
                await stream(kind)
            rates = {k: [] for k in _STREAM_KINDS}
            for _ in range(sizes["stream_reps"]):
                for kind in _STREAM_KINDS:
                    rates[kind].append(await stream(kind))
                    step(kind)
            for kind, r in rates.items():
                out[kind] = statistics.median(r)
                reps[kind] = r
    finally:
        for close in closers:
            try:
                await asyncio.wait_for(close(), 10)
            except Exception as exc:  # a slow stop must not lose the measurement
                print(f"close failed: {exc!r}", file=sys.stderr)
    loop = asyncio.get_running_loop()
    return {"metrics": out, "extra": extra, "reps": reps, "python": sys.executable, "agentcore": agentcore.__file__,
            "implementation": getattr(agentcore, "implementation", "?"),
            "loop": "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio",
            "nats_py": importlib.metadata.version("nats-py")}
