# cython: language_level=3
"""Hash content with xxh3-64 and keep recent results in an LRU cache with a time-to-live (compiled core)."""

cimport cython
from cpython.ref cimport PyObject

import time

import orjson
from xxhash import xxh3_64_intdigest

__all__ = ("ContentCache", "canonical_hash", "content_hash")


cdef extern from "Python.h":
    PyObject* PyDict_GetItemWithError(object d, object k) except? NULL
    int PyDict_SetItem(object d, object k, object v) except -1
    int PyDict_DelItem(object d, object k) except -1
    bint PyUnicode_Check(object o)


cdef object _xxh3 = xxh3_64_intdigest
cdef object _dumps = orjson.dumps
cdef object _SORT_KEYS = orjson.OPT_SORT_KEYS


def content_hash(data):
    """Return the xxh3-64 hash of data (a str is hashed as its UTF-8 bytes)."""
    if PyUnicode_Check(data):
        data = (<str>data).encode("utf-8")
    return _xxh3(data)


def canonical_hash(obj):
    """Return the xxh3-64 hash of obj as JSON with sorted keys, so dict key order does not matter."""
    return _xxh3(_dumps(obj, None, _SORT_KEYS))


@cython.final
@cython.freelist(64)
cdef class _Entry:
    # A node of the circular recency list; the cache's sentinel sits between the newest and the oldest.
    cdef object key
    cdef object value
    cdef double expires
    cdef _Entry prev
    cdef _Entry next


@cython.final
cdef class ContentCache:
    """Keep up to max_entries values by hashable key, dropping the least recently used and the expired."""

    cdef dict _data
    cdef _Entry _root  # _root.next is the least recently used entry, _root.prev the most recent
    cdef Py_ssize_t _max_entries
    cdef object _ttl_value  # None or the float given
    cdef double _ttl
    cdef bint _expiring
    cdef object _clock
    cdef Py_ssize_t _hits
    cdef Py_ssize_t _misses
    cdef Py_ssize_t _evictions

    def __init__(self, Py_ssize_t max_entries=1024, ttl=60.0, clock=time.monotonic):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds or None, got {ttl}")
        self._data = {}
        self._root = _Entry()
        self._root.prev = self._root
        self._root.next = self._root
        self._max_entries = max_entries
        self._expiring = ttl is not None
        self._ttl_value = float(ttl) if self._expiring else None
        self._ttl = self._ttl_value if self._expiring else 0.0
        self._clock = clock

    @property
    def hits(self):
        """Return how many get() calls found a live entry."""
        return self._hits

    @property
    def misses(self):
        """Return how many get() calls found no live entry."""
        return self._misses

    @property
    def evictions(self):
        """Return how many entries were dropped to stay within max_entries."""
        return self._evictions

    @property
    def max_entries(self):
        """Return the most entries the cache holds."""
        return self._max_entries

    @property
    def ttl(self):
        """Return how many seconds an entry lives, or None when entries never expire."""
        return self._ttl_value

    cdef inline void _unlink(self, _Entry entry) noexcept:
        entry.prev.next = entry.next
        entry.next.prev = entry.prev

    cdef inline void _append(self, _Entry entry) noexcept:
        cdef _Entry root = self._root
        entry.prev = root.prev
        entry.next = root
        root.prev.next = entry
        root.prev = entry

    cdef inline bint _live(self, _Entry entry) except -1:
        return not self._expiring or <double>self._clock() < entry.expires

    def __len__(self):
        return len(self._data)

    def __contains__(self, key):
        cdef PyObject* found = PyDict_GetItemWithError(self._data, key)
        if found == NULL:
            return False
        return self._live(<_Entry>found)

    def get(self, key, default=None):
        """Return the live value for key (and mark it recently used), else default."""
        cdef PyObject* found = PyDict_GetItemWithError(self._data, key)
        cdef _Entry entry
        if found != NULL:
            entry = <_Entry>found
            if self._live(entry):
                if entry.next is not self._root:
                    self._unlink(entry)
                    self._append(entry)
                self._hits += 1
                return entry.value
            self._unlink(entry)
            PyDict_DelItem(self._data, key)
        self._misses += 1
        return default

    def put(self, key, value):
        """Store value under key as the most recently used entry, evicting beyond max_entries."""
        cdef double expires = <double>self._clock() + self._ttl if self._expiring else 0.0
        cdef PyObject* found = PyDict_GetItemWithError(self._data, key)
        cdef _Entry entry
        if found != NULL:
            entry = <_Entry>found
            entry.value = value
            entry.expires = expires
            self._unlink(entry)
            self._append(entry)
            return
        entry = _Entry.__new__(_Entry)
        entry.key = key
        entry.value = value
        entry.expires = expires
        PyDict_SetItem(self._data, key, entry)
        self._append(entry)
        if len(self._data) > self._max_entries:
            entry = self._root.next
            self._unlink(entry)
            PyDict_DelItem(self._data, entry.key)
            self._evictions += 1

    def pop(self, key, default=None):
        """Remove key and return its live value, else default."""
        cdef PyObject* found = PyDict_GetItemWithError(self._data, key)
        cdef _Entry entry
        if found == NULL:
            return default
        entry = <_Entry>found
        self._unlink(entry)
        PyDict_DelItem(self._data, key)
        if self._live(entry):
            return entry.value
        return default

    def clear(self):
        """Remove every entry (the counters stay)."""
        cdef _Entry entry = self._root.next
        cdef _Entry following
        # Break the links so that dropping the entries frees them at once, without the cycle collector.
        while entry is not self._root:
            following = entry.next
            entry.prev = None
            entry.next = None
            entry = following
        self._root.prev = self._root
        self._root.next = self._root
        self._data.clear()

    def stats(self):
        """Return the counters and limits as a dict."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "evictions": self._evictions,
            "size": len(self._data),
            "max_entries": self._max_entries,
            "ttl": self._ttl_value,
        }
