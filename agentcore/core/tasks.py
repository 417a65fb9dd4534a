"""The tasks this agent serves: each one's lifecycle state and requester, kept within a byte bound, cancellable.

A task is known by (requester source.id, task id): ids are the sender's, so the same id from another sender is
another task, and a stranger's query or cancel finds nothing of anyone else's. A running task is its Delivery,
already held by id while it is answered (``Replies.pending``): the handler's Task and signing key ride on it, so
starting a handler costs no record. A queued task has a small record until its handler starts. A finished task
leaves (state, time) in two generations, bounded by ``tasks.max_status_bytes`` (see TaskTable): each generation
is a plain list of finished tasks until a status query first needs it by key, and a dict from then on, so a task
that nobody asks about costs one list append, not a dict insert.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from .records import Delivery

__all__ = ("QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED", "STATES", "TaskRecord", "TaskTable")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
_OVERHEAD = 200  # bytes a finished record costs besides its ids (the tuples, the list or dict entry, the float)

# A generation of finished records: (source_id, task_id, state, since) in finishing order, or, once a status query
# needed it by key, (source_id, task_id) -> (state, since).
_Finished = list[tuple[str, str, str, float]]
_ByKey = dict[tuple[str, str], tuple[str, float]]


def _by_key(generation: _Finished | _ByKey) -> _ByKey:
    """Return generation as a dict by (source_id, task_id): a later record of one key wins, as a dict insert would."""
    if isinstance(generation, dict):
        return generation
    return {(source_id, task_id): (state, since) for source_id, task_id, state, since in generation}


class TaskRecord:
    """A task waiting for a handler slot: who asked, where its answer goes, whether it was cancelled meanwhile."""

    __slots__ = ("task_id", "source_id", "dest", "key", "since", "cancelled")

    def __init__(self, task_id: str, source_id: str, dest: str | None, key: str | None) -> None:
        self.task_id = task_id
        self.source_id = source_id
        self.dest = dest  # where the answer goes: what the requester's cancel must name
        self.key = key  # the public key that signed the task (signed identities), else None
        self.since = time.time()
        self.cancelled = False


class Live:
    """A task the requester may still cancel: its queued record or its running delivery."""

    __slots__ = ("record", "delivery")

    def __init__(self, record: TaskRecord | None, delivery: Delivery | None) -> None:
        self.record = record
        self.delivery = delivery

    @property
    def destination(self) -> str | None:
        """Return where the task's answer goes."""
        return self.delivery.destination if self.delivery is not None else self.record.dest if self.record else None

    @property
    def key(self) -> str | None:
        """Return the key that signed the task (None unsigned, or identities off)."""
        return self.delivery.key if self.delivery is not None else self.record.key if self.record else None


class TaskTable:
    """The lifecycle of the tasks this agent serves (see the module docstring).

    Finished tasks go to the young generation; once it holds half the byte bound it becomes the old one and the
    old one is dropped. So the most recent ones are kept, never more than the bound, at one list append each (a
    dict insert each once a status query has asked for a record of that generation).
    """

    def __init__(self, max_bytes: int, counters: Counter[str], pending: dict[str, Delivery]) -> None:
        self.max_bytes = max_bytes
        self._half = max_bytes // 2  # what one generation of finished records may hold
        self.waiting: dict[tuple[str, str], TaskRecord] = {}  # queued tasks (bounded by agent.max_queued)
        self._pending = pending  # message id -> the delivery being answered (Replies.pending)
        # (source id, task id) -> a delivery running while another requester's task with the same id holds that id
        # in pending (ids are the sender's): seen by status and cancel all the same. Empty unless ids collide;
        # at most one entry per running handler.
        self.shadowed: dict[tuple[str, str], Delivery] = {}
        self._young: _Finished | _ByKey = []
        self._old: _Finished | _ByKey = []
        self._young_bytes = 0
        self._old_bytes = 0
        self._counters = counters
        self._wall = time.time() - time.perf_counter()  # turns a perf_counter() reading into wall-clock time
        counters["tasks_cancelled"] += 0  # always reported
        counters["task_records_evicted"] += 0

    def __len__(self) -> int:
        return len(self._young) + len(self._old) + len(self.waiting)

    @property
    def bytes(self) -> int:
        """Return the bytes the finished records are estimated to hold."""
        return self._young_bytes + self._old_bytes

    # ------------------------------------------------------------------ the dispatcher's side

    def queued(self, message: dict[str, Any], dest: str | None, key: str | None) -> None:
        """Record a task waiting for a handler slot."""
        source_id, task_id = message["source"]["id"], message["id"]
        self.waiting[(source_id, task_id)] = TaskRecord(task_id, source_id, dest, key)

    def started(self, message: dict[str, Any], delivery: Delivery) -> None:
        """A queued task's handler starts: a cancel that came while it waited means it must not run."""
        rec = self.waiting.pop((message["source"]["id"], message["id"]), None)
        if rec is not None and rec.cancelled:
            delivery.cancelled = delivery.answered = True

    def finished(self, message: dict[str, Any], state: str, at: float | None = None) -> None:
        """Record how a task ended; at is when, by time.perf_counter() (the dispatcher has read it already)."""
        source_id, task_id = message["source"]["id"], message["id"]
        cost = _OVERHEAD + len(source_id) + len(task_id)
        if self._young_bytes + cost > self._half:  # rotate first: each generation stays within half the bound
            self._counters["task_records_evicted"] += len(self._old)
            self._old, self._old_bytes = self._young, self._young_bytes
            self._young, self._young_bytes = [], 0
            self._wall = time.time() - time.perf_counter()  # follows a change of the wall clock, once per generation
        since = time.time() if at is None else at + self._wall
        young = self._young
        if type(young) is list:
            young.append((source_id, task_id, state, since))
        else:
            young[(source_id, task_id)] = (state, since)  # type: ignore[call-overload]
        self._young_bytes += cost

    # ------------------------------------------------------------------ what requesters see

    def live(self, source_id: str, task_id: str) -> Live | None:
        """Return source_id's task task_id while it is queued or running (or its answer is still owed)."""
        delivery = self._delivery(source_id, task_id)
        if delivery is not None and not delivery.cancelled:
            return Live(None, delivery)
        rec = self.waiting.get((source_id, task_id))
        if rec is not None and not rec.cancelled:
            return Live(rec, None)
        return None

    def status(self, source_id: str, task_id: str) -> tuple[str, float | None] | None:
        """Return (state, since) of source_id's task task_id, or None when this agent does not know it."""
        rec = self.waiting.get((source_id, task_id))
        if rec is not None:
            return (CANCELLED, rec.since) if rec.cancelled else (QUEUED, rec.since)
        delivery = self._delivery(source_id, task_id)
        if delivery is not None:
            return (CANCELLED, None) if delivery.cancelled else (RUNNING, None)  # (an answer still owed: running)
        key = (source_id, task_id)
        young = self._young = _by_key(self._young)  # once per generation at most: later queries find it by key
        found = young.get(key)
        if found is None:
            old = self._old = _by_key(self._old)
            found = old.get(key)
        return found

    def _delivery(self, source_id: str, task_id: str) -> Delivery | None:
        """Return the delivery of source_id's task task_id being answered, if any."""
        delivery = self._pending.get(task_id)
        if delivery is not None and delivery.message["source"]["id"] == source_id:
            return delivery
        return self.shadowed.get((source_id, task_id)) if self.shadowed else None

    def requester_of(self, task_id: str) -> str | None:
        """Return the source.id of some task task_id this agent knows (for control.allow agents; a scan, rarely used)."""
        delivery = self._pending.get(task_id)
        if delivery is not None:
            return str(delivery.message["source"]["id"])
        for records in (self.waiting, self._young, self._old):
            for entry in records:  # (source_id, task_id) keys, or (source_id, task_id, state, since) records
                if entry[1] == task_id:
                    return entry[0]
        return None

    def cancel(self, live: Live) -> bool:
        """Stop a task at its requester's word: nothing more is sent for it; return False when it had ended."""
        delivery, rec = live.delivery, live.record
        if rec is not None:
            rec.cancelled = True
            rec.since = time.time()
        elif delivery is not None:
            delivery.cancelled = delivery.answered = True  # whatever the handler does now, it answers nothing
            task = delivery.task
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        else:
            return False
        self._counters["tasks_cancelled"] += 1
        return True

    def gauges(self) -> dict[str, float]:
        """Return the records' count and bytes for get_metrics()."""
        return {"task_records": len(self), "task_records_bytes": self.bytes}
