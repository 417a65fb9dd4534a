"""Prometheus export: a live agent's metrics scraped over HTTP."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentcore import AgentCoreError
from agentcore.metrics_export import serve_prometheus


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_scrape_a_live_agent(make_agent: Any) -> None:
    def fail(message: dict[str, Any]) -> None:
        raise RuntimeError("bad")

    worker = await make_agent("prom-w", "worker", capabilities={"echo": lambda m: m["payload"]["content"], "fail": fail})
    client = await make_agent("prom-c", "client")
    for i in range(4):
        assert await client.send_task("echo", i) == i
    with pytest.raises(AgentCoreError):
        await client.send_task("fail", 0)
    server, port = serve_prometheus(worker, client)
    try:
        text = await asyncio.to_thread(scrape, port)
    finally:
        server.shutdown()
        server.server_close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    w = (("agent_id", "prom-w"), ("agent_type", "worker"))
    assert samples[("agentcore_messages_processed_total", w)] >= 4
    assert samples[("agentcore_messages_failed_total", w)] == 1
    assert ("agentcore_in_flight", w) in samples
    assert samples[("agentcore_capability_requests_total", (*w, ("capability", "echo")))] == 4
    assert samples[("agentcore_capability_errors_total", (*w, ("capability", "fail")))] == 1
    assert samples[("agentcore_capability_processing_seconds_total", (*w, ("capability", "echo")))] > 0
    assert samples[("agentcore_handler_latency_seconds", (*w, ("quantile", "0.99")))] > 0
    info = [k for k in samples if k[0] == "agentcore_agent_info" and ("agent_id", "prom-w") in k[1]]
    assert info and ("status", "running") in info[0][1]
    assert ("agentcore_messages_published_total", (("agent_id", "prom-c"), ("agent_type", "client"))) in samples
    print(text)
