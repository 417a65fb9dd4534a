"""NATSAgent: capabilities, subscriptions dispatched through the compiled subject index, results, control, discovery."""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import inspect
import itertools
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ._eager import run_eager, start_eager
from ._inline import RequestMux, deliver_inline, forget_connection, send_now
from ._subscriptions import confirm as _confirm
from ._subscriptions import retire as _retire
from .batching import BatchingMixin
from .caching import DONE, IN_FLIGHT, MISS, TaskCache
from ._impl import IMPLEMENTATION, SubjectIndex, validate_token
from .config import AgentConfig
from .envelope import VERSION, decode, encode, error_payload, is_expired, new_id, new_message, raise_for_error
from .errors import (
    AgentCoreError,
    EnvelopeError,
    NoRespondersError,
    NotConnectedError,
    PayloadTooLargeError,
    PersistenceError,
    RemoteError,
    RequestTimeoutError,
)
from .mcp.hosting import MCPMixin
from .metrics import AgentMetrics
from .negotiation import NegotiationMixin
from .persistence import PersistedMsg, PersistenceMixin, pub_ack_stream
from .streaming import StreamingMixin
from .task_puller import TaskPuller
from .topics import Topics

__all__ = ("NATSAgent", "NO_REPLY")

log = logging.getLogger("agentcore.agent")

T = TypeVar("T")
Handler = Callable[..., Any]

#: Returned by a task handler that must not answer (e.g. a discovery query for a capability it lacks).
NO_REPLY: Any = object()

_MESSAGE, _TASK = 0, 1  # handler kinds: (topic, message) -> bool, or (message) -> result that is sent back


@dataclass(eq=False, slots=True)
class _Registration:
    pattern: str
    queue: str
    handler: Handler | None  # None: the agent's own process_message
    kind: int
    is_async: bool
    system: bool = False  # control/discovery: never paused, never queued behind tasks
    cache: bool = True  # results may be served from the content-hash cache (tasks only)
    fallback: Callable[[dict[str, Any]], str | None] | None = None  # where results go without a reply subject
    key: tuple[str, str] = field(init=False)  # the wire subscription it rides on: (pattern, queue)

    def __post_init__(self) -> None:
        self.key = (self.pattern, self.queue)


@dataclass(eq=False, slots=True)
class _Delivery:
    message: dict[str, Any]
    reply: str | None
    subject: str
    fallback: Callable[[dict[str, Any]], str | None] | None
    answered: bool = False
    deferred: bool = False  # the handler returned without answering; publish_result may still come
    timer: asyncio.TimerHandle | None = None  # when a deferred answer is given up on (no_result)
    held: PersistedMsg | None = None  # a persisted task whose deferred answer is owed: acked when it goes out

    @property
    def destination(self) -> str | None:
        dest = self.message.get("replyTo") or self.reply
        if dest is None and self.fallback is not None:
            dest = self.fallback(self.message)  # computed only when needed: most requests carry a reply subject
        return dest


@dataclass(slots=True)
class _Queued:
    reg: _Registration
    subject: str
    message: dict[str, Any]
    msg: Msg
    t0: float

    def delivery(self) -> _Delivery:
        return _Delivery(self.message, self.msg.reply or None, self.subject, self.reg.fallback)


_EVENT_CALLBACKS = frozenset(("error_cb", "disconnected_cb", "closed_cb", "reconnected_cb", "discovered_server_cb",
                              "lame_duck_mode_cb"))


def _chain(first: Callable[..., Awaitable[None]] | None, then: Callable[..., Any], name: str) -> Callable[..., Awaitable[None]]:
    async def both(*args: Any) -> None:
        if first is not None:
            await first(*args)
        try:
            result = then(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:  # raised into nats-py, it would stop the read loop or the close
            log.exception("the %s given in nats.options raised", name)

    return both


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


class NATSAgent(MCPMixin, NegotiationMixin, StreamingMixin, BatchingMixin, PersistenceMixin):
    """An agent on the NATS bus: serves its capabilities, answers control and discovery, reports metrics."""

    def __init__(self, agent_id: str, agent_type: str = "agent", config: AgentConfig | Mapping[str, Any] | None = None) -> None:
        self.agent_id = validate_token(agent_id)
        self.agent_type = agent_type
        self._source = {"id": self.agent_id, "type": agent_type}  # shared by every envelope this agent sends
        self.config = config if isinstance(config, AgentConfig) else AgentConfig(config)
        self.environment: str = self.config["nats.environment"]
        self.topics = Topics(self.environment)
        self.capabilities: list[str] = []
        self._capability_handlers: dict[str, Handler | None] = {}
        self._subjects: dict[str, str] = {}  # topic -> validated subject, for requests
        self._uncached: set[str] = set()  # capabilities whose handlers must run for every task
        self._index = SubjectIndex()
        self._registrations: dict[tuple[str, str], list[_Registration]] = {}
        self._subs: dict[tuple[str, str], Subscription | TaskPuller] = {}
        self._nc: NATSClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._own_thread: threading.Thread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._status = "created"
        self._started_at: float | None = None
        self._stopped: asyncio.Event | None = None
        self._metrics = AgentMetrics()
        self._deliveries: dict[str, _Delivery] = {}
        self._owed: set[_Delivery] = set()  # deferred deliveries still waiting for publish_result()
        self._pulls: asyncio.Semaphore  # large requests being pulled into memory at once; made by astart()
        self._inflight = 0
        self._max_concurrency: int = self.config["agent.max_concurrency"]
        self._max_queued: int = self.config["agent.max_queued"]  # beyond it new work is refused as overloaded
        self._queue: list[tuple[int, int, _Queued]] = []
        self._mux: RequestMux | None = None
        self._pumping = False
        self._seq = itertools.count()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._sync_lock = asyncio.Lock()
        # None when caching is off, so the hot path pays one attribute test for it.
        self._cache: TaskCache | None = (
            TaskCache(self.config["cache.ttl"], self.config["cache.max_entries"], self._metrics) if self.config["cache.enabled"] else None
        )
        # Extensions (MCP hosting, negotiation, streaming) add what they advertise to discovery answers here.
        self._describe_hooks: list[Callable[[], Mapping[str, Any]]] = []

    # ------------------------------------------------------------------ capabilities and subscriptions

    def add_capability(self, capability: str, handler: Handler | None = None, *, cache: bool = True) -> None:
        """Declare a capability; its tasks go to handler(message) -> result, or else to process_message.

        With cache=False the handler runs for every task even when the result cache is on (side effects,
        sampling); otherwise identical tasks within cache.ttl are answered from the cache.
        """
        validate_token(capability)
        if capability not in self._capability_handlers:
            self.capabilities.append(capability)
        self._capability_handlers[capability] = handler
        if cache:
            self._uncached.discard(capability)
        else:
            self._uncached.add(capability)
        if self._nc is not None:
            self._register_capability(capability, handler)
            self._schedule_sync()

    def subscribe(self, topic: str, handler: Handler | None = None, *, queue: str | None = None) -> None:
        """Subscribe a topic or subject (wildcards allowed); messages go to handler(topic, message) or process_message.

        Task topics of the agent's own capabilities join that capability's queue group by default, so
        replicas share the work and the agent never receives one task twice.
        """
        subject = self.topics.to_subject(topic)
        if queue is None:
            queue = self._capability_queue(subject) or ""
        elif queue:
            validate_token(queue)
        self._register(subject, handler, kind=_MESSAGE, queue=queue)
        if self._nc is not None:
            self._schedule_sync()

    async def asubscribe(self, topic: str, handler: Handler | None = None, *, queue: str | None = None) -> None:
        """Subscribe like subscribe() and return once the server has the interest registered."""
        self.subscribe(topic, handler, queue=queue)
        await self._sync_subscriptions()

    def unsubscribe(self, topic: str, handler: Handler | None = None) -> None:
        """Remove the registrations of a topic (only those of handler, when given)."""
        subject = self.topics.to_subject(topic)
        for key, regs in list(self._registrations.items()):
            if key[0] != subject:
                continue
            for reg in [r for r in regs if handler is None or r.handler == handler]:
                regs.remove(reg)
                self._index.remove(reg.pattern, reg)
            if not regs:
                del self._registrations[key]
        if self._nc is not None:
            self._schedule_sync()

    def _capability_queue(self, subject: str) -> str | None:
        tokens = subject.split(".")
        if len(tokens) >= 4 and tokens[0] == "agents" and tokens[1] == self.environment and tokens[2] == "task":
            if tokens[3] in self._capability_handlers:
                return tokens[3]
        return None

    def _register(
        self,
        subject: str,
        handler: Handler | None,
        *,
        kind: int,
        queue: str = "",
        system: bool = False,
        fallback: Callable[[dict[str, Any]], str | None] | None = None,
        cache: bool = False,
    ) -> _Registration:
        fn = handler if handler is not None else self.process_message
        reg = _Registration(subject, queue, handler, kind, _is_async(fn), system=system, cache=cache, fallback=fallback)
        regs = self._registrations.setdefault(reg.key, [])
        for old in regs:
            if old.handler == handler and old.kind == kind:
                old.cache = cache
                return old  # subscribing the same thing twice must not double-deliver
        regs.append(reg)
        self._index.insert(subject, reg)
        return reg

    def _setup_subscriptions(self) -> None:
        """Declare the base subscriptions: control, discovery and the task topics of every capability."""
        topics = self.topics
        self._register(topics.control(self.agent_id), self._on_control, kind=_TASK, system=True)
        self._register(
            topics.discovery_requests(),
            self._on_discovery,
            kind=_TASK,
            system=True,
            fallback=lambda _m: topics.discovery_responses(),
        )
        self._setup_negotiation()
        for capability, handler in self._capability_handlers.items():
            self._register_capability(capability, handler)

    def _register_capability(self, capability: str, handler: Handler | None) -> None:
        kind = _TASK if handler else _MESSAGE
        self._register(
            self.topics.task_pattern(capability), handler, kind=kind, queue=capability, fallback=self._result_fallback,
            cache=capability not in self._uncached,
        )

    def _result_fallback(self, message: dict[str, Any]) -> str | None:
        if message.get("type") != "task":
            return None
        capabilities = (message.get("routing") or {}).get("capabilities") or ["result"]
        try:
            return self.topics.result(message["source"]["id"], capabilities[0])
        except AgentCoreError:
            return None

    def _schedule_sync(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if self._on_loop_thread():
            self._track(loop.create_task(self._sync_subscriptions()))
        else:
            asyncio.run_coroutine_threadsafe(self._sync_subscriptions(), loop).result(10)

    async def _sync_subscriptions(self) -> None:
        """Make the NATS subscriptions match the registrations (one wire subscription per pattern and queue)."""
        nc = self._nc
        if nc is None or nc.is_closed or self._status in ("stopping", "stopped"):
            return
        async with self._sync_lock:
            if nc.is_closed or self._status in ("stopping", "stopped"):
                return  # astop() took the subscriptions while this waited for the lock: never subscribe again
            paused = self._status == "paused"
            wanted = {
                key for key, regs in self._registrations.items() if regs and not (paused and not any(r.system for r in regs))
            }
            retired = [self._subs.pop(key) for key in [k for k in self._subs if k not in wanted]]
            if retired:
                await asyncio.gather(*(_retire(nc, sub) for sub in retired))
            for key in wanted:
                if key not in self._subs:
                    sub: Subscription | TaskPuller
                    if self._persists(key):
                        sub = await self._js_subscribe(key)  # the capability's tasks are pulled from its JetStream consumer
                    else:
                        sub = core = await nc.subscribe(key[0], queue=key[1], cb=self._make_callback(key))
                        deliver_inline(core, self._inline_dispatcher(key))  # no per-message hop through nats-py's task
                    if self._status in ("stopping", "stopped"):  # astop() gave up waiting for this sync's lock
                        await _retire(nc, sub)
                        return
                    self._subs[key] = sub
            await _confirm(nc)

    # ------------------------------------------------------------------ the hot path

    def _make_callback(self, key: tuple[str, str]) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            self._dispatch(msg, key)

        return on_message

    def _inline_dispatcher(self, key: tuple[str, str]) -> Callable[[Msg], None]:
        dispatch = self._dispatch
        return lambda msg: dispatch(msg, key)

    def _dispatch(self, msg: Msg, key: tuple[str, str]) -> None:
        t0 = time.perf_counter()
        metrics = self._metrics
        metrics.received += 1
        subject = msg.subject
        # The compiled index names every handler whose pattern matches; a message that arrived on an
        # overlapping subscription of ours is handled by that subscription's own delivery, not this one.
        regs = [reg for reg in self._index.match(subject) if reg.key == key]
        if not regs:
            if self._release(msg, redeliver=True):
                return  # a persisted task whose handler was just removed: a replica may still serve it
            if not self._index.match(subject):  # none of our other subscriptions answers it either
                self._track(start_eager(self._answer_unrouted(msg)))
            return
        try:
            message = decode(msg.data)
        except EnvelopeError as exc:
            metrics.invalid += 1
            metrics.failed += 1
            log.warning("agent %s dropped a malformed message on %s: %s", self.agent_id, subject, exc)
            self._reject(msg)
            if msg.reply:
                self._track(start_eager(self._send_error(msg.reply, None, "invalid_message", str(exc))))
            return
        if "stream" in message["payload"] and message["type"] in ("task", "query") and any(r.kind == _TASK or r.queue for r in regs):
            # A request too large for one message came as an offer: a subscription that answers it pulls the
            # whole envelope, then routes it (an observer's plain subscription sees the offer as it is).
            self._track(start_eager(self._route_pulled(msg, key, regs, message, t0)))
            return
        self._route(msg, key, regs, message, t0)

    def _route(self, msg: Msg, key: tuple[str, str], regs: list[_Registration], message: dict[str, Any], t0: float) -> None:
        subject = msg.subject
        cache = self._cache
        batch = self._batch if self._status != "stopping" else None  # the pending batch was flushed at the stop
        if cache is not None and not regs[0].system:
            # Ids are the sender's: the same id from another sender is another message.
            seen = cache.seen((key, message["source"]["id"]), message["id"])
            if seen is not MISS:  # a redelivery or a retry: never run a handler twice for one message
                self._track(start_eager(self._answer_duplicate(regs[0], subject, message, msg, seen)))
                return
        for reg in regs:
            if batch is not None and not reg.system:
                self._batch_add(_Queued(reg, subject, message, msg, t0))
            elif not reg.system and self._inflight >= self._max_concurrency:
                self._admit(_Queued(reg, subject, message, msg, t0))
            else:
                self._run(reg, subject, message, msg, t0)

    async def _route_pulled(self, msg: Msg, key: tuple[str, str], regs: list[_Registration], offer: dict[str, Any],
                            t0: float) -> None:
        routing = offer.get("routing") or {}
        if routing.get("timeout") is not None:
            timeout = max(offer["timestamp"] + routing["timeout"] / 1000.0 - time.time(), 0.1)
        else:
            timeout = self.config["agent.request_timeout"]
        code = None
        if len(self._queue) >= self._max_queued:
            code, text = "overloaded", f"agent {self.agent_id} has {len(self._queue)} messages queued; try again later"
        else:
            try:
                message = await self._pull_request(offer, timeout)
            except PayloadTooLargeError as exc:
                code, text = "payload_too_large", f"agent {self.agent_id} takes requests up to agent.max_request_bytes: {exc}"
            except asyncio.CancelledError:  # stopping past the drain timeout
                code, text = "cancelled", f"pulling message {offer['id']} was cancelled"
                self._release(msg, redeliver=True)  # a persisted offer: JetStream offers it again
                if msg.reply:
                    self._track(start_eager(self._send_error(msg.reply, offer["id"], code, text)))
                raise
            except Exception as exc:  # a malformed or forged offer, a puller that vanished: the requester hears why
                code, text = "invalid_message", f"the offered message could not be pulled: {exc}"
        if code is not None:
            self._metrics.failed += 1
            if code == "overloaded":
                self._metrics.counters["overloaded"] += 1
            else:
                self._metrics.invalid += 1
            log.warning("agent %s refused the message offered as %s on %s: %s", self.agent_id, offer["id"], msg.subject, text)
            self._release(msg, redeliver=code == "overloaded")
            if msg.reply:
                await self._send_error(msg.reply, offer["id"], code, text)
            return
        self._metrics.counters["large_requests_pulled"] += 1
        self._route(msg, key, regs, message, t0)

    def _admit(self, queued: _Queued) -> None:
        """Queue a message until a handler slot frees up; refuse it as overloaded when the queue is full."""
        if len(self._queue) >= self._max_queued:
            self._refuse_overloaded(queued)
            return
        priority = (queued.message.get("routing") or {}).get("priority") or 0
        # heapq is a min-heap: negate so the highest routing.priority runs first, FIFO within a priority.
        heapq.heappush(self._queue, (-priority, next(self._seq), queued))

    def _refuse_overloaded(self, queued: _Queued) -> None:
        metrics = self._metrics
        metrics.failed += 1
        metrics.counters["overloaded"] += 1
        self._finish_message(queued.reg, queued.message, MISS)  # a retry later runs
        if self._release(queued.msg, redeliver=True):
            return  # JetStream offers it again shortly, perhaps to a replica: the requester keeps waiting
        if metrics.counters["overloaded"] % 1000 == 1:  # once per thousand: logging each would add to the load
            log.warning("agent %s is overloaded (%d queued): refusing messages", self.agent_id, len(self._queue))
        delivery = queued.delivery()
        if delivery.reply or queued.message.get("replyTo"):
            self._track(start_eager(self._answer_error(
                delivery, "overloaded", f"agent {self.agent_id} has {len(self._queue)} messages queued; try again later")))

    async def _answer_unrouted(self, msg: Msg) -> None:
        """Answer a request that reached a subscription whose handler was just removed (not a silent timeout)."""
        try:
            message = decode(msg.data)
        except EnvelopeError as exc:
            if msg.reply:
                await self._send_error(msg.reply, None, "invalid_message", str(exc))
            return
        delivery = _Delivery(message, msg.reply or None, msg.subject, None)
        if delivery.destination is not None:  # a request (reply subject or replyTo), not a plain publish
            await self._answer_error(delivery, "unhandled", f"agent {self.agent_id} no longer handles {msg.subject}")

    def _run(self, reg: _Registration, subject: str, message: dict[str, Any], msg: Msg, t0: float) -> None:
        if not reg.system:  # control and discovery bypass the concurrency limit, so they are not counted in it
            self._inflight += 1
        task = start_eager(self._handle(reg, subject, message, msg, t0))
        if task is not None:  # the handler suspended: keep its task alive until it finishes
            self._track(task)

    def _track(self, fut: asyncio.Future[Any] | None) -> None:
        """Keep a background task alive until it finishes (astop waits for these); log it if it fails."""
        if fut is None:
            return
        if fut.done():
            self._untrack(fut)
            return
        self._tasks.add(fut)
        fut.add_done_callback(self._untrack)

    def _untrack(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.error("agent %s background step failed", self.agent_id, exc_info=fut.exception())

    async def _handle(self, reg: _Registration, subject: str, message: dict[str, Any], msg: Msg, t0: float) -> None:
        metrics = self._metrics
        mid = message["id"]
        delivery = _Delivery(message, msg.reply or None, subject, reg.fallback)
        prior = self._deliveries.setdefault(mid, delivery)
        if prior is not delivery:
            if prior.answered:
                self._deliveries[mid] = delivery
            else:  # publish_result() names messages by id alone: it keeps answering the first holder of this id
                log.warning("agent %s got message id %s from %s while one with that id is still pending; "
                            "publish_result(%r) answers the first", self.agent_id, mid, message["source"]["id"], mid)
        replay: Any = DONE  # what a retry of this message id is answered with
        try:
            routing = message.get("routing")
            if routing is not None and routing.get("timeout") is not None and is_expired(message):
                metrics.expired += 1
                metrics.failed += 1
                log.info("agent %s skipped expired message %s on %s", self.agent_id, mid, subject)
                await self._answer_error(delivery, "expired", f"message {mid} expired before it was processed")
                return
            cache = self._cache if reg.kind == _TASK and reg.cache and not reg.system else None
            key = cache.key(reg.pattern, message) if cache is not None else None
            if key is not None:
                hit = cache.get(key)  # type: ignore[union-attr]
                if hit is not MISS:
                    replay = hit
                    await self._answer(delivery, hit)
                    metrics.processed += 1
                    return
            handler: Handler = reg.handler if reg.handler is not None else self.process_message
            args: tuple[Any, ...] = (message,) if reg.kind == _TASK else (self.topics.to_topic(subject), message)
            if reg.is_async:
                result = await handler(*args)
            else:
                result = await self._call_handler(handler, *args, is_async=False)
            if not delivery.answered:
                if reg.kind == _TASK:
                    if result is not NO_REPLY:
                        if key is not None:
                            cache.put(key, result)  # type: ignore[union-attr]  # only results that did not raise
                        replay = result
                        await self._answer(delivery, result)
                elif message.get("type") in ("task", "query"):
                    if result is False and delivery.destination:
                        await self._answer_error(delivery, "unhandled", f"agent {self.agent_id} did not handle {subject}")
                    elif delivery.reply or message.get("replyTo"):
                        self._defer(delivery)  # handled, answer still owed: publish_result may come later
            metrics.processed += 1
        except asyncio.CancelledError:
            # stop() past its drain timeout, or the handler's own doing: the requester hears of it either way.
            metrics.failed += 1
            replay = MISS
            # Unanswered, a persisted task is handed back to run again (answered, the finally below acks it).
            if not delivery.answered and not self._release(msg, redeliver=True):
                self._track(start_eager(self._answer_error(delivery, "cancelled", f"handling of message {mid} was cancelled")))
            raise
        except Exception as exc:
            metrics.failed += 1
            replay = MISS  # a retry of a failed message runs again
            if isinstance(exc, RemoteError):
                code, text = exc.code, exc.remote_message
            else:
                code, text = "handler_error", f"{type(exc).__name__}: {exc}"
                log.exception("agent %s handler for %s raised on message %s", self.agent_id, subject, mid)
            if not delivery.answered:
                try:
                    await self._answer_error(delivery, code, text)
                except Exception:
                    log.exception("agent %s could not send the error result for %s", self.agent_id, mid)
        finally:
            if self._deliveries.get(mid) is delivery and not delivery.deferred:
                del self._deliveries[mid]
            self._finish_message(reg, message, replay)
            # A persisted task is answered now (or was handed back above): JetStream may forget it.
            if msg.__class__ is PersistedMsg:  # type: ignore[comparison-overlap]
                if delivery.deferred and not delivery.answered:
                    delivery.held = msg  # acked when publish_result (or no_result) answers it
                else:
                    self._release(msg)
            metrics.observe(time.perf_counter() - t0)
            if not reg.system:
                self._inflight -= 1
            if self._queue:
                self._pump()

    def _finish_message(self, reg: _Registration, message: dict[str, Any], replay: Any) -> None:
        """Record a message as handled for duplicate detection: replay is its result, DONE, or MISS to forget it."""
        if self._cache is not None and not reg.system:
            self._cache.finish((reg.key, message["source"]["id"]), message["id"], replay)

    async def _answer_duplicate(self, reg: _Registration, subject: str, message: dict[str, Any], msg: Msg, seen: Any) -> None:
        """Answer a message id this subscription already took: replay its result, or say it is a duplicate."""
        if seen is IN_FLIGHT and self._forget(msg):
            return  # JetStream redelivered a task still being handled: the first delivery answers and acks it
        self._release(msg)
        if not (msg.reply or message.get("replyTo")):
            return  # a redelivered publish nobody waits for: dropping it is the point
        delivery = _Delivery(message, msg.reply or None, subject, None)
        if seen is IN_FLIGHT or seen is DONE:
            state = "is being handled" if seen is IN_FLIGHT else "was handled"
            await self._answer_error(delivery, "duplicate", f"message {message['id']} {state} by agent {self.agent_id}; "
                                                            "send it with a new id to run it again")
        else:
            self._metrics.counters["duplicates_replayed"] += 1
            await self._answer(delivery, seen)

    def _defer(self, delivery: _Delivery) -> None:
        """Keep an unanswered request open for a later publish_result, then answer no_result when its time is up."""
        delivery.deferred = True
        self._owed.add(delivery)
        message = delivery.message
        routing = message.get("routing") or {}
        if routing.get("timeout") is not None:
            wait = message["timestamp"] + routing["timeout"] / 1000.0 - time.time()
        else:
            wait = self.config["agent.request_timeout"]
        # Say no_result a little before the requester gives up (its timeout is routing.timeout), so it hears it.
        wait -= min(wait * 0.1, 1.0)
        delivery.timer = asyncio.get_running_loop().call_later(max(wait, 0.0), self._expire_deferred, delivery)

    def _expire_deferred(self, delivery: _Delivery) -> None:
        delivery.timer = None
        self._owed.discard(delivery)
        mid = delivery.message["id"]
        if self._deliveries.get(mid) is delivery:
            del self._deliveries[mid]
        if not delivery.answered and self._nc is not None and not self._nc.is_closed:
            log.warning("agent %s handled message %s but published no result for it", self.agent_id, mid)
            self._track(start_eager(self._answer_error(
                delivery, "no_result", f"agent {self.agent_id} handled message {mid} but published no result")))

    def _pump(self) -> None:
        # Handlers that finish inline call _pump again from inside _run: only the outermost call loops, so a
        # deep queue drains iteratively instead of recursing once per queued message.
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._queue and self._inflight < self._max_concurrency:
                _, _, q = heapq.heappop(self._queue)
                self._run(q.reg, q.subject, q.message, q.msg, q.t0)
        finally:
            self._pumping = False

    # ------------------------------------------------------------------ answering

    def _result_message(self, delivery: _Delivery, content: Any, error: dict[str, Any] | None = None) -> bytes:
        request = delivery.message
        context = request.get("context")
        payload: dict[str, Any] = {"content": content} if error is None else {"content": content, "error": error}
        # The same fields new_message() writes, as one literal: this runs once per answered task.
        data: bytes = encode({
            "id": new_id(),
            "timestamp": time.time(),
            "version": VERSION,
            "type": "result",
            "source": self._source,
            "target": request["source"]["id"],
            "replyTo": None,
            "correlationId": request["id"],
            "context": {"conversationId": context.get("conversationId") if context else None, "metadata": {}},
            "payload": payload,
            "routing": None,
        })
        return data

    def _settle(self, delivery: _Delivery) -> bool:
        """Return False when delivery was answered already; else forget it as pending (its answer is being sent)."""
        if delivery.answered:
            return False  # publish_result() racing the handler's own return, say: one answer only
        if delivery.deferred:
            if delivery.held is not None:
                self._release(delivery.held)
            self._owed.discard(delivery)
            if delivery.timer is not None:
                delivery.timer.cancel()
                delivery.timer = None
            mid = delivery.message["id"]
            if self._deliveries.get(mid) is delivery:
                del self._deliveries[mid]
        return True

    async def _answer(self, delivery: _Delivery, content: Any) -> None:
        if not self._settle(delivery):
            return
        dest = delivery.destination
        if dest is None:
            delivery.answered = True
            return
        try:
            data = self._result_message(delivery, content)
            self._check_size(data)
        except PayloadTooLargeError as exc:
            if (delivery.message.get("routing") or {}).get("stream"):
                delivery.answered = True
                await self._offer_large(delivery, data)  # the requester said it can pull a stream: it reassembles it
            else:
                await self._answer_error(delivery, "payload_too_large", str(exc))
            return
        except EnvelopeError as exc:
            await self._answer_error(delivery, "result_invalid", str(exc))
            return
        delivery.answered = True
        nc: NATSClient = self._nc  # type: ignore[assignment]  # connected: the message came from it
        if not send_now(nc, dest, data):
            await nc.publish(dest, data)
        self._metrics.published += 1

    async def _answer_error(self, delivery: _Delivery, code: str, text: str) -> None:
        if not self._settle(delivery):
            return
        dest = delivery.destination
        delivery.answered = True
        if dest is not None:
            await self._publish_raw(dest, self._result_message(delivery, None, error_payload(code, text)))

    async def _send_error(self, reply: str, request_id: str | None, code: str, text: str) -> None:
        message = new_message(
            "result", None, source_id=self.agent_id, source_type=self.agent_type, correlation_id=request_id, error=error_payload(code, text)
        )
        await self._publish_raw(reply, encode(message))

    async def _publish_raw(self, subject: str, data: bytes, reply: str = "") -> None:
        nc = self._require_nc()
        try:
            await nc.publish(subject, data, reply=reply)
        except nats.errors.Error as exc:
            raise NotConnectedError(f"agent {self.agent_id} could not publish on {subject}: {exc or type(exc).__name__}") from exc
        self._metrics.published += 1

    def _inbox_prefixes(self) -> tuple[str, ...]:
        """Return the subject prefixes a reply inbox may have here (nats-py's default and a configured one)."""
        prefix = self.config["nats.options"].get("inbox_prefix")
        if isinstance(prefix, bytes):
            prefix = prefix.decode()
        return ("_INBOX.", f"{prefix}.") if prefix else ("_INBOX.",)

    def _max_payload(self) -> int:
        nc = self._nc
        return nc.max_payload if nc is not None and nc.max_payload else 1024 * 1024

    def _check_size(self, data: bytes) -> None:
        limit = self._max_payload()
        if len(data) > limit:
            raise PayloadTooLargeError(len(data), limit)

    def publish_result(self, message_id: str, result: Any) -> concurrent.futures.Future[None] | asyncio.Future[None]:
        """Send result to whoever asked for message_id: its replyTo, else its reply subject, else the result topic.

        Callable from sync handlers (it waits until sent) and from async code (await the returned future, or not).
        """
        delivery = self._deliveries.get(message_id)
        if delivery is None or delivery.answered:
            raise AgentCoreError(f"agent {self.agent_id} has no pending message {message_id!r} (never received, "
                                 "already answered, or its time ran out)")
        return self._call_soon(self._answer(delivery, result))

    def publish_error(self, message_id: str, code: str, text: str) -> concurrent.futures.Future[None] | asyncio.Future[None]:
        """Send an error result (payload.error = {code, message}) for message_id."""
        delivery = self._deliveries.get(message_id)
        if delivery is None or delivery.answered:
            raise AgentCoreError(f"agent {self.agent_id} has no pending message {message_id!r} (never received, "
                                 "already answered, or its time ran out)")
        return self._call_soon(self._answer_error(delivery, code, text))

    def _call_soon(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T] | asyncio.Future[T]:
        loop = self._loop
        if loop is None:
            coro.close()
            raise NotConnectedError(f"agent {self.agent_id} is not started")
        if self._on_loop_thread():
            fut = run_eager(coro)
            self._track(fut)
            return fut
        cfut = asyncio.run_coroutine_threadsafe(coro, loop)
        cfut.result(self.config["agent.request_timeout"])
        return cfut

    def _on_loop_thread(self) -> bool:
        return self._loop_thread == threading.get_ident()

    # ------------------------------------------------------------------ override point

    def process_message(self, topic: str, message: dict[str, Any]) -> bool:
        """Handle a message no specific handler took; return True when handled (override in a subclass)."""
        log.debug("agent %s has no handler for %s", self.agent_id, topic)
        return False

    # ------------------------------------------------------------------ sending

    async def publish(self, topic: str, content: Any, *, type: str = "event", **fields: Any) -> str:
        """Publish a message (an event by default) to a topic or subject; return its id."""
        subject = self.topics.to_subject(topic, wildcards=False)
        message = new_message(type, content, source_id=self.agent_id, source_type=self.agent_type, **fields)
        data = encode(message)
        self._check_size(data)
        await self._publish_raw(subject, data)
        return str(message["id"])

    async def publish_event(self, event_type: str, detail: str, content: Any) -> str:
        """Publish content on agents.{env}.event.{event_type}.{detail}."""
        return await self.publish(self.topics.event(event_type, detail), content)

    async def request(
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
    ) -> Any:
        """Send a message to a topic and return the content of the result; errors raise typed exceptions."""
        reply = await self.request_message(
            topic, content, type=type, timeout=timeout, priority=priority, capabilities=capabilities,
            target=target, conversation_id=conversation_id, metadata=metadata,
        )
        return reply["payload"]["content"]

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
        nc = self._require_nc()
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
        try:
            if subject.startswith(self._js_prefix):  # a task, and tasks persist: stored first, answered as usual
                msg = await self._request_persisted(nc, subject, message, timeout)
            elif len(data) <= self._max_payload():
                msg = await self._request_mux(nc).request(subject, data, timeout)
            else:  # offered as a stream that the serving agent pulls: a 20 MB task arrives whole
                msg = await self._request_large(subject, message, data, timeout)
        except nats.errors.NoRespondersError:
            raise NoRespondersError(f"no agent is subscribed to {subject}") from None
        except nats.errors.TimeoutError:
            raise RequestTimeoutError(f"no reply on {subject} within {timeout}s") from None
        except nats.errors.ConnectionClosedError:
            raise NotConnectedError(f"agent {self.agent_id} stopped before the reply on {subject} arrived") from None
        except nats.errors.Error as exc:  # draining, outbound buffer full while reconnecting, stale connection
            raise NotConnectedError(f"agent {self.agent_id} could not request on {subject}: {exc or exc.__class__.__name__}") from exc
        self._metrics.published += 1
        try:
            reply: dict[str, Any] = decode(msg.data)
        except EnvelopeError:
            stream = pub_ack_stream(msg.data)
            if stream is None:
                raise
            raise PersistenceError(f"JetStream stream {stream} stored the task on {subject} instead of an agent answering it: "
                                   "set jetstream.enabled on this agent too") from None
        if "stream" in reply["payload"]:
            reply = await self._pull_large(reply, timeout)  # an oversized result, offered as a stream
        raise_for_error(reply)
        return reply

    async def send_task(self, capability: str, content: Any, *, specificity: str = "default", **options: Any) -> Any:
        """Send a task to whichever agent serves capability and return its result (see request() for options)."""
        return await self.request(self.topics.task(capability, specificity), content, type="task", capabilities=[capability], **options)

    # ------------------------------------------------------------------ control, status, discovery

    @property
    def status(self) -> str:
        """Return the lifecycle status: created, running, paused, stopping or stopped."""
        return self._status

    @property
    def nc(self) -> NATSClient:
        """Return the underlying nats-py client (for what agentcore does not wrap)."""
        return self._require_nc()

    def describe(self) -> dict[str, Any]:
        """Return what discovery and heartbeats say about this agent."""
        info: dict[str, Any] = {
            "id": self.agent_id,
            "type": self.agent_type,
            "capabilities": list(self.capabilities),
            "status": self._status,
            "environment": self.environment,
            "in_flight": self._inflight,
            "queued": len(self._queue),
            "messages_processed": self._metrics.processed,
            "started_at": self._started_at,
        }
        if self._js_stream is not None:
            info["persistent_stream"] = self._js_stream  # its tasks are kept in JetStream until answered
        for hook in self._describe_hooks:
            info.update(hook())
        return info

    async def _on_control(self, message: dict[str, Any]) -> Any:
        if message["type"] not in ("query", "task"):
            # A result or event reflected onto our control subject (e.g. via a forged replyTo) is no command.
            log.warning("agent %s ignored a %s message on its control subject", self.agent_id, message["type"])
            return NO_REPLY
        content = message["payload"]["content"]
        command = content.get("command") if isinstance(content, dict) else content
        if command == "ping":
            return {"pong": True, "agent_id": self.agent_id, "status": self._status}
        if command == "status":
            return self.describe()
        if command == "pause":
            await self.pause()
            return {"status": self._status}
        if command == "resume":
            await self.resume()
            return {"status": self._status}
        if command == "shutdown":
            # Answer first; stopping from inside our own handler would wait on ourselves.
            self._track(asyncio.get_running_loop().create_task(self._shutdown_soon()))
            return {"status": "stopping"}
        raise RemoteError("unknown_command", f"unknown control command {command!r}; use ping, status, pause, resume or shutdown")

    async def _shutdown_soon(self) -> None:
        await asyncio.sleep(0)  # let the reply to the shutdown command go out first
        await self.astop()

    async def pause(self) -> None:
        """Stop taking new work (task subscriptions are dropped so replicas take it); control still answers."""
        if self._status == "running":
            self._status = "paused"
            await self._sync_subscriptions()
            await self._publish_status()

    async def resume(self) -> None:
        """Take work again after pause()."""
        if self._status == "paused":
            self._status = "running"
            await self._sync_subscriptions()
            await self._publish_status()

    async def control(self, agent_id: str, command: str, *, timeout: float = 5.0) -> Any:
        """Send a control command (ping, status, pause, resume, shutdown) to an agent and return its answer."""
        return await self.request(self.topics.control(agent_id), {"command": command}, type="query", timeout=timeout)

    async def _on_discovery(self, message: dict[str, Any]) -> Any:
        content = message["payload"]["content"]
        wanted = content.get("capability") if isinstance(content, dict) else None
        if wanted and wanted not in self.capabilities:
            return NO_REPLY
        return self.describe()

    async def discover(
        self, capability: str | None = None, *, timeout: float | None = None, expected: int | None = None, include_self: bool = False
    ) -> list[dict[str, Any]]:
        """Return the live agents (optionally only those with capability), collected for timeout seconds.

        With expected=N it returns as soon as N agents have answered.
        """
        nc = self._require_nc()
        if capability is not None:
            validate_token(capability)
        timeout = timeout if timeout is not None else self.config["agent.discovery_timeout"]
        found: dict[str, dict[str, Any]] = {}
        enough = asyncio.Event()

        async def collect(msg: Msg) -> None:
            try:
                reply = decode(msg.data)
            except EnvelopeError as exc:
                log.warning("agent %s ignored a malformed discovery answer: %s", self.agent_id, exc)
                return
            info = reply["payload"]["content"]
            if isinstance(info, dict) and isinstance(info.get("id"), str) and (include_self or info["id"] != self.agent_id):
                found[info["id"]] = info
                if expected is not None and len(found) >= expected:
                    enough.set()

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=collect)
        try:
            query = new_message("query", {"capability": capability}, source_id=self.agent_id, source_type=self.agent_type)
            await nc.publish(self.topics.discovery_requests(), encode(query), reply=inbox)
            try:
                await asyncio.wait_for(enough.wait(), timeout)
            except asyncio.TimeoutError:
                pass  # the collection window is over; what arrived is the answer
        finally:
            await sub.unsubscribe()
        return sorted(found.values(), key=lambda info: info["id"])

    async def _publish_status(self) -> None:
        if self._nc is None or not self._nc.is_connected:
            return
        try:
            await self.publish(self.topics.status(self.agent_id), self.describe())
        except (AgentCoreError, nats.errors.Error) as exc:
            log.debug("agent %s could not publish status: %s", self.agent_id, exc)

    async def _heartbeat_loop(self) -> None:
        interval = self.config["agent.heartbeat_interval"]
        while True:
            await asyncio.sleep(interval)
            await self._publish_status()

    def get_metrics(self) -> dict[str, Any]:
        """Return counters and latencies: messages_processed, messages_failed, avg/p50/p99 latency_ms, in_flight, reconnects, ..."""
        snapshot = self._metrics.snapshot()
        snapshot.update(in_flight=self._inflight, queued=len(self._queue), status=self._status, implementation=IMPLEMENTATION)
        return snapshot

    # ------------------------------------------------------------------ lifecycle

    def _request_mux(self, nc: NATSClient) -> RequestMux:
        mux = self._mux
        if mux is None or mux.nc is not nc:
            mux = self._mux = RequestMux(nc)
        return mux

    def _require_nc(self) -> NATSClient:
        nc = self._nc
        if nc is None or nc.is_closed:
            raise NotConnectedError(f"agent {self.agent_id} is not connected")
        return nc

    async def _call_handler(self, fn: Callable[..., Any], *args: Any, is_async: bool | None = None) -> Any:
        """Call a user handler: async ones inline on the loop, sync ones in the agent's thread pool."""
        if is_async if is_async is not None else _is_async(fn):
            return await fn(*args)
        # Sync handlers may block (an LLM call, say): a worker thread keeps the loop, control and heartbeats
        # responsive. Async handlers run inline on the loop and cost no thread hop.
        return await asyncio.get_running_loop().run_in_executor(self._get_executor(), fn, *args)

    def _get_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            if self._status == "stopped":
                raise NotConnectedError(f"agent {self.agent_id} is stopped")
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.config["agent.sync_workers"], thread_name_prefix=f"agentcore-{self.agent_id}"
            )
        return self._executor

    def _connect_options(self) -> dict[str, Any]:
        cfg = self.config
        options: dict[str, Any] = {
            "servers": cfg["nats.servers"],
            "name": cfg["nats.name"] or self.agent_id,
            "connect_timeout": cfg["nats.connect_timeout"],
            "allow_reconnect": cfg["nats.allow_reconnect"],
            "max_reconnect_attempts": cfg["nats.max_reconnect_attempts"],
            "reconnect_time_wait": cfg["nats.reconnect_time_wait"],
            "ping_interval": cfg["nats.ping_interval"],
            "drain_timeout": cfg["nats.drain_timeout"],
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        for key, option in (("nats.user", "user"), ("nats.password", "password"), ("nats.token", "token"),
                            ("nats.user_credentials", "user_credentials"), ("nats.nkeys_seed", "nkeys_seed"),
                            ("nats.tls_hostname", "tls_hostname")):
            if cfg[key] is not None:
                options[option] = cfg[key]
        if cfg["nats.tls_ca"] or cfg["nats.tls_cert"]:
            context = ssl.create_default_context(cafile=cfg["nats.tls_ca"])
            if cfg["nats.tls_cert"]:
                context.load_cert_chain(cfg["nats.tls_cert"], cfg["nats.tls_key"])
            options["tls"] = context
        for name, value in cfg["nats.options"].items():
            if name in _EVENT_CALLBACKS:
                # nats-py takes coroutine functions only; the agent's own callbacks (counting disconnects and
                # reconnects) keep running before yours, and an exception of yours is logged, not raised into nats-py.
                if value is not None:
                    options[name] = _chain(options.get(name), value, name)
            else:
                options[name] = value  # signature_cb, user_jwt_cb and the like return values: passed as they are
        return options

    async def _on_error(self, exc: Exception) -> None:
        # Permission violations and slow-consumer drops arrive only here (nats-py does not raise them).
        self._metrics.async_errors += 1
        log.warning("agent %s: NATS error: %s", self.agent_id, exc)

    async def _on_disconnected(self) -> None:
        if self._status in ("stopping", "stopped"):
            return  # our own close, not an outage
        self._metrics.disconnects += 1
        log.warning("agent %s disconnected from NATS", self.agent_id)

    async def _on_reconnected(self) -> None:
        self._metrics.reconnects += 1
        self._js_reconnected()
        log.info("agent %s reconnected to %s", self.agent_id, self._nc.connected_url.netloc if self._nc and self._nc.connected_url else "?")

    async def astart(self) -> None:
        """Connect, subscribe and start heartbeats on the running event loop."""
        if self._status in ("running", "paused"):
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopped = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        # At most 8 large requests (each up to agent.max_request_bytes) pulled at once; a semaphore per start,
        # bound to that start's loop.
        self._pulls = asyncio.Semaphore(min(self.config["agent.max_concurrency"], 8))
        options = self._connect_options()
        # nats-py keeps retrying an initial connect that fails; bound it so a wrong URL is an error, not a hang.
        bound = options["connect_timeout"] * len(options["servers"]) + 1.0
        try:
            self._nc = await asyncio.wait_for(nats.connect(**options), bound)
        except Exception as exc:
            self._nc = None
            raise NotConnectedError(f"agent {self.agent_id} cannot connect to {self.config['nats.servers']}: {exc}") from exc
        try:
            await self._setup_persistence(self._nc)
        except BaseException:
            await self._nc.close()
            self._nc = None
            raise
        self._status = "running"
        self._started_at = time.time()
        self._setup_subscriptions()
        await self._sync_subscriptions()
        self._heartbeat = self._loop.create_task(self._heartbeat_loop())
        await self._publish_status()
        log.info("agent %s (%s) started with capabilities %s", self.agent_id, self.agent_type, self.capabilities)

    async def astop(self, timeout: float | None = None) -> None:
        """Stop taking work, let in-flight handlers finish (up to timeout), announce it and close the connection."""
        if self._status in ("stopping", "stopped", "created"):
            return
        self._status = "stopping"
        timeout = timeout if timeout is not None else self.config["nats.drain_timeout"]
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        nc = self._nc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if nc is not None and not nc.is_closed:
                await self._retire_all(nc, deadline)
            self._flush_batch_on_stop()  # batched messages not yet processed join the handlers drained below
            me = asyncio.current_task()
            while True:  # in-flight handlers finish and free slots for queued ones, until both are done
                pending = [t for t in self._tasks if t is not me]
                remaining = deadline - loop.time()
                if not pending or remaining <= 0:
                    break
                await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            await self._abandon(me, timeout)
            if self._mux is not None:
                await self._mux.close()  # our own requests still waiting end now, typed, not at their timeouts
                self._mux = None
            if nc is not None and not nc.is_closed:
                self._status = "stopped"
                await self._publish_status()
                await self._close_connection(nc)
        finally:
            self._status = "stopped"
            self._stop_persistence()  # only now: handlers draining until here keep their tasks in progress
            if nc is not None:
                forget_connection(nc)
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            if self._stopped is not None:
                self._stopped.set()
            log.info("agent %s stopped", self.agent_id)

    async def _retire_all(self, nc: NATSClient, deadline: float) -> None:
        """End every subscription, letting what is on the wire arrive, within the stop deadline."""
        loop = asyncio.get_running_loop()
        # Under the lock, so a pause/resume/subscribe in progress finishes first and none starts after; but only
        # until the deadline: on a stalled server that change may wait out nats-py's 10 s flush timeouts.
        try:
            await asyncio.wait_for(self._sync_lock.acquire(), max(deadline - loop.time(), 0.01))
            held = True
        except asyncio.TimeoutError:
            held = False  # the stuck change sees status "stopping" and retires what it subscribes
        try:
            subs, self._subs = list(self._subs.values()), {}
            await asyncio.wait_for(asyncio.gather(*(_retire(nc, sub) for sub in subs)), max(deadline - loop.time(), 0.01))
        except asyncio.TimeoutError:
            log.warning("agent %s: its subscriptions did not drain before the stop deadline", self.agent_id)
        finally:
            if held:
                self._sync_lock.release()

    async def _close_connection(self, nc: NATSClient) -> None:
        # nats-py's drain is bounded by its drain_timeout, but a stalled server can hold its flushes for 10 s more.
        try:
            await asyncio.wait_for(nc.drain(), self.config["nats.drain_timeout"] + 1.0)
        except (asyncio.TimeoutError, nats.errors.Error, OSError) as exc:
            log.warning("agent %s: draining the connection failed (%s); closing it", self.agent_id, exc or type(exc).__name__)
            try:
                await asyncio.wait_for(nc.close(), 1.0)
            except (asyncio.TimeoutError, nats.errors.Error, OSError):
                pass

    async def _abandon(self, me: asyncio.Task[Any] | None, timeout: float) -> None:
        """Past the drain timeout: tell queued requesters the agent is stopping, cancel running handlers."""
        queued, self._queue = self._queue, []
        # Handled messages still owed a publish_result(): it cannot come once the connection closes.
        owed, self._owed = list(self._owed), set()
        late = [t for t in self._tasks if t is not me]
        try:
            for _, _, q in queued:
                self._finish_message(q.reg, q.message, MISS)  # never ran: a retry (to a replica, say) runs it
                if self._release(q.msg, redeliver=True):
                    continue  # JetStream offers it to a replica, or to this agent when it is back
                await self._try_send(self._answer_error(
                    q.delivery(), "shutting_down", f"agent {self.agent_id} stopped before handling {q.message['id']}"))
            for delivery in owed:
                if delivery.held is not None and self._release(delivery.held, redeliver=True):
                    self._settle(delivery)  # JetStream offers the task again: nothing to tell its requester now
                    delivery.answered = True
                    continue
                await self._try_send(self._answer_error(
                    delivery, "shutting_down", f"agent {self.agent_id} stopped before publishing a result for {delivery.message['id']}"))
        finally:
            for task in late:
                task.cancel()  # each answers its requester with a cancelled error as it unwinds
        if late or queued:
            log.warning("agent %s stopped with %d handlers still running and %d queued after %.1fs",
                        self.agent_id, len(late), len(queued), timeout)
            await asyncio.wait(late, timeout=1.0) if late else None

    async def _try_send(self, answer: Coroutine[Any, Any, None]) -> None:
        """Send one answer, logging a failure instead of raising it: one lost answer must not cost the others theirs
        (a batch's, or those sent at stop when the connection is already gone)."""
        try:
            await answer
        except (AgentCoreError, nats.errors.Error, OSError) as exc:
            log.warning("agent %s could not send an answer: %s", self.agent_id, exc)

    async def wait_stopped(self) -> None:
        """Wait until the agent has stopped (by stop(), a shutdown command or an error)."""
        if self._stopped is not None:
            await self._stopped.wait()

    async def __aenter__(self) -> NATSAgent:
        await self.astart()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.astop()

    def start(self, timeout: float = 10.0) -> bool:
        """Start the agent on its own event-loop thread (for plain scripts); return True once connected and subscribed."""
        if self._status in ("running", "paused"):
            return True
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"agentcore-{self.agent_id}", daemon=True)
        thread.start()
        self._own_thread = thread
        starting = asyncio.run_coroutine_threadsafe(self.astart(), loop)
        try:
            starting.result(timeout)
        except Exception as exc:
            log.error("agent %s failed to start: %s", self.agent_id, exc or type(exc).__name__)
            starting.cancel()
            # A start that timed out may have connected meanwhile: close what it opened before ending the loop.
            asyncio.run_coroutine_threadsafe(self._abort_start(), loop).result(10)
            self._close_own_loop(loop)
            return False
        return True

    async def _abort_start(self) -> None:
        if self._status in ("running", "paused"):
            await self.astop()
        elif self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
        self._status = "stopped"

    def stop(self, timeout: float | None = None) -> None:
        """Stop the agent started with start() and end its event-loop thread (timeout: as astop's)."""
        loop = self._loop
        if loop is None:
            return
        if self._own_thread is None or self._on_loop_thread():
            raise AgentCoreError("stop() waits for the agent's own loop: from code on that loop use `await agent.astop()`")
        if not loop.is_closed():
            try:
                drain = self.config["nats.drain_timeout"]
                # astop() may take its timeout (handlers), a second to cancel stragglers and the connection's own
                # drain (nats.drain_timeout, plus a second): wait that long, or a clean stop reads as a failure.
                wait = (timeout if timeout is not None else drain) + drain + 4.0
                asyncio.run_coroutine_threadsafe(self.astop(timeout), loop).result(wait)
            finally:
                self._close_own_loop(loop)

    def _close_own_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(loop.stop)
        if self._own_thread is not None:
            self._own_thread.join(5)
            self._own_thread = None
        if not loop.is_running():
            loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run one of the agent's coroutines on its loop from another thread and return the result."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise NotConnectedError(f"agent {self.agent_id} is not started")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.agent_id} ({self.agent_type}) {self._status}>"

