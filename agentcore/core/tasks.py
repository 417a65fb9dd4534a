"""The tasks this agent serves: each one's lifecycle state and requester, kept within a byte bound, cancellable.

A record is keyed by (requester source.id, task id): ids are the sender's, so the same id from another sender
is another task, and a stranger's query or cancel finds nothing of anyone else's. Live records (queued, running)
are bounded by the dispatcher's own limits (max_concurrency + max_queued); finished ones are dropped oldest first
once the records hold more than ``tasks.max_status_bytes``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from .records import Delivery

__all__ = ("QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED", "STATES", "TaskRecord", "TaskTable")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
_LIVE = (QUEUED, RUNNING)
_OVERHEAD = 240  # bytes a record costs besides its strings (the object, its slots, the dict entry)


@dataclass(eq=False, slots=True)
class TaskRecord:
    """One task this agent took: who asked, where its answer goes, what became of it."""

    task_id: str
    source_id: str
    dest: str | None  # where the answer goes: what the requester's cancel must name
    key: str | None  # the public key that signed the task (signed identities), else None
    state: str
    since: float  # time.time() of the last change
    size: int
    task: asyncio.Task[Any] | None = None  # the handler's Task while it runs
    delivery: Delivery | None = None
    cancel_requested: bool = False

    def view(self, agent_id: str) -> dict[str, Any]:
        """Return what a status query answers about the task."""
        return {"task_id": self.task_id, "state": self.state, "agent": agent_id, "since": self.since}


class TaskTable:
    """The records of the tasks this agent serves (see the module docstring)."""

    def __init__(self, max_bytes: int, counters: Counter[str]) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._records: OrderedDict[tuple[str, str], TaskRecord] = OrderedDict()
        self._counters = counters
        counters["tasks_cancelled"] += 0  # always reported
        counters["task_records_evicted"] += 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, source_id: str, task_id: str) -> TaskRecord | None:
        """Return the record of source_id's task task_id, or None."""
        return self._records.get((source_id, task_id))

    def find(self, task_id: str) -> TaskRecord | None:
        """Return the newest record of task_id from any requester (for control.allow agents; a scan, rarely used)."""
        for rec in reversed(self._records.values()):
            if rec.task_id == task_id:
                return rec
        return None

    def _add(self, message: dict[str, Any], dest: str | None, key: str | None, state: str) -> TaskRecord:
        source_id = message["source"]["id"]
        task_id = message["id"]
        size = _OVERHEAD + len(task_id) + len(source_id) + (len(dest) if dest else 0) + (len(key) if key else 0)
        rec = TaskRecord(task_id, source_id, dest, key, state, time.time(), size)
        old = self._records.pop((source_id, task_id), None)
        if old is not None:
            self.bytes -= old.size
        self._records[(source_id, task_id)] = rec
        self.bytes += size
        if self.bytes > self.max_bytes:
            self._evict()
        return rec

    def queued(self, message: dict[str, Any], dest: str | None, key: str | None) -> None:
        """Record a task waiting for a handler slot."""
        self._add(message, dest, key, QUEUED)

    def start(self, message: dict[str, Any], delivery: Delivery, key: str | None) -> TaskRecord:
        """Record a task whose handler starts now (in the current Task); its cancel_requested says not to run it."""
        rec = self._records.get((message["source"]["id"], message["id"]))
        if rec is None or (rec.state != QUEUED and not rec.cancel_requested) or rec.task is not None:
            rec = self._add(message, delivery.destination, key, RUNNING)
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
        rec.state, rec.since = CANCELLED, time.time()
        self._counters["tasks_cancelled"] += 1
        delivery = rec.delivery
        if delivery is not None:
            delivery.cancelled = delivery.answered = True  # whatever the handler does now, it answers nothing
        task = rec.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        return True

    def _evict(self) -> None:
        """Drop the oldest finished records until the bound holds again (live ones are bounded by the dispatcher)."""
        records = self._records
        for _ in range(len(records)):
            if self.bytes <= self.max_bytes:
                return
            key, rec = next(iter(records.items()))
            if rec.state in _LIVE:
                records.move_to_end(key)  # still wanted (cancel, status): the next oldest goes instead
                continue
            del records[key]
            self.bytes -= rec.size
            self._counters["task_records_evicted"] += 1

    def gauges(self) -> dict[str, float]:
        """Return the records' count and bytes for get_metrics()."""
        return {"task_records": len(self._records), "task_records_bytes": self.bytes}
