"""The core engine: one agent's identity, parts and lifecycle, offered to feature components as their Host."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client as NATSClient

from .._eager import release_spare, start_eager
from .._impl import IMPLEMENTATION, validate_token
from ..config import AgentConfig
from ..envelope import encode, new_message, raise_for_error
from ..errors import (
    AgentCoreError, DuplicateAgentError, NoRespondersError, NotConnectedError, PermissionDeniedError,
    PersistenceError, RemoteError,
    RequestTimeoutError,
)
from ..fields import PAYLOAD
from ..metrics import AgentMetrics
from ..topics import Topics
from ..transport.connection import Connection
from ..transport.offload import pull_result, request_large
from ..transport.reader import dropped as frames_dropped
from ..transport.settlement import Settlement
from ..transport.tracecontext import CURRENT
from .caching import MISS
from .control import Control, Face
from .dispatch import Dispatcher
from .host import Component, PersistedSource, RequestRoute
from .records import MESSAGE, RAW, TASK, CacheMode, Delivery, Handler, Registration
from .registry import Registry, is_async
from .replies import Keeper, Replies
from .reply_check import ReplyCheck
from .task_control import StatusSource, TaskControl
from .tasks import TaskTable
from .sync_calls import SyncCalls
from .watchdog import LoopWatchdog

__all__ = ("Core",)

log = logging.getLogger("agentcore.agent")


class Core:
    """Wire the connection, registry, dispatcher, replies and control of one agent, and run its lifecycle."""

    def __init__(self, agent_id: str, agent_type: str, config: AgentConfig, default: Callable[[], Handler]) -> None:
        self.agent_id = agent_id
        self.agent_type = agent_type
        self.config = config
        self.environment: str = config["nats.environment"]
        self.topics = Topics(self.environment, config["nats.subject_prefix"])
        # Replicas may share an agent id (a queue group shares their work); the instance id tells them apart.
        self.instance: str = config["agent.instance"] or os.urandom(4).hex()
        self.metrics = AgentMetrics()
        self.metrics.counters["replies_rejected"] = 0  # always reported: answers to our requests that failed verification
        self.components: list[Component] = []
        self.setup: Callable[[], None] = self.register_base  # run at start, before subscribing (the guide's hook)
        self._source = {"id": agent_id, "type": agent_type}  # shared by every envelope this agent sends
        self._status = "created"
        self.started_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.stopped: asyncio.Event | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._subjects: dict[str, str] = {}  # topic -> validated subject, for requests
        self._route_prefix = "\0"  # requests to subjects starting with it go through _route; nothing does by default
        self._route: RequestRoute | None = None
        self.connection = Connection(agent_id, config, self.metrics, closing=self._closing, reconnected=self._reconnected)
        self.settlement = Settlement(self.metrics.counters, lambda step: self.spawn(self.try_send(step)))
        self.replies = Replies(self._source, config, self.metrics, self.connection, self.settlement, self.spawn)
        self.registry = Registry(self.topics, default)
        self.sync_calls = SyncCalls(agent_id, config, self.metrics, lambda: self._status == "stopped")
        self.tasks = TaskTable(config["tasks.max_status_bytes"], self.metrics.counters, self.replies.pending)
        self.task_control = TaskControl(agent_id, agent_type, self.topics, self.connection, config, self.metrics,
                                        self.tasks, lambda request_id: self._verifier(request_id, None).accept, self.spawn)
        self.work = Dispatcher(agent_id, config, self.topics, self.metrics, self.registry.index, self.connection,
                               self.replies, self.settlement, self.spawn, self.sync_calls, default, self.tasks)
        self.registry.dispatch = self.work.dispatch
        self.watchdog = LoopWatchdog(agent_id, config["agent.loop_lag_warn"], self.metrics,
                                      (Dispatcher._handle.__code__, Dispatcher._handle_plain.__code__))
        # Control, discovery and status go through the agent's public methods, read when used: a subclass's
        # describe() (or pause, resume, publish) is what the bus sees. The agent sets face to itself.
        self.face: Face = self
        self.control = Control(agent_id, agent_type, self.topics, self.connection, config=config, metrics=self.metrics,
                               status=lambda: self._status,
                               describe=lambda: self.face.describe(), capabilities=self.registry.capabilities,
                               pause=lambda: self.face.pause(), resume=lambda: self.face.resume(),
                               shutdown=self._shutdown_soon, publish=lambda *a, **k: self.face.publish(*a, **k))

    # ------------------------------------------------------------------ the Host interface

    @property
    def status(self) -> str:
        """Return the lifecycle status: created, running, paused, stopping or stopped."""
        return self._status

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """Return the event loop the agent runs on (None before it starts)."""
        return self._loop

    def on_loop_thread(self) -> bool:
        """Return whether the caller runs on the agent's loop thread."""
        return self._loop_thread == threading.get_ident()

    def register(self, subject: str, handler: Handler, *, kind: int = TASK, queue: str = "", system: bool = False,
                 fallback: Callable[[dict[str, Any]], str | None] | None = None) -> Registration:
        """Route messages on subject to handler (synced to the server by sync() or at start)."""
        return self.registry.register(subject, handler, kind=kind, queue=queue, system=system, fallback=fallback)

    def capability_registrations(self) -> dict[str, list[Registration]]:
        """Return each declared capability's task registrations (their counters are its service-API stats)."""
        registry = self.registry
        return {cap: registry.registrations.get((self.topics.task_pattern(cap), cap), []) for cap in registry.capabilities}

    def unregister(self, subject: str, handler: Handler | None = None) -> None:
        """Remove the registrations of subject (only handler's, when given)."""
        self.registry.unregister(subject, handler)

    async def sync(self) -> None:
        """Make the wire subscriptions match the registrations and return once the server has them."""
        nc = self.connection.nc
        if nc is not None:
            mark = self.connection.denials.count
            await self.registry.sync(nc, lambda: self._status)  # ends with a PING: a denied SUB was reported by then
            self.connection.raise_denied(mark, "subscribe")

    def schedule_sync(self) -> None:
        """Sync the subscriptions soon (from any thread), when the agent is connected."""
        loop = self._loop
        if loop is None or self.connection.nc is None:
            return
        if self.on_loop_thread():
            self.spawn(loop.create_task(self.sync()))
        else:
            asyncio.run_coroutine_threadsafe(self.sync(), loop).result(10)

    def spawn(self, work: Coroutine[Any, Any, Any] | asyncio.Future[Any] | None) -> None:
        """Run work in the background (a coroutine starts at once, until it first suspends); stopping waits for it."""
        if work is None:
            return
        if not isinstance(work, asyncio.Future):
            work = start_eager(work)
            if work is None:
                return  # it finished without suspending
        if work.done():
            self._untrack(work)
            return
        self._tasks.add(work)
        work.add_done_callback(self._untrack)

    def _untrack(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.error("agent %s background step failed", self.agent_id, exc_info=fut.exception())

    async def call_handler(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a user function: async ones on the loop, sync ones as agent.sync_handlers says (core/sync_calls.py)."""
        if is_async(fn):
            return await fn(*args)
        return await self.sync_calls.call(fn, *args)

    def pending(self, message_id: str) -> Delivery | None:
        """Return the request with message_id that this agent still holds (claim() tells whether it is answered)."""
        return self.replies.pending.get(message_id)

    def hold(self, delivery: Delivery) -> None:
        """Make delivery answerable by its id (publish_result) until unhold()."""
        self.replies.pending.setdefault(delivery.message["id"], delivery)

    def unhold(self, delivery: Delivery) -> None:
        """Stop offering delivery by its id."""
        self.replies.forget(delivery)

    def claim(self, delivery: Delivery) -> bool:
        """Take over answering delivery (a stream, say); False when it was answered already."""
        return self.replies.claim(delivery)

    async def answer(self, delivery: Delivery, content: Any) -> None:
        """Send content as the result of delivery (at most one answer per delivery)."""
        await self.replies.answer(delivery, content)

    async def fail(self, delivery: Delivery, code: str, text: str) -> None:
        """Send an error result for delivery."""
        await self.replies.fail(delivery, code, text)

    async def try_send(self, answer: Coroutine[Any, Any, None]) -> None:
        """Send one answer, logging a failure instead of raising it: one lost answer must not cost the others theirs
        (a batch's, or those sent at stop when the connection is already gone)."""
        try:
            await answer
        except (AgentCoreError, nats.errors.Error, OSError) as exc:
            log.warning("agent %s could not send an answer: %s", self.agent_id, exc)

    def route_requests(self, prefix: str, route: RequestRoute | None) -> None:
        """Send requests to subjects starting with prefix through route (None: through core NATS again)."""
        self._route_prefix, self._route = (prefix, route) if route is not None else ("\0", None)

    def serve_from(self, source: PersistedSource | None) -> None:
        """Let source serve the wire subscriptions it claims (None: all from core NATS)."""
        self.registry.source = source

    def keep_answers(self, keeper: Keeper | None) -> None:
        """Let keeper keep the answers it wants before they are sent (None: answers are only sent)."""
        self.replies.keeper = keeper

    def status_from(self, source: StatusSource | None) -> None:
        """Let source answer task_status first (persisted tasks' status kept in JetStream; None: the agents only)."""
        self.task_control.source = source

    def asking(self, task_id: str, reply_to: str) -> None:
        """Remember where our open task's answer comes (cancel(task_id) names it)."""
        self.task_control.asking(task_id, reply_to)

    def answered(self, task_id: str) -> None:
        """Forget an open task of ours."""
        self.task_control.answered(task_id)

    def abandon(self, task_id: str, reply_to: str | None, reason: str) -> None:
        """Tell the agent serving our task task_id (answering to reply_to) that we gave up on it: it cancels it."""
        self.task_control.abandon(task_id, reply_to, reason)

    # ------------------------------------------------------------------ task lifecycle

    async def cancel_task(self, task_id: str, reply_to: str | None, timeout: float) -> dict[str, Any]:
        """Cancel our task task_id, whose answer goes to reply_to; return the serving agent's word (see NATSAgent.cancel)."""
        return await self.task_control.cancel(task_id, reply_to, timeout)

    async def task_status(self, task_id: str, timeout: float) -> dict[str, Any]:
        """Return our task's status (see NATSAgent.task_status)."""
        return await self.task_control.status(task_id, timeout)

    # ------------------------------------------------------------------ registering

    def add_capability(self, capability: str, handler: Handler | None, cache: CacheMode) -> None:
        """Declare a capability (see NATSAgent.add_capability)."""
        self.registry.add_capability(capability, handler, cache)
        if self.connection.nc is not None:
            self.registry.register_capability(capability, handler)
            self.schedule_sync()

    def subscribe(self, topic: str, handler: Handler | None, queue: str | None) -> None:
        """Subscribe a topic (see NATSAgent.subscribe)."""
        subject = self.topics.to_subject(topic)
        if queue is None:
            queue = self.registry.capability_queue(subject) or ""
        elif queue:
            validate_token(queue)
        self.registry.register(subject, handler, kind=MESSAGE, queue=queue)
        if self.connection.nc is not None:
            self.schedule_sync()

    def unsubscribe(self, topic: str, handler: Handler | None) -> None:
        """Remove a topic's registrations (see NATSAgent.unsubscribe)."""
        self.registry.unregister(self.topics.to_subject(topic), handler)
        if self.connection.nc is not None:
            self.schedule_sync()

    # ------------------------------------------------------------------ sending

    async def publish(self, topic: str, content: Any, *, type: str = "event", **fields: Any) -> str:
        """Publish a message (an event by default) to a topic or subject; return its id."""
        subject = self.topics.to_subject(topic, wildcards=False)
        message = new_message(type, content, source_id=self.agent_id, source_type=self.agent_type, **fields)
        data = encode(message)
        self.connection.check_size(data)
        await self.connection.publish_checked(subject, data)
        return str(message["id"])

    async def request_message(
        self,
        topic: str,
        content: Any,
        *,
        type: str = "task",
        timeout: float | None = None,
        priority: int = 5,
        capabilities: list[str] | None = None,
        target: str | None = None,
        conversation_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send a message to a topic and return the whole result envelope (error results raise)."""
        connection = self.connection
        nc = connection.require()
        subject = self._subjects.get(topic)
        if subject is None:
            subject = self.topics.to_subject(topic, wildcards=False)
            if len(self._subjects) < 4096:  # requests mostly go to a few subjects: validate each once
                self._subjects[topic] = subject
        timeout = timeout if timeout is not None else self.config["agent.request_timeout"]
        message = new_message(
            type, content, source_id=self.agent_id, source_type=self.agent_type, target=target,
            conversation_id=conversation_id, metadata=metadata, priority=priority,
            capabilities=capabilities, timeout_ms=timeout * 1000.0,
        )
        message["routing"]["stream"] = True  # we can pull a result larger than max_payload as a stream
        data = encode(message)
        mid: str = message["id"]
        check = self._verifier(mid, target)
        accept = check.accept
        inbox: list[str] = []  # where the answer is awaited: what a cancellation names
        routed = subject.startswith(self._route_prefix)  # a task, and tasks persist: stored first, answered as usual
        fits = connection.fits(data)  # with the headers it carries (trace context, signature)
        # Only the paths that read the envelope again keep it while the request waits: on the common one it is
        # garbage at once, not a set of dicts the collector walks for every request in flight.
        envelope = message if routed or not fits else None
        del message
        try:
            if routed:
                assert self._route is not None and envelope is not None
                reply: dict[str, Any] = await self._route(subject, envelope, timeout, accept)
            elif fits:
                if connection.bare:  # sent at once when it can be, with the trace headers of the handler sending it
                    reply = await connection.requests(nc).request(subject, data, timeout, accept, CURRENT.get(), inbox=inbox)
                else:
                    reply = await connection.request(subject, data, timeout, accept, inbox)  # signed or traced: through nc.publish
            else:  # offered as a stream that the serving agent pulls: a 20 MB task arrives whole
                assert envelope is not None
                reply = await request_large(connection, subject, envelope, data, timeout, accept)
        except asyncio.CancelledError:  # the caller gave up: so does the agent serving it
            self.task_control.abandon(mid, self._answer_inbox(envelope, inbox), "cancelled")
            raise
        except nats.errors.NoRespondersError:
            raise NoRespondersError(f"no agent is subscribed to {subject}") from None
        except nats.errors.TimeoutError:
            self.task_control.abandon(mid, self._answer_inbox(envelope, inbox), "timed out")
            if check.refused:  # only replies whose identity failed came: that is the reason, not silence
                raise check.refused[-1] from None
            if check.stored:
                raise PersistenceError(f"JetStream stream {check.stored[0]} stored the task on {subject} instead of an agent "
                                       "answering it: set jetstream.enabled on this agent too") from None
            raise RequestTimeoutError(f"no reply on {subject} within {timeout}s") from None
        except nats.errors.ConnectionClosedError:
            raise NotConnectedError(f"agent {self.agent_id} stopped before the reply on {subject} arrived") from None
        except nats.errors.Error as exc:  # draining, outbound buffer full while reconnecting, stale connection
            raise NotConnectedError(f"agent {self.agent_id} could not request on {subject}: {exc or exc.__class__.__name__}") from exc
        self.metrics.published += 1
        if "stream" in reply[PAYLOAD]:
            reply = await pull_result(connection, reply, timeout)  # an oversized result, offered as a stream
        raise_for_error(reply)
        return reply

    @staticmethod
    def _answer_inbox(envelope: dict[str, Any] | None, inbox: list[str]) -> str | None:
        """Return where a request's answer was awaited: its replyTo, else the inbox it was sent with."""
        reply_to = envelope.get("replyTo") if envelope is not None else None
        return reply_to or (inbox[0] if inbox else None)

    def _verifier(self, request_id: str, target: str | None) -> ReplyCheck:
        """Return the check a reply to request_id must pass (see ReplyCheck)."""
        return ReplyCheck(request_id, target, self.agent_id, self.metrics.counters, self.connection)

    async def discover(self, capability: str | None = None, *, timeout: float | None = None,
                       expected: int | None = None, include_self: bool = False) -> list[dict[str, Any]]:
        """Return the live agents (see NATSAgent.discover)."""
        timeout = timeout if timeout is not None else self.config["agent.discovery_timeout"]
        return await self.control.discover(capability, timeout, expected, include_self)

    # ------------------------------------------------------------------ status

    def describe(self) -> dict[str, Any]:
        """Return what discovery and heartbeats say about this agent."""
        info: dict[str, Any] = {
            "id": self.agent_id,
            "instance": self.instance,
            "type": self.agent_type,
            "capabilities": list(self.registry.capabilities),
            "status": self._status,
            "environment": self.environment,
            "in_flight": self.work.inflight,
            "queued": len(self.work.queue),
            "messages_processed": self.metrics.processed,
            "p50_latency_ms": self.metrics.percentile(0.5),
            "started_at": self.started_at,
            **self.watchdog.gauges(),
        }
        for component in self.components:
            info.update(component.describe())
        return info

    def get_metrics(self) -> dict[str, Any]:
        """Return counters and latencies (see NATSAgent.get_metrics)."""
        snapshot = self.metrics.snapshot()
        snapshot.update(in_flight=self.work.inflight, queued=len(self.work.queue), status=self._status,
                        implementation=IMPLEMENTATION, subscriptions=len(self.registry.subs),
                        results_owed=len(self.replies.owed), frames_unreadable=frames_dropped(self.connection.nc),
                        **self.watchdog.gauges())
        snapshot.update(self.work.gauges())  # bytes held by the bounded stores (docs/limits.md)
        snapshot.update(self.tasks.gauges())
        if self.connection.verifier is not None:
            snapshot.update(self.connection.verifier.gauges())
        for component in self.components:
            snapshot.update(component.gauges())
        return snapshot

    async def pause(self) -> None:
        """Stop taking new work (task subscriptions are dropped so replicas take it); control still answers."""
        if self._status == "running":
            self._status = "paused"
            await self.sync()
            await self.control.publish_status()

    async def resume(self) -> None:
        """Take work again after pause()."""
        if self._status == "paused":
            self._status = "running"
            await self.sync()
            await self.control.publish_status()

    # ------------------------------------------------------------------ lifecycle

    def register_base(self) -> None:
        """Register control, discovery and the task topic of every capability."""
        topics, control = self.topics, self.control
        self.registry.register(topics.control(self.agent_id), control.on_control, kind=TASK, system=True)
        self.registry.register(topics.discovery_requests(), control.on_discovery, kind=TASK, system=True,
                               fallback=lambda _m: topics.discovery_responses())
        self.registry.register(topics.task_cancel(), self.task_control.on_cancel, kind=RAW, system=True)
        self.registry.register(topics.task_status(), self.task_control.on_status, kind=RAW, system=True)
        self.registry.register_capabilities()

    def _closing(self) -> bool:
        return self._status in ("stopping", "stopped")

    def _reconnected(self) -> None:
        for component in self.components:
            component.reconnected()

    def _shutdown_soon(self) -> None:
        loop = asyncio.get_running_loop()

        async def shutdown() -> None:
            await asyncio.sleep(0)  # let the reply to the shutdown command go out first
            await self.astop()

        self.spawn(loop.create_task(shutdown()))

    async def astart(self) -> None:
        """Connect, let the components set up, subscribe and start heartbeats on the running event loop."""
        if self._status in ("running", "paused"):
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        # What publish_result returns for an answer written on the spot: one done future serves them all (awaiting
        # it, or adding a callback, works any number of times), so the guide's call makes none.
        self.sent: asyncio.Future[None] = self._loop.create_future()
        self.sent.set_result(None)
        self.stopped = asyncio.Event()
        self.registry.lock = asyncio.Lock()
        self.work.pulls = asyncio.Semaphore(min(self.work.max_concurrency, 8))  # bound to this start's loop
        nc = await self.connection.connect()
        try:
            await self._check_unique_id()
            for component in self.components:
                await component.start()
        except BaseException:
            self._status = "stopped"  # so closing reads as our own close, not an outage to warn about
            await nc.close()
            self.connection.nc = None
            raise
        self._status = "running"
        self.started_at = time.time()
        if self.work.cache is not None:
            # A restart: the duplicate store arms its sweep only for its first kept answer, so answers kept before
            # the stop (which ended the sweep) would outlive their ttl.
            self.work.cache.resume()
        self.watchdog.start(self._loop)
        self.setup()  # the agent's _setup_subscriptions(): register_base() plus what a subclass adds
        try:
            await self.sync()  # PermissionDeniedError: the server refused a subscription; start fails, naming it
        except BaseException:
            await self.abort_start()
            raise
        self._heartbeat = self._loop.create_task(self.control.heartbeats(self.config["agent.heartbeat_interval"]))
        await self.control.publish_status()
        log.info("agent %s (%s) started with capabilities %s", self.agent_id, self.agent_type, self.registry.capabilities)

    async def _check_unique_id(self) -> None:
        """Before subscribing, ask the agent's own control subject who answers: another live agent with this id."""
        policy = self.config["agent.duplicate_id"]
        if policy == "allow":
            return
        # A status query, not discovery: nobody listening is NoRespondersError at once, where discovery waits its window.
        try:
            info = await self.request_message(self.topics.control(self.agent_id), {"command": "status"}, type="query",
                                              timeout=self.config["agent.discovery_timeout"])
        except NoRespondersError:
            return
        except PermissionDeniedError as exc:
            if exc.operation != "publish":
                raise  # its reply inbox is denied: no request of this agent could ever get its answer
            return  # a locked-down user may not publish to its own control subject: it cannot ask, so it does not
        except RequestTimeoutError:  # a subscriber that is no agent (a `nats sub >`, say): nothing to report
            log.debug("agent %s: its control subject has a listener that does not answer", self.agent_id)
            return
        except RemoteError as exc:  # an agent that answers, if only to refuse the query
            other = f"it answered {exc.code}"
        else:
            described = info["payload"]["content"]
            described = described if isinstance(described, dict) else {}
            other = f"instance {described.get('instance', '?')}, {described.get('status', '?')}"
        problem = (f"another live agent already uses the id {self.agent_id!r} in environment {self.environment!r} ({other})")
        if policy == "error":
            raise DuplicateAgentError(f"{problem}; agent.duplicate_id is 'error'")
        log.warning("agent %s: %s: replicas share its control commands and its work; give each agent its own id, or "
                    "set agent.duplicate_id to 'allow' (replicas meant) or 'error'", self.agent_id, problem)

    async def astop(self, timeout: float | None = None) -> None:
        """Stop taking work, let in-flight handlers finish (up to timeout), announce it and close the connection."""
        if self._status in ("stopping", "stopped", "created"):
            return
        self._status = "stopping"
        self.work.intercept(None)  # what arrives while subscriptions drain runs its own handler, never a new batch
        timeout = timeout if timeout is not None else self.config["nats.drain_timeout"]
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        nc = self.connection.nc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if nc is not None and not nc.is_closed:
                if not await self.registry.retire_all(nc, max(deadline - loop.time(), 0.01)):
                    log.warning("agent %s: its subscriptions did not drain before the stop deadline", self.agent_id)
            for component in self.components:
                component.drain()  # e.g. batched messages not yet processed join the handlers drained below
            me = asyncio.current_task()
            while True:  # in-flight handlers finish and free slots for queued ones, until both are done
                pending = [t for t in self._tasks if t is not me]
                remaining = deadline - loop.time()
                if not pending or remaining <= 0:
                    break
                await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            await self._abandon(me, timeout)
            await self.connection.end_requests()
            if nc is not None and not nc.is_closed:
                self._status = "stopped"
                await self.control.publish_status()
                await self.connection.close()
        finally:
            self._status = "stopped"
            self.watchdog.stop()
            self.settlement.stop()  # only now: handlers draining until here keep their tasks in progress
            if self.work.cache is not None:
                self.work.cache.stop()  # no sweep timer outlives the agent (the next put after a restart arms one)
            for component in self.components:
                try:
                    await component.stop()
                except Exception:
                    log.exception("agent %s: stopping %s failed", self.agent_id, type(component).__name__)
            self.connection.forget()
            self.sync_calls.shutdown()
            if self.stopped is not None:
                self.stopped.set()
            release_spare()  # the loop may close after this: leave no spare Task pending on it
            log.info("agent %s stopped", self.agent_id)

    async def _abandon(self, me: asyncio.Task[Any] | None, timeout: float) -> None:
        """Past the drain timeout: tell queued requesters the agent is stopping, cancel running handlers."""
        queued = self.work.take_queue()
        replies, settlement = self.replies, self.settlement
        # Handled messages still owed a publish_result(): it cannot come once the connection closes.
        owed, replies.owed = list(replies.owed), set()
        late = [t for t in self._tasks if t is not me]
        try:
            for q in queued:
                self.work.finish(q, MISS)  # never ran: a retry (to a replica, say) runs it
                if settlement.release(q.msg, redeliver=True):
                    continue  # JetStream offers it to a replica, or to this agent when it is back
                await self.try_send(replies.fail(
                    q.delivery(), "shutting_down", f"agent {self.agent_id} stopped before handling {q.message['id']}"))
            for delivery in owed:
                if delivery.held is not None and settlement.release(delivery.held, redeliver=True):
                    replies.claim(delivery)  # JetStream offers the task again: nothing to tell its requester now
                    continue
                await self.try_send(replies.fail(
                    delivery, "shutting_down", f"agent {self.agent_id} stopped before publishing a result for {delivery.message['id']}"))
        finally:
            for task in late:
                task.cancel()  # each answers its requester with a cancelled error as it unwinds
        if late or queued:
            log.warning("agent %s stopped with %d handlers still running and %d queued after %.1fs",
                        self.agent_id, len(late), len(queued), timeout)
            if late:
                await asyncio.wait(late, timeout=1.0)

    async def abort_start(self) -> None:
        """Close what a start that failed or timed out may have opened."""
        if self._status in ("running", "paused"):
            await self.astop()
        elif self.connection.usable:
            nc: NATSClient = self.connection.require()
            await nc.close()
        self._status = "stopped"
