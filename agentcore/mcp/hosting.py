"""The agent side of MCP over NATS: host MCP servers and call their tools (filled in by the MCP issue)."""

from __future__ import annotations

from typing import Any

__all__ = ("MCPMixin",)


class MCPMixin:
    """Give NATSAgent register_mcp_server, call_mcp_tool and list_mcp_tools."""

    def register_mcp_server(self, server_id: str, client: Any, *, tools: list[str] | None = None) -> None:
        """Serve an MCP server's tools to the bus under server_id."""
        raise NotImplementedError

    async def call_mcp_tool(self, server_id: str, tool_name: str, arguments: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Call a tool of an MCP server hosted by some agent on the bus and return its result."""
        raise NotImplementedError
