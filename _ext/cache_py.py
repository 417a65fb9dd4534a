"""Hash content with xxh3-64 and keep recent results in an LRU cache bounded by entries and bytes, with a time-to-live
(pure-Python twin)."""

from __future__ import annotations

import operator
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import orjson
from xxhash import xxh3_64_intdigest

from agentcore.fields import CONTENT, CONTEXT, ID, METADATA, PAYLOAD, ROUTING, SOURCE  # the keys decoded envelopes hold

__all__ = ("ContentCache", "canonical_hash", "content_hash", "task_key")


def content_hash(data: bytes | str) -> int:
    """Return the xxh3-64 hash of data (a str is hashed as its UTF-8 bytes)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return xxh3_64_intdigest(data)


def canonical_hash(obj: object, seed: int = 0) -> int:
    """Return the xxh3-64 hash (with seed) of obj as JSON with sorted keys, so dict key order does not matter."""
    return xxh3_64_intdigest(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS), seed)


def task_key(seed: int, pattern: str, message: dict[str, Any], shared: bool = False) -> int | None:
    """Return a task's result-cache key, hashed with seed; None when it opts out or its content is not JSON."""
    # The key names the capability (pattern), the content and, unless shared, who asked: source.id and
    # context.metadata.tenant. A task opts out with context.metadata.cache or routing.cache set to false.
    tenant = None
    context = message.get(CONTEXT)
    if context:
        metadata = context.get(METADATA)
        if metadata:
            if metadata.get("cache") is False:
                return None
            tenant = metadata.get("tenant")
    routing = message.get(ROUTING)
    if routing and routing.get("cache") is False:
        return None
    try:
        content = message[PAYLOAD][CONTENT]
        if shared:
            return xxh3_64_intdigest(orjson.dumps((pattern, content), option=orjson.OPT_SORT_KEYS), seed)
        return xxh3_64_intdigest(orjson.dumps((pattern, message[SOURCE][ID], tenant, content),
                                              option=orjson.OPT_SORT_KEYS), seed)
    except (KeyError, TypeError, ValueError):  # no content, or content orjson cannot canonicalise
        return None


def _check_limits(max_entries: int, ttl: float | None, max_bytes: int | None) -> None:
    if max_entries < 1:
        raise ValueError(f"max_entries must be >= 1, got {max_entries}")
    if ttl is not None and not ttl > 0:
        raise ValueError(f"ttl must be > 0 seconds or None, got {ttl}")
    if max_bytes is not None and not max_bytes >= 1:
        raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes}")


class ContentCache:
    """Keep up to max_entries values (and max_bytes of their sizes) by key, dropping the least recently used and the expired."""

    __slots__ = ("_data", "_order", "_max_entries", "_max_bytes", "_bytes", "_ttl", "_clock", "_hits", "_misses",
                 "_evictions", "_expired", "_rejected")

    def __init__(
        self,
        max_entries: int = 1024,
        ttl: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int | None = None,
    ) -> None:
        max_entries = operator.index(max_entries)
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
        _check_limits(max_entries, ttl, max_bytes)
        # key -> (value, expiry time, size); the first entry is the least recently used.
        self._data: OrderedDict[Hashable, tuple[Any, float, int]] = OrderedDict()
        # The keys in put order, which is expiry order (one TTL for all): sweep() reads only the expired from the front.
        self._order: dict[Hashable, None] = {}
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._ttl = None if ttl is None else float(ttl)
        self._clock = clock
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._expired = 0
        self._rejected = 0

    @property
    def hits(self) -> int:
        """Return how many get() calls found a live entry."""
        return self._hits

    @property
    def misses(self) -> int:
        """Return how many get() calls found no live entry."""
        return self._misses

    @property
    def evictions(self) -> int:
        """Return how many entries were dropped to stay within max_entries and max_bytes."""
        return self._evictions

    @property
    def expired(self) -> int:
        """Return how many entries were dropped because their time-to-live ran out."""
        return self._expired

    @property
    def rejected(self) -> int:
        """Return how many put() calls were refused because the value alone is larger than max_bytes."""
        return self._rejected

    @property
    def bytes(self) -> int:
        """Return the sum of the sizes given for the entries held."""
        return self._bytes

    @property
    def max_bytes(self) -> int | None:
        """Return the most bytes (sum of given sizes) the cache holds, or None when unbounded."""
        return self._max_bytes

    @property
    def max_entries(self) -> int:
        """Return the most entries the cache holds."""
        return self._max_entries

    @property
    def ttl(self) -> float | None:
        """Return how many seconds an entry lives, or None when entries never expire."""
        return self._ttl

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        entry = self._data.get(key)
        if entry is None:
            return False
        return self._ttl is None or float(self._clock()) < entry[1]

    def get(self, key: Hashable, default: Any = None) -> Any:
        """Return the live value for key (and mark it recently used), else default."""
        data = self._data
        entry = data.get(key)
        if entry is not None:
            if self._ttl is None or float(self._clock()) < entry[1]:
                data.move_to_end(key)
                self._hits += 1
                return entry[0]
            self._drop(key)
            self._expired += 1
        self._misses += 1
        return default

    def _drop(self, key: Hashable) -> tuple[Any, float, int]:
        entry = self._data.pop(key)
        del self._order[key]
        self._bytes -= entry[2]
        return entry

    def put(self, key: Hashable, value: Any, size: int = 0) -> bool:
        """Store value (of size bytes) as the most recent entry, evicting beyond the bounds; False when it alone exceeds max_bytes."""
        size = operator.index(size)
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        data = self._data
        order = self._order
        expires = float(self._clock()) + self._ttl if self._ttl is not None else 0.0
        if key in data:
            self._drop(key)
        if self._max_bytes is not None and size > self._max_bytes:
            self._rejected += 1
            return False
        data[key] = (value, expires, size)
        order[key] = None
        self._bytes += size
        while len(data) > self._max_entries or (self._max_bytes is not None and self._bytes > self._max_bytes):
            self._drop(next(iter(data)))  # never the entry just put: it is the most recent, and fits alone
            self._evictions += 1
        return True

    def sweep(self) -> int:
        """Drop every expired entry and return how many; costs only the entries it drops (put order is expiry order)."""
        if self._ttl is None:
            return 0
        now = float(self._clock())
        data = self._data
        expired = []
        for key in self._order:
            if data[key][1] > now:
                break
            expired.append(key)
        for key in expired:
            self._drop(key)
        self._expired += len(expired)
        return len(expired)

    def pop(self, key: Hashable, default: Any = None) -> Any:
        """Remove key and return its live value, else default."""
        if key not in self._data:
            return default
        entry = self._drop(key)
        if self._ttl is None or float(self._clock()) < entry[1]:
            return entry[0]
        return default

    def clear(self) -> None:
        """Remove every entry (the counters stay)."""
        self._data.clear()
        self._order.clear()
        self._bytes = 0

    def stats(self) -> dict[str, Any]:
        """Return the counters and limits as a dict."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "evictions": self._evictions,
            "expired": self._expired,
            "rejected": self._rejected,
            "size": len(self._data),
            "bytes": self._bytes,
            "max_entries": self._max_entries,
            "max_bytes": self._max_bytes,
            "ttl": self._ttl,
        }
