"""Optional JetStream persistence of tasks: stored before anyone handles them, redelivered until an agent answers.

Core NATS is at-most-once: a task published while no worker runs, or lost in a server restart, is gone without
an error. With ``jetstream.enabled`` every task subject of the environment (``agents.{env}.task.>``) is captured
by one work-queue stream. Requesters publish tasks to it (deduplicated by message id, retried across restarts)
and wait for the result on their reply inbox as usual. Workers take each capability's tasks from a durable
consumer shared by their replicas (the queue group's JetStream twin). A task is acknowledged once the agent
has answered it, result or error; it is handed back for redelivery when the agent could not take it
(overloaded, stopping, its handler cancelled), and redelivered after ``jetstream.ack_wait`` when the agent
died. Results travel over core NATS to the requester's inbox, as without persistence, and are kept sealed for the
requester in a JetStream bucket (``keeping``); each task's status is stored there too. Tasks larger than
max_payload travel claim-checked: the stored message carries ``Agent-Claim`` (digest and size) and the task
itself waits in the object bucket.
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
from .envelope import decode, encode, error_payload, new_message
from .errors import AgentCoreError, EnvelopeError, PersistenceError, RequestTimeoutError, SubjectError
from .keeping import Keeping
from .transport.acked import AckedPublisher
from .transport.inline import Accept
from .transport.puller import ConsumerLimits, TaskPuller
from .transport.settlement import PersistedMsg, pub_ack_stream
from .transport.taskstore import TaskStore

__all__ = ("Persistence", "PersistedMsg", "default_stream_name", "pub_ack_stream")

log = logging.getLogger("agentcore.persistence")

_ACKED_IN_FLIGHT = 1024  # kept results and status writes awaiting their acknowledgement at most (then awaited one by one)


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
        self.keeping: Keeping | None = None

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
        max_age = config["jetstream.max_age"]
        store = TaskStore(js, name, ttl=config["jetstream.result_ttl"], results_max_bytes=config["jetstream.results_max_bytes"],
                          objects_max_bytes=config["jetstream.objects_max_bytes"],
                          objects_ttl=max(max_age, config["jetstream.result_ttl"]) if max_age else None,
                          replicas=config["jetstream.replicas"], max_payload=host.connection.max_payload(),
                          retry_for=config["jetstream.ack_wait"] / 2)  # a leader election: within the in-progress reports
        try:
            await store.open()
        except nats.js.errors.APIError as exc:
            raise PersistenceError(f"JetStream refused the buckets {', '.join(store.names)}: {exc.description or exc}") from None
        # Kept results and statuses go out without a request each; one unanswered in time is written the awaited way.
        store.acked = AckedPublisher(host.connection.require(), limit=_ACKED_IN_FLIGHT, timeout=min(2.0, store.retry_for / 4))
        await store.acked.start()
        self.keeping = Keeping(host, store)
        host.keep_answers(self.keeping)
        if config["jetstream.track_status"]:
            host.status_from(self)  # task_status answers from the kept status, which survives restarts
        self._js, self._stream = js, name
        host.work.settlement.keep_alive(config["jetstream.ack_wait"])
        host.serve_from(self)
        host.route_requests(f"{host.topics.prefix}.task.", self._request)

    def serves(self, key: SubscriptionKey) -> bool:
        """Whether the wire subscription key is a capability's task queue that JetStream serves."""
        if self._js is None or not key[1]:
            return False
        try:
            return key[0] == self._host.topics.task_pattern(key[1])
        except SubjectError:  # a queue group that is no capability name (an A2A agent's subject prefix, say)
            return False

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

        keeping = self.keeping
        assert keeping is not None
        track = config["jetstream.track_status"]

        def deliver(js_msg: Msg, puller: TaskPuller) -> None:
            headers = js_msg.headers
            claim = headers.get("Agent-Claim") if headers else None
            if track and headers and "Nats-Msg-Id" in headers:
                keeping.running(headers["Nats-Msg-Id"])
            if claim is None:
                settlement.receive(js_msg, puller, lambda msg: dispatch(msg, key))
            else:  # the task waits in the object bucket: fetched, checked against the claim, then dispatched
                settlement.receive(js_msg, puller, lambda msg: host.spawn(self._claimed(msg, claim, key)))

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
        """A new connection may have lost the outstanding pull requests and results sent meanwhile: ask again."""
        for puller in list(self._pullers):
            puller.reset()
        if self.keeping is not None:
            self.keeping.reconnected()

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

    async def _claimed(self, msg: PersistedMsg, claim: str, key: SubscriptionKey) -> None:
        """Fetch a claim-checked task from the object bucket, check it, and dispatch it whole (or refuse it, typed)."""
        host = self._host
        keeping = self.keeping
        assert keeping is not None
        try:
            data = await keeping.store.get_object(claim, host.config["agent.max_request_bytes"])
            stub, message = decode(msg.data), decode(data)
            if (message["id"], message["source"]) != (stub["id"], stub["source"]):
                raise PersistenceError(f"the object claimed by task {stub['id']} holds another message ({message['id']})")
        except asyncio.CancelledError:
            host.work.settlement.release(msg, redeliver=True)
            raise
        except (AgentCoreError, EnvelopeError, nats.errors.Error) as exc:
            host.metrics.counters["claims_refused"] += 1
            host.metrics.failed += 1
            log.warning("agent %s refused a claim-checked task on %s: %s", host.agent_id, msg.subject, exc)
            host.work.settlement.reject(msg)  # fetching again cannot make it match
            await self._refuse_claim(msg, str(exc))
            return
        host.metrics.counters["claims_fetched"] += 1
        msg.data = data  # the signature headers, when signed, cover the whole task: checked as usual from here
        host.work.dispatch(msg, key)
        host.spawn(self._drop(claim))  # redeliveries of it are replays of a task already taken

    async def _drop(self, claim: str) -> None:
        if self.keeping is not None:
            try:
                await self.keeping.store.drop_object(claim)
            except (AgentCoreError, nats.errors.Error) as exc:
                log.debug("could not delete object %s: %s", claim, exc)

    async def _refuse_claim(self, msg: PersistedMsg, text: str) -> None:
        """Tell the requester of a claim-checked task that could not be fetched, when its replyTo is a reply inbox."""
        host = self._host
        try:
            stub = decode(msg.data)
        except EnvelopeError:
            return
        reply_to = stub.get("replyTo")
        prefixes = (*host.connection.inbox_prefixes(), f"{host.topics.prefix}.result.")
        if isinstance(reply_to, str) and reply_to.startswith(prefixes):
            error = new_message("result", None, source_id=host.agent_id, source_type=host.agent_type,
                                target=stub["source"]["id"], correlation_id=stub["id"],
                                error=error_payload("invalid_message", f"the claim-checked task could not be taken: {text}"))
            await host.try_send(host.connection.publish(reply_to, encode(error)))

    async def _request(self, subject: str, message: dict[str, Any], timeout: float, accept: Accept) -> Any:
        """Store a task in JetStream (retrying through reconnects) and return the result sent to our inbox (accept checks it).

        The result is kept for us too: a result that went by while we were disconnected is fetched at reconnect.
        """
        host = self._host
        js, keeping = self._js, self.keeping
        assert js is not None and keeping is not None
        loop = asyncio.get_running_loop()
        # Past the duplicate window a retry could be stored twice: stop retrying there, whatever the timeout.
        deadline = loop.time() + min(timeout, host.config["jetstream.duplicate_window"])
        task_id = message["id"]
        keeping.stamp(message)
        track = host.config["jetstream.track_status"]

        async def publish(inbox: str) -> None:
            message["replyTo"] = inbox  # JetStream keeps no reply subject: the result goes where the envelope says
            data = encode(message)
            # The task id is also JetStream's dedup id (a retry is stored once); trace headers ride along.
            headers: dict[str, str] = host.connection.traced(subject, data, {"Nats-Msg-Id": task_id}) or {}
            if len(data) > host.connection.max_payload():
                if len(data) > host.config["jetstream.objects_max_bytes"]:
                    raise PersistenceError(f"task {task_id} is {len(data)} bytes, more than jetstream.objects_max_bytes")
                # Claim-checked: the task waits in the object bucket, the stream holds its claim (digest and size).
                headers["Agent-Claim"] = await keeping.store.put_object(data)
                host.metrics.counters["claims_stored"] += 1
                signed = data
                data = encode({**message, "payload": {"content": None, "claimed": True}})
            else:
                signed = data
            if host.connection.signer is not None:  # stored as signed (the whole task); checked when delivered
                # nats-py adds Nats-Expected-Stream to the headers it publishes, and the stream keeps it: signed too.
                headers["Nats-Expected-Stream"] = self._stream or ""
                headers = host.connection.signer.headers(subject, "", signed, headers)
            delay = 0.05
            mark = host.connection.denials.count
            while True:
                try:
                    await js.publish(subject, data, timeout=max(min(deadline - loop.time(), 2.0), 0.01),
                                     stream=self._stream, headers=headers)
                    host.metrics.counters["persisted_sent"] += 1
                    if track:  # recorded only if no answer comes at once: off the send's path, often never written
                        queued.append(keeping.queued(task_id))
                    return
                except nats.js.errors.APIError as exc:
                    if not isinstance(exc, nats.js.errors.ServiceUnavailableError):
                        raise PersistenceError(f"JetStream refused the task on {subject}: {exc.description or exc}") from None
                    last: Exception = exc
                except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.errors.OutboundBufferLimitError,
                        nats.errors.ConnectionReconnectingError) as exc:
                    last = exc  # a server restarting or a leader election: try again with the same id
                host.connection.raise_denied(mark, "publish", subject)  # the server said no: no retry makes it yes
                if loop.time() + delay >= deadline:
                    raise RequestTimeoutError(f"JetStream did not store the task on {subject} within {timeout}s "
                                              f"({type(last).__name__})")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

        queued: list[asyncio.TimerHandle] = []
        mux = host.connection.requests(host.connection.require())

        def resolve(reply: dict[str, Any]) -> bool:  # a kept result recovered: the request's answer, as if it came live
            inbox = message.get("replyTo")
            return isinstance(inbox, str) and mux.resolve_inbox(inbox, reply)

        accepting = keeping.watch(accept, task_id, resolve)
        answered = False
        try:
            try:
                reply = await host.connection.request_via(publish, timeout, accepting, subject)
            except nats.errors.TimeoutError:
                raise RequestTimeoutError(f"no reply on {subject} within {timeout}s; its result is kept for "
                                          f"jetstream.result_ttl: await agent.result({task_id!r})", task_id=task_id) from None
            except Exception:
                answered = True  # an error result, a refusal: nothing waits in the stream
                raise
            answered = True
            return reply
        finally:
            keeping.unwatch(task_id)
            if answered:
                for handle in queued:  # its worker records its status from here on
                    handle.cancel()

    async def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Return the content of the kept result of a persisted task this agent sent (see keeping)."""
        if self.keeping is None:
            raise PersistenceError(f"agent {self._host.agent_id} keeps no results: jetstream.enabled is off")
        return await self.keeping.result(task_id, timeout)

    async def status_of(self, task_id: str) -> dict[str, Any] | None:
        """Return the stored status of a persisted task as task_status gives it ({"task_id", "state", "agent",
        "since"}), None when none is kept."""
        if self.keeping is None:
            raise PersistenceError(f"agent {self._host.agent_id} keeps no task status: jetstream.enabled is off")
        record = await self.keeping.status_of(task_id)
        if record is None:
            return None
        return {"task_id": task_id, "state": record["status"], "agent": record.get("agent"), "since": record.get("at")}

    async def persistence_info(self) -> dict[str, Any]:
        """Return the task stream's name and state (messages kept, consumers), or {"enabled": False}."""
        if self._js is None:
            return {"enabled": False}
        assert self._stream is not None
        info = await self._js.stream_info(self._stream)
        state = info.state
        return {"enabled": True, "stream": self._stream, "subjects": info.config.subjects, "messages": state.messages,
                "consumers": state.consumer_count, "held": len(self._host.work.settlement.held)}

