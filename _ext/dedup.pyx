# cython: language_level=3
"""Message ids an agent took, in two generations of fixed-size records found by keyed hashes, with the answers a
retry is replayed (compiled core)."""

cimport cython
from cpython.object cimport PyObject_Hash
from libc.limits cimport INT_MAX
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

import orjson

from agentcore.fields import ID, REPLY_TO, SOURCE  # the keys decoded envelopes hold: found by a pointer compare

__all__ = ("RECORD_BYTES", "KEPT_BYTES", "MAX_RECORDS", "DuplicateStore", "MISS", "IN_FLIGHT", "DONE", "NOT_KEPT")

#: seen() for an id not taken before (it is now recorded in flight); finish(..., MISS) forgets an id.
MISS = object()
#: seen(): the message is being handled right now.
IN_FLIGHT = object()
#: seen(): the message was handled, but there is no answer to replay (it failed, or its handler answered itself).
DONE = object()
#: seen() -> (destination, NOT_KEPT): the message was answered, but the answer was too large to keep for a replay.
NOT_KEPT = object()

# A record's state. FORGOTTEN keeps the record's place in its probe chain: the same id later takes the record again.
cdef enum:
    FORGOTTEN = 0
    S_IN_FLIGHT = 1
    S_DONE = 2
    S_KEPT = 3  # its answer (or the NOT_KEPT marker) and destination are in its generation's lists

ctypedef struct Record:
    Py_hash_t scope   # hash(subscription): str hashes are keyed per process, so a stranger cannot aim at a bucket
    Py_hash_t source  # hash(sender's source.id)
    Py_hash_t mid     # hash(message id)
    double expires    # clock reading past which the record says nothing
    int64_t size      # bytes counted for its kept answer (S_KEPT)
    int state

ctypedef struct Generation:
    Record* records   # in the order they were added
    int* slots        # open addressing by the three hashes: a record's index + 1, 0 for an empty slot
    Py_ssize_t n

# What one record costs: itself and its two slots (a table has twice as many slots as records, so a probe always
# meets an empty slot).
RECORD_BYTES = sizeof(Record) + 2 * sizeof(int)
# What a kept answer costs besides its encoded size: its places in the answer lists, and their share of the rest.
KEPT_BYTES = 64
MAX_RECORDS = (INT_MAX - 1) // 2
# The size of an answer that does not encode: never kept, whatever the bounds (two would overflow the byte count).
cdef int64_t _UNENCODABLE = (<int64_t>1) << 62


cdef inline size_t _mix(Py_hash_t scope, Py_hash_t source, Py_hash_t mid) noexcept:
    # All three are keyed, so their mix is too; the multipliers keep it asymmetric (a source id sent as a message
    # id does not land in the same slot).
    return ((<size_t>mid) * <size_t>0x9E3779B97F4A7C15) ^ ((<size_t>source) * <size_t>0xC2B2AE3D27D4EB4F) ^ <size_t>scope


cdef inline int64_t _encoded_size(result) except -1:
    try:
        return len(orjson.dumps(result))
    except TypeError:  # it does not encode: counted as too large to keep
        return _UNENCODABLE


@cython.final
cdef class DuplicateStore:
    """Remember (subscription, sender, message id) for ttl seconds: in flight, done, or the answer to replay."""

    cdef Generation _young
    cdef Generation _old
    # Each generation's kept answers, by record index: where the answer was asked for, and the answer.
    cdef list _young_to
    cdef list _young_answers
    cdef list _old_to
    cdef list _old_answers
    cdef Py_ssize_t _cap        # records one generation holds
    cdef Py_ssize_t _nslots
    cdef double _ttl
    cdef object _clock
    cdef object _counters
    cdef int64_t _max_bytes     # -1: no bound
    cdef int64_t _replay_max    # -1: no bound
    cdef int64_t _kept_budget   # bytes for kept answers once the records' are counted; -1: no bound
    cdef int64_t _kept_bytes
    cdef Py_ssize_t _nkept
    # The oldest record whose answer the byte bound or the sweep may still have to drop: in the old generation
    # (_cursor_old) or the young one, at _cursor. Records are visited in arrival order; no kept answer lies behind
    # the cursor (finish() moves it back to an answer kept late).
    cdef bint _cursor_old
    cdef Py_ssize_t _cursor
    cdef object _on_kept        # called when the first answer is kept (arms the sweep), or None
    cdef Py_ssize_t _evictions
    cdef Py_ssize_t _expired
    cdef Py_ssize_t _probes

    def __init__(self, Py_ssize_t max_records, max_bytes, double ttl, clock, counters, replay_max_bytes=None,
                 on_kept=None):
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        if max_bytes is not None and not max_bytes >= 1:
            raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes}")
        self._drop(&self._young)
        self._drop(&self._old)
        self._cap = min(max_records, MAX_RECORDS)
        if max_bytes is not None:  # the records take at most half the bound, the kept answers the rest
            self._cap = max(min(self._cap, max_bytes // 4 // RECORD_BYTES), 1)
        self._nslots = 2 * self._cap
        self._max_bytes = -1 if max_bytes is None else max_bytes
        self._kept_budget = -1 if max_bytes is None else max(max_bytes - 2 * self._cap * RECORD_BYTES, 0)
        self._replay_max = -1 if replay_max_bytes is None else replay_max_bytes
        self._ttl = ttl
        self._clock = clock
        self._counters = counters
        self._on_kept = on_kept
        self._young_to = [None] * self._cap
        self._young_answers = [None] * self._cap
        self._old_to = [None] * self._cap
        self._old_answers = [None] * self._cap
        self._kept_bytes = 0
        self._nkept = 0
        self._cursor_old = True
        self._cursor = 0
        self._evictions = self._expired = self._probes = 0
        self._hold(&self._young)  # both now: a bound the machine cannot hold fails here, not inside a dispatch
        self._hold(&self._old)

    def __dealloc__(self):
        self._drop(&self._young)
        self._drop(&self._old)

    def __len__(self):
        return self._young.n + self._old.n

    @property
    def bytes(self):
        """Return the bytes held: the records and the kept answers (at most max_bytes)."""
        return (self._young.n + self._old.n) * RECORD_BYTES + self._kept_bytes

    @property
    def max_bytes(self):
        """Return the bound on bytes held, or None."""
        return None if self._max_bytes < 0 else self._max_bytes

    @property
    def capacity(self):
        """Return how many records one generation holds."""
        return self._cap

    @property
    def kept(self):
        """Return how many answers are kept for replay."""
        return self._nkept

    @property
    def evictions(self):
        """Return how many records and kept answers were dropped to stay within the bounds."""
        return self._evictions

    @property
    def expired(self):
        """Return how many kept answers sweep() dropped because their time-to-live ran out."""
        return self._expired

    @property
    def probes(self):
        """Return how many occupied slots lookups stepped over in the index, in all."""
        return self._probes

    def seen(self, scope, message, now=None):
        """Return MISS for message's id not taken from its sender on scope (recording it in flight), else IN_FLIGHT,
        DONE or (destination, answer); now: the clock's reading when the caller has one."""
        cdef Py_hash_t hs = PyObject_Hash(scope)
        cdef Py_hash_t hsrc = PyObject_Hash(message[SOURCE][ID])
        cdef Py_hash_t hid = PyObject_Hash(message[ID])
        cdef double t = <double>(self._clock() if now is None else now)
        cdef Py_ssize_t i = self._find(&self._young, hs, hsrc, hid)
        cdef Record* r
        if i >= 0:
            r = &self._young.records[i]
            if r.state != FORGOTTEN and t < r.expires:
                return self._known(r, self._young_to, self._young_answers, i)
            self._release(r, self._young_to, self._young_answers, i)  # expired or forgotten: new again, same record
        else:
            i = self._find(&self._old, hs, hsrc, hid)
            if i >= 0:
                r = &self._old.records[i]
                if r.state != FORGOTTEN and t < r.expires:
                    return self._known(r, self._old_to, self._old_answers, i)
            r = &self._young.records[self._add(hs, hsrc, hid)]
        r.state = S_IN_FLIGHT
        r.expires = t + self._ttl
        return MISS

    def finish(self, scope, message, result=DONE, reply=None, size=None, now=None):
        """Record that message was handled: MISS forgets its id (it failed), DONE keeps no answer, else result is kept
        for a retry that asks for it where message did (its replyTo, else reply: the NATS reply subject); size is the
        encoded answer in bytes, measured when not given; now: the clock's reading when the caller has one."""
        cdef Py_hash_t hs = PyObject_Hash(scope)
        cdef Py_hash_t hsrc = PyObject_Hash(message[SOURCE][ID])
        cdef Py_hash_t hid = PyObject_Hash(message[ID])
        cdef Py_ssize_t i = self._find(&self._young, hs, hsrc, hid)
        cdef list destinations = self._young_to
        cdef list answers = self._young_answers
        cdef Record* r
        cdef int64_t nbytes
        cdef bint in_old
        if i < 0:
            i = self._find(&self._old, hs, hsrc, hid)
            destinations, answers = self._old_to, self._old_answers
            if i < 0 and result is not MISS:  # dropped with its generation while in flight: recorded again
                i = self._add(hs, hsrc, hid)
                destinations, answers = self._young_to, self._young_answers
        if i < 0:
            return
        r = &self._young.records[i] if answers is self._young_answers else &self._old.records[i]
        self._release(r, destinations, answers, i)
        if result is MISS:
            r.state = FORGOTTEN
            return
        r.expires = <double>(self._clock() if now is None else now) + self._ttl
        to = message.get(REPLY_TO) or reply or None
        if result is DONE or to is None:  # (asked nowhere: a duplicate of it is dropped, never answered)
            return  # _release left it S_DONE
        nbytes = size if size else _encoded_size(result)
        if (self._replay_max >= 0 and nbytes > self._replay_max) or nbytes >= _UNENCODABLE:
            self._counters["duplicates_not_kept"] += 1
            result = NOT_KEPT
            nbytes = 0
        nbytes += KEPT_BYTES
        if self._kept_budget >= 0 and nbytes > self._kept_budget:  # larger than every answer together may be
            return
        if self._nkept == 0 and self._on_kept is not None:
            self._on_kept()
        destinations[i] = to
        answers[i] = result
        r.size = nbytes
        r.state = S_KEPT
        self._nkept += 1
        self._kept_bytes += nbytes
        # Kept behind the cursor (a sweep went past its record while it was in flight): the cursor goes back to it,
        # so that the sweep reaches it when its time runs out (no kept answer lies behind the cursor).
        in_old = answers is self._old_answers
        if (in_old and not self._cursor_old) or (in_old == self._cursor_old and i < self._cursor):
            self._cursor_old = in_old
            self._cursor = i
        if self._kept_budget >= 0 and self._kept_bytes > self._kept_budget:
            self._trim(-1.0)  # the oldest answers go; their ids stay recorded as done

    def sweep(self):
        """Drop the kept answers whose time-to-live ran out, oldest first; return how many."""
        cdef Py_ssize_t dropped
        if self._nkept == 0:
            return 0
        dropped = self._trim(<double>self._clock())
        self._expired += dropped
        return dropped

    def clear(self):
        """Forget every id and kept answer."""
        cdef Py_ssize_t i
        for i in range(self._cap):
            self._young_to[i] = self._young_answers[i] = self._old_to[i] = self._old_answers[i] = None
        self._young.n = 0
        self._old.n = 0
        memset(self._young.slots, 0, self._nslots * sizeof(int))
        memset(self._old.slots, 0, self._nslots * sizeof(int))
        self._kept_bytes = 0
        self._nkept = 0
        self._cursor_old = True
        self._cursor = 0

    cdef object _known(self, Record* r, list to, list answers, Py_ssize_t i):
        self._counters["duplicates"] += 1
        if r.state == S_IN_FLIGHT:
            return IN_FLIGHT
        if r.state == S_KEPT:
            return to[i], answers[i]
        return DONE  # done, or its answer was dropped for room: handled either way, never run again

    cdef int _release(self, Record* r, list to, list answers, Py_ssize_t i) except -1:
        # Drop the answer a record keeps; the record says done.
        if r.state == S_KEPT:
            to[i] = None
            answers[i] = None
            self._kept_bytes -= r.size
            self._nkept -= 1
        r.state = S_DONE
        return 0

    cdef Py_ssize_t _trim(self, double now) except -1:
        # From the cursor on, in arrival order: drop kept answers while over the byte bound (now < 0) or while
        # expired (a later record finished early may wait for the next sweep). Returns how many were dropped.
        cdef Py_ssize_t dropped = 0
        cdef Generation* g
        cdef Record* r
        while self._nkept:
            if now < 0 and self._kept_bytes <= self._kept_budget:
                break
            g = &self._old if self._cursor_old else &self._young
            if self._cursor >= g.n:
                if not self._cursor_old:
                    break  # no kept answer lies behind the cursor: none is left to look at
                self._cursor_old = False
                self._cursor = 0
                continue
            r = &g.records[self._cursor]
            if r.state == S_KEPT:
                if now < 0:
                    self._evictions += 1
                elif now < r.expires:
                    break
                self._release(r, self._old_to if self._cursor_old else self._young_to,
                              self._old_answers if self._cursor_old else self._young_answers, self._cursor)
                dropped += 1
            self._cursor += 1
        return dropped

    cdef Py_ssize_t _add(self, Py_hash_t hs, Py_hash_t hsrc, Py_hash_t hid) except -1:
        cdef Generation spare
        cdef list spare_to, spare_answers
        cdef Py_ssize_t i
        cdef Record* r
        if self._young.n == self._cap:  # full: it becomes the old generation, whose records (and answers) go
            for i in range(self._old.n):
                self._release(&self._old.records[i], self._old_to, self._old_answers, i)
            self._evictions += self._old.n
            spare, spare_to, spare_answers = self._old, self._old_to, self._old_answers
            self._old, self._old_to, self._old_answers = self._young, self._young_to, self._young_answers
            self._young, self._young_to, self._young_answers = spare, spare_to, spare_answers
            self._young.n = 0
            memset(self._young.slots, 0, self._nslots * sizeof(int))
            if self._cursor_old:  # the cursor was in the generation just dropped
                self._cursor = 0
            self._cursor_old = True
        i = self._young.n
        r = &self._young.records[i]
        r.scope, r.source, r.mid = hs, hsrc, hid
        r.state = S_IN_FLIGHT
        r.size = 0
        self._young.n += 1
        self._slot(&self._young, i)
        return i

    cdef void _slot(self, Generation* g, Py_ssize_t index) noexcept:
        cdef size_t i = _mix(g.records[index].scope, g.records[index].source, g.records[index].mid) % <size_t>self._nslots
        while g.slots[i] != 0:
            self._probes += 1
            i += 1
            if i == <size_t>self._nslots:
                i = 0
        g.slots[i] = <int>(index + 1)

    cdef Py_ssize_t _find(self, Generation* g, Py_hash_t hs, Py_hash_t hsrc, Py_hash_t hid) noexcept:
        cdef size_t i
        cdef int slot
        cdef Record* r
        if g.n == 0:
            return -1
        i = _mix(hs, hsrc, hid) % <size_t>self._nslots
        while True:
            slot = g.slots[i]
            if slot == 0:
                return -1
            r = &g.records[slot - 1]
            if r.mid == hid and r.source == hsrc and r.scope == hs:
                return slot - 1
            self._probes += 1
            i += 1
            if i == <size_t>self._nslots:
                i = 0

    cdef void _drop(self, Generation* g) noexcept:
        free(g.records)
        free(g.slots)
        memset(g, 0, sizeof(Generation))

    cdef int _hold(self, Generation* g) except -1:
        g.records = <Record*>calloc(self._cap, sizeof(Record))
        g.slots = <int*>calloc(self._nslots, sizeof(int))
        if g.records == NULL or g.slots == NULL:
            free(g.records)
            free(g.slots)
            g.records, g.slots = NULL, NULL
            raise MemoryError()
        return 0
