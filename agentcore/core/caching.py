"""Content-hash caching of task results and dropping of redelivered duplicates, on the compiled ContentCache.

A request (a task that waits for its answer: a NATS reply subject or ``replyTo``) whose capability, requester
and canonical payload content match one answered within ``cache.ttl`` seconds is answered from the cache
without running its handler. The requester is its ``source.id`` and, when present, ``context.metadata.tenant``;
a capability added with ``cache="shared"`` (a pure function of its content) shares results between requesters.
Only successful results of task handlers are kept. A message nobody waits for always runs its handler. A
message opts out with ``context.metadata.cache = false`` (or ``routing.cache = false``), a capability with
``add_capability(..., cache=False)``.

The agent also recognises a message whose id it has already taken from the same sender on the same
subscription within the TTL (a redelivery or a client's retry): it never runs the handler again. It replays
the result when it has one and the retry asks for it where the original did (same ``replyTo`` or NATS reply
subject); otherwise it answers that the message is a duplicate. An id grants nothing by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

from .._impl import ContentCache, canonical_hash
from ..metrics import AgentMetrics

__all__ = ("TaskCache", "MISS", "IN_FLIGHT", "DONE", "SHARED")

#: What TaskCache.get() and seen() return when nothing live is recorded (None is a valid cached result).
MISS: Any = object()
#: seen(): the message is being handled right now.
IN_FLIGHT: Any = object()
#: seen(): the message was handled, but there is no result to replay (it failed, or its handler answered itself).
DONE: Any = object()
#: add_capability(..., cache=SHARED): one cache for every requester (the handler is a pure function of content).
SHARED = "shared"


class TaskCache:
    """Keep recent task results by content hash and recent message ids, counting hits and misses in metrics."""

    __slots__ = ("_results", "_seen", "_counters")

    def __init__(self, ttl: float, max_entries: int, metrics: AgentMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._results = ContentCache(max_entries, ttl, clock)
        self._seen = ContentCache(max_entries, ttl, clock)
        self._counters = metrics.counters

    def key(self, pattern: str, message: dict[str, Any], shared: bool = False) -> int | None:
        """Return the cache key of a task, or None when it opts out.

        The key names the capability (the subscription pattern), the content and, unless shared, who asked:
        source.id and context.metadata.tenant.
        """
        tenant = None
        context = message.get("context")
        if context:
            metadata = context.get("metadata")
            if metadata:
                if metadata.get("cache") is False:
                    return None
                tenant = metadata.get("tenant")
        routing = message.get("routing")
        if routing and routing.get("cache") is False:
            return None
        try:
            content = message["payload"]["content"]
            if shared:
                return int(canonical_hash((pattern, content)))
            return int(canonical_hash((pattern, message["source"]["id"], tenant, content)))
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

        What is known: IN_FLIGHT, DONE, or (destination, result) as finish() recorded it. The agent's scope is
        (subscription, sender id): ids are chosen by senders.
        """
        key = (scope, message_id)  # a tuple hashes in tens of ns; hashing a formatted string costs more
        state = self._seen.get(key, MISS)
        if state is MISS:
            self._seen.put(key, IN_FLIGHT)
        else:
            self._counters["duplicates"] += 1
        return state

    def finish(self, scope: Hashable, message_id: str, result: Any = DONE, destination: str | None = None) -> None:
        """Record that message_id was handled; MISS forgets it (it failed).

        A result is kept with the destination the message asked for it (its replyTo or NATS reply subject): a
        retry is replayed the result only when it asks for it there too.
        """
        key = (scope, message_id)
        if result is MISS:
            self._seen.pop(key, None)
        elif result is DONE:
            self._seen.put(key, DONE)
        else:
            self._seen.put(key, (destination, result))

    def clear(self) -> None:
        """Forget every cached result and seen id."""
        self._results.clear()
        self._seen.clear()

    def stats(self) -> dict[str, Any]:
        """Return the result cache's counters and limits."""
        stats: dict[str, Any] = self._results.stats()
        return stats
