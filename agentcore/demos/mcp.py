"""The demo's MCP step: one agent hosts an MCP server process written with the SDK, another calls its tools over NATS."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import agentcore

from .. import AgentConfig, NATSAgent
from ..mcp import MCPClient

__all__ = ("run_mcp_demo",)


def _percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


async def run_mcp_demo(config: AgentConfig, out: Callable[[str], None] = print, *, calls: int = 200) -> dict[str, Any]:
    """Host agentcore.mcp.example_server on one agent, call it from another, print and return what was measured."""
    host = NATSAgent("mcp-host", "tool-host", config)
    caller = NATSAgent("mcp-caller", "coordinator", config)
    # `python -m` puts its working directory first on sys.path: started from a source checkout it would import the
    # unbuilt tree instead of the installed package, so the server starts beside the package that is running.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(agentcore.__file__)))
    client = MCPClient(server_command=sys.executable, server_args=["-m", "agentcore.mcp.example_server"], cwd=package_root)
    await host.astart()
    await caller.astart()
    try:
        await client.connect()
        await host.aregister_mcp_server("example-tools", client, tools=["word_count", "add", "capital", "count_to"],
                                        cache={"capital": 300.0})
        tools = await caller.list_mcp_tools("example-tools")
        out(f"mcp: {host.agent_id} hosts 'example-tools' (a subprocess over stdio); tools over NATS: {[t['name'] for t in tools]}")
        words = await caller.call_mcp_tool("example-tools", "word_count", {"text": "agents call MCP tools over NATS subjects"})
        out(f"mcp: word_count -> {words[0]['text']}")
        progress: list[str] = []
        await caller.call_mcp_tool("example-tools", "count_to", {"n": 3}, progress=lambda p, t, m: progress.append(str(m)))
        out(f"mcp: count_to 3 with progress notifications {progress}")
        latencies: list[float] = []
        for i in range(calls):
            t0 = time.perf_counter()
            await caller.call_mcp_tool("example-tools", "add", {"a": i, "b": 1})
            latencies.append(time.perf_counter() - t0)
        latencies.sort()
        p50, p99 = _percentile(latencies, 0.50) * 1e3, _percentile(latencies, 0.99) * 1e3
        out(f"mcp: {calls} sequential tool calls through NATS: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        for _ in range(3):
            await caller.call_mcp_tool("example-tools", "capital", {"country": "Kenya"})
        hits = host.get_metrics().get("mcp_cache_hits", 0)
        out(f"mcp: capital('Kenya') three times -> {hits} answered from the result cache")
        return {"tools": [t["name"] for t in tools], "word_count": words, "progress": progress, "calls": calls,
                "p50_ms": p50, "p99_ms": p99, "cache_hits": hits}
    finally:
        await client.close()
        await caller.astop()
        await host.astop()
