"""The cost of trace context: a round trip with tracing off, with a traceparent passed through, and with OpenTelemetry
recording, as ratios to raw nats-py in one interleaved run.

Kinds (result cache off on every agent, as bench_roundtrip's "agent"):
  raw          raw nats-py request/reply, no headers
  raw_headers  the same with a traceparent header on the request and copied onto the reply (what NATS headers cost)
  agent        agent request -> agent handler, no trace context (the default)
  passthrough  the same request sent from a traced context (a traceparent, as from inside a traced handler): the
               request and its result carry the header, no OpenTelemetry SDK configured
  otel         both agents with enable_tracing() on an SDK TracerProvider whose spans go to a BatchSpanProcessor (an
               exporter that drops them): the requester's call runs in a span, the worker records its process span
               and both record send spans
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import nats
import orjson
import pytest

from agentcore import AgentConfig, NATSAgent
from agentcore.server import NATSServer
from agentcore.transport.tracecontext import CURRENT
from harness import KindBench, interleaved, opened, summarise_pair

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402

CONTENT = {"text": "summarise the quarterly numbers for the board " * 4, "lang": "en"}
TRACE = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
KINDS = ("raw", "raw_headers", "agent", "passthrough", "otel")


class _Discard(SpanExporter):
    """Takes the recorded spans and drops them: what is measured is recording, not shipping."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class TracedPair(KindBench):
    """One kind's requester and responder on a private loop; the call it returns times one round trip."""

    async def _setup(self) -> Callable[[], Awaitable[Any]]:
        if self.kind.startswith("raw"):
            responder = await nats.connect(self.url)
            requester = await nats.connect(self.url)
            payload = orjson.dumps(CONTENT)
            headers = dict(TRACE) if self.kind == "raw_headers" else None

            async def respond(msg: Any) -> None:
                body = orjson.dumps({"ok": orjson.loads(msg.data)["lang"]})
                await responder.publish(msg.reply, body, headers=msg.headers)

            await responder.subscribe("bench.raw", cb=respond)
            await responder.flush()
            self.closers += [responder.close, requester.close]

            async def raw_call() -> Any:
                return orjson.loads((await requester.request("bench.raw", payload, timeout=5, headers=headers)).data)

            return raw_call
        config = AgentConfig({"nats.servers": [self.url], "nats.environment": f"bench-{self.kind}",
                              "agent.heartbeat_interval": 60.0, "cache.enabled": False}, environ={})
        client = await summarise_pair(self, config)
        subject = client.topics.task("summarise")
        if self.kind == "passthrough":

            async def traced_call() -> Any:
                token = CURRENT.set(TRACE)  # as inside a handler of a traced task
                try:
                    return await client.request(subject, CONTENT, timeout=5)
                finally:
                    CURRENT.reset(token)

            return traced_call
        if self.kind == "otel":
            provider = sdk_trace.TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(_Discard()))
            self.closers.append(_async(provider.shutdown))
            # summarise_pair registered each agent's astop: enable tracing on both, the worker and the client.
            for agent in {closer.__self__ for closer in self.closers if isinstance(getattr(closer, "__self__", None), NATSAgent)}:
                agent.enable_tracing(provider)
            tracer = provider.get_tracer("bench")

            async def otel_call() -> Any:
                with tracer.start_as_current_span("ask"):
                    return await client.request(subject, CONTENT, timeout=5)

            return otel_call

        async def call() -> Any:
            return await client.request(subject, CONTENT, timeout=5)

        return call


def _async(fn: Callable[[], Any]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        fn()

    return run


@pytest.fixture(scope="module")
def pairs(server: NATSServer) -> Iterator[dict[str, KindBench]]:
    yield from opened({kind: TracedPair(server.url, kind) for kind in KINDS})


def test_tracing_ratio(pairs: dict[str, KindBench]) -> None:
    """Interleave every kind in blocks so machine noise hits them alike; print p50/p99 and ratios to raw."""
    stats = interleaved(pairs, blocks=20, per_block=250)
    raw = stats["raw"]
    print(f"\nround trip over {raw[2]} calls each: raw nats-py p50 {raw[0]:.1f} µs p99 {raw[1]:.1f} µs")
    for kind in KINDS[1:]:
        p50, p99, _ = stats[kind]
        print(f"  {kind:<12} p50 {p50:.1f} µs p99 {p99:.1f} µs; ratio to raw p50 {p50 / raw[0]:.3f}x p99 {p99 / raw[1]:.3f}x")
    agent = stats["agent"]
    for kind in ("passthrough", "otel"):
        print(f"  {kind:<12} / agent p50 {stats[kind][0] / agent[0]:.3f}x")
