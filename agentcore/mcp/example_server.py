"""A small MCP server written with the MCP SDK, for the demo: `python -m agentcore.mcp.example_server` (stdio)."""

from __future__ import annotations

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("agentcore-example", version="1.0", instructions="Small text and arithmetic tools for the agentcore demo.")

_CAPITALS = {"france": "Paris", "japan": "Tokyo", "kenya": "Nairobi", "peru": "Lima", "norway": "Oslo"}


@server.tool()
def word_count(text: str) -> int:
    """Return the number of words in text."""
    return len(text.split())


@server.tool()
def add(a: float, b: float) -> float:
    """Return a + b."""
    return a + b


@server.tool()
def capital(country: str) -> str:
    """Return the capital of a country (a pure lookup: safe to cache)."""
    return _CAPITALS.get(country.strip().lower(), "unknown")


@server.tool()
async def count_to(n: int, ctx: Context) -> int:
    """Count to n, reporting progress at every step."""
    for i in range(1, n + 1):
        await ctx.report_progress(i, n, f"{i}/{n}")
    return n


def main() -> None:
    """Serve the tools over stdio."""
    server.run()


if __name__ == "__main__":
    main()
