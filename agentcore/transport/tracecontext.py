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

import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = ("TRACEPARENT", "TRACE_HEADERS", "CURRENT", "MAX_TRACESTATE", "MAX_BAGGAGE", "TRACE_ROOM", "Tracer", "Scope", "carried",
           "with_trace")

TRACEPARENT = "traceparent"
#: W3C Trace Context's traceparent (version 00 and the fields any version starts with) and its all-zero trace id.
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_NO_TRACE = "0" * 32
#: The sizes past which tracestate (W3C Trace Context: 32 members of at most 256 characters, 512 recommended to
#: pass on) and baggage (W3C Baggage: 8192 bytes) are not passed on.
MAX_TRACESTATE = 512
MAX_BAGGAGE = 8192
#: The most bytes the trace headers passed on add to a message (their header lines, values at those limits).
TRACE_ROOM = 128 + MAX_TRACESTATE + MAX_BAGGAGE
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


def carried(headers: Mapping[str, str]) -> dict[str, str] | None:
    """Return the trace headers among headers that are fit to pass on; None without a well-formed traceparent.

    Anyone on the bus may send a task with trace headers, and the agent copies them onto every message it sends
    for that task: a malformed traceparent is dropped with the rest, and a tracestate or baggage past W3C's limits
    (512 and 8192 bytes) is dropped alone. What is passed on still counts toward the server's max_payload (an answer
    near it is refused payload_too_large: Connection.check_size).
    """
    parent = headers.get(TRACEPARENT)
    if parent is None or not _TRACEPARENT.fullmatch(parent) or parent[3:35] == _NO_TRACE or parent[:2] == "ff":
        return None
    found = {TRACEPARENT: parent}
    state = headers.get("tracestate")
    if state is not None and len(state) <= MAX_TRACESTATE:
        found["tracestate"] = state
    baggage = headers.get("baggage")
    if baggage is not None and len(baggage) <= MAX_BAGGAGE:
        found["baggage"] = baggage
    return found


def with_trace(headers: dict[str, str] | None) -> dict[str, str] | None:
    """Return headers plus the trace headers of the handler running in this context (headers itself when none)."""
    trace = CURRENT.get()
    if trace is None:
        return headers
    return {**headers, **trace} if headers else trace
