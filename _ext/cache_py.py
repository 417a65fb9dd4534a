"""Hash content with xxh3-64 and keep recent results in an LRU cache with a time-to-live (pure-Python twin)."""

from __future__ import annotations

import operator
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import orjson
from xxhash import xxh3_64_intdigest

__all__ = ("ContentCache", "canonical_hash", "content_hash")


def content_hash(data: bytes | str) -> int:
    """Return the xxh3-64 hash of data (a str is hashed as its UTF-8 bytes)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return xxh3_64_intdigest(data)


def canonical_hash(obj: object) -> int:
    """Return the xxh3-64 hash of obj as JSON with sorted keys, so dict key order does not matter."""
    return xxh3_64_intdigest(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS))


def _check_limits(max_entries: int, ttl: float | None) -> None:
    if max_entries < 1:
        raise ValueError(f"max_entries must be >= 1, got {max_entries}")
    if ttl is not None and not ttl > 0:
        raise ValueError(f"ttl must be > 0 seconds or None, got {ttl}")


class ContentCache:
    """Keep up to max_entries values by hashable key, dropping the least recently used and the expired."""

    __slots__ = ("_data", "_max_entries", "_ttl", "_clock", "_hits", "_misses", "_evictions")

    def __init__(
        self,
        max_entries: int = 1024,
        ttl: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        max_entries = operator.index(max_entries)
        _check_limits(max_entries, ttl)
        # key -> (value, expiry time); the first entry is the least recently used.
        self._data: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()
        self._max_entries = max_entries
        self._ttl = None if ttl is None else float(ttl)
        self._clock = clock
        self._hits = 0
        self._misses = 0
        self._evictions = 0

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
        """Return how many entries were dropped to stay within max_entries."""
        return self._evictions

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
            del data[key]
        self._misses += 1
        return default

    def put(self, key: Hashable, value: Any) -> None:
        """Store value under key as the most recently used entry, evicting beyond max_entries."""
        data = self._data
        expires = float(self._clock()) + self._ttl if self._ttl is not None else 0.0
        data[key] = (value, expires)
        data.move_to_end(key)
        if len(data) > self._max_entries:
            data.popitem(last=False)
            self._evictions += 1

    def pop(self, key: Hashable, default: Any = None) -> Any:
        """Remove key and return its live value, else default."""
        entry = self._data.pop(key, None)
        if entry is None:
            return default
        if self._ttl is None or float(self._clock()) < entry[1]:
            return entry[0]
        return default

    def clear(self) -> None:
        """Remove every entry (the counters stay)."""
        self._data.clear()

    def stats(self) -> dict[str, Any]:
        """Return the counters and limits as a dict."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "evictions": self._evictions,
            "size": len(self._data),
            "max_entries": self._max_entries,
            "ttl": self._ttl,
        }
