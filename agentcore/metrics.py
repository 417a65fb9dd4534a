"""Counters and latency percentiles an agent reports through get_metrics()."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

__all__ = ("AgentMetrics",)


class AgentMetrics:
    """Count messages and keep a window of recent handler latencies for percentiles."""

    __slots__ = ("processed", "failed", "expired", "invalid", "received", "published", "reconnects", "disconnects",
                 "async_errors", "counters", "latencies")

    def __init__(self, window: int = 8192) -> None:
        self.processed = 0
        self.failed = 0
        self.expired = 0
        self.invalid = 0
        self.received = 0
        self.published = 0
        self.reconnects = 0
        self.disconnects = 0
        self.async_errors = 0
        # Extensions (MCP, negotiation, streaming, cache) count their own events here by name.
        self.counters: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=window)  # recent handler latencies, seconds (appended to directly)

    def observe(self, seconds: float) -> None:
        """Record one handler latency."""
        self.latencies.append(seconds)

    def percentile(self, p: float) -> float:
        """Return the p-th percentile (0..1) of the recent handler latencies, in milliseconds (0.0 before any)."""
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000.0 if lat else 0.0

    def snapshot(self) -> dict[str, Any]:
        """Return the metrics as a plain dict (latencies in milliseconds)."""
        lat = sorted(self.latencies)
        n = len(lat)

        def pct(p: float) -> float:
            return lat[min(n - 1, int(p * n))] * 1000.0 if n else 0.0

        return {
            "messages_processed": self.processed,
            "messages_failed": self.failed,
            "messages_expired": self.expired,
            "messages_invalid": self.invalid,
            "messages_received": self.received,
            "messages_published": self.published,
            "avg_latency_ms": (sum(lat) / n * 1000.0) if n else 0.0,
            "p50_latency_ms": pct(0.50),
            "p99_latency_ms": pct(0.99),
            "reconnects": self.reconnects,
            "disconnects": self.disconnects,
            "async_errors": self.async_errors,
            **self.counters,
        }
