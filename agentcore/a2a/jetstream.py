"""Task state and events in JetStream, so every replica of an A2A agent answers for every task (binding §10.2).

``KVTaskStore`` is a2a-sdk's ``VersionedTaskStore`` on a KV bucket: one key per (owner, task), writes compare-and-set
on the key's revision, which is the task's ``TaskVersion``. ``JetStreamEventStream`` is its ``TaskEventStream`` on a
stream: each event published after the write it belongs to, with that revision; a subscriber on another replica
reads a task's events in order and skips those its snapshot already holds. Give both to ``DefaultRequestHandler``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncGenerator

import nats.js.errors
import orjson
from a2a.server.cluster import (
    ConcurrentTaskModificationError, StoredTask, TaskEventStream, TaskVersion, VersionedEvent, VersionedTaskStore,
)
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.owner_resolver import OwnerResolver, resolve_user_scope
from a2a.types.a2a_pb2 import ListTasksRequest, ListTasksResponse, StreamResponse, Task, TaskState
from a2a.utils.constants import DEFAULT_LIST_TASKS_PAGE_SIZE
from a2a.utils.errors import InternalError, InvalidParamsError
from a2a.utils.proto_utils import parse_lenient, to_stream_response
from a2a.utils.task import ListTasksCursor, decode_list_tasks_cursor, encode_list_tasks_cursor
from google.protobuf.json_format import MessageToDict, MessageToJson, ParseError
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from ..transport.identity import H_SENDER, Signer, Verifier
from .binding import event_of
from .claims import Claims
from .snapshot import current_values
from .watch import Probe, follow

__all__ = ("JetStreamEventStream", "KVTaskStore")

log = logging.getLogger(__name__)

_TERMINAL = {TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED,
             TaskState.TASK_STATE_REJECTED}
H_VERSION = "A2A-Task-Version"  # the KV revision of the write an event belongs to
H_CLAIM = "A2A-Claim"  # an event whose body is a claim on the object store (too large for one message)
_HEADROOM = 4096  # KV/stream subjects and headers share max_payload with the value


def inline_limit(js: JetStreamContext) -> int:
    return int(js._nc.max_payload or 1024 * 1024) - _HEADROOM  # noqa: SLF001 - nats-py exposes no public accessor


def head(stored: dict[str, object]) -> dict[str, object]:
    """The task a KV value holds (ProtoJSON), or, for a task kept in the object store, its id, context and status."""
    task = stored.get("task") or stored.get("head")
    return task if isinstance(task, dict) else {}


def _token(text: str) -> str:
    """text as one KV key / subject token: base32, lowercase, no padding ("_" for the empty string)."""
    return base64.b32encode(text.encode()).decode().rstrip("=").lower() or "_"


def _sort_key(task: Task) -> tuple[bool, int, str]:
    """ListTasks order (spec §3.1.4): last status update first; tasks without a timestamp last; then by id."""
    stamped = task.HasField("status") and task.status.HasField("timestamp")
    return stamped, task.status.timestamp.ToNanoseconds() if stamped else 0, task.id


class KVTaskStore(VersionedTaskStore):
    """Tasks in a JetStream KV bucket, scoped to their owner, versioned by the key's revision."""

    def __init__(self, kv: KeyValue, replica: str = "", owner_resolver: OwnerResolver = resolve_user_scope,
                 claims: Claims | None = None) -> None:
        self.kv = kv
        self.replica = replica  # written with every task this replica saves: the one running it, for CancelTask
        self.owner = owner_resolver
        # Tasks too large for a KV value go to an object store, the value holding a claim on it (claims.py).
        self.claims = claims
        self._claimed: dict[str, dict[str, object]] = {}  # key -> this replica's last claim on a live task (to drop)

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, *, replica: str = "", ttl: float | None = None,
                   max_task_bytes: int = 64 * 1024 * 1024) -> KVTaskStore:
        """Create (or bind to) the bucket, and the object store {bucket}_LARGE for tasks beyond max_payload."""
        claims = await Claims.open(js, f"{bucket}_LARGE", inline_limit(js), ttl=ttl, max_bytes=max_task_bytes)
        return cls(await js.create_key_value(bucket=bucket, history=1, ttl=ttl), replica, claims=claims)

    def _key(self, task_id: str, context: ServerCallContext) -> str:
        return f"{_token(self.owner(context))}.{_token(task_id)}"

    async def save(self, task: Task, *, event: Event | None, prev: Task | None, prev_version: TaskVersion,
                   context: ServerCallContext) -> TaskVersion:
        """Write task if the stored one is still prev_version (a CANCELED write: if the stored one is not final)."""
        key = self._key(task.id, context)
        body = MessageToDict(task)
        value = orjson.dumps({"task": body, "owner": self.owner(context), "replica": self.replica})
        claim = None
        if self.claims is not None and not self.claims.fits(value):
            claim = await self.claims.put(key, orjson.dumps(body))
            status = {"id": task.id, "contextId": task.context_id, "status": body.get("status", {})}
            value = orjson.dumps({"claim": claim, "head": status, "owner": self.owner(context), "replica": self.replica})
        try:
            if task.status.state == TaskState.TASK_STATE_CANCELED:  # the interface's rule: no version check
                stored = await self._entry(key)
                if stored is None or stored[0].status.state in _TERMINAL:
                    raise ConcurrentTaskModificationError(task.id)
                version = await self.kv.update(key, value, last=stored[1])
            elif prev_version.is_missing:
                version = await self.kv.create(key, value)
            else:
                version = await self.kv.update(key, value, last=int(prev_version._value))  # noqa: SLF001
        except nats.js.errors.KeyWrongLastSequenceError:
            if self.claims is not None:
                await self.claims.drop(claim)
            raise ConcurrentTaskModificationError(task.id) from None
        if self.claims is not None:  # the object the previous write claimed is no longer read
            await self.claims.drop(self._claimed.pop(key, None))
            if claim is not None and task.status.state not in _TERMINAL:
                self._claimed[key] = claim
        return TaskVersion(version)

    async def _task(self, stored: dict[str, object]) -> Task:
        claim = stored.get("claim")
        if isinstance(claim, dict) and self.claims is not None:
            return parse_lenient(await self.claims.get(claim), Task())
        return parse_lenient(head(stored), Task())

    async def _entry(self, key: str) -> tuple[Task, int] | None:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # KeyDeletedError included
            return None
        if entry.value is None or entry.revision is None:
            return None
        return await self._task(orjson.loads(entry.value)), entry.revision

    async def replica_of(self, task_id: str, context: ServerCallContext) -> str | None:
        """The replica that last wrote the caller's task while it was not final (None: no such task, or final)."""
        try:
            entry = await self.kv.get(self._key(task_id, context))
        except nats.js.errors.KeyNotFoundError:
            return None
        stored = orjson.loads(entry.value) if entry.value else {}
        task = parse_lenient(head(stored), Task())  # the status is enough: no object fetched for a large task
        return None if task.status.state in _TERMINAL else (stored.get("replica") or None)

    async def get(self, task_id: str, context: ServerCallContext) -> StoredTask | None:
        """Return the caller's task with its version, or None (another owner's task is None too)."""
        found = await self._entry(self._key(task_id, context))
        return None if found is None else StoredTask(found[0], TaskVersion(found[1]))

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        """A page of the caller's tasks, newest status first, filtered as the request says (cursor pagination)."""
        # Every current value of the owner's keys, each task saved before this call included, on any replica (a
        # watch's "all delivered" marker can come before the values: snapshot.py).
        tasks = [await self._task(orjson.loads(value))
                 for value in await current_values(self.kv, f"{_token(self.owner(context))}.>")]
        if params.context_id:
            tasks = [t for t in tasks if t.context_id == params.context_id]
        if params.status:
            tasks = [t for t in tasks if t.status.state == params.status]
        if params.HasField("status_timestamp_after"):
            after_ns = params.status_timestamp_after.ToNanoseconds()
            tasks = [t for t in tasks if t.status.HasField("timestamp") and t.status.timestamp.ToNanoseconds() >= after_ns]
        tasks.sort(key=_sort_key, reverse=True)
        start = 0
        if params.page_token:
            cursor = decode_list_tasks_cursor(params.page_token)
            if cursor is None:
                raise InvalidParamsError(message=f"invalid page token: {params.page_token}")
            start = next((i for i, t in enumerate(tasks) if _sort_key(t) < cursor.sort_key()), len(tasks))
        size = params.page_size or DEFAULT_LIST_TASKS_PAGE_SIZE
        page = tasks[start:start + size]
        more = start + size < len(tasks)
        token = ""
        if more:
            stamped, stamp, last_id = _sort_key(page[-1])
            token = encode_list_tasks_cursor(ListTasksCursor(timestamp_ns=stamp if stamped else None, task_id=last_id))
        return ListTasksResponse(tasks=page, next_page_token=token, total_size=len(tasks), page_size=size)

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        """Delete the caller's task (nothing if there is none)."""
        try:
            await self.kv.delete(self._key(task_id, context))
        except nats.js.errors.KeyNotFoundError:
            pass


class JetStreamEventStream(TaskEventStream):
    """Task events on a JetStream stream over ``{prefix}.events.>``, one subject per task, in write order."""

    def __init__(self, js: JetStreamContext, prefix: str, *, tasks: KeyValue | None = None, probe: Probe | None = None,
                 probe_interval: float = 5.0, grace: float = 1.0, claims: Claims | None = None,
                 signer: Signer | None = None, verifier: Verifier | None = None) -> None:
        self.js = js
        self.prefix = prefix
        self.claims = claims  # events too large for one message go to an object store (claims.py)
        # Anyone allowed to publish on PREFIX.events.> could append to a task's events: with signed identities each
        # event is signed by the replica that writes it, and a reader takes only events signed by a key bound to its
        # own agent id (the replicas'); without them the subject's publish permission is the only guard.
        self.signer = signer
        self.verifier = verifier
        self.dropped = 0  # events read and not passed on: unsigned or forged, malformed, or a claim not the task's
        # With the tasks' bucket, a subscriber also watches the task's key, so that a replica dying between its KV
        # write and the event publish (or mid-task: probe) cannot leave a remote stream open forever (watch.py).
        self.tasks = tasks
        self.probe = probe
        self.probe_interval = probe_interval
        self.grace = grace

    @classmethod
    async def open(cls, js: JetStreamContext, name: str, prefix: str, *, max_age: float = 3600.0,
                   tasks: KeyValue | None = None, probe: Probe | None = None, probe_interval: float = 5.0,
                   grace: float = 1.0, max_event_bytes: int = 64 * 1024 * 1024, signer: Signer | None = None,
                   verifier: Verifier | None = None) -> JetStreamEventStream:
        """Create (or bind to) the stream, and the object store {name}_LARGE (events beyond max_payload, kept as long
        as the stream keeps events); tasks: the KVTaskStore's bucket, to watch."""
        try:
            await js.add_stream(name=name, subjects=[f"{prefix}.events.>"], max_age=max_age)
        except nats.js.errors.BadRequestError:  # it exists (its settings are the deployment's)
            pass
        claims = await Claims.open(js, f"{name}_LARGE", inline_limit(js), ttl=max_age, max_bytes=max_event_bytes)
        return cls(js, prefix, tasks=tasks, probe=probe, probe_interval=probe_interval, grace=grace, claims=claims,
                   signer=signer, verifier=verifier)

    def _subject(self, task_id: str) -> str:
        return f"{self.prefix}.events.{_token(task_id)}"

    async def publish(self, task_id: str, event: VersionedEvent) -> None:
        """Append event; a re-publish of the same (task, version) is dropped by JetStream's duplicate window."""
        version = str(event.version._value)  # noqa: SLF001 - the store's own revision, written back as it came
        body = MessageToJson(to_stream_response(event.event), indent=None).encode()
        headers = {H_VERSION: version, "Nats-Msg-Id": f"{_token(task_id)}:{version}"}
        if self.claims is not None and not self.claims.fits(body):
            body, headers[H_CLAIM] = orjson.dumps(await self.claims.put(_token(task_id), body)), "1"
        subject = self._subject(task_id)
        if self.signer is not None:
            headers = self.signer.headers(subject, "", body, headers)
        await self.js.publish(subject, body, headers=headers)

    async def subscribe(self, task_id: str, *, after: TaskVersion) -> AsyncGenerator[VersionedEvent, None]:
        """Yield task_id's events with a version after ``after``, in order, until the caller stops (or, watching the
        bucket, until the KV shows the task ended or its writer is gone)."""
        events = self._events(task_id, after)
        if self.tasks is None:
            async for versioned in events:
                yield versioned
            return
        # Any owner's key of this task id: task ids are the server's (uuid4), and the caller's own task was found
        # in its scope before this is called.
        async for versioned in follow(task_id, events, self.tasks, f"*.{_token(task_id)}", after=after,
                                      probe=self.probe, probe_interval=self.probe_interval, grace=self.grace):
            yield versioned

    async def _events(self, task_id: str, after: TaskVersion) -> AsyncGenerator[VersionedEvent, None]:
        sub = await self.js.subscribe(self._subject(task_id), ordered_consumer=True,
                                      deliver_policy=api.DeliverPolicy.ALL)
        try:
            async for msg in sub.messages:
                event = await self._event(task_id, msg, after)
                if event is not None:
                    yield event
        finally:
            await sub.unsubscribe()

    async def _event(self, task_id: str, msg: Msg, after: TaskVersion) -> VersionedEvent | None:
        """The event msg holds if it is after ``after`` and genuine; None otherwise (a stranger's is counted, dropped)."""
        headers = msg.headers or {}
        if not self._genuine(msg, headers):
            self.dropped += 1
            return None
        try:
            version = TaskVersion(int(headers.get(H_VERSION, "0")))
            if not version.is_after(after):
                return None
            data = msg.data
            if headers.get(H_CLAIM) and self.claims is not None:
                claim = orjson.loads(data)
                # Only an object written for this task: a claim naming another task's object would read it out.
                if not isinstance(claim, dict) or not str(claim.get("object", "")).startswith(f"{_token(task_id)}."):
                    raise ValueError("a claim on another task's object")
                data = await self.claims.get(claim)
            return VersionedEvent(event_of(parse_lenient(data, StreamResponse())), version)
        except (ValueError, TypeError, ParseError, InternalError) as exc:  # orjson's and protobuf's errors included
            log.warning("A2A task %s: an event on %s dropped: %s", task_id, msg.subject, exc)
            self.dropped += 1
            return None

    def _genuine(self, msg: Msg, headers: dict[str, str]) -> bool:
        verifier = self.verifier
        if verifier is None or self.signer is None:
            return True
        owner = verifier.owner(headers.get(H_SENDER, ""))
        if owner != verifier.agent_id:  # signed by a key not bound to this agent's id: not one of its replicas
            return False
        return verifier.check(msg.subject, "", headers, msg.data, owner, fresh=False) is None

    async def destroy(self, task_id: str) -> None:
        """Nothing at once: the stream's max_age removes a finished task's events, so a late reader still ends."""
