"""MCP over NATS: MCP servers hosted by agents, their tools called through NATS subjects.

Needs the optional extra `agentcore-nats[mcp]` (the official MCP SDK) for MCPClient and the transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .hosting import MCP

if TYPE_CHECKING:
    from .client import MCPClient
    from .transport import nats_client_transport

__all__ = ("MCP", "MCPClient", "nats_client_transport")


def __getattr__(name: str) -> Any:
    # The SDK is imported on first use, so `import agentcore` works without the extra.
    if name == "MCPClient":
        from .client import MCPClient

        return MCPClient
    if name == "nats_client_transport":
        from .transport import nats_client_transport

        return nats_client_transport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
