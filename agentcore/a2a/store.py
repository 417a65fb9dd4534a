"""A2A task stores bounded by bytes (docs/limits.md): in memory on one replica (``a2a.max_store_bytes``), and the
JetStream bucket of replicas (``a2a.jetstream_max_bytes``, ``CappedKVTaskStore`` at the end).

a2a-sdk's ``InMemoryTaskStore`` keeps every task for ever; anyone who may send to the agent adds tasks. This store
keeps the same tasks (it delegates to one) and counts each as its protobuf size plus a fixed overhead. Past the
bound it forgets finished tasks (completed, failed, cancelled, rejected), least recently used first; when only
unfinished ones are left, a *new* task is refused with ``OverloadedError`` (``bound``: ``a2a.max_store_bytes``),
which reaches the requester as the binding's ``OVERLOADED`` error. A task already stored is always updated: its
executor runs on, and it is forgotten once finished and least recently used.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import nats.js.errors
from a2a.server.cluster import TaskVersion
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.owner_resolver import OwnerResolver, resolve_user_scope
from a2a.server.tasks import InMemoryTaskStore, TaskStore
from a2a.types.a2a_pb2 import ListTasksRequest, ListTasksResponse, Task, TaskState
from nats.js.kv import KeyValue

from .errors import OverloadedError
from .claims import Claims
from .jetstream import KVTaskStore

__all__ = ("BoundedTaskStore", "CappedKVTaskStore", "FINISHED")

#: States after which a task changes no more: such tasks may be forgotten to make room.
FINISHED = frozenset((TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED,
                      TaskState.TASK_STATE_REJECTED))
#: The share of a JetStream bucket kept for the updates of running tasks: new ones are refused beyond the rest.
HEADROOM = 0.1
#: JetStream's error code for a write over a stream's (a KV bucket's) max_bytes.
MAXIMUM_BYTES_EXCEEDED = 10077
#: Counted for each task besides its protobuf bytes: the dict entries, the key, the context kept to delete it.
OVERHEAD = 512


@dataclass(slots=True)
class _Kept:
    size: int
    finished: bool
    context: ServerCallContext  # the saving call's context: deleting with it resolves to the same owner


class BoundedTaskStore(TaskStore):
    """a2a-sdk's InMemoryTaskStore, bounded by bytes: finished tasks forgotten LRU, new ones refused when full."""

    def __init__(self, max_bytes: int, owner_resolver: OwnerResolver = resolve_user_scope) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0  # finished tasks forgotten to make room
        self.refused = 0  # new tasks refused: the store held only unfinished ones
        self._owner = owner_resolver
        self._store = InMemoryTaskStore(owner_resolver=owner_resolver)
        self._kept: OrderedDict[tuple[str, str], _Kept] = OrderedDict()  # least recently used first

    async def save(self, task: Task, context: ServerCallContext) -> None:
        """Store task (an update always; a new task only if room can be made), forgetting finished tasks as needed."""
        key = (self._owner(context), task.id)
        size = task.ByteSize() + OVERHEAD
        old = self._kept.get(key)
        old_size = old.size if old is not None else 0
        over = self.bytes - old_size + size - self.max_bytes
        if over > 0:
            self.bytes -= await self._evict(over, key)
            if old is None and self.bytes + size > self.max_bytes:
                self.refused += 1
                raise OverloadedError(
                    message=f"the agent's task store is full ({self.bytes} of a2a.max_store_bytes {self.max_bytes} "
                            "bytes, held by unfinished tasks)",
                    data={"bound": "a2a.max_store_bytes", "limit": str(self.max_bytes)})
        await self._store.save(task, context)
        self._kept[key] = _Kept(size, task.status.state in FINISHED, context)
        self._kept.move_to_end(key)
        self.bytes += size - old_size

    async def _evict(self, wanted: int, keep: tuple[str, str]) -> int:
        """Forget finished tasks, least recently used first, until wanted bytes are freed; return the bytes freed."""
        freed = 0
        for key, kept in list(self._kept.items()):
            if freed >= wanted:
                break
            if kept.finished and key != keep:
                del self._kept[key]
                await self._store.delete(key[1], kept.context)
                freed += kept.size
                self.evictions += 1
        return freed

    async def get(self, task_id: str, context: ServerCallContext) -> Task | None:
        """Return the caller's task (and mark it recently used), or None."""
        key = (self._owner(context), task_id)
        if key in self._kept:
            self._kept.move_to_end(key)
        return await self._store.get(task_id, context)

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        """Return a page of the caller's tasks (as InMemoryTaskStore does)."""
        return await self._store.list(params, context)

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        """Forget the caller's task."""
        kept = self._kept.pop((self._owner(context), task_id), None)
        if kept is not None:
            self.bytes -= kept.size
        await self._store.delete(task_id, context)


class CappedKVTaskStore(KVTaskStore):
    """KVTaskStore on a bucket bounded by bytes (``a2a.jetstream_max_bytes``): new tasks refused OVERLOADED near full.

    A KV bucket makes no room by itself (a full one refuses every write, the updates of running tasks too), so a
    new task is refused once the bucket holds 90% of its bytes: the last tenth is kept for the tasks already
    running, which go on and finish. Finished tasks leave the bucket after ``a2a.task_ttl``.
    """

    def __init__(self, kv: KeyValue, replica: str, max_bytes: int, claims: Claims | None = None) -> None:
        super().__init__(kv, replica, claims=claims)
        self.max_bytes = max_bytes
        self.refused = 0

    def _refuse(self) -> OverloadedError:
        self.refused += 1
        return OverloadedError(
            message=f"the agent's JetStream task bucket is full (a2a.jetstream_max_bytes {self.max_bytes})",
            data={"bound": "a2a.jetstream_max_bytes", "limit": str(self.max_bytes)})

    async def save(self, task: Task, *, event: Event | None, prev: Task | None, prev_version: TaskVersion,
                   context: ServerCallContext) -> TaskVersion:
        """Write as KVTaskStore does; a new task when the bucket is nearly full, or a write it refuses: OVERLOADED."""
        if prev_version.is_missing:
            status = await self.kv.status()
            if status.stream_info.state.bytes >= self.max_bytes * (1 - HEADROOM):
                raise self._refuse()
        try:
            return await super().save(task, event=event, prev=prev, prev_version=prev_version, context=context)
        except nats.js.errors.APIError as exc:
            if exc.err_code != MAXIMUM_BYTES_EXCEEDED:
                raise
            raise self._refuse() from None
