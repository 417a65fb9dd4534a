# cython: language_level=3
"""Hash content with xxh3-64 and keep recent results in an LRU cache bounded by entries and bytes, with a time-to-live
(compiled core)."""

cimport cython
from cpython.ref cimport PyObject

import time

import orjson
from xxhash import xxh3_64_intdigest

from agentcore.fields import CONTENT, CONTEXT, ID, METADATA, PAYLOAD, ROUTING, SOURCE  # the keys decoded envelopes hold

__all__ = ("ContentCache", "canonical_hash", "content_hash", "task_key")


cdef extern from "Python.h":
    PyObject* PyDict_GetItemWithError(object d, object k) except? NULL
    int PyDict_SetItem(object d, object k, object v) except -1
    int PyDict_DelItem(object d, object k) except -1
    bint PyUnicode_Check(object o)
    bint PyDict_CheckExact(object o)


cdef object _xxh3 = xxh3_64_intdigest
cdef object _dumps = orjson.dumps
cdef object _SORT_KEYS = orjson.OPT_SORT_KEYS


def content_hash(data):
    """Return the xxh3-64 hash of data (a str is hashed as its UTF-8 bytes)."""
    if PyUnicode_Check(data):
        data = (<str>data).encode("utf-8")
    return _xxh3(data)


def canonical_hash(obj, seed=0):
    """Return the xxh3-64 hash (with seed) of obj as JSON with sorted keys, so dict key order does not matter."""
    return _xxh3(_dumps(obj, None, _SORT_KEYS), seed)


def task_key(seed, pattern, message, bint shared=False):
    """Return a task's result-cache key, hashed with seed; None when it opts out or its content is not JSON."""
    # The key names the capability (pattern), the content and, unless shared, who asked: source.id and
    # context.metadata.tenant. A task opts out with context.metadata.cache or routing.cache set to false. Decoded
    # envelopes are dicts all the way down, read here without a method call; anything else as the twin reads it.
    tenant = None
    context = _get(message, CONTEXT)
    if context:
        metadata = _get(context, METADATA)
        if metadata:
            if _get(metadata, "cache") is False:
                return None
            tenant = _get(metadata, "tenant")
    routing = _get(message, ROUTING)
    if routing and _get(routing, "cache") is False:
        return None
    try:
        content = message[PAYLOAD][CONTENT]
        if shared:
            return _xxh3(_dumps((pattern, content), None, _SORT_KEYS), seed)
        return _xxh3(_dumps((pattern, message[SOURCE][ID], tenant, content), None, _SORT_KEYS), seed)
    except (KeyError, TypeError, ValueError):  # no content, or content orjson cannot canonicalise
        return None


cdef inline object _get(object d, str key):
    """d.get(key): straight from the dict when d is exactly one."""
    if PyDict_CheckExact(d):
        return (<dict>d).get(key)
    return d.get(key)


@cython.final
@cython.freelist(64)
cdef class _Entry:
    # A node of two circular lists: recency (prev/next) and put order (eprev/enext). The TTL is one for all, so put
    # order is expiry order: sweep() reads only the expired from the front. Each list's sentinel sits between its
    # newest and its oldest entry.
    cdef object key
    cdef object value
    cdef double expires
    cdef Py_ssize_t size
    cdef _Entry prev
    cdef _Entry next
    cdef _Entry eprev
    cdef _Entry enext


@cython.final
cdef class ContentCache:
    """Keep up to max_entries values (and max_bytes of their sizes) by key, dropping the least recently used and the expired."""

    cdef dict _data
    cdef _Entry _root  # _root.next is the least recently used entry, _root.prev the most recent
    cdef _Entry _eroot  # _eroot.enext is the entry that expires first, _eroot.eprev the last
    cdef Py_ssize_t _max_entries
    cdef Py_ssize_t _max_bytes  # -1: no bound
    cdef Py_ssize_t _bytes
    cdef object _ttl_value  # None or the float given
    cdef double _ttl
    cdef bint _expiring
    cdef object _clock
    cdef Py_ssize_t _hits
    cdef Py_ssize_t _misses
    cdef Py_ssize_t _evictions
    cdef Py_ssize_t _expired
    cdef Py_ssize_t _rejected

    def __init__(self, Py_ssize_t max_entries=1024, ttl=60.0, clock=time.monotonic, max_bytes=None):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds or None, got {ttl}")
        if max_bytes is not None and not max_bytes >= 1:
            raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes}")
        self._data = {}
        self._root = _Entry()
        self._root.prev = self._root
        self._root.next = self._root
        self._eroot = _Entry()
        self._eroot.eprev = self._eroot
        self._eroot.enext = self._eroot
        self._max_entries = max_entries
        self._max_bytes = -1 if max_bytes is None else max_bytes
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
        """Return how many entries were dropped to stay within max_entries and max_bytes."""
        return self._evictions

    @property
    def expired(self):
        """Return how many entries were dropped because their time-to-live ran out."""
        return self._expired

    @property
    def rejected(self):
        """Return how many put() calls were refused because the value alone is larger than max_bytes."""
        return self._rejected

    @property
    def bytes(self):
        """Return the sum of the sizes given for the entries held."""
        return self._bytes

    @property
    def max_bytes(self):
        """Return the most bytes (sum of given sizes) the cache holds, or None when unbounded."""
        return None if self._max_bytes < 0 else self._max_bytes

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

    cdef inline void _eappend(self, _Entry entry) noexcept:
        cdef _Entry root = self._eroot
        entry.eprev = root.eprev
        entry.enext = root
        root.eprev.enext = entry
        root.eprev = entry

    cdef int _drop(self, _Entry entry) except -1:
        # Unlink an entry from both lists and the dict, and stop counting its bytes.
        entry.prev.next = entry.next
        entry.next.prev = entry.prev
        entry.eprev.enext = entry.enext
        entry.enext.eprev = entry.eprev
        entry.prev = entry.next = entry.eprev = entry.enext = None
        self._bytes -= entry.size
        PyDict_DelItem(self._data, entry.key)
        return 0

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
            self._drop(entry)
            self._expired += 1
        self._misses += 1
        return default

    def put(self, key, value, Py_ssize_t size=0):
        """Store value (of size bytes) as the most recent entry, evicting beyond the bounds; False when it alone exceeds max_bytes."""
        cdef double expires
        cdef PyObject* found
        cdef _Entry entry
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        expires = <double>self._clock() + self._ttl if self._expiring else 0.0
        found = PyDict_GetItemWithError(self._data, key)
        if found != NULL:
            entry = <_Entry>found
            if self._max_bytes >= 0 and size > self._max_bytes:
                self._drop(entry)
                self._rejected += 1
                return False
            entry.value = value
            entry.expires = expires
            self._bytes += size - entry.size
            entry.size = size
            self._unlink(entry)
            self._append(entry)
            entry.eprev.enext = entry.enext
            entry.enext.eprev = entry.eprev
            self._eappend(entry)
        else:
            if self._max_bytes >= 0 and size > self._max_bytes:
                self._rejected += 1
                return False
            entry = _Entry.__new__(_Entry)
            entry.key = key
            entry.value = value
            entry.expires = expires
            entry.size = size
            PyDict_SetItem(self._data, key, entry)
            self._append(entry)
            self._eappend(entry)
            self._bytes += size
        while len(self._data) > self._max_entries or (self._max_bytes >= 0 and self._bytes > self._max_bytes):
            self._drop(self._root.next)  # never the entry just put: it is the most recent, and fits alone
            self._evictions += 1
        return True

    def sweep(self):
        """Drop every expired entry and return how many; costs only the entries it drops (put order is expiry order)."""
        cdef double now
        cdef Py_ssize_t dropped = 0
        cdef _Entry entry
        if not self._expiring:
            return 0
        now = <double>self._clock()
        entry = self._eroot.enext
        while entry is not self._eroot and entry.expires <= now:
            self._drop(entry)
            dropped += 1
            entry = self._eroot.enext
        self._expired += dropped
        return dropped

    def pop(self, key, default=None):
        """Remove key and return its live value, else default."""
        cdef PyObject* found = PyDict_GetItemWithError(self._data, key)
        cdef _Entry entry
        if found == NULL:
            return default
        entry = <_Entry>found
        self._drop(entry)
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
            entry.prev = entry.next = entry.eprev = entry.enext = None
            entry = following
        self._root.prev = self._root
        self._root.next = self._root
        self._eroot.eprev = self._eroot
        self._eroot.enext = self._eroot
        self._bytes = 0
        self._data.clear()

    def stats(self):
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
            "max_bytes": None if self._max_bytes < 0 else self._max_bytes,
            "ttl": self._ttl_value,
        }
