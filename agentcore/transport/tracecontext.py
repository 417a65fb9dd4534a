"""W3C trace context over NATS headers: what the core carries from a handler's message to what the handler sends.

A message that arrives with a ``traceparent`` header runs its handler with that message's trace headers
(``traceparent``, ``tracestate``, ``baggage``) in a context variable; every message the agent sends from that
context (its result, sub-tasks, stream frames, MCP calls, negotiation messages) carries them on. That is all the
core does when no tracer is plugged in: a message without the header costs one ``is None`` test, a send one
context-variable read.

A tracer (``agentcore.tracing``, OpenTelemetry) plugged into the connection opens a span for each handler run,
MCP tool call and send, and writes its own span's context into the headers instead; while one of its run or tool
spans is open, the context variable holds that span's context, so stream frames and an MCP request's
``params._meta`` carry it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = ("TRACEPARENT", "TRACE_HEADERS", "CURRENT", "Tracer", "Scope", "carried", "with_trace")

TRACEPARENT = "traceparent"
#: The headers of W3C Trace Context and W3C Baggage, the ones a message passes on.
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")

#: The trace headers of the message whose handler runs in this context; None outside a handler or untraced.
CURRENT: ContextVar[dict[str, str] | None] = ContextVar("agentcore_trace_headers", default=None)


class Scope(Protocol):
    """A span a tracer opened (a handler run, a tool call), current until it ends."""

    def error(self, exc: BaseException) -> None:
        """Record that the work failed with exc."""
        ...

    def end(self) -> None:
        """End the span and make the context before it current again."""
        ...


class Tracer(Protocol):
    """What a tracing component plugs into the connection (agentcore.tracing for OpenTelemetry)."""

    def process(self, subject: str, message: Mapping[str, Any], headers: Mapping[str, str] | None, system: bool) -> Scope:
        """Open the span of one handler run for message (continuing the trace its headers carry)."""
        ...

    def send(self, subject: str, data: bytes, headers: dict[str, str] | None) -> dict[str, str] | None:
        """Return the headers for one outgoing message, with the trace context of its send span."""
        ...

    def tool(self, server_id: str, tool: str, call_id: str | None) -> Scope:
        """Open the span of one MCP tool call this agent makes."""
        ...


def carried(headers: Mapping[str, str]) -> dict[str, str]:
    """Return the trace headers among headers."""
    return {name: headers[name] for name in TRACE_HEADERS if name in headers}


def with_trace(headers: dict[str, str] | None) -> dict[str, str] | None:
    """Return headers plus the trace headers of the handler running in this context (headers itself when none)."""
    trace = CURRENT.get()
    if trace is None:
        return headers
    return {**headers, **trace} if headers else trace
