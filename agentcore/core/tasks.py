"""The tasks this agent serves: each one's lifecycle state and requester, kept within a byte bound, cancellable.

A record is keyed by (requester source.id, task id): ids are the sender's, so the same id from another sender
is another task, and a stranger's query or cancel finds nothing of anyone else's. Live records (queued, running)
are bounded by the dispatcher's own limits (max_concurrency + max_queued); finished ones are dropped a generation at a
time (see TaskTable) so that the records hold at most ``tasks.max_status_bytes``.
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
_LIVE = (QUEUED, RUNNING)
_OVERHEAD = 240  # bytes a record costs besides its strings (the object, its slots, the dict entry)


class TaskRecord:
    """One task this agent took: who asked, where its answer goes, what became of it."""

    __slots__ = ("task_id", "source_id", "dest", "key", "state", "since", "size", "task", "delivery", "cancel_requested")

    def __init__(self, task_id: str, source_id: str, dest: str | None, key: str | None, state: str, since: float,
                 size: int) -> None:
        self.task_id = task_id
        self.source_id = source_id
        self.dest = dest  # where the answer goes: what the requester's cancel must name
        self.key = key  # the public key that signed the task (signed identities), else None
        self.state = state
        self.since = since  # time.time() of the last change
        self.size = size
        self.task: asyncio.Task[Any] | None = None  # the handler's Task while it runs
        self.delivery: Delivery | None = None
        self.cancel_requested = False

    def destination(self) -> str | None:
        """Return where the task's answer goes (worked out only when a cancel asks: it may cost a fallback)."""
        delivery = self.delivery
        return delivery.destination if delivery is not None else self.dest

    def view(self, agent_id: str) -> dict[str, Any]:
        """Return what a status query answers about the task."""
        return {"task_id": self.task_id, "state": self.state, "agent": agent_id, "since": self.since}


class TaskTable:
    """The records of the tasks this agent serves (see the module docstring).

    Two generations of records, each a plain dict: new ones go to the young one; once it holds half the byte
    bound it becomes the old one and the old one is dropped, all but its live records (carried over). Each
    record costs one dict insert, and the bound holds within a factor of two in what is kept.
    """

    def __init__(self, max_bytes: int, counters: Counter[str]) -> None:
        self.max_bytes = max_bytes
        self._young: dict[tuple[str, str], TaskRecord] = {}
        self._old: dict[tuple[str, str], TaskRecord] = {}
        self._young_bytes = 0
        self._old_bytes = 0
        self._counters = counters
        self._queued_or_cancelled = False  # until a task waits or is cancelled, a start finds no record to update
        counters["tasks_cancelled"] += 0  # always reported
        counters["task_records_evicted"] += 0

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    @property
    def bytes(self) -> int:
        """Return the bytes the records are estimated to hold."""
        return self._young_bytes + self._old_bytes

    def get(self, source_id: str, task_id: str) -> TaskRecord | None:
        """Return the record of source_id's task task_id, or None."""
        key = (source_id, task_id)
        rec = self._young.get(key)
        return rec if rec is not None else self._old.get(key)

    def find(self, task_id: str) -> TaskRecord | None:
        """Return the newest record of task_id from any requester (for control.allow agents; a scan, rarely used)."""
        for records in (self._young, self._old):
            for rec in reversed(records.values()):
                if rec.task_id == task_id:
                    return rec
        return None

    def _add(self, source_id: str, task_id: str, dest: str | None, key: str | None, state: str) -> TaskRecord:
        size = _OVERHEAD + len(task_id) + len(source_id) + (len(dest) if dest else 0) + (len(key) if key else 0)
        rec = TaskRecord(task_id, source_id, dest, key, state, time.time(), size)
        young = self._young
        ident = (source_id, task_id)
        old = young.get(ident)
        if old is not None:
            self._young_bytes -= old.size
        young[ident] = rec
        self._young_bytes += size
        if self._young_bytes > self.max_bytes // 2:
            self._turn()
        return rec

    def _turn(self) -> None:
        """The young generation is full: it becomes the old one; the old one's live records carry over."""
        dropped = self._old
        self._old, self._old_bytes = self._young, self._young_bytes
        self._young, self._young_bytes = {}, 0
        for ident, rec in dropped.items():
            if rec.state in _LIVE and ident not in self._old:
                self._young[ident] = rec
                self._young_bytes += rec.size
            else:
                self._counters["task_records_evicted"] += 1

    def queued(self, message: dict[str, Any], dest: str | None, key: str | None) -> None:
        """Record a task waiting for a handler slot."""
        self._queued_or_cancelled = True
        self._add(message["source"]["id"], message["id"], dest, key, QUEUED)

    def start(self, message: dict[str, Any], delivery: Delivery, key: str | None) -> TaskRecord:
        """Record a task whose handler starts now (in the current Task); its cancel_requested says not to run it."""
        source_id, task_id = message["source"]["id"], message["id"]
        rec = self.get(source_id, task_id) if self._queued_or_cancelled else None
        if rec is None or (rec.state != QUEUED and not rec.cancel_requested) or rec.task is not None:
            rec = self._add(source_id, task_id, None, key, RUNNING)  # its destination is the delivery's, read if needed
        elif not rec.cancel_requested:
            rec.state, rec.since = RUNNING, time.time()
        rec.task = asyncio.current_task()
        rec.delivery = delivery
        if rec.cancel_requested:
            delivery.cancelled = delivery.answered = True
        return rec

    def finish(self, rec: TaskRecord, state: str) -> None:
        """Record how a task ended (a cancelled one stays cancelled)."""
        rec.task = None
        rec.delivery = None
        if rec.state != CANCELLED:
            rec.state, rec.since = state, time.time()

    def cancel(self, rec: TaskRecord) -> bool:
        """Stop a task at its requester's word: nothing more is sent for it; return False when it had ended."""
        if rec.state not in _LIVE or rec.cancel_requested:
            return False
        rec.cancel_requested = True
        self._queued_or_cancelled = True
        rec.state, rec.since = CANCELLED, time.time()
        self._counters["tasks_cancelled"] += 1
        delivery = rec.delivery
        if delivery is not None:
            delivery.cancelled = delivery.answered = True  # whatever the handler does now, it answers nothing
        task = rec.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        return True

    def gauges(self) -> dict[str, float]:
        """Return the records' count and bytes for get_metrics()."""
        return {"task_records": len(self), "task_records_bytes": self.bytes}
