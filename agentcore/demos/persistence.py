"""The demo's persistence step: tasks sent while no worker runs are kept by JetStream and answered once one starts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import AgentConfig, NATSAgent, PersistenceError

__all__ = ("run_persistence_demo",)


async def _shout(message: dict[str, Any]) -> str:
    return str(message["payload"]["content"]).upper()


async def run_persistence_demo(url: str, out: Callable[[str], None], *, tasks: int = 5, environment: str = "demo-durable",
                               settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Send tasks with no worker running, start one, and report how they were answered; skip without JetStream."""
    config = AgentConfig({**(settings or {}), "nats.servers": [url], "nats.environment": environment,
                          "agent.heartbeat_interval": 1.0, "jetstream.enabled": True})
    sender = NATSAgent("durable-sender", "coordinator", config)
    try:
        await sender.astart()
    except PersistenceError as exc:
        out(f"persistence: skipped ({exc})")
        return {}
    worker = NATSAgent("durable-worker", "worker", config)
    worker.add_capability("shout", _shout)
    stream = (await sender.persistence_info()).get("stream")
    try:
        calls = [asyncio.ensure_future(sender.send_task("shout", f"task {i}", timeout=30)) for i in range(tasks)]
        while sender.get_metrics().get("persisted_sent", 0) < tasks and not any(c.done() for c in calls):
            await asyncio.sleep(0.005)  # each send returns only with its result: watch the stored count instead
        kept = (await sender.persistence_info())["messages"]
        out(f"persistence: {tasks} tasks sent while no worker runs; JetStream stream {stream} keeps {kept}")
        t0 = time.perf_counter()
        await worker.astart()
        results = await asyncio.gather(*calls)
        elapsed = (time.perf_counter() - t0) * 1000
        out(f"persistence: a worker started and answered all {len(results)} in {elapsed:.1f} ms, e.g. {results[0]!r}")
        return {"kept": kept, "answered": len(results)}
    finally:
        await worker.astop()
        if stream is not None:
            await sender.nc.jetstream().delete_stream(stream)  # the demo leaves nothing behind on a server it was pointed at
        await sender.astop()
