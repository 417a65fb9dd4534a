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

Both stores are bounded by bytes, since anyone on the bus can fill them: results by ``cache.max_bytes`` (each
counted as its encoded answer; one larger than that is not kept), the duplicate store by
``cache.duplicate_bytes``, where a result larger than ``cache.replay_max_bytes`` is kept only as a marker (a retry
is told, typed, that the answer is not kept). Expired entries go on a timer (every ``min(ttl / 4, 1)`` s while
anything is held), at the cost of those dropped, not only when their key is read again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Any

import orjson

from .._impl import ContentCache, canonical_hash
from ..metrics import AgentMetrics

__all__ = ("TaskCache", "MISS", "IN_FLIGHT", "DONE", "NOT_KEPT", "SHARED")

#: What TaskCache.get() and seen() return when nothing live is recorded (None is a valid cached result).
MISS: Any = object()
#: seen(): the message is being handled right now.
IN_FLIGHT: Any = object()
#: seen(): the message was handled, but there is no result to replay (it failed, or its handler answered itself).
DONE: Any = object()
#: seen() -> (destination, NOT_KEPT): the message was answered, but its answer was too large to keep for a replay.
NOT_KEPT: Any = object()
#: What one entry of the duplicate store costs besides its result: the key (scope, id), the entry, the state.
ENTRY_BYTES = 256
#: add_capability(..., cache=SHARED): one cache for every requester (the handler is a pure function of content).
SHARED = "shared"


class TaskCache:
    """Keep recent task results by content hash and recent message ids, counting hits and misses in metrics."""

    __slots__ = ("_results", "_seen", "_counters", "_replay_max", "_interval", "_timer")

    def __init__(self, ttl: float, max_entries: int, metrics: AgentMetrics, clock: Callable[[], float] = time.monotonic,
                 *, max_bytes: int | None = None, duplicate_bytes: int | None = None,
                 replay_max_bytes: int | None = None) -> None:
        self._results = ContentCache(max_entries, ttl, clock, max_bytes)
        self._seen = ContentCache(max_entries, ttl, clock, duplicate_bytes)
        self._counters = metrics.counters
        self._replay_max = replay_max_bytes if replay_max_bytes is not None else duplicate_bytes
        self._interval = max(min(ttl / 4, 1.0), 0.01)
        self._timer: asyncio.TimerHandle | None = None  # the sweep, armed while anything is held

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

    def put(self, key: int, result: Any, size: int) -> None:
        """Remember a successful result whose encoded answer is size bytes (not kept beyond cache.max_bytes)."""
        if not self._results.put(key, result, size):
            self._counters["cache_too_large"] += 1
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        try:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._sweep)
        except RuntimeError:  # no loop (a test driving the cache by hand): reads and evictions still bound it
            self._timer = None

    def _sweep(self) -> None:
        """Drop the expired entries of both stores; keep sweeping while anything is held."""
        self._timer = None
        self._results.sweep()
        self._seen.sweep()
        if len(self._results) or len(self._seen):
            self._arm()

    def stop(self) -> None:
        """Stop the sweep timer (the next put or seen id arms it again)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def sweep(self) -> int:
        """Drop the expired entries of both stores now; return how many."""
        return int(self._results.sweep()) + int(self._seen.sweep())

    def seen(self, scope: Hashable, message_id: str) -> Any:
        """Return MISS for a new message id in scope (and mark it IN_FLIGHT), else what is known of it.

        What is known: IN_FLIGHT, DONE, or (destination, result) as finish() recorded it. The agent's scope is
        (subscription, sender id): ids are chosen by senders.
        """
        key = (scope, message_id)  # a tuple hashes in tens of ns; hashing a formatted string costs more
        state = self._seen.get(key, MISS)
        if state is MISS:
            self._seen.put(key, IN_FLIGHT, ENTRY_BYTES)
            if self._timer is None:
                self._arm()
        else:
            self._counters["duplicates"] += 1
        return state

    def finish(self, scope: Hashable, message_id: str, result: Any = DONE, destination: str | None = None,
               size: int | None = None) -> None:
        """Record that message_id was handled; MISS forgets it (it failed).

        A result is kept with the destination the message asked for it (its replyTo or NATS reply subject): a
        retry is replayed the result only when it asks for it there too. size is the result's encoded answer in
        bytes (measured here when not given); beyond cache.replay_max_bytes only a NOT_KEPT marker is kept.
        """
        key = (scope, message_id)
        if result is MISS:
            self._seen.pop(key, None)
        elif result is DONE:
            self._seen.put(key, DONE, ENTRY_BYTES)
        else:
            if not size:
                size = _encoded_size(result)
            if self._replay_max is not None and size > self._replay_max:
                self._counters["duplicates_not_kept"] += 1
                self._seen.put(key, (destination, NOT_KEPT), ENTRY_BYTES)
            else:
                self._seen.put(key, (destination, result), ENTRY_BYTES + size)

    def clear(self) -> None:
        """Forget every cached result and seen id (and stop sweeping)."""
        self._results.clear()
        self._seen.clear()
        self.stop()

    def stats(self) -> dict[str, Any]:
        """Return the result cache's counters and limits."""
        stats: dict[str, Any] = self._results.stats()
        return stats

    def gauges(self) -> dict[str, Any]:
        """Return what get_metrics() reports of both stores: bytes held, limits, entries dropped."""
        results, seen = self._results, self._seen
        return {"cache_bytes": results.bytes, "cache_max_bytes": results.max_bytes, "cache_entries": len(results),
                "cache_evictions": results.evictions, "cache_expired": results.expired,
                "duplicate_bytes": seen.bytes, "duplicate_max_bytes": seen.max_bytes, "duplicate_entries": len(seen),
                "duplicate_evictions": seen.evictions}


def _encoded_size(result: Any) -> int:
    """Return the size of result as JSON (what its answer costs); one that does not encode is counted as huge."""
    try:
        return len(orjson.dumps(result))
    except TypeError:
        return 1 << 62
