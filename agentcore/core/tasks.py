"""The tasks this agent serves: each one's lifecycle state and requester, kept within a byte bound, cancellable.

A task is known by (requester source.id, task id): ids are the sender's, so the same id from another sender is
another task, and a stranger's query or cancel finds nothing of anyone else's. A running task is its Delivery,
already held by id while it is answered (``Replies.pending``): the handler's Task and signing key ride on it, so
starting a handler costs no record. A queued task has a small record until its handler starts. A finished task
leaves (state, time) in the compiled ``FinishedLedger``: fixed-size records in two generations, bounded by
``tasks.max_status_bytes``, found by the keyed hashes of the requester's id and the task id; no Python object is
kept per finished task.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .._impl import FinishedLedger
from ..fields import ID, SOURCE
from .records import Delivery

__all__ = ("QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED", "STATES", "TaskRecord", "TaskTable")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)


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

    Finished tasks go to the ledger's young generation; once it is full it becomes the old one and the old one is
    dropped. So the most recent ones are kept, never more than the bound, each in a fixed-size C record.
    """

    #: Record that a task ended (message, state, time.perf_counter() reading or None): the ledger's own add.
    finished: Callable[[dict[str, Any], str, float | None], None]

    def __init__(self, max_bytes: int, counters: Counter[str], pending: dict[str, Delivery]) -> None:
        self.max_bytes = max_bytes
        self.waiting: dict[tuple[str, str], TaskRecord] = {}  # queued tasks (bounded by agent.max_queued)
        self._pending = pending  # message id -> the delivery being answered (Replies.pending)
        # (source id, task id) -> a delivery running while another requester's task with the same id holds that id
        # in pending (ids are the sender's): seen by status and cancel all the same. Empty unless ids collide;
        # at most one entry per running handler.
        self.shadowed: dict[tuple[str, str], Delivery] = {}
        self._ledger = FinishedLedger(max_bytes, counters, STATES)
        self.finished = self._ledger.add  # called per finished task: no Python frame of ours in between
        self._counters = counters
        counters["tasks_cancelled"] += 0  # always reported

    def __len__(self) -> int:
        return len(self._ledger) + len(self.waiting)

    @property
    def bytes(self) -> int:
        """Return the bytes the finished records hold."""
        return int(self._ledger.bytes)

    # ------------------------------------------------------------------ the dispatcher's side

    def queued(self, message: dict[str, Any], dest: str | None, key: str | None) -> None:
        """Record a task waiting for a handler slot."""
        source_id, task_id = message[SOURCE][ID], message[ID]
        self.waiting[(source_id, task_id)] = TaskRecord(task_id, source_id, dest, key)

    def started(self, message: dict[str, Any], delivery: Delivery) -> None:
        """A queued task's handler starts: a cancel that came while it waited means it must not run."""
        rec = self.waiting.pop((message[SOURCE][ID], message[ID]), None)
        if rec is not None and rec.cancelled:
            delivery.cancelled = delivery.answered = True

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
        return self._ledger.find(source_id, task_id)  # type: ignore[no-any-return,unused-ignore]

    def _delivery(self, source_id: str, task_id: str) -> Delivery | None:
        """Return the delivery of source_id's task task_id being answered, if any."""
        delivery = self._pending.get(task_id)
        if delivery is not None and delivery.message[SOURCE][ID] == source_id:
            return delivery
        return self.shadowed.get((source_id, task_id)) if self.shadowed else None

    def status_any(self, task_id: str) -> tuple[str, float | None] | None:
        """Return (state, since) of a task task_id of any requester (for control.allow agents; rarely used)."""
        delivery = self._pending.get(task_id)
        if delivery is not None:
            return self.status(delivery.message[SOURCE][ID], task_id)
        # a scan: queued tasks are few (agent.max_queued), shadowed ones fewer (colliding ids of running tasks)
        for source_id, live_id in (*self.waiting, *self.shadowed):
            if live_id == task_id:
                return self.status(source_id, task_id)
        return self._ledger.find(None, task_id)  # type: ignore[no-any-return,unused-ignore]

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
