"""OpenTelemetry tracing (extra ``otel``): spans for handler runs, sends and MCP tool calls, context over NATS headers.

A component over the Host interface: enabled (``tracing.enabled`` or ``NATSAgent.enable_tracing()``), it plugs a
tracer into the connection. Spans follow OpenTelemetry's messaging conventions (``messaging.system = nats``,
``messaging.destination.name``, ``messaging.operation.type`` send/process, ``messaging.message.id``,
``messaging.message.conversation_id``) and its GenAI conventions: a handler run is an ``invoke_agent`` operation
of the agent, an MCP tool call an ``execute_tool`` span (``gen_ai.tool.name``). The W3C ``traceparent``,
``tracestate`` and ``baggage`` headers go out with every message sent within a trace, and MCP requests carry them
in ``params._meta`` too, as MCP's convention has it.

Without it, the core still passes the trace headers of a handler's message on to what the handler sends
(``agentcore.transport.tracecontext``). The OpenTelemetry API is imported only when tracing is enabled.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import Token
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import orjson

from ._impl import subject_matches
from .core.host import Feature, Host
from .errors import ConfigError
from .transport.tracecontext import CURRENT, Scope

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, TracerProvider

__all__ = ("Tracing", "OTelTracer")

try:
    _VERSION: str = version("agentcore-nats")
except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
    _VERSION = "0.0.0"

#: Bodies up to this size are read for the message id and conversation id of a send span (larger ones are not
#: parsed again just for tracing).
_PARSE_LIMIT = 64 * 1024


class _NoScope:
    """The scope of work that is not traced (control and discovery)."""

    def error(self, exc: BaseException) -> None:
        """Nothing to record."""

    def end(self) -> None:
        """Nothing to end."""


_NO_SCOPE = _NoScope()


class _SpanScope:
    """An open span made current: in OpenTelemetry's context and, as headers, in the core's trace context."""

    __slots__ = ("span", "_token", "_carried")

    def __init__(self, span: Span, parent: Any, propagator: TextMapPropagator) -> None:
        from opentelemetry import context, trace

        self.span = span
        ctx = trace.set_span_in_context(span, parent)
        self._token = context.attach(ctx)
        headers: dict[str, str] = {}
        propagator.inject(headers, context=ctx)
        # What stream frames and MCP params._meta read: the headers of this span.
        self._carried: Token[dict[str, str] | None] = CURRENT.set(headers or None)

    def error(self, exc: BaseException) -> None:
        """Record exc on the span and mark it failed."""
        from opentelemetry.trace import Status, StatusCode

        self.span.record_exception(exc)
        self.span.set_attribute("error.type", type(exc).__qualname__)
        self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

    def end(self) -> None:
        """End the span; the context before it is current again."""
        from opentelemetry import context

        CURRENT.reset(self._carried)
        context.detach(self._token)
        self.span.end()


def _conversation(message: Mapping[str, Any]) -> str | None:
    context = message.get("context")
    conversation = context.get("conversationId") if isinstance(context, dict) else None
    return conversation if isinstance(conversation, str) else None


class OTelTracer:
    """The OpenTelemetry tracer the connection and the dispatcher call (agentcore.transport.tracecontext.Tracer)."""

    def __init__(self, agent_id: str, agent_type: str, tracer_provider: TracerProvider | None = None,
                 propagator: TextMapPropagator | None = None, *, inboxes: tuple[str, ...] = ("_INBOX.",),
                 responses: str | None = None) -> None:
        from opentelemetry import propagate, trace

        self.agent_id = agent_id
        self.agent_type = agent_type
        # Answers go to one-off subjects (reply inboxes, MCP response subjects): their send spans share one name.
        self._inboxes = inboxes
        self._responses = responses
        self._trace = trace
        self._tracer = trace.get_tracer("agentcore", _VERSION, tracer_provider=tracer_provider)
        self._propagator = propagator if propagator is not None else propagate.get_global_textmap()
        self._consumer = trace.SpanKind.CONSUMER
        self._producer = trace.SpanKind.PRODUCER
        self._client = trace.SpanKind.CLIENT

    def process(self, subject: str, message: Mapping[str, Any], headers: Mapping[str, str] | None, system: bool) -> Scope:
        """Open the span of one handler run, continuing the trace of the message's headers (or starting one)."""
        if system:
            return _NO_SCOPE  # control, discovery and the service API: heartbeat-like traffic, not traced
        parent = self._propagator.extract(headers) if headers else None
        attributes: dict[str, Any] = {
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.message.id": message["id"],
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": self.agent_type,
            "gen_ai.agent.id": self.agent_id,
            "agentcore.message.type": message.get("type") or "",
        }
        conversation = _conversation(message)
        if conversation is not None:
            attributes["messaging.message.conversation_id"] = conversation
            attributes["gen_ai.conversation.id"] = conversation
        span = self._tracer.start_span(f"process {subject}", context=parent, kind=self._consumer, attributes=attributes)
        return _SpanScope(span, parent, self._propagator)

    def send(self, subject: str, data: bytes, headers: dict[str, str] | None) -> dict[str, str] | None:
        """Return headers plus the context of a send span for this message (within a trace; else headers unchanged)."""
        trace = self._trace
        if not trace.get_current_span().get_span_context().is_valid:
            return headers  # not within a trace: no span of its own (heartbeats, discovery)
        temporary = subject.startswith(self._inboxes) or (
            self._responses is not None and ".responses." in subject and subject_matches(self._responses, subject))
        attributes: dict[str, Any] = {
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.message.body.size": len(data),
        }
        if temporary:
            attributes["messaging.destination.temporary"] = True
        span = self._tracer.start_span("send (reply)" if temporary else f"send {subject}", kind=self._producer,
                                       attributes=attributes)
        if span.is_recording() and data[:1] == b"{" and len(data) <= _PARSE_LIMIT:
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                message = None
            if isinstance(message, dict):
                if isinstance(message.get("id"), str):
                    span.set_attribute("messaging.message.id", message["id"])
                conversation = _conversation(message)
                if conversation is not None:
                    span.set_attribute("messaging.message.conversation_id", conversation)
        carrier = dict(headers) if headers else {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        span.end()  # nats-py buffers the publish: the span marks the hand-over, not the flush
        return carrier

    def tool(self, server_id: str, tool: str, call_id: str | None) -> Scope:
        """Open the execute_tool span of one MCP tools/call this agent makes (a client span; the host's SDK adds the server's)."""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.type": "extension",
            "mcp.method.name": "tools/call",
            "agentcore.mcp.server_id": server_id,
            "gen_ai.agent.id": self.agent_id,
        }
        if call_id is not None:
            attributes["gen_ai.tool.call.id"] = call_id
        span = self._tracer.start_span(f"execute_tool {tool}", kind=self._client, attributes=attributes)
        return _SpanScope(span, None, self._propagator)


class Tracing(Feature):
    """Plug an OpenTelemetry tracer into the agent when tracing is enabled (a Component)."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self.tracer: OTelTracer | None = None

    def enable(self, tracer_provider: TracerProvider | None = None, propagator: TextMapPropagator | None = None) -> None:
        """Trace with OpenTelemetry: the given (or the global) tracer provider and propagator."""
        try:
            host = self._host
            self.tracer = OTelTracer(host.agent_id, host.agent_type, tracer_provider, propagator,
                                     inboxes=host.connection.inbox_prefixes(), responses=host.topics.mcp_responses_any())
        except ImportError as exc:
            raise ConfigError("tracing needs the OpenTelemetry API: pip install 'agentcore-nats[otel]'") from exc
        self._host.connection.trace_with(self.tracer)

    def disable(self) -> None:
        """Stop opening spans; trace headers are passed through again."""
        self.tracer = None
        self._host.connection.trace_with(None)

    async def start(self) -> None:
        """Enable tracing with the global provider when tracing.enabled says so."""
        if self.tracer is None and self._host.config["tracing.enabled"]:
            self.enable()
