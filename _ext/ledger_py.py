"""Finished tasks' states and times in two generations of fixed-size records, found by keyed hashes (pure-Python twin)."""

from __future__ import annotations

import time
from array import array
from collections import Counter
from typing import Any

from agentcore.fields import ID, SOURCE  # the keys decoded envelopes hold: found by a pointer compare

__all__ = ("RECORD_BYTES", "MAX_RECORDS", "FinishedLedger")

#: What one record costs in the compiled ledger: the record (two hashes, a time, a state) and its two table slots.
RECORD_BYTES = 40
#: Records one generation may hold (the compiled ledger's slots are C ints).
MAX_RECORDS = (2**31 - 2) // 2
_MASK = 2**64 - 1
_MIX = 0x9E3779B97F4A7C15


# The records live in arrays, as in the compiled ledger, so a pure build keeps within tasks.max_status_bytes too: a
# generation as dicts of tuples cost about eight times RECORD_BYTES per record (32 MB held at the 4 MiB default).
class _Generation:
    """Records in arrays as the compiled ledger keeps them (about 33 bytes each with the index, within the bound)."""

    __slots__ = ("tasks", "sources", "since", "states", "slots")

    def __init__(self) -> None:
        self.tasks = array("q")
        self.sources = array("q")
        self.since = array("d")
        self.states = array("b")
        self.slots: array[int] | None = None  # by (task, source) hash: a record's index + 1; built by the first find


class FinishedLedger:
    """Keep (state, since) of finished tasks within max_bytes: the young generation fills, becomes the old one."""

    def __init__(self, max_bytes: int, counters: Counter[str], states: tuple[str, ...]) -> None:
        self._cap = max(min(max_bytes // 2 // RECORD_BYTES, MAX_RECORDS), 0)
        self._nslots = 2 * self._cap
        self._states = states
        self._counters = counters
        self._wall = time.time() - time.perf_counter()
        self._young = _Generation()
        self._old = _Generation()
        self._probes = 0
        counters["task_records_evicted"] += 0  # always reported

    def __len__(self) -> int:
        return len(self._young.tasks) + len(self._old.tasks)

    @property
    def bytes(self) -> int:
        """Return the bytes of the records held (at most max_bytes)."""
        return len(self) * RECORD_BYTES

    @property
    def probes(self) -> int:
        """Return how many occupied slots adds and lookups stepped over in the index, in all."""
        return self._probes

    @property
    def capacity(self) -> int:
        """Return how many records one generation holds."""
        return self._cap

    def add(self, message: dict[str, Any], state: str, at: float | None = None) -> None:
        """Record that message's task ended in state, at time.perf_counter() reading at (None: now)."""
        task, source = hash(message[ID]), hash(message[SOURCE][ID])
        if state not in self._states:
            raise ValueError(f"unknown task state {state!r}")
        if self._cap == 0:
            return
        young = self._young
        if len(young.tasks) == self._cap:  # full: it becomes the old generation, whose records are dropped
            self._counters["task_records_evicted"] += len(self._old.tasks)
            self._old, young = young, _Generation()
            self._young = young
            self._wall = time.time() - time.perf_counter()  # follows a change of the wall clock, once per generation
        since = time.time() if at is None else at + self._wall
        young.tasks.append(task)
        young.sources.append(source)
        young.since.append(since)
        young.states.append(self._states.index(state))
        slots = young.slots
        if slots is not None:
            n = len(young.tasks)
            if 2 * n >= len(slots) and len(slots) < self._nslots:  # half full: a larger table, up to the compiled ledger's 2 * capacity slots
                self._index(young, n)
            else:
                self._slot(young, slots, n - 1)

    def find(self, source_id: str | None, task_id: str) -> tuple[str, float] | None:
        """Return (state, since) of source_id's task task_id (source_id None: any requester's, the latest), or None."""
        task = hash(task_id)
        source = 0 if source_id is None else hash(source_id)
        for g in (self._young, self._old):
            i = self._find(g, task, source, source_id is None)
            if i >= 0:
                return self._states[g.states[i]], g.since[i]
        return None

    def _slot(self, g: _Generation, slots: array[int], index: int) -> None:
        task, source = g.tasks[index], g.sources[index]
        size = len(slots)
        i = (((task & _MASK) * _MIX) & _MASK ^ (source & _MASK)) % size
        while True:
            slot = slots[i]
            if slot == 0 or (g.tasks[slot - 1] == task and g.sources[slot - 1] == source):  # the later record wins
                slots[i] = index + 1
                return
            self._probes += 1
            i = i + 1 if i + 1 < size else 0

    def _index(self, g: _Generation, n: int) -> array[int]:
        """Index g's n records in a table sized to them (not to the capacity: a Python table is real memory)."""
        slots = g.slots = array("i", bytes(4 * min(self._nslots, max(3 * n, 16))))
        for j in range(n):
            self._slot(g, slots, j)
        return slots

    def _find(self, g: _Generation, task: int, source: int, any_source: bool) -> int:
        n = len(g.tasks)
        if n == 0:
            return -1
        if any_source:  # control.allow agents only: the newest record of that task, a scan (no index by task alone)
            for j in range(n - 1, -1, -1):
                if g.tasks[j] == task:
                    return j
            return -1
        slots = g.slots
        if slots is None:  # once per generation: a flood of lookups costs no more than the records themselves
            slots = self._index(g, n)
        size = len(slots)
        i = (((task & _MASK) * _MIX) & _MASK ^ (source & _MASK)) % size
        while True:
            slot = slots[i]
            if slot == 0:
                return -1
            if g.tasks[slot - 1] == task and g.sources[slot - 1] == source:
                return slot - 1
            self._probes += 1
            i = i + 1 if i + 1 < size else 0
