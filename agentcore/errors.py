"""Typed exceptions of agentcore: every failure reaches the caller as one of these."""

from __future__ import annotations

from typing import Any


class AgentCoreError(Exception):
    """Base class of every agentcore error."""


class ConfigError(AgentCoreError, ValueError):
    """A configuration value is missing or invalid."""


class SubjectError(AgentCoreError, ValueError):
    """A subject, pattern or token is not valid for NATS."""


class EnvelopeError(AgentCoreError, ValueError):
    """A message envelope could not be decoded, encoded or validated."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLargeError(AgentCoreError, ValueError):
    """A message is larger than the server's max_payload."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the server's max_payload of {limit} bytes")
        self.size = size
        self.limit = limit


class NotConnectedError(AgentCoreError):
    """The agent is not connected to NATS."""


class LoopThreadError(AgentCoreError, RuntimeError):
    """A blocking call was made on the agent's own event-loop thread, where it would wait for itself."""


class PermissionDeniedError(AgentCoreError, PermissionError):
    """The NATS server refused a publish, request or subscription by its permissions (``-ERR 'Permissions Violation'``).

    ``operation`` is ``"publish"``, ``"subscribe"`` or ``"reply"`` (a publish whose reply subject is denied),
    ``subject`` the subject as the server named it (nats-py lowercases the server's error text), ``queue`` the
    queue group of a denied queue subscription; ``details`` holds the three as a dict.
    """

    def __init__(self, message: str, *, operation: str, subject: str, queue: str | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.subject = subject
        self.queue = queue
        self.details: dict[str, str | None] = {"operation": operation, "subject": subject, "queue": queue}


class SlowConsumerError(AgentCoreError):
    """Messages meant for this agent were dropped: nats-py's pending limits overflowed on a subscription, or the
    server cut the connection off as a slow consumer; a request whose reply may be among them fails with this."""

    def __init__(self, message: str, *, subject: str | None = None, sid: int | None = None, side: str = "client") -> None:
        super().__init__(message)
        self.subject = subject
        self.sid = sid
        self.side = side  # "client": nats-py dropped it; "server": the server cut the connection
        self.details: dict[str, Any] = {"subject": subject, "sid": sid, "side": side}


class ServerStartError(AgentCoreError):
    """A local nats-server could not be found or started."""


class DuplicateAgentError(AgentCoreError):
    """Another live agent already uses this agent's id in its environment (raised at start with agent.duplicate_id: error)."""


class RequestTimeoutError(AgentCoreError, TimeoutError):
    """No reply arrived before the timeout (task_id: the persisted task whose result agent.result() can still fetch)."""

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class PersistenceError(AgentCoreError):
    """JetStream cannot keep tasks: no JetStream on the server, no stream, or the stream refused a task."""


class NoRespondersError(AgentCoreError):
    """Nobody is subscribed to the subject a request was sent to."""


class RemoteError(AgentCoreError):
    """The remote side answered with an error result."""

    def __init__(self, code: str, message: str, *, source: str | None = None, details: Any = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (from {source})" if source else ""))
        self.code = code
        self.remote_message = message
        self.source = source
        self.details = details


class HandlerError(RemoteError):
    """The remote handler raised an exception."""


class MessageExpiredError(RemoteError):
    """The message's routing.timeout expired before it was processed."""


class InvalidMessageError(RemoteError):
    """The remote side could not decode or validate the message it was sent."""


class DuplicateMessageError(RemoteError):
    """The message id was already taken from that sender by that agent, and no result is replayed for it.

    Nothing to replay (still running, failed, or answered without a result), or the retry asked for its answer
    somewhere else than the original did: a stored result goes only where the original asked for it.
    """


class OverloadedError(RemoteError):
    """The agent's queue was full (agent.max_queued): the message was refused, not run; try again later."""


class LimitExceededError(RemoteError):
    """The agent refused or aborted the message at one of its memory bounds (code ``"limit_exceeded"``;
    ``details["reason"]`` names it, e.g. ``"pull_idle"``, ``"pull_window"``, ``"pull_size"``): nothing ran.
    The bounds are configuration keys (docs/limits.md)."""


class ForbiddenError(RemoteError):
    """The agent refused the message without running it: a replyTo it does not send answers to, or a control
    command the sender is not allowed (``details["reason"]`` says which: ``"reply_to"`` or ``"control"``)."""


class IdentityError(RemoteError):
    """A message's signed identity was refused (code ``"identity"``; ``details["reason"]`` says why):
    ``unsigned`` (identity.require), ``untrusted`` key, ``wrong_key`` for its source.id, ``bad_signature``,
    ``stale`` (outside identity.window) or ``replayed``. Raised by a requester whose reply fails the same checks."""


class ShuttingDownError(RemoteError):
    """The agent stopped before it handled the message (or before it published the result it owed)."""


class NegotiationError(AgentCoreError, ValueError):
    """A negotiation cannot start (no targets, bad arguments) or broke its state machine."""


class MCPError(AgentCoreError):
    """An MCP call over NATS failed; code and data are the JSON-RPC error's, when there was one."""

    def __init__(self, message: str, *, server_id: str | None = None, tool: str | None = None, code: int | None = None,
                 data: Any = None, source: str | None = None) -> None:
        super().__init__(message)
        self.server_id = server_id
        self.tool = tool
        self.code = code
        self.data = data
        self.source = source


class MCPServerNotFoundError(MCPError, NoRespondersError):
    """No agent on the bus hosts the MCP server id."""


class MCPToolNotFoundError(MCPError):
    """The MCP server has no such tool, or its host does not expose it (allow-list)."""


class MCPResourceNotFoundError(MCPError):
    """The MCP server's host does not expose that resource (allow-list): refused as not found."""


class MCPPromptNotFoundError(MCPError):
    """The MCP server's host does not expose that prompt (allow-list): refused as not found."""


class MCPToolError(MCPError):
    """The tool ran and reported an error (isError); content holds what it said."""

    def __init__(self, message: str, *, content: Any = None, result: Any = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.content = content
        self.result = result


class MCPTimeoutError(MCPError, RequestTimeoutError):
    """No answer to an MCP call arrived before the timeout."""


class MCPServerDiedError(MCPError):
    """The MCP server process behind the host ended (crashed, killed or closed)."""


class MCPResultTooLargeError(MCPError):
    """The result is larger than the NATS server's max_payload."""


class StreamError(AgentCoreError):
    """A stream failed: the producer sent an error frame (code, message), or the stream broke."""

    def __init__(self, message: str, *, code: str = "stream_error", task_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.task_id = task_id


class StreamGapError(StreamError):
    """A chunk of a stream never arrived: later ones did, and the gap did not close within the reorder wait."""


class StreamLimitError(StreamError):
    """A stream was aborted at a memory bound: a frame beyond the credit granted, a gap wider than the window, or
    more bytes than the stream may hold. The producer was told to stop and what was buffered is freed."""

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message, code="limit_exceeded", task_id=task_id)


class StreamTimeoutError(StreamError, RequestTimeoutError):
    """No chunk (receiver) or no credit (producer) arrived within the stream's idle timeout."""


class TaskNotFoundError(AgentCoreError, LookupError):
    """No agent answered for the task: it never reached one, its record was dropped, or it is not the asker's."""

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
