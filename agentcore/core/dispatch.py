"""The dispatcher: admission, the priority queue, duplicate detection and caching, and running handlers.

Messages arrive inline from nats-py's read loop (or from a JetStream puller) and are routed through the
compiled subject index; a handler that does not suspend finishes inside the dispatch call. Optional features
hook in at one place each, at the cost of one ``is None`` test: the cache, and an interceptor (batching).

No message makes the agent an open relay: one whose ``replyTo`` is not a reply inbox, a result subject,
agentcore's MCP responses or a configured ``agent.reply_subjects`` pattern is refused before any handler
sees it, and a task handler never runs a result (an answer reflected onto a task subject).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from contextvars import Token
from typing import Any

import orjson

from .._eager import start_now
from .._impl import SubjectIndex, subject_matches, validate_subject
from ..config import AgentConfig
from ..envelope import decode, is_expired
from ..errors import EnvelopeError, PayloadTooLargeError, RemoteError, SubjectError
from ..fields import ID, PAYLOAD, REPLY_TO, ROUTING, SOURCE, TIMEOUT, TYPE
from ..metrics import AgentMetrics
from ..topics import Topics
from ..transport.connection import Connection
from ..transport.identity import H_SENDER
from ..transport.inline import MAX_NAMED_SUBJECT
from ..transport.offload import PullGate, pull_request
from ..transport.settlement import PersistedMsg, Settlement
from ..transport.tracecontext import CURRENT, TRACEPARENT, Scope, carried
from .caching import DONE, IN_FLIGHT, MISS, NOT_KEPT, SHARED, TaskCache, kept, unkept
from .records import NO_REPLY, TASK, Delivery, Incoming, Queued, Registration, SubscriptionKey, asked_at, new_delivery
from .replies import Replies
from .tasks import CANCELLED, FAILED, TaskTable
from .tasks import DONE as SUCCEEDED  # a task state; caching's DONE (a replay marker) is another thing
from .sync_calls import SyncCalls

__all__ = ("Dispatcher",)

log = logging.getLogger("agentcore.agent")

_now = time.perf_counter  # read twice per message

_TASK_TYPES = ("task", "query")  # what gets a lifecycle record (status, cancellation); events do not


class Dispatcher:
    """Route each incoming message to its handlers under the concurrency limit; answer it exactly once."""

    def __init__(self, agent_id: str, config: AgentConfig, topics: Topics, metrics: AgentMetrics, index: SubjectIndex,
                 connection: Connection, replies: Replies, settlement: Settlement,
                 spawn: Callable[[Coroutine[Any, Any, Any] | asyncio.Future[Any] | None], None],
                 sync_calls: SyncCalls, default: Callable[[], Callable[..., Any]],
                 tasks: TaskTable) -> None:
        self.agent_id = agent_id
        self.config = config
        self.topics = topics
        self.metrics = metrics
        self.index = index
        self.connection = connection
        self.replies = replies
        self.settlement = settlement
        self._spawn = spawn
        self._sync = sync_calls  # runs a sync handler inline, or in the thread pool once it was seen to block
        self._default = default  # returns the agent's process_message, for registrations without a handler
        self.max_concurrency: int = config["agent.max_concurrency"]
        self.max_queued: int = config["agent.max_queued"]  # beyond it new work is refused as overloaded
        self.max_queued_bytes: int = config["agent.max_queued_bytes"]  # and beyond these bytes of it
        self.queued_bytes = 0
        self.inflight = 0
        self.queue: list[tuple[int, int, Queued]] = []
        self._seq = itertools.count()
        self._pumping = False
        # None when caching is off, so the hot path pays one attribute test for it.
        self.cache: TaskCache | None = (
            # On the dispatcher's clock: seen() and finish() take the arrival and end times it reads anyway.
            TaskCache(config["cache.ttl"], config["cache.max_entries"], metrics, _now,
                      max_bytes=config["cache.max_bytes"], duplicate_bytes=config["cache.duplicate_bytes"],
                      replay_max_bytes=config["cache.replay_max_bytes"])
            if config["cache.enabled"] else None
        )
        self._take: Callable[[Queued], None] | None = None  # an interceptor (batching) takes non-system messages
        # At most 8 large requests (each up to agent.max_request_bytes) pulled into memory at once; made per start,
        # bound to that start's loop.
        self.pulls = asyncio.Semaphore(min(self.max_concurrency, 8))
        self.pull_gate = PullGate(config["agent.max_pulls"], config["agent.pulls_per_sender"])
        # Where a replyTo may send answers: reply inboxes and result subjects (a prefix test), agentcore's MCP
        # responses and the configured agent.reply_subjects (patterns, tested only when no prefix matched).
        self._reply_prefixes = (*connection.inbox_prefixes(), topics.result_prefix())
        self._reply_patterns = (topics.mcp_responses_any(), *config["agent.reply_subjects"])
        self.verifier = connection.verifier  # None unless identities are verified: one `is None` test per message
        self.tasks = tasks  # the lifecycle records of the tasks being served (status, cancellation)
        self._matched: Any = None  # the last tuple the index matched, the key it came on, and its registrations on it
        self._matched_key: SubscriptionKey | None = None
        self._matched_regs: list[Registration] = []
        self._pending = replies.pending  # message id -> the delivery publish_result() answers
        self._latency = metrics.latencies.append  # one handler latency (seconds) into get_metrics()' percentiles

    # ------------------------------------------------------------------ the hot path

    def dispatch(self, msg: Incoming, key: SubscriptionKey) -> None:
        """Route one incoming message of the wire subscription key to its handlers."""
        t0 = _now()
        metrics = self.metrics
        metrics.received += 1
        subject = msg.subject
        # The compiled index names every handler whose pattern matches; a message that arrived on an
        # overlapping subscription of ours is handled by that subscription's own delivery, not this one.
        matched = self.index.match(subject)
        if matched is self._matched and key == self._matched_key:
            regs = self._matched_regs  # the same subject (or one the index answers alike) as the message before
        else:
            regs = [reg for reg in matched if reg.key == key]
            # The index hands back the same (immutable) tuple while its patterns are unchanged: what it names for
            # this key is remembered by that tuple's identity (held here, so the identity is not reused).
            self._matched, self._matched_key, self._matched_regs = matched, key, regs
        if not regs:
            if self.settlement.release(msg, redeliver=True):
                return  # a persisted task whose handler was just removed: a replica may still serve it
            if not self.index.match(subject):  # none of our other subscriptions answers it either
                self._spawn(self._answer_unrouted(msg))
            return
        try:
            message = decode(msg.data)
        except EnvelopeError as exc:
            metrics.invalid += 1
            metrics.failed += 1
            log.warning("agent %s dropped a malformed message on %s: %s", self.agent_id, subject, exc)
            self.settlement.reject(msg)
            if msg.reply:
                self._spawn(self.replies.send_error(msg.reply, None, "invalid_message", str(exc)))
            return
        if self.verifier is not None and not self._verified(msg, message):
            return
        if "stream" in message[PAYLOAD] and message[TYPE] in ("task", "query") and any(r.kind == TASK or r.queue for r in regs):
            # A request too large for one message came as an offer: a subscription that answers it pulls the
            # whole envelope, then routes it (an observer's plain subscription sees the offer as it is).
            self._spawn(self._route_pulled(msg, key, regs, message, t0))
            return
        self._route(msg, key, regs, message, t0)

    def _route(self, msg: Incoming, key: SubscriptionKey, regs: list[Registration], message: dict[str, Any], t0: float,
               size: int = 0) -> None:
        reply_to = message.get(REPLY_TO)
        if reply_to and not self._may_answer(reply_to):
            self._refuse_reply_to(msg, message, reply_to)
            return
        if message[TYPE] == "result":
            # An answer is never work: one reflected onto a task subject (a NATS reply subject aimed there) must
            # not run a task handler as its sender's deputy. Observers (subscribe handlers) still see it.
            regs = [reg for reg in regs if reg.kind != TASK or reg.system]
            if not regs:
                self.metrics.counters["results_ignored"] += 1
                self.settlement.reject(msg)
                return
        subject = msg.subject
        cache = self.cache
        take = self._take
        if cache is not None and not regs[0].system:
            # Ids are the sender's: the same id from another sender is another message.
            seen = cache.seen(key, message, t0)
            if seen is not MISS:  # a redelivery or a retry: never run a handler twice for one message
                self._spawn(self._answer_duplicate(regs[0], subject, message, msg, seen))
                return
        for reg in regs:
            if take is not None and not reg.system:
                take(Queued(reg, subject, message, msg, t0))
            elif not reg.system and self.inflight >= self.max_concurrency:
                self._admit(Queued(reg, subject, message, msg, t0, size))
            else:
                self._run(reg, subject, message, msg, t0)

    async def _route_pulled(self, msg: Incoming, key: SubscriptionKey, regs: list[Registration], offer: dict[str, Any],
                            t0: float) -> None:
        routing = offer.get("routing") or {}
        if routing.get("timeout") is not None:
            timeout = max(offer["timestamp"] + routing["timeout"] / 1000.0 - time.time(), 0.1)
        else:
            timeout = self.config["agent.request_timeout"]
        code = reason = None
        stream = offer["payload"]["stream"]
        declared = stream.get("size") if isinstance(stream, dict) else None  # checked by pull_request before any pull
        declared = declared if isinstance(declared, int) else 0
        if len(self.queue) >= self.max_queued or self.queued_bytes + declared > self.max_queued_bytes:
            code, text = "overloaded", (f"agent {self.agent_id} has {len(self.queue)} messages ({self.queued_bytes} bytes) "
                                        "queued; try again later")
        else:
            try:
                message = await pull_request(self.connection, offer, timeout, self.config["agent.max_request_bytes"], self.pulls,
                                             self.pull_gate, self.config["agent.pull_idle_timeout"])
            except PayloadTooLargeError as exc:
                code, text = "payload_too_large", f"agent {self.agent_id} takes requests up to agent.max_request_bytes: {exc}"
            except asyncio.CancelledError:  # stopping past the drain timeout
                code, text = "cancelled", f"pulling message {offer['id']} was cancelled"
                self.settlement.release(msg, redeliver=True)  # a persisted offer: JetStream offers it again
                if msg.reply:
                    self._spawn(self.replies.send_error(msg.reply, offer["id"], code, text))
                raise
            except RemoteError as exc:  # a memory bound (docs/limits.md): overloaded or limit_exceeded, with its reason
                code, text, reason = exc.code, exc.remote_message, (exc.details or {}).get("reason")
            except Exception as exc:  # a malformed or forged offer, a puller that vanished: the requester hears why
                code, text = "invalid_message", f"the offered message could not be pulled: {exc}"
        if code is not None:
            self.metrics.failed += 1
            if code == "overloaded":
                self.metrics.counters["overloaded"] += 1
            else:
                self.metrics.invalid += 1
            log.warning("agent %s refused the message offered as %s on %s: %s", self.agent_id, offer["id"], msg.subject, text)
            self.settlement.release(msg, redeliver=code == "overloaded")
            if msg.reply:
                await self.replies.send_error(msg.reply, offer["id"], code, text, **({"reason": reason} if reason else {}))
            return
        self.metrics.counters["large_requests_pulled"] += 1
        self._route(msg, key, regs, message, t0, stream["size"])  # queued, it holds the whole envelope

    def _verified(self, msg: Incoming, message: dict[str, Any]) -> bool:
        """Check msg's signed identity; refuse it (typed, to the NATS reply subject) and return False when it fails."""
        assert self.verifier is not None
        source_id = message[SOURCE][ID]
        persisted = msg.__class__ is PersistedMsg  # stored for later and redelivered on purpose: no window, no replay set
        reason = self.verifier.check(msg.subject, msg.reply, getattr(msg, "headers", None), msg.data, source_id,
                                     fresh=not persisted)
        if reason is None:
            return True
        error = self.verifier.refuse(reason, source_id, msg.subject)
        self.metrics.failed += 1
        if self.metrics.counters["identity_refused"] % 1000 == 1:  # once per thousand: a flood must not flood the log
            log.warning("agent %s refused message %s from %r on %s: %s", self.agent_id, message[ID], source_id,
                        msg.subject, error.remote_message)
        self.settlement.reject(msg)  # a persisted task: redelivering it cannot make its signature good
        if msg.reply:
            self._spawn(self.replies.send_error(msg.reply, message[ID], error.code, error.remote_message, reason=reason))
        return False

    def _may_answer(self, subject: str) -> bool:
        """Return whether a replyTo of subject is honoured: a reply inbox, a result subject, an allowed pattern."""
        if len(subject) > MAX_NAMED_SUBJECT:
            return False
        try:  # on every path: a pattern's last token takes CR/LF and spaces too, and nats-py before 2.15 writes them
            validate_subject(subject, wildcards=False)
        except SubjectError:
            return False
        if subject.startswith(self._reply_prefixes):
            return True
        return any(subject_matches(pattern, subject) for pattern in self._reply_patterns)

    def _refuse_reply_to(self, msg: Incoming, message: dict[str, Any], reply_to: str) -> None:
        """Refuse a message whose replyTo names a subject the agent does not answer to: no handler runs it."""
        metrics = self.metrics
        metrics.failed += 1
        metrics.counters["replies_refused"] += 1
        if metrics.counters["replies_refused"] % 1000 == 1:  # once per thousand: a flood must not flood the log too
            log.warning("agent %s refused message %s from %s on %s: its replyTo %r is no reply inbox or result subject",
                        self.agent_id, message[ID], message[SOURCE][ID], msg.subject, reply_to)
        self.settlement.reject(msg)  # a persisted task: redelivering it cannot make its replyTo acceptable
        if msg.reply:
            self._spawn(self.replies.send_error(
                msg.reply, message[ID], "forbidden",
                f"agent {self.agent_id} does not send answers to replyTo {reply_to!r}: only to reply inboxes, "
                f"result subjects and agent.reply_subjects", reason="reply_to"))

    def _admit(self, queued: Queued) -> None:
        """Queue a message until a handler slot frees up; refuse it as overloaded when the queue is full (by count or bytes)."""
        size = queued.size = queued.size or len(queued.msg.data)
        if len(self.queue) >= self.max_queued or self.queued_bytes + size > self.max_queued_bytes:
            self._refuse_overloaded(queued)
            return
        self.queued_bytes += size
        priority = (queued.message.get(ROUTING) or {}).get("priority") or 0
        if not queued.reg.system and queued.message[TYPE] in _TASK_TYPES:
            self.tasks.queued(queued.message, queued.delivery().destination, self._signer_of(queued.msg))
        # heapq is a min-heap: negate so the highest routing.priority runs first, FIFO within a priority.
        heapq.heappush(self.queue, (-priority, next(self._seq), queued))

    def _refuse_overloaded(self, queued: Queued) -> None:
        metrics = self.metrics
        metrics.failed += 1
        metrics.counters["overloaded"] += 1
        by_bytes = len(self.queue) < self.max_queued  # refused for agent.max_queued_bytes, not agent.max_queued
        if by_bytes:
            metrics.counters["overloaded_bytes"] += 1
        self.finish(queued, MISS)  # a retry later runs
        if self.settlement.release(queued.msg, redeliver=True):
            return  # JetStream offers it again shortly, perhaps to a replica: the requester keeps waiting
        if metrics.counters["overloaded"] % 1000 == 1:  # once per thousand: logging each would add to the load
            log.warning("agent %s is overloaded (%d queued, %d bytes): refusing messages", self.agent_id, len(self.queue),
                        self.queued_bytes)
        delivery = queued.delivery()
        if delivery.reply or queued.message.get(REPLY_TO):
            self._spawn(self.replies.fail(
                delivery, "overloaded", f"agent {self.agent_id} has {len(self.queue)} messages ({self.queued_bytes} bytes) "
                "queued; try again later", reason="max_queued_bytes" if by_bytes else "max_queued"))

    async def _answer_unrouted(self, msg: Incoming) -> None:
        """Answer a request that reached a subscription whose handler was just removed (not a silent timeout)."""
        try:
            message = decode(msg.data)
        except EnvelopeError as exc:
            if msg.reply:
                await self.replies.send_error(msg.reply, None, "invalid_message", str(exc))
            return
        reply_to = message.get(REPLY_TO)
        if reply_to and not self._may_answer(reply_to):
            self._refuse_reply_to(msg, message, reply_to)
            return
        delivery = Delivery(message, msg.reply or None, msg.subject, None)
        if delivery.destination is not None:  # a request (reply subject or replyTo), not a plain publish
            await self.replies.fail(delivery, "unhandled", f"agent {self.agent_id} no longer handles {msg.subject}")

    def _signer_of(self, msg: Incoming) -> str | None:
        """Return the key that signed msg (what its requester's cancel must be signed with), when identities are on."""
        if self.verifier is None:
            return None
        headers = getattr(msg, "headers", None)
        return headers.get(H_SENDER) if headers else None

    def _run(self, reg: Registration, subject: str, message: dict[str, Any], msg: Incoming, t0: float) -> None:
        system = reg.system
        if not system:  # control and discovery bypass the concurrency limit, so they are not counted in it
            self.inflight += 1
        delivery = new_delivery(message, msg.reply or None, subject, reg.fallback)
        tracked = not system and message[TYPE] in _TASK_TYPES  # a task: its status kept, its requester may cancel
        if reg.plain and msg.headers is None and self.verifier is None and self.connection.tracer is None \
                and not self.tasks.waiting and msg.__class__ is not PersistedMsg:
            task = start_now(self._handle_plain(reg, subject, message, msg, t0, delivery, tracked))
        else:
            task = start_now(self._handle(reg, subject, message, msg, t0, delivery, tracked))
        if task is not None:  # it suspended: its Task is what a cancel cancels (one that finished inline needs none)
            if tracked:
                delivery.task = task
            self._spawn(task)

    async def _handle_plain(self, reg: Registration, subject: str, message: dict[str, Any], msg: Incoming, t0: float,
                            delivery: Delivery, tracked: bool) -> None:
        """_handle for the common case, which _run picks: an async task handler of a capability (not a system one),
        a message without headers, no tracer, no signed identities, nothing queued, not a persisted task. It does
        what _handle does in that case, and nothing else: each line here is paid per message."""
        pending = self._pending
        mid = message[ID]
        prior = pending.setdefault(mid, delivery)
        if prior is not delivery:
            self._same_id(prior, message, delivery)
        replay: Any = DONE  # what a retry of this message id is answered with
        ended = FAILED
        key = None
        cache = self.cache
        try:
            routing = message.get(ROUTING)
            if routing is not None and routing.get(TIMEOUT) is not None and is_expired(message):
                await self._expired(delivery, subject, mid)
                return
            if cache is not None and reg.cache and (msg.reply or message.get(REPLY_TO)):
                key = cache.key(reg.pattern, message, reg.cache == SHARED)
                if key is not None:
                    hit = cache.get(key)
                    if hit is not MISS:
                        replay = hit
                        replay = await self._answer_hit(delivery, hit)
                        self.metrics.processed += 1
                        return
            result = await reg.handler(message)  # type: ignore[misc]  # reg.plain: an async handler of its own
            if not delivery.answered and result is not NO_REPLY:
                replay = result
                if not self.replies.answer_now(delivery, result):
                    await self.replies.answer(delivery, result)
                replay = kept(result, delivery.envelope)  # what a replay (and once sent, a hit) answers
                if key is not None and delivery.size:
                    cache.put(key, replay, delivery.size)  # type: ignore[union-attr]
            self.metrics.processed += 1
            ended = SUCCEEDED
        except asyncio.CancelledError:
            replay = MISS
            if self._cancelled(delivery, msg, mid):
                return
            raise
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise  # the process stopping, or this coroutine being closed: nothing may be awaited now
        except BaseException as exc:  # an Exception, or a handler's own BaseException: answered all the same
            replay = MISS  # a retry of a failed message runs again
            await self._failed(reg, subject, mid, delivery, None, exc)
        finally:
            end = _now()
            if tracked:
                self.tasks.finished(message, CANCELLED if delivery.cancelled else ended, end)
            if pending.get(mid) is delivery and not delivery.deferred:
                del pending[mid]
            elif self.tasks.shadowed:
                self._unshadow(message, delivery)
            if cache is not None and (replay is not DONE or msg.reply or message.get(REPLY_TO)):
                # A message nobody waits for, handled, stays recorded as taken until the TTL from its arrival: there is
                # no answer to keep and no word for a duplicate of it, so its end would change nothing but that.
                cache.finish(reg.key, message, replay, msg.reply, delivery.size, end)
            elapsed = end - t0
            self._latency(elapsed)
            reg.handled += 1  # per registration, for the NATS service API's endpoint stats
            reg.seconds += elapsed
            self.inflight -= 1
            if self.queue:
                self._pump()

    async def _handle(self, reg: Registration, subject: str, message: dict[str, Any], msg: Incoming, t0: float,
                      delivery: Delivery, tracked: bool) -> None:
        # The common case (no tracer, no headers, no signed identities, nothing queued, no routing) passes one test
        # for each group of rare work; each group lives in its own method.
        pending = self._pending
        mid = message[ID]
        prior = pending.setdefault(mid, delivery)
        if prior is not delivery:
            self._same_id(prior, message, delivery)
        replay: Any = DONE  # what a retry of this message id is answered with
        # Trace context: a tracer opens the run's span; without one, a traceparent header is passed on to what the
        # handler sends.
        scope: Scope | None = None
        token: Token[dict[str, str] | None] | None = None
        if self.connection.tracer is not None or msg.headers is not None:
            scope, token = self._trace_in(reg, subject, message, msg)
        if tracked and (self.verifier is not None or self.tasks.waiting):
            self._track(message, msg, delivery)
        ended = FAILED
        key = None
        try:
            if delivery.cancelled:  # its requester cancelled it while it was queued
                raise asyncio.CancelledError
            routing = message.get(ROUTING)
            if routing is not None and routing.get(TIMEOUT) is not None and is_expired(message):
                await self._expired(delivery, subject, mid)
                return
            # The cache answers only requests (someone waits for the answer), each scoped to its requester
            # unless the capability shares its results.
            cache = self.cache
            if cache is not None and reg.kind == TASK and reg.cache and not reg.system and (msg.reply or message.get(REPLY_TO)):
                key = cache.key(reg.pattern, message, reg.cache == SHARED)
                if key is not None:
                    hit = cache.get(key)
                    if hit is not MISS:
                        replay = hit
                        replay = await self._answer_hit(delivery, hit)
                        self.metrics.processed += 1
                        return
            args: tuple[Any, ...] = (message,) if reg.kind == TASK else (self.topics.to_topic(subject), message)
            call = reg.handler if reg.handler is not None else self._default()
            if reg.is_async:
                result = await call(*args)
            elif reg.threaded or self._sync.all_threaded:
                result = await self._sync.threaded(call, *args)
            else:
                try:  # inline: no thread hop there and back, and publish_result writes straight to the socket
                    result = self._sync.inline(reg, call, args)
                except RuntimeError as exc:
                    if not self._sync.move(reg, exc):
                        raise
                    # It called something that cannot run on the loop's thread (asyncio.run, agent.call), which refused
                    # before running anything: the handler runs again where that works, in a worker thread.
                    result = await self._sync.threaded(call, *args)
            if not delivery.answered:
                if reg.kind == TASK:
                    if result is not NO_REPLY:
                        replay = result
                        if not self.replies.answer_now(delivery, result):
                            await self.replies.answer(delivery, result)
                        replay = kept(result, delivery.envelope)  # what a replay (and once sent, a hit) answers
                        if key is not None and delivery.size:
                            cache.put(key, replay, delivery.size)  # type: ignore[union-attr]
                elif message.get(TYPE) in _TASK_TYPES:
                    if result is False and delivery.destination:
                        await self.replies.fail(delivery, "unhandled", f"agent {self.agent_id} did not handle {subject}")
                    elif delivery.reply or message.get(REPLY_TO):
                        self.replies.defer(delivery)  # handled, answer still owed: publish_result may come later
            self.metrics.processed += 1
            ended = SUCCEEDED
        except asyncio.CancelledError:
            replay = MISS
            if self._cancelled(delivery, msg, mid):
                return
            raise
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise  # the process stopping, or this coroutine being closed: nothing may be awaited now
        except BaseException as exc:  # an Exception, or a handler's own BaseException: answered all the same
            replay = MISS  # a retry of a failed message runs again
            await self._failed(reg, subject, mid, delivery, scope, exc)
        finally:
            end = _now()
            if tracked:
                self.tasks.finished(message, CANCELLED if delivery.cancelled else ended, end)
            if scope is not None:
                scope.end()
            elif token is not None:
                CURRENT.reset(token)
            if pending.get(mid) is delivery and not delivery.deferred:
                del pending[mid]
            elif self.tasks.shadowed:
                self._unshadow(message, delivery)
            if self.cache is not None and not reg.system:
                self.cache.finish(reg.key, message, replay, msg.reply, delivery.size, end)
            # A persisted task is answered now (or was handed back above): JetStream may forget it.
            if msg.__class__ is PersistedMsg:
                if delivery.deferred and not delivery.answered:
                    delivery.held = msg  # settled when publish_result (or no_result) answers it
                else:
                    self.settlement.release(msg, after=delivery.kept)  # acked once its result is kept
            elapsed = end - t0
            self._latency(elapsed)
            reg.handled += 1  # per registration, for the NATS service API's endpoint stats
            reg.seconds += elapsed
            if not reg.system:
                self.inflight -= 1
            if self.queue:
                self._pump()

    # ------------------------------------------------------------------ _handle's rare cases

    async def _answer_hit(self, delivery: Delivery, hit: Any) -> Any:
        """Answer delivery with a result-cache hit; return what a replay of it keeps."""
        content = unkept(hit)
        if not self.replies.answer_now(delivery, content):
            await self.replies.answer(delivery, content)
        # A replay keeps this answer (delivery.size bytes), not the hit: the hit is the first request's envelope, as
        # large as that request's conversationId, and would be counted as this one.
        return kept(content, delivery.envelope)

    def _same_id(self, prior: Delivery, message: dict[str, Any], delivery: Delivery) -> None:
        """A message whose id is pending already: answered, it is replaced; else both run (ids are the sender's)."""
        mid = message[ID]
        if prior.answered:
            self._pending[mid] = delivery
        else:  # publish_result() names messages by id alone: it keeps answering the first holder of this id
            self.tasks.shadowed[(message[SOURCE][ID], mid)] = delivery  # status and cancel still find it
            log.warning("agent %s got message id %s from %s while one with that id is still pending; "
                        "publish_result(%r) answers the first", self.agent_id, mid, message[SOURCE][ID], mid)

    def _unshadow(self, message: dict[str, Any], delivery: Delivery) -> None:
        """Forget a delivery that ran beside another requester's task with its id (tasks.shadowed is empty otherwise)."""
        shadowed, id_key = self.tasks.shadowed, (message[SOURCE][ID], message[ID])
        if shadowed.get(id_key) is delivery:
            del shadowed[id_key]

    def _trace_in(self, reg: Registration, subject: str, message: dict[str, Any],
                  msg: Incoming) -> tuple[Scope | None, Token[dict[str, str] | None] | None]:
        """Open the run's span (a tracer), or carry the message's traceparent into what the handler sends."""
        tracer = self.connection.tracer
        if tracer is not None:
            return tracer.process(subject, message, msg.headers, reg.system), None
        headers = msg.headers
        if headers is not None and TRACEPARENT in headers:
            trace = carried(headers)
            if trace is not None:
                return None, CURRENT.set(trace)
        return None, None

    def _track(self, message: dict[str, Any], msg: Incoming, delivery: Delivery) -> None:
        """Note who signed a task (its cancel must be signed alike) and take it off the queued records."""
        if self.verifier is not None:
            delivery.key = self._signer_of(msg)
        if self.tasks.waiting:
            self.tasks.started(message, delivery)

    async def _expired(self, delivery: Delivery, subject: str, mid: str) -> None:
        """Answer a message whose routing.timeout passed before it ran: it is not run."""
        self.metrics.expired += 1
        self.metrics.failed += 1
        log.info("agent %s skipped expired message %s on %s", self.agent_id, mid, subject)
        await self.replies.fail(delivery, "expired", f"message {mid} expired before it was processed")

    def _cancelled(self, delivery: Delivery, msg: Incoming, mid: str) -> bool:
        """Settle a cancelled run; True when its requester cancelled it (nothing is sent, the error is not raised)."""
        self.metrics.failed += 1
        if delivery.cancelled:  # by its requester: nothing more is sent, a persisted task leaves the stream
            self.settlement.reject(msg)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
            return True
        # stop() past its drain timeout, or the handler's own doing: the requester hears of it either way.
        # Unanswered, a persisted task is handed back to run again (answered, _handle's finally acks it).
        if not delivery.answered and not self.settlement.release(msg, redeliver=True):
            self._spawn(self.replies.fail(delivery, "cancelled", f"handling of message {mid} was cancelled"))
        return False

    async def _failed(self, reg: Registration, subject: str, mid: str, delivery: Delivery, scope: Scope | None,
                      exc: BaseException) -> None:
        """Answer a handler's error to its requester with its code and reason (a RemoteError's own, else handler_error)."""
        self.metrics.failed += 1
        details: dict[str, Any] = {}
        if isinstance(exc, RemoteError):
            code, text = exc.code, exc.remote_message
            if isinstance(exc.details, dict):  # the requester's RemoteError gets them as its details
                details = {k: v for k, v in exc.details.items() if k not in ("code", "message")}
                try:
                    orjson.dumps(details)
                except TypeError:
                    details = {}  # not JSON: the error still goes out, without them
        else:
            code, text = "handler_error", f"{type(exc).__name__}: {exc}"
            log.exception("agent %s handler for %s raised on message %s", self.agent_id, subject, mid, exc_info=exc)
        reg.errors += 1
        reg.last_error = f"{code}: {text}"
        if scope is not None:
            scope.error(exc)
        if not delivery.answered:
            try:
                await self.replies.fail(delivery, code, text, **details)
            except Exception:
                log.exception("agent %s could not send the error result for %s", self.agent_id, mid)

    async def _answer_duplicate(self, reg: Registration, subject: str, message: dict[str, Any], msg: Incoming, seen: Any) -> None:
        """Answer a message id this subscription already took: replay its result where the original asked for it,
        or say it is a duplicate (an id alone never hands a result to another destination)."""
        if seen is IN_FLIGHT and self.settlement.forget(msg):
            return  # JetStream redelivered a task still being handled: the first delivery answers and acks it
        self.settlement.release(msg)
        destination = asked_at(message, msg.reply)
        if destination is None:
            return  # a redelivered publish nobody waits for: dropping it is the point
        delivery = Delivery(message, msg.reply or None, subject, None)
        if seen is not IN_FLIGHT and seen is not DONE and seen[0] == destination:
            if seen[1] is NOT_KEPT:  # answered, but too large to keep a copy of (cache.replay_max_bytes)
                await self.replies.fail(delivery, "duplicate", f"message {message['id']} was handled by agent "
                                        f"{self.agent_id}; its answer is too large to keep for a replay "
                                        "(cache.replay_max_bytes): send it with a new id to run it again", reason="not_kept")
                return
            self.metrics.counters["duplicates_replayed"] += 1
            await self.replies.answer(delivery, unkept(seen[1]))
            return
        # Still running, nothing to replay, or asked for somewhere else: the same words for each, so a stranger
        # learns nothing of another's answer from the refusal.
        state = "is being handled" if seen is IN_FLIGHT else "was handled"
        await self.replies.fail(delivery, "duplicate", f"message {message['id']} {state} by agent {self.agent_id}; "
                                                       "send it with a new id to run it again")

    def _pump(self) -> None:
        # Handlers that finish inline call _pump again from inside _run: only the outermost call loops, so a
        # deep queue drains iteratively instead of recursing once per queued message.
        if self._pumping:
            return
        self._pumping = True
        try:
            while self.queue and self.inflight < self.max_concurrency:
                _, _, q = heapq.heappop(self.queue)
                self.queued_bytes -= q.size
                self._run(q.reg, q.subject, q.message, q.msg, q.t0)
        finally:
            self._pumping = False

    # ------------------------------------------------------------------ for features (the Work interface)

    def intercept(self, take: Callable[[Queued], None] | None) -> None:
        """Hand every non-system message to take instead of running it (None: run messages again)."""
        self._take = take

    def submit(self, queued: Queued) -> None:
        """Run queued now if a handler slot is free, else queue it (refused when the queue is full)."""
        if self.inflight >= self.max_concurrency:
            self._admit(queued)
        else:
            self._run(queued.reg, queued.subject, queued.message, queued.msg, queued.t0)

    async def run_counted(self, queued: Queued) -> None:
        """Run queued's handler now, counted as in flight, and return when it has answered."""
        self.inflight += 1  # _handle counts it down
        delivery = queued.delivery()
        tracked = queued.message[TYPE] in _TASK_TYPES and not queued.reg.system
        if tracked:
            delivery.task = asyncio.current_task()
        await self._handle(queued.reg, queued.subject, queued.message, queued.msg, queued.t0, delivery, tracked)

    def finish(self, queued: Queued, replay: Any, size: int | None = None) -> None:
        """Record a message as handled for duplicate detection: replay is its result, DONE, or MISS to forget it;
        size is its encoded answer in bytes, measured when not given."""
        if self.cache is not None and not queued.reg.system:
            self.cache.finish(queued.reg.key, queued.message, replay, queued.msg.reply, size)

    def gauges(self) -> dict[str, Any]:
        """Return what get_metrics() reports of the bounded stores: bytes held and limits (docs/limits.md)."""
        gauges: dict[str, Any] = {"queued_bytes": self.queued_bytes, "max_queued_bytes": self.max_queued_bytes,
                                  **self.pull_gate.gauges()}
        if self.cache is not None:
            gauges.update(self.cache.gauges())
        return gauges

    def take_queue(self) -> list[Queued]:
        """Empty the queue and return what waited in it (stopping: none of it will run)."""
        queued, self.queue = self.queue, []
        self.queued_bytes = 0
        return [q for _, _, q in queued]
