"""Content-hash caching of task results and dropping of redelivered duplicates, on the compiled core.

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

Both keep a result as the result envelope it was answered with (bytes; see kept()), and read its content back
for a hit or a replay. Both stores are bounded by bytes, since anyone on the bus can fill them: results by
``cache.max_bytes`` (each counted as its encoded answer; one larger than that is not kept), the duplicate store
(the compiled ``DuplicateStore``: fixed-size records, no Python object per id) by ``cache.duplicate_bytes``,
where a result larger than ``cache.replay_max_bytes`` is kept only as a marker (a retry is told, typed, that the
answer is not kept). Expired results and kept answers go on a timer (every ``min(ttl / 4, 1)`` s while anything
is held), at the cost of those dropped, not only when their key is read again.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Callable, Hashable
from typing import Any

import orjson

from .._impl import DONE, IN_FLIGHT, MISS, NOT_KEPT, ContentCache, DuplicateStore, task_key
from ..fields import CONTENT, PAYLOAD
from ..metrics import AgentMetrics

__all__ = ("TaskCache", "MISS", "IN_FLIGHT", "DONE", "NOT_KEPT", "SHARED", "kept", "unkept")

# MISS: what get() and seen() return when nothing live is recorded (None is a valid cached result); IN_FLIGHT: seen()
# of a message being handled; DONE: handled, with no answer to replay; (destination, NOT_KEPT): answered, too large
# to keep. They are the duplicate store's own (compiled or its twin, as agentcore._impl chose).
#: add_capability(..., cache=SHARED): one cache for every requester (the handler is a pure function of content).
SHARED = "shared"

# Results the garbage collector does not track: kept as they are. Any other result is kept as the result envelope its
# answer was written as (bytes, which it does not track either, and what the byte bounds count anyway): a kept object
# would outlive its request, and each one counts toward the next young collection while the frees of kept results,
# which come in bulk, mostly do not count back (CPython counts a free only while that count is above zero), so young
# collections came twice as often in the default configuration. It also keeps what was sent: a handler that changes
# the object it returned, afterwards, changes no kept answer.
_UNTRACKED = frozenset((str, int, float, bool, type(None)))


def kept(result: Any, envelope: bytes | None) -> Any:
    """Return what the caches keep of result, answered as envelope: the envelope, or result when it is untracked."""
    return result if envelope is None or result.__class__ in _UNTRACKED else envelope


def unkept(value: Any) -> Any:
    """Return the result a kept value stands for (bytes: the result envelope it was answered with)."""
    return orjson.loads(value)[PAYLOAD][CONTENT] if value.__class__ is bytes else value


class TaskCache:
    """Keep recent task results by content hash and recent message ids, counting hits and misses in metrics."""

    __slots__ = ("_results", "_dups", "_counters", "_interval", "_timer", "key", "seen", "finish")

    #: key(pattern, message, shared=False): the cache key of a task, or None when it opts out (context.metadata.cache
    #: or routing.cache false) or its content is not JSON. It names the capability (the subscription pattern), the
    #: content and, unless shared, who asked: source.id and context.metadata.tenant. Keys are xxh3-64 hashes seeded
    #: with a secret of this cache, so nobody outside can compute one, nor search offline for content whose key is
    #: another requester's.
    key: Callable[..., int | None]

    #: seen(scope, message, now=None): MISS for a message whose id its sender (source.id) has not sent on that
    #: subscription within the TTL (now recorded in flight), else IN_FLIGHT, DONE or (destination, result) as
    #: finish() recorded it. Ids are chosen by senders. now is a reading of the cache's clock (time.perf_counter,
    #: the dispatcher's own).
    seen: Callable[..., Any]
    #: finish(scope, message, result=DONE, reply=None, size=None, now=None): record that message was handled; MISS
    #: forgets it (it failed). A result is replayed only to a retry that asks for it where message did (its replyTo,
    #: else reply, the NATS reply subject); size is its encoded answer in bytes, measured when not given; beyond
    #: cache.replay_max_bytes only a NOT_KEPT marker is kept.
    finish: Callable[..., None]

    def __init__(self, ttl: float, max_entries: int, metrics: AgentMetrics,
                 clock: Callable[[], float] = time.perf_counter, *, max_bytes: int | None = None,
                 duplicate_bytes: int | None = None, replay_max_bytes: int | None = None) -> None:
        self._results = ContentCache(max_entries, ttl, clock, max_bytes)
        self._counters = metrics.counters
        self._dups = DuplicateStore(max_entries, duplicate_bytes, ttl, clock, metrics.counters,
                                    replay_max_bytes if replay_max_bytes is not None else duplicate_bytes, self._kept)
        # The compiled core's functions, called by the dispatcher for every message with no frame of ours between.
        self.key = functools.partial(task_key, secrets.randbits(64))
        self.seen = self._dups.seen
        self.finish = self._dups.finish
        self._interval = max(min(ttl / 4, 1.0), 0.01)
        self._timer: asyncio.TimerHandle | None = None  # the sweep, armed while anything is held

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

    def _kept(self) -> None:
        """The duplicate store kept its first answer: sweep while anything is held."""
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
        self._dups.sweep()
        if len(self._results) or self._dups.kept:
            self._arm()

    def resume(self) -> None:
        """Sweep again while anything is held (a start after stop(): what was kept before still expires)."""
        if self._timer is None and (len(self._results) or self._dups.kept):
            self._arm()

    def stop(self) -> None:
        """Stop the sweep timer (resume(), the next put or the first kept answer arms it again)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def sweep(self) -> int:
        """Drop the expired results and kept answers now; return how many."""
        return int(self._results.sweep()) + int(self._dups.sweep())

    def clear(self) -> None:
        """Forget every cached result and seen id (and stop sweeping)."""
        self._results.clear()
        self._dups.clear()
        self.stop()

    def stats(self) -> dict[str, Any]:
        """Return the result cache's counters and limits."""
        stats: dict[str, Any] = self._results.stats()
        return stats

    def gauges(self) -> dict[str, Any]:
        """Return what get_metrics() reports of both stores: bytes held, limits, entries dropped."""
        results, dups = self._results, self._dups
        return {"cache_bytes": results.bytes, "cache_max_bytes": results.max_bytes, "cache_entries": len(results),
                "cache_evictions": results.evictions, "cache_expired": results.expired,
                "duplicate_bytes": dups.bytes, "duplicate_max_bytes": dups.max_bytes, "duplicate_entries": len(dups),
                "duplicate_kept": dups.kept, "duplicate_evictions": dups.evictions}
