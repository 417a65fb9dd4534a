# cython: language_level=3
"""Finished tasks' states and times in two generations of fixed-size records, found by keyed hashes (compiled core)."""

cimport cython
from cpython.object cimport PyObject_Hash
from libc.limits cimport INT_MAX
from libc.stdlib cimport calloc, free
from libc.string cimport memset

import time

from agentcore.fields import ID, SOURCE  # the keys decoded envelopes hold: found by a pointer compare

__all__ = ("RECORD_BYTES", "MAX_RECORDS", "FinishedLedger")

ctypedef struct Record:
    Py_hash_t task    # hash(task id): str hashes are keyed per process, so a stranger cannot aim at a bucket
    Py_hash_t source  # hash(requester's source.id)
    double since      # wall-clock time it ended
    Py_ssize_t state  # index into the ledger's states

ctypedef struct Generation:
    Record* records   # in the order they were added
    int* slots        # open addressing by (task, source) hash: a record's index + 1, 0 for an empty slot
    Py_ssize_t n      # records added (a later record of the same task and requester takes the earlier one's slot)
    bint indexed      # the slots index the records: built by the generation's first lookup, kept up from then on

# What one record costs: itself and its two slots (a generation's table has twice as many slots as records, so a
# probe always meets an empty slot).
RECORD_BYTES = sizeof(Record) + 2 * sizeof(int)
# Records one generation may hold: its 2 * MAX_RECORDS slots and their values (index + 1) must fit an int.
MAX_RECORDS = (INT_MAX - 1) // 2


cdef inline size_t _pair_hash(Py_hash_t task, Py_hash_t source) noexcept:
    # Both hashes are keyed, so their mix is too: one task id sent under many source ids (or one source's many ids)
    # spreads over the table instead of piling into one probe chain. Not symmetric, unlike task ^ source.
    return (<size_t>task) * <size_t>0x9E3779B97F4A7C15 ^ <size_t>source


@cython.final
cdef class FinishedLedger:
    """Keep (state, since) of finished tasks within max_bytes: the young generation fills, becomes the old one."""

    cdef Generation _young
    cdef Generation _old
    cdef Py_ssize_t _cap      # records one generation holds
    cdef Py_ssize_t _nslots   # slots of one generation's table (2 * _cap)
    cdef Py_ssize_t _probes   # occupied slots stepped over in the index (what a probe chain would cost)
    cdef double _wall         # time.time() - time.perf_counter(), read once per generation
    cdef tuple _states
    cdef object _counters

    def __init__(self, max_bytes, counters, tuple states):
        self._drop(&self._young)  # (a second __init__ must not leave records beyond a smaller capacity)
        self._drop(&self._old)
        self._cap = max(min(max_bytes // 2 // RECORD_BYTES, MAX_RECORDS), 0)
        self._nslots = 2 * self._cap
        self._probes = 0
        self._states = states
        self._counters = counters
        self._wall = time.time() - time.perf_counter()
        counters["task_records_evicted"] += 0  # always reported
        if self._cap:  # both generations now: a bound the machine cannot hold fails here, not at a task's end
            self._hold(&self._young)
            self._hold(&self._old)

    def __dealloc__(self):
        self._drop(&self._young)
        self._drop(&self._old)

    def __len__(self):
        return self._young.n + self._old.n

    @property
    def bytes(self):
        """Return the bytes of the records held (at most max_bytes)."""
        return (self._young.n + self._old.n) * RECORD_BYTES

    @property
    def probes(self):
        """Return how many occupied slots adds and lookups stepped over in the index, in all."""
        return self._probes

    @property
    def capacity(self):
        """Return how many records one generation holds."""
        return self._cap

    def add(self, message, state, at=None):
        """Record that message's task ended in state, at time.perf_counter() reading at (None: now)."""
        cdef Py_hash_t task = PyObject_Hash(message[ID])
        cdef Py_hash_t source = PyObject_Hash(message[SOURCE][ID])
        cdef Py_ssize_t code = self._code(state)
        cdef double since
        cdef Generation spare
        if self._cap == 0:
            return
        if self._young.n == self._cap:  # full: it becomes the old generation, whose records are dropped
            self._counters["task_records_evicted"] += self._old.n
            spare = self._old
            self._old = self._young
            self._young = spare
            self._young.n = 0
            self._young.indexed = False
            self._wall = time.time() - time.perf_counter()  # follows a change of the wall clock, once per generation
        since = time.time() if at is None else <double>at + self._wall
        self._put(&self._young, task, source, since, code)

    def find(self, source_id, task_id):
        """Return (state, since) of source_id's task task_id (source_id None: any requester's, the latest), or None."""
        cdef Py_hash_t task = PyObject_Hash(task_id)
        cdef Py_hash_t source = 0 if source_id is None else PyObject_Hash(source_id)
        cdef bint any_source = source_id is None
        cdef Py_ssize_t i = self._find(&self._young, task, source, any_source)
        if i >= 0:
            return self._states[self._young.records[i].state], self._young.records[i].since
        i = self._find(&self._old, task, source, any_source)
        if i >= 0:
            return self._states[self._old.records[i].state], self._old.records[i].since
        return None

    cdef Py_ssize_t _code(self, state) except -1:
        cdef Py_ssize_t i
        for i in range(len(self._states)):
            if self._states[i] is state:
                return i
        for i in range(len(self._states)):
            if self._states[i] == state:
                return i
        raise ValueError(f"unknown task state {state!r}")

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

    cdef void _put(self, Generation* g, Py_hash_t task, Py_hash_t source, double since, Py_ssize_t code) noexcept:
        # Records are written in order, a cache-friendly append; the hash index is built only once a lookup needs
        # it (most generations are never asked about), so a finished task costs no random write into the table.
        cdef Py_ssize_t index = g.n
        g.records[index].task = task
        g.records[index].source = source
        g.records[index].since = since
        g.records[index].state = code
        g.n += 1
        if g.indexed:
            self._slot(g, index)

    cdef void _slot(self, Generation* g, Py_ssize_t index) noexcept:
        cdef Py_hash_t task = g.records[index].task
        cdef Py_hash_t source = g.records[index].source
        cdef size_t i = _pair_hash(task, source) % <size_t>self._nslots
        cdef int slot
        cdef Record* r
        while True:
            slot = g.slots[i]
            if slot == 0:
                g.slots[i] = <int>(index + 1)
                return
            r = &g.records[slot - 1]
            if r.task == task and r.source == source:  # the same task again: the later record wins
                g.slots[i] = <int>(index + 1)
                return
            self._probes += 1
            i += 1
            if i == <size_t>self._nslots:
                i = 0

    cdef Py_ssize_t _find(self, Generation* g, Py_hash_t task, Py_hash_t source, bint any_source) noexcept:
        cdef size_t i
        cdef Py_ssize_t j
        cdef int slot
        cdef Record* r
        if g.n == 0:
            return -1
        if any_source:  # control.allow agents only: the newest record of that task, a scan (no index by task alone)
            for j in range(g.n - 1, -1, -1):
                if g.records[j].task == task:
                    return j
            return -1
        if not g.indexed:  # once per generation: a flood of lookups costs no more than the records themselves
            memset(g.slots, 0, self._nslots * sizeof(int))
            g.indexed = True
            for i in range(g.n):
                self._slot(g, i)
        i = _pair_hash(task, source) % <size_t>self._nslots
        while True:
            slot = g.slots[i]
            if slot == 0:
                return -1
            r = &g.records[slot - 1]
            if r.task == task and r.source == source:
                return slot - 1
            self._probes += 1
            i += 1
            if i == <size_t>self._nslots:
                i = 0
