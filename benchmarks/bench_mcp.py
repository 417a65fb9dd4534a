"""MCP tool call through NATS (caller agent -> host agent -> MCP server over stdio) against the same call made
directly over stdio with the SDK's ClientSession, same server program, same run."""

from __future__ import annotations

import asyncio
import statistics
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from agentcore import AgentConfig, NATSAgent
from agentcore.mcp import MCPClient
from agentcore.server import NATSServer
from harness import LoopBench

CALLS = 100  # per pytest-benchmark round
ARGS = {"a": 20, "b": 22}
SERVER = [sys.executable, "-m", "agentcore.mcp.example_server"]


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as s:
        yield s


class Paths(LoopBench):
    """Both call paths on one private event loop: direct stdio, and through NATS to a host agent."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.calls: dict[str, Callable[[], Awaitable[Any]]] = self.loop.run_until_complete(self._setup())

    async def _setup(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        config = AgentConfig({"nats.servers": [self.url], "nats.environment": "bench", "agent.heartbeat_interval": 60.0}, environ={})
        direct = MCPClient(SERVER[0], SERVER[1:])
        hosted = MCPClient(SERVER[0], SERVER[1:])
        host = NATSAgent("bench-mcp-host", "host", config)
        caller = NATSAgent("bench-mcp-caller", "caller", config)
        await asyncio.gather(direct.connect(), hosted.connect(), host.astart(), caller.astart())
        await host.aregister_mcp_server("bench-tools", hosted)
        self.closers += [direct.close, hosted.close, caller.astop, host.astop]

        async def stdio() -> Any:
            result = await direct.call_tool("add", ARGS)
            assert result.content[0].text == "42.0"
            return result

        async def nats() -> Any:
            content = await caller.call_mcp_tool("bench-tools", "add", ARGS)
            assert content[0]["text"] == "42.0"
            return content

        return {"stdio": stdio, "nats": nats}

    def run(self, kind: str, n: int) -> list[float]:
        return self.time_calls(self.calls[kind], n)


@pytest.fixture(scope="module")
def paths(server: NATSServer) -> Iterator[Paths]:
    made = Paths(server.url)
    for kind in ("stdio", "nats"):
        made.run(kind, 20)  # warm up and prove the path works
    yield made
    made.close()


@pytest.mark.parametrize("kind", ["stdio", "nats"])
def test_mcp_tool_call(benchmark: Any, paths: Paths, kind: str) -> None:
    """Median time of CALLS sequential tools/call round trips (divide by CALLS for one)."""
    benchmark.group = "mcp-tool-call"
    benchmark.extra_info["calls_per_round"] = CALLS
    benchmark.pedantic(paths.run, args=(kind, CALLS), rounds=10, warmup_rounds=1)


def test_mcp_added_latency(paths: Paths) -> None:
    """Interleave stdio and NATS blocks so machine noise hits both alike; print p50/p99 and the added latency."""
    samples: dict[str, list[float]] = {"stdio": [], "nats": []}
    for _ in range(10):
        for kind in samples:
            samples[kind] += paths.run(kind, 200)
    stats = {}
    for kind, times in samples.items():
        times.sort()
        stats[kind] = (statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6)
    stdio, nats = stats["stdio"], stats["nats"]
    print(
        f"\nMCP tools/call over {len(samples['stdio'])} calls each: direct stdio p50 {stdio[0]:.0f} µs p99 {stdio[1]:.0f} µs; "
        f"through NATS p50 {nats[0]:.0f} µs p99 {nats[1]:.0f} µs; added p50 {nats[0] - stdio[0]:.0f} µs p99 {nats[1] - stdio[1]:.0f} µs "
        f"(ratio p50 {nats[0] / stdio[0]:.2f}x)"
    )
