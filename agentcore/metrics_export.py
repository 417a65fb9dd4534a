"""Prometheus/OpenMetrics export of get_metrics() (the optional extra ``agentcore-nats[prometheus]``).

Every number in ``get_metrics()`` becomes a metric labelled by agent id and type: event counts as counters
(``agentcore_messages_processed_total``), levels as gauges (``agentcore_in_flight``), the handler latency
window as ``agentcore_handler_latency_seconds{quantile=...}``; per capability, the service-API endpoint stats
(``agentcore_capability_requests_total{capability=...}``, errors, processing seconds). Status and
implementation are an info metric.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from .services import VERSION

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .agent import NATSAgent

__all__ = ("AgentCollector", "GAUGES", "serve_prometheus")

#: get_metrics() keys that are levels (what is held now), exported as gauges; every other number counts events.
GAUGES = frozenset({"in_flight", "queued", "subscriptions", "results_owed", "batch_size_limit", "batch_timeout",
                    "batch_pending", "persisted_held", "mcp_calls_pending"})
_LATENCIES = {"p50_latency_ms": "0.5", "p99_latency_ms": "0.99"}
_LABELS = ["agent_id", "agent_type"]


def _name(key: str) -> str:
    return "agentcore_" + "".join(c if c.isalnum() else "_" for c in key)


class AgentCollector(Collector):
    """A prometheus_client collector of the metrics of one or more agents (register it in a CollectorRegistry)."""

    def __init__(self, *agents: NATSAgent) -> None:
        self.agents = list(agents)

    def collect(self) -> Iterable[Metric]:
        """Read every agent's get_metrics() and service stats and yield them as metric families."""
        families: dict[str, Metric] = {}
        for agent in self.agents:
            metrics, stats = _read(agent)
            labels = [agent.agent_id, agent.agent_type]
            for key, value in metrics.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if key in _LATENCIES or key == "avg_latency_ms":
                    continue
                if key in GAUGES:
                    fam = families.setdefault(key, GaugeMetricFamily(_name(key), f"agentcore gauge {key}", labels=_LABELS))
                else:
                    fam = families.setdefault(key, CounterMetricFamily(_name(key), f"agentcore counter {key}", labels=_LABELS))
                fam.add_metric(labels, float(value))  # type: ignore[attr-defined]
            lat = families.setdefault("latency", GaugeMetricFamily(
                "agentcore_handler_latency_seconds", "handler latency over the recent window, by quantile",
                labels=[*_LABELS, "quantile"]))
            for key, q in _LATENCIES.items():
                lat.add_metric([*labels, q], float(metrics.get(key, 0.0)) / 1000.0)  # type: ignore[attr-defined]
            avg = families.setdefault("avg", GaugeMetricFamily(
                "agentcore_handler_latency_avg_seconds", "mean handler latency over the recent window", labels=_LABELS))
            avg.add_metric(labels, float(metrics.get("avg_latency_ms", 0.0)) / 1000.0)  # type: ignore[attr-defined]
            info = families.setdefault("info", InfoMetricFamily(
                "agentcore_agent", "agent status and implementation", labels=_LABELS))
            info.add_metric(labels, {"status": str(metrics.get("status", "")),  # type: ignore[attr-defined]
                                     "implementation": str(metrics.get("implementation", "")), "version": VERSION})
            for field, metric, help_, scale in (
                ("num_requests", "agentcore_capability_requests", "tasks handled per capability", 1.0),
                ("num_errors", "agentcore_capability_errors", "tasks failed per capability", 1.0),
                ("processing_time", "agentcore_capability_processing_seconds", "handling time per capability", 1e-9),
            ):
                fam = families.setdefault(metric, CounterMetricFamily(metric, help_, labels=[*_LABELS, "capability"]))
                for endpoint in stats["endpoints"]:
                    fam.add_metric([*labels, endpoint["name"]], endpoint[field] * scale)  # type: ignore[attr-defined]
        return list(families.values())


def _read(agent: NATSAgent) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read an agent's metrics on its own loop when it runs on another thread (its counters change there)."""
    async def read() -> tuple[dict[str, Any], dict[str, Any]]:
        return agent.get_metrics(), agent.service_stats()

    try:
        asyncio.get_running_loop()
        on_a_loop = True
    except RuntimeError:
        on_a_loop = False
    if not on_a_loop and agent.status in ("running", "paused"):
        return agent.call(read(), timeout=5.0)
    return agent.get_metrics(), agent.service_stats()


def serve_prometheus(*agents: NATSAgent, port: int = 0, addr: str = "127.0.0.1") -> tuple[WSGIServer, int]:
    """Serve the agents' metrics on http://addr:port/metrics in a thread; return the server (shutdown() it) and its port."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(*agents))
    server, _thread = start_http_server(port, addr, registry=registry)
    return server, server.server_port

