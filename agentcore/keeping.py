"""Results of persisted tasks kept in JetStream for a requester that was away, and the tasks' stored status.

The requester stamps each persisted task with a fresh secret (``routing.keep``, ``transport.sealing``) and
remembers it. The worker that answers the task sends the result live as before and meanwhile seals it with
the secret and keeps it in the results bucket for ``jetstream.result_ttl`` (``transport.taskstore``); the
task is acked once it is kept (until then JetStream would redeliver it). A result that does not fit in one
message is kept through the object bucket first, then sent live as a small notice (``payload.kept``).
Statuses are written in the background, never on a send's or an answer's path; a task answered within
_STATUS_AFTER has only its final status written. The requester takes a kept result:

* live, as usual, when it was connected;
* after a reconnect, for a request still waiting (the result may have gone by while it was away);
* on a notice (whoever sent it: a notice only makes the requester look; what it finds must open with the
  secret);
* later with ``await agent.result(task_id)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import nats.errors

from .core.host import Host
from .core.records import Delivery
from .envelope import decode, encode, new_message, raise_for_error
from .errors import AgentCoreError, EnvelopeError, PersistenceError, RequestTimeoutError
from .transport.inline import REJECT, Accept
from .transport.sealing import locator, new_secret, parse_secret, seal, unseal
from .transport.taskstore import TaskStore

__all__ = ("Keeping",)

log = logging.getLogger("agentcore.persistence")

# Seconds a task waits (requester) or runs (worker) before it is recorded queued or running: a task answered
# sooner has only its final status written, one write instead of three.
_STATUS_AFTER = 0.05
_STATUS_IN_FLIGHT = 256  # status writes under way at most; more are skipped (counted in statuses_skipped)
_REMEMBERED = 65536  # secrets of the requester's own tasks it keeps in memory at most (oldest dropped first)


class Keeping:
    """Both ends of kept results and task status over one TaskStore (see the module docstring)."""

    def __init__(self, host: Host, store: TaskStore) -> None:
        self._host = host
        self.store = store
        self._counters = host.metrics.counters
        self._task_prefix = f"{host.topics.prefix}.task."
        self._track = bool(host.config["jetstream.track_status"])
        # task id -> (secret, target, when it is forgotten): the requester's own tasks, added by its own sends only.
        self._secrets: OrderedDict[str, tuple[bytes, str | None, float]] = OrderedDict()
        self._waiting: dict[str, Callable[[dict[str, Any]], bool]] = {}  # requests still waiting: what answers each
        self._looking: dict[str, asyncio.Future[None]] = {}  # task id -> the look for its kept result after a reconnect
        # task id -> this agent's write of "running" (its timer until it starts): the final write follows its revision.
        self._revisions: OrderedDict[str, asyncio.TimerHandle | asyncio.Future[int | None]] = OrderedDict()
        self._in_flight = 0  # status writes under way

    # ------------------------------------------------------------------ requester

    def stamp(self, message: dict[str, Any]) -> None:
        """Give a persisted task a secret its result will be sealed with, and remember it."""
        secret = new_secret()
        message["routing"]["keep"] = secret
        loop = asyncio.get_running_loop()
        secrets = self._secrets
        secrets[message["id"]] = (parse_secret(secret) or b"", message.get("target"),
                                  loop.time() + self._host.config["jetstream.result_ttl"])
        now = loop.time()
        while secrets and (len(secrets) > _REMEMBERED or next(iter(secrets.values()))[2] < now):
            secrets.popitem(last=False)

    def watch(self, accept: Accept, task_id: str, resolve: Callable[[dict[str, Any]], bool]) -> Accept:
        """Return accept extended to notices of kept results; a result recovered for task_id goes to resolve."""
        self._waiting[task_id] = resolve
        host = self._host

        def accepting(msg: Any) -> Any:
            reply = accept(msg)
            if reply is not REJECT and reply["payload"].get("kept") is True:
                # Too large to send: it was kept. Look there; what is found must open with our secret.
                self._counters["kept_notices"] += 1
                host.spawn(self.recover(task_id))
                return REJECT
            return reply

        return accepting

    def unwatch(self, task_id: str) -> None:
        """The request ended: stop recovering its result."""
        self._waiting.pop(task_id, None)
        looking = self._looking.pop(task_id, None)
        if looking is not None:
            looking.cancel()

    def reconnected(self) -> None:
        """Results may have gone by while the connection was down: look for those of the requests still waiting."""
        # A result is kept while it is sent live: one that went by may land a round trip later. Its worker keeps it
        # within half of ack_wait (or the task is redelivered and answered again): watch that long, until answered.
        wait = self._host.config["jetstream.ack_wait"]
        for task_id in list(self._waiting):
            looking = asyncio.ensure_future(self.recover(task_id, wait))
            earlier = self._looking.get(task_id)
            if earlier is not None:
                earlier.cancel()
            self._looking[task_id] = looking
            self._host.spawn(looking)

    async def recover(self, task_id: str, wait: float = 0.0) -> None:
        """Answer the waiting request task_id with its kept result, when there is one (or one comes within wait)."""
        try:
            reply = await self._kept(task_id, wait)
        except (AgentCoreError, nats.errors.Error) as exc:  # the store unreachable right now: the live answer may still come
            log.debug("agent %s: no kept result for %s yet: %s", self._host.agent_id, task_id, exc)
            return
        resolve = self._waiting.get(task_id)
        if reply is not None and resolve is not None and resolve(reply):
            self._counters["results_recovered"] += 1

    async def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Return the content of the kept result of task_id, a persisted task this agent sent (waiting up to timeout)."""
        timeout = self._host.config["agent.request_timeout"] if timeout is None else timeout
        reply = await self._kept(task_id, timeout)
        if reply is None:
            raise RequestTimeoutError(f"no result of task {task_id} was kept within {timeout}s", task_id=task_id)
        self._counters["results_recovered"] += 1
        raise_for_error(reply)
        return reply["payload"]["content"]

    async def _kept(self, task_id: str, timeout: float) -> dict[str, Any] | None:
        known = self._secrets.get(task_id)
        if known is None:
            raise PersistenceError(f"agent {self._host.agent_id} sent no persisted task {task_id!r} that it remembers "
                                   "(only the requester can open a kept result, within jetstream.result_ttl)")
        secret, target, _ = known
        limit = self._host.config["jetstream.results_max_bytes"]
        sealed = await self.store.fetch(locator(secret, task_id), limit, timeout)
        if sealed is None:
            return None
        data = unseal(secret, task_id, sealed)
        try:
            reply = decode(data) if data is not None else None
        except EnvelopeError:
            reply = None
        if reply is None or reply.get("correlationId") != task_id or (target is not None and reply["source"]["id"] != target):
            self._counters["replies_rejected"] += 1  # not sealed with our secret for this task: someone else's write
            return None
        kept: dict[str, Any] = reply
        return kept

    # ------------------------------------------------------------------ worker

    def wants(self, delivery: Delivery) -> bool:
        """Whether delivery is a persisted task whose result is kept (its requester asked) or whose status is tracked."""
        if not delivery.subject.startswith(self._task_prefix):
            return False
        routing = delivery.message.get("routing")
        return bool(routing and routing.get("keep")) or self._track

    async def keep(self, delivery: Delivery, data: bytes, error: dict[str, Any] | None) -> bytes:
        """Keep the encoded result of delivery sealed, record the task's status; return what to send live.

        A result that fits in a message is kept while it is sent (delivery.kept: the task is acked once it is kept,
        so a worker that dies first has it redelivered and answered again); one too large is kept first, then
        announced by a notice.
        """
        message = delivery.message
        task_id = message["id"]
        secret = parse_secret((message.get("routing") or {}).get("keep"))  # none: a peer that keeps nothing
        if self._track:  # in the background: a round trip or two that neither the answer nor the ack waits for
            self.finished(task_id, "done" if error is None else ("cancelled" if error.get("code") == "cancelled" else "failed"))
        if secret is None:
            return data
        sealed = seal(secret, task_id, data)
        key = locator(secret, task_id)
        if len(data) <= self._host.connection.max_payload():
            # Started on the loop's next turn: the answer goes out first, straight to the socket, and the
            # server stores nothing ahead of it.
            keeping = asyncio.ensure_future(self._keep(key, sealed, task_id))
            self._host.spawn(keeping)  # a stop waits for it
            delivery.kept = keeping
            return data
        if await self._keep(key, sealed, task_id):  # the requester looks when the notice comes: kept by then
            return notice(self._host.agent_id, self._host.agent_type, message)
        return data

    async def _keep(self, key: str, sealed: bytes, task_id: str) -> bool:
        try:
            await self.store.keep(key, sealed)
        except (AgentCoreError, nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            self._counters["results_not_kept"] += 1
            log.warning("agent %s could not keep the result of %s: %s", self._host.agent_id, task_id, exc)
            return False
        self._counters["results_kept"] += 1
        return True

    # ------------------------------------------------------------------ status, off every answer's path

    def queued(self, task_id: str) -> asyncio.TimerHandle:
        """Record task_id queued unless its answer comes within _STATUS_AFTER seconds (cancel the returned handle then)."""
        return asyncio.get_running_loop().call_later(_STATUS_AFTER, self._write, task_id, "queued")

    def running(self, task_id: str) -> None:
        """Record that this agent took task_id, once it has held it _STATUS_AFTER seconds (a quick one: only its end)."""
        revisions = self._revisions
        revisions[task_id] = asyncio.get_running_loop().call_later(_STATUS_AFTER, self._write_running, task_id)
        while len(revisions) > _REMEMBERED:  # tasks whose final status another replica wrote: forgotten, oldest first
            earlier = revisions.popitem(last=False)[1]
            if not isinstance(earlier, asyncio.Future):  # its timer (uvloop's handles are no asyncio.TimerHandle)
                earlier.cancel()

    def _write_running(self, task_id: str) -> None:
        if self._revisions.get(task_id) is not None:
            written = self._write(task_id, "running")
            if written is not None:
                self._revisions[task_id] = written  # the revision the final write most likely follows

    def finished(self, task_id: str, status: str) -> None:
        """Record task_id's final status in the background (compare-and-set on this agent's own running write)."""
        earlier = self._revisions.pop(task_id, None)
        if earlier is not None and not isinstance(earlier, asyncio.Future):
            earlier.cancel()  # not written yet, and no longer true: the task goes straight to its end
            earlier = None
        self._write(task_id, status, earlier)

    def _write(self, task_id: str, status: str, after: asyncio.Future[int | None] | None = None) -> asyncio.Future[int | None] | None:
        """Start one status write, unless _STATUS_IN_FLIGHT are under way already (then it is skipped, and counted)."""
        if self._in_flight >= _STATUS_IN_FLIGHT:
            self._counters["statuses_skipped"] += 1  # the store lags behind: the status is advisory, the tasks go on
            return None
        self._in_flight += 1
        writing = asyncio.ensure_future(self.mark(task_id, status, after))
        writing.add_done_callback(self._written)
        self._host.spawn(writing)  # a stop waits for it
        return writing

    def _written(self, _: asyncio.Future[int | None]) -> None:
        self._in_flight -= 1

    async def mark(self, task_id: str, status: str, after: asyncio.Future[int | None] | None = None) -> int | None:
        """Record task_id's status (forward only), logging a store that cannot take it; return the revision written.

        after: this agent's own earlier write of the task (running): a final write follows its revision.
        """
        expect = None
        if after is not None:
            await asyncio.wait((after,))
            expect = None if after.cancelled() else after.result()
        try:
            return await self.store.set_status(task_id, status, self._host.agent_id, expect=expect,
                                               fresh=status != "running" and expect is None)
        except Exception as exc:  # the store unreachable: the status is advisory, the task goes on
            log.debug("agent %s could not record %s as %s: %s", self._host.agent_id, task_id, status, exc)
            return None

    async def status_of(self, task_id: str) -> dict[str, Any] | None:
        """Return the stored status record of a persisted task ({"status", "agent", "at"}), None when none is kept."""
        return await self.store.status_of(task_id)


def notice(agent_id: str, agent_type: str, request: dict[str, Any]) -> bytes:
    """Return the small result that tells a requester its (too large) result was kept."""
    message = new_message("result", None, source_id=agent_id, source_type=agent_type, target=request["source"]["id"],
                          correlation_id=request["id"])
    message["payload"]["kept"] = True
    data: bytes = encode(message)
    return data
