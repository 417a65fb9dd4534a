"""agentcore: a fast, trustworthy messaging core for LLM agents that talk over NATS."""

from __future__ import annotations

from . import errors
from ._impl import IMPLEMENTATION as implementation
from .agent import NO_REPLY, NATSAgent
from .config import AgentConfig
from .envelope import new_message
from .errors import (
    AgentCoreError,
    ConfigError,
    DuplicateMessageError,
    EnvelopeError,
    ForbiddenError,
    HandlerError,
    MCPError,
    MCPResultTooLargeError,
    MCPServerDiedError,
    MCPServerNotFoundError,
    MCPTimeoutError,
    MCPToolError,
    MCPToolNotFoundError,
    MessageExpiredError,
    NegotiationError,
    NoRespondersError,
    NotConnectedError,
    OverloadedError,
    PayloadTooLargeError,
    PersistenceError,
    RemoteError,
    RequestTimeoutError,
    IdentityError,
    ShuttingDownError,
    StreamError,
    StreamGapError,
    StreamTimeoutError,
    SubjectError,
)
from .topics import Topics

__version__ = "0.1.0"

__all__ = (
    # agents
    "NATSAgent",
    "AgentConfig",
    "Topics",
    "NO_REPLY",
    "new_message",
    # which core is active: "compiled" or "pure"
    "implementation",
    "speedups",
    # errors
    "errors",
    "AgentCoreError",
    "ConfigError",
    "DuplicateMessageError",
    "EnvelopeError",
    "ForbiddenError",
    "HandlerError",
    "MCPError",
    "MCPResultTooLargeError",
    "MCPServerDiedError",
    "MCPServerNotFoundError",
    "MCPTimeoutError",
    "MCPToolError",
    "MCPToolNotFoundError",
    "MessageExpiredError",
    "NegotiationError",
    "NoRespondersError",
    "NotConnectedError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PersistenceError",
    "RemoteError",
    "RequestTimeoutError",
    "IdentityError",
    "ShuttingDownError",
    "StreamError",
    "StreamGapError",
    "StreamTimeoutError",
    "SubjectError",
)


def speedups() -> bool:
    """Return True when the compiled (Cython) core is in use."""
    return implementation == "compiled"
