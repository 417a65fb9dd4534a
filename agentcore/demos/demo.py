"""The `agentcore demo`: worker agents, replicas in a queue group and a coordinator, over a real nats-server."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .. import AgentConfig, ForbiddenError, NATSAgent

__all__ = ("run_demo",)


async def _summarize(message: dict[str, Any]) -> dict[str, Any]:
    text = str(message["payload"]["content"].get("text", ""))
    words = text.split()
    return {"summary": " ".join(words[:6]) + (" ..." if len(words) > 6 else ""), "words": len(words)}


async def _analyse(message: dict[str, Any]) -> dict[str, Any]:
    numbers = [float(x) for x in message["payload"]["content"].get("numbers", [])]
    await asyncio.sleep(0)  # an async handler may await anything (an LLM call, a database) without blocking others
    return {"count": len(numbers), "mean": statistics.fmean(numbers) if numbers else None, "max": max(numbers, default=None)}


async def run_demo(url: str, *, tasks: int = 200, out: Callable[[str], None] = print, environment: str = "demo",
                   settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the demo against the server at url and return what it measured (settings: credentials and the like)."""
    # pause, resume and shutdown are taken only from the ids in control.allow: here the coordinator's.
    config = AgentConfig({"control.allow": ["coordinator"], **(settings or {}), "nats.servers": [url],
                          "nats.environment": environment, "agent.heartbeat_interval": 1.0})
    summarizers = [NATSAgent(f"summarizer-{i}", "worker", config) for i in (1, 2, 3)]
    for agent in summarizers:
        agent.add_capability("summarize", _summarize)
    analyst = NATSAgent("analyst-1", "worker", config)
    analyst.add_capability("analysis", _analyse)
    coordinator = NATSAgent("coordinator", "coordinator", config)
    workers = [*summarizers, analyst]

    # Imported before the agents start: importing the MCP SDK builds its pydantic models, ~0.5 s of one loop turn.
    mcp_demo: Callable[..., Awaitable[dict[str, Any]]] | None = None
    try:
        from .mcp import run_mcp_demo

        mcp_demo = run_mcp_demo
    except ImportError:  # the MCP SDK is the optional extra agentcore-nats[mcp]
        pass

    for agent in [*workers, coordinator]:
        await agent.astart()
    try:
        out(f"started {len(workers)} workers and a coordinator on {url} (environment {environment!r})")
        found = await coordinator.discover(expected=len(workers), timeout=2.0)
        for info in found:
            out(f"  discovered {info['id']:<14} type={info['type']:<8} capabilities={info['capabilities']} status={info['status']}")

        analysis = await coordinator.send_task("analysis", {"numbers": [3, 1, 4, 1, 5, 9, 2, 6]})
        out(f"analysis result: {analysis}")

        text = "agents talk over NATS subjects with a compiled core for the hot path and pure Python above it"
        latencies: list[float] = []
        handled_by: Counter[str] = Counter()

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            reply = await coordinator.request_message(coordinator.topics.task("summarize"), {"text": f"{i}: {text}"})
            latencies.append(time.perf_counter() - t0)
            handled_by[reply["source"]["id"]] += 1

        # Sequential round trips give the latency; concurrent ones show the queue group sharing work.
        for i in range(tasks):
            await one(i)
        sequential = sorted(latencies)
        latencies.clear()
        handled_by.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(tasks)))
        elapsed = time.perf_counter() - t0

        p50 = sequential[len(sequential) // 2] * 1e6
        p99 = sequential[min(len(sequential) - 1, int(len(sequential) * 0.99))] * 1e6
        out(f"{tasks} sequential summarize tasks: round trip p50 {p50:.0f} µs, p99 {p99:.0f} µs")
        out(f"{tasks} concurrent summarize tasks in {elapsed * 1000:.1f} ms ({tasks / elapsed:.0f} tasks/s), shared by the queue group: "
            + ", ".join(f"{k}={v}" for k, v in sorted(handled_by.items())))

        from .negotiation import run_negotiation_demo

        negotiation = await run_negotiation_demo(coordinator, summarizers, out)

        mcp_result: dict[str, Any] = {}
        if mcp_demo is None:
            out("mcp: skipped (install agentcore-nats[mcp] for the MCP step)")
        else:
            mcp_result = await mcp_demo(config, out, calls=tasks)

        from .persistence import run_persistence_demo

        persistence = await run_persistence_demo(url, out, environment=f"{environment}-durable", settings=settings)

        pong = await coordinator.control("analyst-1", "ping")
        out(f"control ping analyst-1 -> {pong}")
        paused = await coordinator.control("analyst-1", "pause")
        resumed = await coordinator.control("analyst-1", "resume")
        out(f"control pause, resume analyst-1 from the coordinator (in its control.allow) -> {paused['status']}, {resumed['status']}")
        try:
            await summarizers[0].control("analyst-1", "pause")
        except ForbiddenError as exc:
            out(f"control pause analyst-1 from summarizer-1 -> refused ({exc.code}: not in control.allow)")
        for agent in workers:
            m = agent.get_metrics()
            out(f"  {agent.agent_id:<14} processed={m['messages_processed']:<4} failed={m['messages_failed']} "
                f"p50={m['p50_latency_ms']:.3f} ms p99={m['p99_latency_ms']:.3f} ms")
        return {"p50_us": p50, "p99_us": p99, "handled_by": dict(handled_by), "discovered": [i["id"] for i in found],
                "negotiation": negotiation, "mcp": mcp_result, "persistence": persistence}
    finally:
        for agent in [coordinator, *workers]:
            await agent.astop()
