"""Optional JetStream persistence of tasks: stored before anyone handles them, redelivered until an agent answers.

Core NATS is at-most-once: a task published while no worker runs, or lost in a server restart, is gone without
an error. With ``jetstream.enabled`` every task subject of the environment (``agents.{env}.task.>``) is captured
by one work-queue stream. Requesters publish tasks to it (deduplicated by message id, retried across restarts)
and wait for the result on their reply inbox as usual. Workers take each capability's tasks from a durable
consumer shared by their replicas (the queue group's JetStream twin). A task is acknowledged once the agent
has answered it, result or error; it is handed back for redelivery when the agent could not take it
(overloaded, stopping, its handler cancelled), and redelivered after ``jetstream.ack_wait`` when the agent
died. Results travel over core NATS to the requester's inbox, as without persistence.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.msg import Msg
from nats.js import api

from ._eager import start_eager
from .envelope import encode
from .errors import PersistenceError, RequestTimeoutError
from .task_puller import ConsumerLimits, TaskPuller

if TYPE_CHECKING:
    from nats.aio.client import Client as NATSClient
    from nats.js import JetStreamContext

    from .agent import NATSAgent

__all__ = ("PersistedMsg", "PersistenceMixin")

log = logging.getLogger("agentcore.persistence")

_NAK_DELAY = 0.1  # seconds before a task handed back is offered again, doubled per delivery (an overloaded agent
_NAK_DELAY_MAX = 5.0  # is not hammered), at most this


class PersistedMsg:
    """A task delivered by JetStream, shaped like a core message without a reply subject; settled exactly once."""

    __slots__ = ("subject", "data", "headers", "reply", "js", "since", "settled", "puller", "delivered", "seq")

    def __init__(self, js: Msg, now: float, puller: TaskPuller) -> None:
        self.subject = js.subject
        self.data = js.data
        self.headers = js.headers
        self.reply = ""  # answers go to the envelope's replyTo: the JetStream reply subject is the ack subject
        self.js = js
        self.since = now  # when it arrived or was last reported in progress
        self.settled = False
        self.puller = puller  # told when it is settled, so it can ask for more; holds its consumer's limits
        metadata = js.metadata
        self.delivered: int = metadata.num_delivered
        self.seq: int = metadata.sequence.stream  # which stored task this is: redeliveries share it


def pub_ack_stream(data: bytes) -> str | None:
    """Return the stream named by a JetStream publish acknowledgement, or None when data is not one."""
    try:
        ack = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if isinstance(ack, dict) and isinstance(ack.get("stream"), str) and "seq" in ack and "id" not in ack:
        return str(ack["stream"])
    return None


def default_stream_name(environment: str) -> str:
    """Return the stream name used for an environment's tasks when jetstream.stream is not set."""
    return "AGENTS_" + re.sub(r"[^A-Za-z0-9_-]", "_", environment).upper()


class PersistenceMixin:
    """Give NATSAgent JetStream persistence of tasks (see the module docstring); on when jetstream.enabled is."""

    _js: JetStreamContext | None = None
    _js_stream: str | None = None
    _js_prefix: str = "\0"  # task subjects start with it when persistence is on; nothing does when it is off
    _js_held: dict[PersistedMsg, None]
    _js_keeper: asyncio.Task[None] | None = None
    _js_pullers: set[TaskPuller]
    # How often the keeper looks at held tasks: a sixth of the shortest ack_wait, so a task due for a report (a third
    # of its ack_wait old) gets it at most half its ack_wait after the last, even on a busy loop.
    _js_tick: float = 5.0

    @property
    def persistent(self) -> bool:
        """Whether this agent sends and takes tasks through JetStream (config jetstream.enabled)."""
        return self._js is not None

    async def _setup_persistence(self, nc: NATSClient) -> None:
        """Find or create the task stream; raise PersistenceError when the server cannot keep tasks."""
        agent: NATSAgent = self  # type: ignore[assignment]
        config = agent.config
        self._js_held = {}
        self._js_pullers = set()
        if not config["jetstream.enabled"]:
            return
        js = nc.jetstream()
        name = config["jetstream.stream"] or default_stream_name(agent.environment)
        subjects = [f"{agent.topics.prefix}.task.>"]
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            if not config["jetstream.create_stream"]:
                raise PersistenceError(f"JetStream stream {name!r} does not exist and jetstream.create_stream is off") from None
            stream = api.StreamConfig(
                name=name,
                subjects=subjects,
                retention=api.RetentionPolicy.WORK_QUEUE,  # a task leaves the stream once an agent answered it
                storage=api.StorageType.FILE,
                max_age=config["jetstream.max_age"] or None,
                duplicate_window=config["jetstream.duplicate_window"],  # the same message id is stored once
                num_replicas=config["jetstream.replicas"],
            )
            try:
                info = await js.add_stream(stream)
            except nats.js.errors.BadRequestError as exc:  # another agent created it meanwhile, or a clash
                try:
                    info = await js.stream_info(name)
                except nats.js.errors.NotFoundError:
                    raise PersistenceError(f"JetStream refused to create stream {name!r} for {subjects[0]}: "
                                           f"{exc.description or exc}") from None
        except (nats.js.errors.ServiceUnavailableError, nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError,
                nats.errors.TimeoutError) as exc:
            raise PersistenceError(f"the NATS server does not offer JetStream (start it with -js): {exc or type(exc).__name__}") from None
        if subjects[0] not in (info.config.subjects or []):
            log.warning("agent %s: stream %s captures %s, not %s: tasks outside it are not persisted",
                        agent.agent_id, name, info.config.subjects, subjects[0])
        self._js, self._js_stream, self._js_prefix = js, name, f"{agent.topics.prefix}.task."
        self._js_tick = config["jetstream.ack_wait"] / 6
        self._js_keeper = asyncio.get_running_loop().create_task(self._keep_held_alive())

    def _persists(self, key: tuple[str, str]) -> bool:
        """Whether the wire subscription key is a capability's task queue that JetStream serves."""
        agent: NATSAgent = self  # type: ignore[assignment]
        return self._js is not None and bool(key[1]) and key[0] == agent.topics.task_pattern(key[1])

    async def _js_subscribe(self, key: tuple[str, str]) -> TaskPuller:
        """Start pulling key's capability's tasks from its durable consumer (created on first use; replicas share it)."""
        agent: NATSAgent = self  # type: ignore[assignment]
        config = agent.config
        js: JetStreamContext = self._js  # type: ignore[assignment]
        stream: str = self._js_stream  # type: ignore[assignment]
        capability = key[1]
        limits = await self._consumer_limits(js, stream, capability, key[0])
        held, dispatch, loop = self._js_held, agent._dispatch, asyncio.get_running_loop()
        counters = agent._metrics.counters

        def deliver(js_msg: Msg, puller: TaskPuller) -> None:
            try:
                msg = PersistedMsg(js_msg, loop.time(), puller)
            except Exception:  # not a JetStream delivery after all (no ack subject to parse): nothing to settle
                puller.settled()
                log.exception("agent %s got a message without JetStream metadata on %s", agent.agent_id, js_msg.subject)
                return
            held[msg] = None
            if msg.delivered > 1:
                counters["persisted_redelivered"] += 1
            try:
                dispatch(msg, key)  # type: ignore[arg-type]
            except Exception:  # a bug on our side: hand the task back rather than hold it forever
                log.exception("agent %s could not dispatch task %s", agent.agent_id, js_msg.subject)
                self._release(msg, redeliver=True)

        # Twice what runs at once: enough that the next tasks are here when handlers finish, few enough that idle
        # replicas get their share. Never more than the agent would queue.
        capacity = min(2 * agent._max_concurrency, agent._max_concurrency + agent._max_queued)
        prefix = getattr(js, "_prefix", "$JS.API")
        puller = TaskPuller(agent._require_nc(), f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{capability}", limits,
                            capacity=capacity, expires=config["jetstream.pull_expires"], deliver=deliver, send=self._js_send,
                            closed=self._js_pullers.discard)
        for msg in self._js_held:  # tasks still running from before a pause count against the new puller's room
            if msg.puller.subject == puller.subject:
                msg.puller = puller
                puller.held += 1
        await puller.start()
        self._js_pullers.add(puller)
        if limits.ack_wait / 6 < self._js_tick and agent.status not in ("stopping", "stopped"):
            self._js_tick = limits.ack_wait / 6  # report progress more often from now on, not after the current sleep
            self._stop_persistence()
            self._js_keeper = loop.create_task(self._keep_held_alive())
        return puller

    async def _consumer_limits(self, js: JetStreamContext, stream: str, capability: str, subject: str) -> ConsumerLimits:
        """Find or create capability's durable pull consumer; return its limits as the server has them."""
        agent: NATSAgent = self  # type: ignore[assignment]
        config = agent.config
        wanted = api.ConsumerConfig(
            durable_name=capability,
            filter_subject=subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=config["jetstream.ack_wait"],
            max_deliver=config["jetstream.max_deliver"],
            max_ack_pending=config["jetstream.max_ack_pending"],  # what all replicas together hold unanswered
        )
        try:
            info = await js.consumer_info(stream, capability)
        except nats.js.errors.NotFoundError:
            try:
                info = await js.add_consumer(stream, wanted)
            except nats.js.errors.BadRequestError as exc:  # a replica created it meanwhile, or a clash
                try:
                    info = await js.consumer_info(stream, capability)
                except nats.js.errors.NotFoundError:
                    raise PersistenceError(f"JetStream refused to create consumer {capability!r} on {stream}: "
                                           f"{exc.description or exc}") from None
        actual = info.config
        if actual.deliver_subject:
            raise PersistenceError(f"consumer {capability!r} on {stream} is a push consumer; agents pull their tasks: "
                                   "delete it and they create the pull consumer they need")
        limits = ConsumerLimits(actual.ack_wait or wanted.ack_wait, actual.max_deliver or wanted.max_deliver)  # type: ignore[arg-type]
        if (limits.ack_wait, limits.max_deliver) != (wanted.ack_wait, wanted.max_deliver):
            # The consumer predates this agent's settings: act on the server's.
            log.warning("agent %s: consumer %s has ack_wait %s and max_deliver %s, not the configured %s and %s; using its",
                        agent.agent_id, capability, limits.ack_wait, limits.max_deliver, wanted.ack_wait, wanted.max_deliver)
        return limits

    def _release(self, msg: Any, *, redeliver: bool = False) -> bool:
        """Acknowledge a persisted task, or hand it back for redelivery; return whether JetStream now has it in hand.

        False means msg is no persisted task, or (with redeliver) that this was its last delivery: it is taken off
        the stream instead and the caller answers the requester as it would without persistence.
        """
        if msg.__class__ is not PersistedMsg:
            return False
        if msg.settled:
            return True
        self._settle_held(msg)
        counters = self._metrics_counters()
        if not redeliver:
            counters["persisted_acked"] += 1
            self._js_send(msg.js.ack())
            return True
        if 0 < msg.puller.limits.max_deliver <= msg.delivered:
            counters["persisted_terminated"] += 1
            self._js_send(msg.js.term())
            return False
        counters["persisted_nakked"] += 1
        self._js_send(msg.js.nak(min(_NAK_DELAY * 2 ** (msg.delivered - 1), _NAK_DELAY_MAX)))
        return True

    def _forget(self, msg: Any) -> bool:
        """Drop a persisted delivery without acking it (another delivery of that task will); return whether it was one."""
        if msg.__class__ is not PersistedMsg:
            return False
        self._settle_held(msg)
        for running in self._js_held:  # the copy still running has used this delivery too: count it there
            if running.seq == msg.seq:
                running.delivered = max(running.delivered, msg.delivered)
        return True

    def _reject(self, msg: Any) -> None:
        """Take a malformed persisted task off the stream for good: redelivering it cannot make it valid."""
        if msg.__class__ is PersistedMsg and not msg.settled:
            self._settle_held(msg)
            self._metrics_counters()["persisted_terminated"] += 1
            self._js_send(msg.js.term())

    def _settle_held(self, msg: PersistedMsg) -> None:
        """Mark msg settled: no longer held or kept in progress, and room again for its puller."""
        msg.settled = True
        self._js_held.pop(msg, None)
        msg.puller.settled()

    def _metrics_counters(self) -> Any:
        return self._metrics.counters  # type: ignore[attr-defined]

    def _js_send(self, step: Any) -> None:
        agent: NATSAgent = self  # type: ignore[assignment]
        agent._track(start_eager(agent._try_send(step)))

    async def _keep_held_alive(self) -> None:
        """Tell JetStream the held tasks are in progress, so a long handler or queue wait is not redelivered."""
        agent: NATSAgent = self  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._js_tick)
            now = loop.time()
            for msg in [m for m in self._js_held if now - m.since >= m.puller.limits.ack_wait / 3]:
                msg.since = now
                if not msg.settled:
                    await agent._try_send(msg.js.in_progress())

    def _js_reconnected(self) -> None:
        """A new connection may have lost the outstanding pull requests: ask again."""
        for puller in list(getattr(self, "_js_pullers", ())):  # (a reconnect can come before persistence is set up)
            puller.reset()

    def _stop_persistence(self) -> None:
        if self._js_keeper is not None:
            self._js_keeper.cancel()
            self._js_keeper = None

    async def _request_persisted(self, nc: NATSClient, subject: str, message: dict[str, Any], timeout: float) -> Msg:
        """Store a task in JetStream (retrying through reconnects) and return the result sent to our inbox."""
        agent: NATSAgent = self  # type: ignore[assignment]
        js: JetStreamContext = self._js  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        # Past the duplicate window a retry could be stored twice: stop retrying there, whatever the timeout.
        deadline = loop.time() + min(timeout, agent.config["jetstream.duplicate_window"])

        async def publish(inbox: str) -> None:
            message["replyTo"] = inbox  # JetStream keeps no reply subject: the result goes where the envelope says
            data = encode(message)
            agent._check_size(data)
            delay = 0.05
            while True:
                # The message id doubles as JetStream's dedup id: a retry after a lost PubAck is stored once.
                headers = {"Nats-Msg-Id": message["id"]}
                try:
                    await js.publish(subject, data, timeout=max(min(deadline - loop.time(), 2.0), 0.01),
                                     stream=self._js_stream, headers=headers)
                    agent._metrics.counters["persisted_sent"] += 1
                    return
                except nats.js.errors.APIError as exc:
                    if not isinstance(exc, nats.js.errors.ServiceUnavailableError):
                        raise PersistenceError(f"JetStream refused the task on {subject}: {exc.description or exc}") from None
                    last: Exception = exc
                except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.errors.OutboundBufferLimitError,
                        nats.errors.ConnectionReconnectingError) as exc:
                    last = exc  # a server restarting or a leader election: try again with the same id
                if loop.time() + delay >= deadline:
                    raise RequestTimeoutError(f"JetStream did not store the task on {subject} within {timeout}s "
                                              f"({type(last).__name__})")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

        return await agent._request_mux(nc).request_via(publish, timeout)

    async def persistence_info(self) -> dict[str, Any]:
        """Return the task stream's name and state (messages kept, consumers), or {"enabled": False}."""
        if self._js is None:
            return {"enabled": False}
        info = await self._js.stream_info(self._js_stream)  # type: ignore[arg-type]
        state = info.state
        return {"enabled": True, "stream": self._js_stream, "subjects": info.config.subjects, "messages": state.messages,
                "consumers": state.consumer_count, "held": len(self._js_held)}
