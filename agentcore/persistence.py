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
from collections.abc import Mapping
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from .core.host import Host
from .core.records import SubscriptionKey
from .envelope import encode
from .errors import PersistenceError, RequestTimeoutError
from .transport.inline import Accept
from .transport.puller import ConsumerLimits, TaskPuller
from .transport.settlement import PersistedMsg, pub_ack_stream

__all__ = ("Persistence", "PersistedMsg", "default_stream_name", "pub_ack_stream")

log = logging.getLogger("agentcore.persistence")


def default_stream_name(environment: str, root: str = "agents") -> str:
    """Return the stream name used for an environment's tasks when jetstream.stream is not set (AGENTS_{ENV})."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{root}_{environment}").upper()


class Persistence:
    """Keep tasks in JetStream until an agent answers them (see the module docstring); on when jetstream.enabled is."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._js: JetStreamContext | None = None
        self._stream: str | None = None
        self._pullers: set[TaskPuller] = set()

    @property
    def enabled(self) -> bool:
        """Whether this agent sends and takes tasks through JetStream (config jetstream.enabled)."""
        return self._js is not None

    @property
    def stream(self) -> str | None:
        """Return the name of the environment's task stream, when persistence is on."""
        return self._stream

    async def start(self) -> None:
        """Find or create the task stream; raise PersistenceError when the server cannot keep tasks."""
        host = self._host
        config = host.config
        if not config["jetstream.enabled"]:
            return
        js = host.connection.require().jetstream()
        name = config["jetstream.stream"] or default_stream_name(host.topics.env, host.topics.root)
        subjects = [f"{host.topics.prefix}.task.>"]
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
                        host.agent_id, name, info.config.subjects, subjects[0])
        self._js, self._stream = js, name
        host.work.settlement.keep_alive(config["jetstream.ack_wait"])
        host.serve_from(self)
        host.route_requests(f"{host.topics.prefix}.task.", self._request)

    def serves(self, key: SubscriptionKey) -> bool:
        """Whether the wire subscription key is a capability's task queue that JetStream serves."""
        return self._js is not None and bool(key[1]) and key[0] == self._host.topics.task_pattern(key[1])

    async def subscribe(self, key: SubscriptionKey) -> TaskPuller:
        """Start pulling key's capability's tasks from its durable consumer (created on first use; replicas share it)."""
        host = self._host
        config = host.config
        js, stream = self._js, self._stream
        assert js is not None and stream is not None
        capability = key[1]
        limits = await self._consumer_limits(js, stream, capability, key[0])
        work = host.work
        settlement, dispatch = work.settlement, work.dispatch

        def deliver(js_msg: Msg, puller: TaskPuller) -> None:
            settlement.receive(js_msg, puller, lambda msg: dispatch(msg, key))

        # Twice what runs at once: enough that the next tasks are here when handlers finish, few enough that idle
        # replicas get their share. Never more than the agent would queue.
        concurrency, queued = work.max_concurrency, config["agent.max_queued"]
        capacity = min(2 * concurrency, concurrency + queued)
        prefix = getattr(js, "_prefix", "$JS.API")
        puller = TaskPuller(host.connection.require(), f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{capability}", limits,
                            capacity=capacity, expires=config["jetstream.pull_expires"], deliver=deliver,
                            send=lambda step: host.spawn(host.try_send(step)), closed=self._pullers.discard)
        settlement.adopt(puller)  # tasks still running from before a pause count against the new puller's room
        await puller.start()
        self._pullers.add(puller)
        if host.status not in ("stopping", "stopped"):
            settlement.keep_alive(limits.ack_wait)  # report progress more often when this consumer's ack_wait is shorter
        return puller

    async def _consumer_limits(self, js: JetStreamContext, stream: str, capability: str, subject: str) -> ConsumerLimits:
        """Find or create capability's durable pull consumer; return its limits as the server has them."""
        config = self._host.config
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
        limits = ConsumerLimits(actual.ack_wait or wanted.ack_wait or 0.0, actual.max_deliver or wanted.max_deliver or -1)
        if (limits.ack_wait, limits.max_deliver) != (wanted.ack_wait, wanted.max_deliver):
            # The consumer predates this agent's settings: act on the server's.
            log.warning("agent %s: consumer %s has ack_wait %s and max_deliver %s, not the configured %s and %s; using its",
                        self._host.agent_id, capability, limits.ack_wait, limits.max_deliver, wanted.ack_wait, wanted.max_deliver)
        return limits

    # ------------------------------------------------------------------ the Component protocol

    def reconnected(self) -> None:
        """A new connection may have lost the outstanding pull requests: ask again."""
        for puller in list(self._pullers):
            puller.reset()

    def drain(self) -> None:
        """Nothing to hand on: the pullers were retired with the subscriptions."""

    async def stop(self) -> None:
        """Nothing left: the core stops the in-progress reports once its handlers are drained."""

    def describe(self) -> Mapping[str, Any]:
        """Name the task stream, when persistence is on: its tasks are kept in JetStream until answered."""
        return {"persistent_stream": self._stream} if self._stream is not None else {}

    def gauges(self) -> Mapping[str, float]:
        """Report how many persisted tasks this agent holds unsettled."""
        return {"persisted_held": len(self._host.work.settlement.held)} if self._js is not None else {}

    async def _request(self, subject: str, message: dict[str, Any], timeout: float, accept: Accept) -> Any:
        """Store a task in JetStream (retrying through reconnects) and return the result sent to our inbox (accept checks it)."""
        host = self._host
        js = self._js
        assert js is not None
        loop = asyncio.get_running_loop()
        # Past the duplicate window a retry could be stored twice: stop retrying there, whatever the timeout.
        deadline = loop.time() + min(timeout, host.config["jetstream.duplicate_window"])

        async def publish(inbox: str) -> None:
            message["replyTo"] = inbox  # JetStream keeps no reply subject: the result goes where the envelope says
            data = encode(message)
            host.connection.check_size(data)
            delay = 0.05
            while True:
                # The message id doubles as JetStream's dedup id: a retry after a lost PubAck is stored once.
                headers = host.connection.traced(subject, data, {"Nats-Msg-Id": message["id"]})
                if host.connection.signer is not None:  # stored as signed; checked (key, signature) when delivered
                    headers = host.connection.signer.headers(subject, "", data, headers)
                try:
                    await js.publish(subject, data, timeout=max(min(deadline - loop.time(), 2.0), 0.01),
                                     stream=self._stream, headers=headers)
                    host.metrics.counters["persisted_sent"] += 1
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

        return await host.connection.request_via(publish, timeout, accept)

    async def persistence_info(self) -> dict[str, Any]:
        """Return the task stream's name and state (messages kept, consumers), or {"enabled": False}."""
        if self._js is None:
            return {"enabled": False}
        assert self._stream is not None
        info = await self._js.stream_info(self._stream)
        state = info.state
        return {"enabled": True, "stream": self._stream, "subjects": info.config.subjects, "messages": state.messages,
                "consumers": state.consumer_count, "held": len(self._host.work.settlement.held)}
