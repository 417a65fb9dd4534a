"""Follow a task running on another replica until it ends, even if that replica dies (binding §10.2).

The events of a task come from the JetStream event stream, each published after the KV write it belongs to. A
replica that dies between the two leaves the KV ahead of the stream; one that dies mid-task leaves both silent.
``follow`` therefore merges the event stream with a watch of the task's KV key: a terminal or interrupted state seen
in the KV whose event does not follow within ``grace`` seconds is sent as a ``TaskStatusUpdateEvent`` (and ends the
stream); and while nothing happens for ``probe_interval`` seconds it asks whether the replica that last wrote the
task still answers (``PREFIX.replica.{id}.AgentCard``), ending with ``A2AReplicaGoneError`` when nobody does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import nats.errors
import orjson
from a2a.server.cluster import TaskVersion, VersionedEvent
from a2a.types.a2a_pb2 import Message, Task, TaskState, TaskStatusUpdateEvent
from a2a.utils.proto_utils import parse_lenient
from nats.aio.client import Client as NATSClient
from nats.js.kv import KeyValue

from .binding import CARD, H_VERSION, PROTOCOL_VERSION, A2AReplicaGoneError

__all__ = ("ENDS", "follow", "replica_probe")

#: States after which a stream ends (spec §3.1.2): terminal or interrupted.
ENDS = frozenset((TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED,
                  TaskState.TASK_STATE_REJECTED, TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED))
#: Whether a replica (by id) still answers; False only when it certainly does not (no responders).
Probe = Callable[[str], Awaitable[bool]]


def replica_probe(nc: NATSClient, prefix: str, timeout: float = 2.0) -> Probe:
    """A probe asking PREFIX.replica.{id}.AgentCard: no responders means that replica is gone (a slow answer is alive)."""

    async def alive(replica: str) -> bool:
        try:
            await nc.request(f"{prefix}.replica.{replica}.{CARD}", b"", timeout=timeout, headers={H_VERSION: PROTOCOL_VERSION})
        except nats.errors.NoRespondersError:
            return False
        except nats.errors.TimeoutError:
            return True
        return True

    return alive


def _ends(event: Any) -> bool:
    return isinstance(event, Message) or (isinstance(event, Task | TaskStatusUpdateEvent) and event.status.state in ENDS)


async def follow(task_id: str, events: AsyncIterator[VersionedEvent], kv: KeyValue, key: str, *, after: TaskVersion,
                 probe: Probe | None, probe_interval: float, grace: float) -> AsyncGenerator[VersionedEvent, None]:
    """Yield the task's events (those of ``events``) until one ends it, or the KV or the probe says it ended."""
    # Bounded: a slow consumer holds the pumps back (and JetStream's delivery with them), not this replica's memory.
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=64)

    async def pump_events() -> None:
        async for versioned in events:
            await queue.put(("event", versioned))

    async def pump_kv() -> None:
        watcher = await kv.watch(key, ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is not None and entry.value:
                    await queue.put(("kv", entry))
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated

    async def pumping(pump: Callable[[], Awaitable[None]]) -> None:
        try:
            await pump()
        except Exception as exc:  # the stream or the bucket is gone: the follow ends with that error
            await queue.put(("error", exc))

    pumps = [asyncio.create_task(pumping(pump_events)), asyncio.create_task(pumping(pump_kv))]
    last = after  # the version of the last event sent
    writer: str | None = None  # the replica that last wrote the task
    pending: tuple[Task, int] | None = None  # a final state in the KV whose event has not come yet
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    try:
        while True:
            wait = probe_interval if deadline is None else max(0.0, deadline - loop.time())
            try:
                kind, item = await asyncio.wait_for(queue.get(), wait)
            except asyncio.TimeoutError:
                if pending is not None:  # its event never came: the writer died between the write and the publish
                    task, revision = pending
                    yield VersionedEvent(TaskStatusUpdateEvent(task_id=task.id, context_id=task.context_id,
                                                               status=task.status), TaskVersion(revision))
                    return
                if probe is not None and writer is not None and not await probe(writer):
                    raise A2AReplicaGoneError(
                        message=f"replica {writer!r} running task {task_id} is gone; the task stays in its last state",
                        data={"replica": writer, "taskId": task_id})
                continue
            if kind == "error":
                raise item
            if kind == "event":
                if item.version.is_after(last):
                    last = item.version
                if pending is not None and not TaskVersion(pending[1]).is_after(last):
                    pending, deadline = None, None
                yield item
                if _ends(item.event):
                    return
                continue
            stored = orjson.loads(item.value)
            writer = stored.get("replica") or writer
            task = parse_lenient(stored.get("task") or stored.get("head") or {}, Task())  # jetstream.head
            if task.status.state in ENDS and TaskVersion(item.revision).is_after(last) and pending is None:
                pending, deadline = (task, item.revision), loop.time() + grace
    finally:
        for pump in pumps:
            pump.cancel()
        for pump in pumps:
            with contextlib.suppress(BaseException):
                await pump
