"""Content-hash caching of task results and dropping of redelivered duplicates, on the compiled ContentCache.

A task whose capability and canonical payload content match one answered within ``cache.ttl`` seconds is
answered from the cache without running its handler. Only successful results of task handlers are kept.
A message opts out with ``context.metadata.cache = false`` (or ``routing.cache = false``), a capability with
``add_capability(..., cache=False)``. The agent also recognises a message whose id it has already taken on
the same subscription within the TTL (a redelivery or a client's retry): it never runs the handler again, it
replays the result when it has one and otherwise answers that the message is a duplicate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

from .._impl import ContentCache, canonical_hash
from ..metrics import AgentMetrics

__all__ = ("TaskCache", "MISS", "IN_FLIGHT", "DONE")

#: What TaskCache.get() and seen() return when nothing live is recorded (None is a valid cached result).
MISS: Any = object()
#: seen(): the message is being handled right now.
IN_FLIGHT: Any = object()
#: seen(): the message was handled, but there is no result to replay (it failed, or its handler answered itself).
DONE: Any = object()


class TaskCache:
    """Keep recent task results by content hash and recent message ids, counting hits and misses in metrics."""

    __slots__ = ("_results", "_seen", "_counters")

    def __init__(self, ttl: float, max_entries: int, metrics: AgentMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._results = ContentCache(max_entries, ttl, clock)
        self._seen = ContentCache(max_entries, ttl, clock)
        self._counters = metrics.counters

    def key(self, pattern: str, message: dict[str, Any]) -> int | None:
        """Return the cache key of a task (its subscription pattern names the capability), or None when it opts out."""
        context = message.get("context")
        if context:
            metadata = context.get("metadata")
            if metadata and metadata.get("cache") is False:
                return None
        routing = message.get("routing")
        if routing and routing.get("cache") is False:
            return None
        try:
            return int(canonical_hash((pattern, message["payload"]["content"])))
        except (KeyError, TypeError, ValueError):  # no content, or content orjson cannot canonicalise: not cacheable
            return None

    def get(self, key: int) -> Any:
        """Return the live result for key, else MISS."""
        value = self._results.get(key, MISS)
        self._counters["cache_hits" if value is not MISS else "cache_misses"] += 1
        return value

    def put(self, key: int, result: Any) -> None:
        """Remember a successful result."""
        self._results.put(key, result)

    def seen(self, scope: Hashable, message_id: str) -> Any:
        """Return MISS for a new message id in scope (and mark it IN_FLIGHT), else what is known of it.

        The agent's scope is (subscription, sender id): ids are chosen by senders.
        """
        key = (scope, message_id)  # a tuple hashes in tens of ns; hashing a formatted string costs more
        state = self._seen.get(key, MISS)
        if state is MISS:
            self._seen.put(key, IN_FLIGHT)
        else:
            self._counters["duplicates"] += 1
        return state

    def finish(self, scope: Hashable, message_id: str, result: Any = DONE) -> None:
        """Record that message_id was handled, with its result for a retry to replay; MISS forgets it (it failed)."""
        key = (scope, message_id)
        if result is MISS:
            self._seen.pop(key, None)
        else:
            self._seen.put(key, result)

    def clear(self) -> None:
        """Forget every cached result and seen id."""
        self._results.clear()
        self._seen.clear()

    def stats(self) -> dict[str, Any]:
        """Return the result cache's counters and limits."""
        stats: dict[str, Any] = self._results.stats()
        return stats
