"""An MCP server written with the SDK for the MCP-over-NATS tests: run as `python tests/agent/mcp_servers/tools_server.py`."""

from __future__ import annotations

import os

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import Completion, PromptReference

server = MCPServer("test-tools", version="1.0")
calls = {"lookup": 0}


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Return text unchanged."""
    return text


@server.tool()
def secret() -> str:
    """A tool the hosts keep off their allow-lists."""
    return "classified"


@server.tool()
def fail(reason: str) -> str:
    """Report an error (isError) with reason."""
    raise ToolError(f"refused: {reason}")


@server.tool()
def lookup(key: str) -> str:
    """A pure lookup that counts how often it really ran (for the cache tests)."""
    calls["lookup"] += 1
    return f"{key}={calls['lookup']}"


@server.tool()
def length(text: str) -> int:
    """Return how long text is (a large argument, a small answer)."""
    return len(text)


@server.tool()
def big(size: int) -> str:
    """Return size bytes of text."""
    return "x" * size


@server.tool()
def pid() -> int:
    """Return the server's process id."""
    return os.getpid()


@server.tool()
async def slow(seconds: float, ctx: Context) -> str:
    """Report progress at the start, then take seconds to answer."""
    await ctx.report_progress(0, 2, "started")
    await anyio.sleep(seconds)
    await ctx.report_progress(2, 2, "finished")
    return f"slept {seconds}"


@server.tool()
async def wait_cancel(ctx: Context) -> str:
    """Report progress, then wait until cancelled; write a marker file when the cancellation arrives."""
    marker = os.environ.get("CANCEL_MARKER")
    await ctx.report_progress(0, None, "waiting")
    try:
        await anyio.sleep(3600)
    except anyio.get_cancelled_exc_class():
        if marker:
            with open(marker, "w") as f:
                f.write("cancelled")
        raise
    return "never"


@server.resource("config://app", mime_type="application/json")
def app_config() -> str:
    """The application's settings (a static resource)."""
    return '{"mode": "test"}'


@server.resource("greeting://{name}")
def greeting(name: str) -> str:
    """Greet name (a resource template)."""
    return f"hello, {name}"


@server.prompt()
def review(code: str, language: str = "python") -> str:
    """Ask for a review of code."""
    return f"Review this {language} code:\n{code}"


@server.completion()
async def complete(ref, argument, context):  # type: ignore[no-untyped-def]
    """Complete the language argument of the review prompt."""
    if isinstance(ref, PromptReference) and ref.name == "review" and argument.name == "language":
        return Completion(values=[v for v in ("python", "pyrex", "rust") if v.startswith(argument.value)])
    return None


if __name__ == "__main__":
    server.run()
