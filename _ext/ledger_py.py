"""Finished tasks' states and times in two generations of fixed-size records, found by keyed hashes (pure-Python twin)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

__all__ = ("RECORD_BYTES", "MAX_RECORDS", "FinishedLedger")

#: What one record costs in the compiled ledger: the record (two hashes, a time, a state) and its two table slots.
RECORD_BYTES = 40
#: Records one generation may hold (the compiled ledger's slots are C ints).
MAX_RECORDS = (2**31 - 2) // 2

# A generation: (task hash, source hash) -> (state, since), task hash -> the latest (state, since) of any requester,
# and how many records were added to it.
_Generation = tuple[dict[tuple[int, int], tuple[str, float]], dict[int, tuple[str, float]], list[int]]


def _generation() -> _Generation:
    return {}, {}, [0]


class FinishedLedger:
    """Keep (state, since) of finished tasks within max_bytes: the young generation fills, becomes the old one."""

    def __init__(self, max_bytes: int, counters: Counter[str], states: tuple[str, ...]) -> None:
        self._cap = max(min(max_bytes // 2 // RECORD_BYTES, MAX_RECORDS), 0)
        self._states = states
        self._counters = counters
        self._wall = time.time() - time.perf_counter()
        self._young = _generation()
        self._old = _generation()
        counters["task_records_evicted"] += 0  # always reported

    def __len__(self) -> int:
        return self._young[2][0] + self._old[2][0]

    @property
    def bytes(self) -> int:
        """Return the bytes of the records held (at most max_bytes)."""
        return len(self) * RECORD_BYTES

    @property
    def capacity(self) -> int:
        """Return how many records one generation holds."""
        return self._cap

    def add(self, message: dict[str, Any], state: str, at: float | None = None) -> None:
        """Record that message's task ended in state, at time.perf_counter() reading at (None: now)."""
        task, source = hash(message["id"]), hash(message["source"]["id"])
        if state not in self._states:
            raise ValueError(f"unknown task state {state!r}")
        if self._cap == 0:
            return
        if self._young[2][0] == self._cap:  # full: it becomes the old generation, whose records are dropped
            self._counters["task_records_evicted"] += self._old[2][0]
            self._old, self._young = self._young, _generation()
            self._wall = time.time() - time.perf_counter()  # follows a change of the wall clock, once per generation
        since = time.time() if at is None else at + self._wall
        by_pair, by_task, added = self._young
        by_pair[(task, source)] = by_task[task] = (self._states[self._states.index(state)], since)
        added[0] += 1

    def find(self, source_id: str | None, task_id: str) -> tuple[str, float] | None:
        """Return (state, since) of source_id's task task_id (source_id None: any requester's, the latest), or None."""
        task = hash(task_id)
        for by_pair, by_task, _added in (self._young, self._old):
            found = by_task.get(task) if source_id is None else by_pair.get((task, hash(source_id)))
            if found is not None:
                return found
        return None
