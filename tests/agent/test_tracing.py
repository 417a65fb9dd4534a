"""Trace context over NATS: pass-through without OpenTelemetry, one trace across agents and MCP with it (real nats-server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import nats
import pytest
from mcp.server.mcpserver import Context, MCPServer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from agentcore import NATSAgent
from agentcore.envelope import decode, encode, new_message
from agentcore.transport.frames import H_FINAL
from nats_fixtures import eventually, subscribed, within

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = int("4bf92f3577b34da6a3ce929d0e0e4736", 16)
INCOMING = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc", "baggage": "tenant=acme"}


def _task(content: Any, reply_to: str | None = None) -> bytes:
    return encode(new_message("task", content, source_id="raw-client", source_type="client", reply_to=reply_to))


async def _chained(make_agent: Callable[..., Any], **config: Any) -> tuple[NATSAgent, NATSAgent]:
    """A front agent whose handler sends a sub-task to a back agent and answers with its result."""
    back = await make_agent("back", capabilities={"inner": lambda m: {"inner": m["payload"]["content"]}}, **config)

    async def outer(message: dict[str, Any]) -> Any:
        reply = await front.request_message(front.topics.task("inner"), message["payload"]["content"])
        return {"outer": reply["payload"]["content"]}

    front = await make_agent("front", capabilities={"outer": outer}, **config)
    return front, back


async def test_a_result_and_a_sub_task_carry_the_trace_headers_of_their_task(
        make_agent: Callable[..., Any], raw_nc: nats.NATS) -> None:
    front, _back = await _chained(make_agent)
    seen: list[Any] = []

    async def spy_on(msg: Any) -> None:
        seen.append(msg)

    spy = await raw_nc.subscribe(front.topics.task("inner"), cb=spy_on)
    await subscribed(raw_nc)

    reply = await raw_nc.request(front.topics.task("outer"), _task(1), timeout=10, headers=dict(INCOMING))
    assert decode(reply.data)["payload"]["content"] == {"outer": {"inner": 1}}
    assert reply.headers is not None and {k: reply.headers[k] for k in INCOMING} == INCOMING  # the result
    await eventually(lambda: len(seen) == 1, what="the spy's copy of the sub-task")
    assert {k: seen[0].headers[k] for k in INCOMING} == INCOMING  # the sub-task sent from the handler

    # Untraced in, untraced out: no headers appear from nowhere (and the direct write stays in use).
    plain = await raw_nc.request(front.topics.task("outer"), _task(2), timeout=10)
    assert decode(plain.data)["payload"]["content"] == {"outer": {"inner": 2}}
    assert not plain.headers
    await eventually(lambda: len(seen) == 2, what="the spy's copy of the second sub-task")
    assert not seen[1].headers
    await spy.unsubscribe()


@pytest.mark.parametrize("where", ["inline", "thread"])
async def test_the_guides_sync_handler_answers_with_the_trace_headers_of_its_task(
        make_agent: Callable[..., Any], raw_nc: nats.NATS, where: str) -> None:
    class Guide(NATSAgent):
        def process_message(self, topic: str, message: dict[str, Any]) -> bool:
            self.publish_result(message["id"], {"echo": message["payload"]["content"]})
            return True

    worker = await make_agent("worker", cls=Guide, capabilities={"analysis": None}, agent__sync_handlers=where)
    reply = await raw_nc.request(worker.topics.task("analysis"), _task(1), timeout=10, headers=dict(INCOMING))
    assert decode(reply.data)["payload"]["content"] == {"echo": 1}
    # From the loop or from a pool thread (which runs in a copy of the handler's context), the trace goes on.
    assert reply.headers is not None and {k: reply.headers[k] for k in INCOMING} == INCOMING


async def test_a_stream_carries_the_trace_headers_on_every_frame(make_agent: Callable[..., Any], raw_nc: nats.NATS) -> None:
    agent = await make_agent("streamer", start=False)

    async def tokens(message: dict[str, Any]) -> Any:
        async def gen() -> Any:
            for i in range(3):
                yield f"t{i}"
                await asyncio.sleep(0)  # the generator pauses: what it made so far goes out as a frame
        await agent.stream_response(message["id"], gen())
        return None

    agent.add_capability("tokens", tokens)
    await agent.astart()
    inbox = raw_nc.new_inbox()
    frames: list[Any] = []
    done = asyncio.get_running_loop().create_future()

    async def on_frame(msg: Any) -> None:
        frames.append(msg)
        if (msg.headers or {}).get(H_FINAL) and not done.done():
            done.set_result(None)

    await raw_nc.subscribe(inbox, cb=on_frame)
    await subscribed(raw_nc)
    # A plain request gets one assembled result; routing.stream asks for the frames (docs/streams.md).
    task = new_message("task", "go", source_id="raw-client", source_type="client")
    task["routing"]["stream"] = {"window": 16}
    await raw_nc.publish(agent.topics.task("tokens"), encode(task), reply=inbox, headers=dict(INCOMING))
    await within(done, "the stream's last frame", 10)
    assert frames
    for frame in frames:
        assert frame.headers is not None and frame.headers.get("traceparent") == TRACEPARENT, frame.headers


async def test_an_mcp_call_from_a_traced_handler_carries_the_trace_to_the_mcp_server(
        make_agent: Callable[..., Any], raw_nc: nats.NATS) -> None:
    """Without OpenTelemetry configured: NATS headers to the MCP host, params._meta from there to the server."""
    server = MCPServer("meta")

    @server.tool()
    async def trace_seen(ctx: Context) -> str:
        """Return the traceparent of the request's params._meta."""
        meta = ctx.request_context.meta
        return str((dict(meta) if meta is not None else {}).get("traceparent"))

    host = await make_agent("meta-host")
    client = await host.serve_mcp_server("meta", server)
    worker = await make_agent("meta-worker", start=False)

    async def ask(message: dict[str, Any]) -> Any:
        return await worker.call_mcp_tool("meta", "trace_seen", {})

    worker.add_capability("ask", ask)
    await worker.astart()
    seen: list[Any] = []

    async def spy(msg: Any) -> None:
        seen.append(msg)

    await raw_nc.subscribe(host.topics.mcp_requests("meta"), cb=spy)
    await subscribed(raw_nc)
    try:
        reply = await raw_nc.request(worker.topics.task("ask"), _task(None), timeout=15, headers=dict(INCOMING))
    finally:
        await client.close()
    assert decode(reply.data)["payload"]["content"] == [{"type": "text", "text": TRACEPARENT}]
    await eventually(lambda: len(seen) == 1, what="the spy's copy of the MCP request")
    assert seen[0].headers["traceparent"] == TRACEPARENT
    assert decode(seen[0].data)["payload"]["content"]["params"]["_meta"]["traceparent"] == TRACEPARENT


# ---------------------------------------------------------------------------------------------- with OpenTelemetry


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the global tracer provider (the MCP SDK records its spans there)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def _by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def test_one_trace_from_requester_through_worker_and_mcp_host_to_the_mcp_server(
        make_agent: Callable[..., Any], exporter: InMemorySpanExporter) -> None:
    server = MCPServer("traced")

    @server.tool()
    def multiply(a: int, b: int) -> int:
        """Multiply."""
        return a * b

    host, requester = await asyncio.gather(make_agent("mcp-host", "host"), make_agent("requester", "client"))
    client = await host.serve_mcp_server("calc", server)
    worker = await make_agent("worker", "calculator", start=False)

    async def compute(message: dict[str, Any]) -> Any:
        args = message["payload"]["content"]
        return await worker.call_mcp_tool("calc", "multiply", args)

    worker.add_capability("compute", compute)
    await worker.astart()
    for agent in (host, requester, worker):
        agent.enable_tracing()
    exporter.clear()
    try:
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("user asks") as root:
            reply = await requester.request_message(requester.topics.task("compute"), {"a": 6, "b": 7},
                                                    conversation_id="conv-1")
        assert reply["payload"]["content"] == [{"type": "text", "text": "42"}]
    finally:
        await client.close()
    trace_id = root.get_span_context().trace_id

    def names() -> list[str]:
        return [s.name for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]

    # A reply can overtake the end of the span that sent it (both ends run on this loop): wait for the last ones.
    await eventually(lambda: sum(n.startswith("process ") for n in names()) == 2 and names().count("send (reply)") >= 2
                     and any(n.startswith("tools/call") for n in names()), what="every span of the trace to end")
    spans = exporter.get_finished_spans()
    ours = [s for s in spans if s.context.trace_id == trace_id]
    names = sorted(s.name for s in ours)
    # requester -> worker
    send_task = [s for s in _by_name(ours, "send ") if "compute" in s.attributes.get("messaging.destination.name", "")]
    assert len(send_task) == 1, names
    assert send_task[0].kind == SpanKind.PRODUCER and send_task[0].parent.span_id == root.get_span_context().span_id
    assert send_task[0].attributes["messaging.system"] == "nats"
    assert send_task[0].attributes["messaging.operation.type"] == "send"
    assert send_task[0].attributes["messaging.message.conversation_id"] == "conv-1"
    process = [s for s in _by_name(ours, "process ") if "compute" in s.attributes["messaging.destination.name"]]
    assert len(process) == 1, names
    run = process[0]
    assert run.kind == SpanKind.CONSUMER and run.parent.span_id == send_task[0].context.span_id
    assert run.attributes["messaging.operation.type"] == "process"
    assert run.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert run.attributes["gen_ai.agent.name"] == "calculator"
    assert run.attributes["messaging.message.conversation_id"] == "conv-1"
    assert run.attributes["messaging.message.id"] == send_task[0].attributes["messaging.message.id"]
    # worker -> MCP host: the tool call
    tool = _by_name(ours, "execute_tool multiply")
    assert len(tool) == 1 and tool[0].parent.span_id == run.context.span_id, names
    assert tool[0].attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool[0].attributes["gen_ai.tool.name"] == "multiply"
    hosted = [s for s in _by_name(ours, "process ") if ".mcp.calc." in s.attributes["messaging.destination.name"]]
    assert len(hosted) == 1, names
    sent = {s.context.span_id: s for s in _by_name(ours, "send ")}
    assert sent[hosted[0].parent.span_id].parent.span_id == tool[0].context.span_id
    # MCP host -> MCP server (the SDK's own spans, continued from params._meta)
    served = [s for s in ours if s.kind == SpanKind.SERVER and s.name.startswith("tools/call")]
    assert len(served) == 1, names
    assert served[0].attributes.get("gen_ai.tool.name") == "multiply"
    # and the answers went back as sends within the trace
    assert any(s.attributes.get("messaging.destination.temporary") for s in sent.values()), names
    assert all(s.context.trace_id == trace_id for s in [*process, *tool, *hosted, *served])


async def test_a_failing_handler_marks_its_span(make_agent: Callable[..., Any], exporter: InMemorySpanExporter) -> None:
    def broken(message: dict[str, Any]) -> Any:
        raise ValueError("no")

    worker = await make_agent("broken-worker", capabilities={"broken": broken})
    worker.enable_tracing()
    requester = await make_agent("asker")
    requester.enable_tracing()
    exporter.clear()
    with trace.get_tracer("test").start_as_current_span("ask"):
        with pytest.raises(Exception):
            await requester.request(requester.topics.task("broken"), {})

    def runs() -> list[ReadableSpan]:
        return [s for s in exporter.get_finished_spans() if s.name.startswith("process ") and "broken" in s.name]

    await eventually(lambda: len(runs()) == 1, what="the failed run's span")
    assert runs()[0].status.status_code == trace.StatusCode.ERROR
    assert runs()[0].attributes["error.type"] == "ValueError"


async def test_untraced_traffic_opens_no_spans(make_agent: Callable[..., Any], exporter: InMemorySpanExporter) -> None:
    """Heartbeats, discovery and control are not traced; a task that arrives untraced starts a trace of its own."""
    worker = await make_agent("plain-worker", capabilities={"echo": lambda m: m["payload"]["content"]})
    worker.enable_tracing()
    requester = await make_agent("plain-asker")
    exporter.clear()
    await requester.discover()
    await requester.request(requester.topics.control(worker.agent_id), {"command": "ping"}, type="query")
    assert not exporter.get_finished_spans()
    await requester.request_message(requester.topics.task("echo"), 1)
    await eventually(lambda: [s.name for s in exporter.get_finished_spans() if s.parent is None]
                     == [f"process {worker.topics.task('echo')}"], what="one root span: the worker's run")


async def test_a_negotiation_run_by_a_handler_carries_the_trace_on_every_message(
        make_agent: Callable[..., Any], raw_nc: nats.NATS) -> None:
    bidder = await make_agent("bidder", start=False)

    async def bid(negotiation: dict[str, Any]) -> dict[str, Any]:
        return {"accept": True, "terms": {"cost": 5}}

    bidder.register_a2a_handler("job", bid)
    await bidder.astart()
    planner = await make_agent("planner", start=False)

    async def plan(message: dict[str, Any]) -> Any:
        outcome = await planner.negotiate_with_agents(["bidder"], "job", {"task": "x"}, timeout=10.0)
        return outcome["state"]

    planner.add_capability("plan", plan)
    await planner.astart()
    seen: list[Any] = []

    async def spy(msg: Any) -> None:
        seen.append(msg)

    await raw_nc.subscribe("agents.test.>", cb=spy)
    await raw_nc.subscribe("_INBOX.>", cb=spy)
    await subscribed(raw_nc)
    reply = await raw_nc.request(planner.topics.task("plan"), _task(None), timeout=15, headers=dict(INCOMING))
    assert decode(reply.data)["payload"]["content"] == "finalized"
    # Call for proposals, proposal, award, confirmation, the negotiation's events and the task's result: all traced.
    kinds = [(m.subject.rsplit(".", 2)[-2] if m.subject.startswith("agents.") else "reply", decode(m.data)["type"]) for m in seen]
    assert sum(1 for k in kinds if k == ("negotiate", "query")) >= 2 and ("reply", "result") in kinds, kinds
    for msg in seen:
        if ".status." in msg.subject:
            continue  # status heartbeats belong to no task
        assert msg.headers and msg.headers.get("traceparent") == TRACEPARENT, (msg.subject, msg.data[:200])


async def test_tracing_enabled_in_the_configuration_uses_the_global_provider(
        make_agent: Callable[..., Any], exporter: InMemorySpanExporter) -> None:
    worker = await make_agent("configured", capabilities={"echo": lambda m: m["payload"]["content"]}, tracing__enabled=True)
    requester = await make_agent("configured-asker")
    exporter.clear()
    await requester.request_message(requester.topics.task("echo"), 1)
    await eventually(lambda: [s.name for s in exporter.get_finished_spans() if s.name.startswith("process ")]
                     == [f"process {worker.topics.task('echo')}"], what="the configured agent's span")


def test_without_the_otel_extra_enabling_tracing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from agentcore import ConfigError

    agent = NATSAgent("no-otel")
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if the package were not installed
    with pytest.raises(ConfigError, match=r"agentcore-nats\[otel\]"):
        agent.enable_tracing()


def test_the_agent_imports_no_opentelemetry_until_tracing_is_enabled() -> None:
    import subprocess
    import sys

    probe = ("import sys, agentcore; a = agentcore.NATSAgent('probe'); a.add_capability('x', lambda m: m); "
             "print('opentelemetry' in sys.modules)")
    run = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "False", run.stdout + run.stderr
