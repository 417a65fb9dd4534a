"""agentcore: a fast, trustworthy messaging core for LLM agents that talk over NATS."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import errors
from ._impl import IMPLEMENTATION as implementation
from .config import AgentConfig
from .envelope import new_message
from .errors import (
    AgentCoreError,
    ConfigError,
    DuplicateAgentError,
    DuplicateMessageError,
    EnvelopeError,
    ForbiddenError,
    HandlerError,
    MCPError,
    MCPPromptNotFoundError,
    MCPResourceNotFoundError,
    MCPResultTooLargeError,
    MCPServerDiedError,
    MCPServerNotFoundError,
    MCPTimeoutError,
    MCPToolError,
    MCPToolNotFoundError,
    LoopThreadError,
    MessageExpiredError,
    NegotiationError,
    NoRespondersError,
    NotConnectedError,
    OverloadedError,
    LimitExceededError,
    StreamLimitError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PersistenceError,
    RemoteError,
    RequestTimeoutError,
    IdentityError,
    ShuttingDownError,
    SlowConsumerError,
    StreamError,
    StreamGapError,
    StreamTimeoutError,
    SubjectError,
    TaskNotFoundError,
)
from .topics import Topics

if TYPE_CHECKING:
    from .agent import NO_REPLY, NATSAgent

__version__ = "0.1.0"

# The guide's troubleshooting line, logging.getLogger("AgentFramework.Messaging.NATSProvider").setLevel(DEBUG), works:
# agentcore's logger tree hangs below that name, so its level and handlers apply to every agentcore.* logger.
GUIDE_LOGGER = "AgentFramework.Messaging.NATSProvider"
logging.getLogger("agentcore").parent = logging.getLogger(GUIDE_LOGGER)

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
    # the guide's logger name, above agentcore's own loggers
    "GUIDE_LOGGER",
    # errors
    "errors",
    "AgentCoreError",
    "ConfigError",
    "DuplicateAgentError",
    "DuplicateMessageError",
    "EnvelopeError",
    "ForbiddenError",
    "HandlerError",
    "MCPError",
    "MCPPromptNotFoundError",
    "MCPResourceNotFoundError",
    "MCPResultTooLargeError",
    "MCPServerDiedError",
    "MCPServerNotFoundError",
    "MCPTimeoutError",
    "MCPToolError",
    "MCPToolNotFoundError",
    "LoopThreadError",
    "MessageExpiredError",
    "NegotiationError",
    "NoRespondersError",
    "NotConnectedError",
    "OverloadedError",
    "LimitExceededError",
    "StreamLimitError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PersistenceError",
    "RemoteError",
    "RequestTimeoutError",
    "IdentityError",
    "ShuttingDownError",
    "SlowConsumerError",
    "StreamError",
    "StreamGapError",
    "StreamTimeoutError",
    "SubjectError",
    "TaskNotFoundError",
)


def __getattr__(name: str) -> Any:
    # The agent (and nats-py, asyncio under it) loads when first used: `agentcore --version` need not pay for it.
    if name in ("NATSAgent", "NO_REPLY"):
        from . import agent

        value = globals()[name] = getattr(agent, name)
        return value
    raise AttributeError(f"module 'agentcore' has no attribute {name!r}")


def speedups() -> bool:
    """Return True when the compiled (Cython) core is in use."""
    return implementation == "compiled"
