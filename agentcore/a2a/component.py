"""The A2A protocol served by a NATSAgent: a Component over Host (``agent.serve_a2a``, docs/a2a-binding.md).

Each served A2A agent answers under ``{root}.{env}.a2a-protocol.{name}`` on the agent's own connection: ``PREFIX.*``
in queue group ``PREFIX`` (replicas share the work) and ``PREFIX.replica.{instance}.*`` (CancelTask forwarded to the
replica running the task), both RAW registrations of the core, so the agent's lifecycle subscribes them at start,
drops the shared one while paused and retires both when stopping, waiting for the requests being served. Requests
are answered by ``A2ANatsServer`` over an a2a-sdk ``DefaultRequestHandler``; task state lives in JetStream (a KV
bucket and an event stream, any replica answers for any task) when ``a2a.store`` says so (``auto``: when
``jetstream.enabled``), else in memory, bounded by bytes, on one replica.

The bounds (docs/limits.md) are checked as nats-py reads each request, before anything is kept: its bytes
(``a2a.max_request_bytes``: ``InvalidRequestError``, reason ``payload_too_large``), unary requests served and waiting
(``a2a.max_concurrency``, ``a2a.max_queued``, ``a2a.max_queued_bytes``), open streams in all and per sender
(``a2a.max_streams``, ``a2a.streams_per_sender``), each ``OverloadedError`` naming the bound. The card is in discovery (``describe``)
and in the NATS service API (an endpoint per served agent, its metadata saying where the card is).

a2a-sdk (extra ``a2a``) is imported only when an A2A agent is served: nothing here needs it at import.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._impl import validate_token
from ..core.host import Feature, Host
from ..core.records import RAW
from ..errors import ConfigError, PersistenceError
from ..services import Endpoint, service_name

if TYPE_CHECKING:
    from a2a.server.agent_execution import AgentExecutor
    from a2a.server.request_handlers import DefaultRequestHandler
    from a2a.types.a2a_pb2 import AgentCard, AgentSkill
    from a2a.utils.errors import A2AError
    from nats.aio.client import Client as NATSClient
    from nats.aio.msg import Msg

    from .jetstream import JetStreamEventStream
    from .server import A2ANatsServer
    from .store import BoundedTaskStore, CappedKVTaskStore

__all__ = ("A2A", "TOKEN")

log = logging.getLogger("agentcore.a2a")

#: The subject token under the environment: apart from negotiation's ``a2a.negotiate`` subjects.
TOKEN = "a2a-protocol"
_STREAMING = frozenset(("SendStreamingMessage", "SubscribeToTask"))  # binding.OPERATIONS' streamed answers
_INBOX_ID = len("_INBOX.") + 12  # a NUID's first 12 characters are its client's (one connection's) random prefix


@dataclass(eq=False)
class Served:
    """One A2A agent this NATSAgent serves: what was asked for, and once started its server and card."""

    name: str
    prefix: str
    executor: AgentExecutor | str  # a str: the name of a capability served through CapabilityExecutor
    card: AgentCard | None
    fields: dict[str, Any]
    on_request: Callable[[Msg], None] = field(init=False)
    replica_subject: str = ""
    server: A2ANatsServer | None = None
    handler: DefaultRequestHandler | None = None
    store: BoundedTaskStore | CappedKVTaskStore | None = None
    stored_in: str = "memory"
    events: JetStreamEventStream | None = None  # JetStream: the task events' stream (its dropped forgeries counted)
    published: AgentCard | None = None  # the card as served, with the NATS interface
    url: str = ""
    requests: int = 0
    refused: int = 0
    failed: int = 0  # error answers of the servers of earlier starts (each start has a new server)
    seconds: float = 0.0
    last_error: str = ""


def _sender(msg: Msg) -> str:
    """Who a stream is counted against: its signed key when it has one, else the connection its inbox belongs to."""
    headers = msg.headers or {}
    return headers.get("Agent-Sender") or msg.reply[:_INBOX_ID]


def _size(msg: Msg) -> int:
    return len(msg.data) + sum(len(k) + len(v) + 4 for k, v in (msg.headers or {}).items())


def _server_url(nc: NATSClient) -> str:
    """The URL of the server the agent is connected to, without credentials (it goes into a public card)."""
    url = nc.connected_url
    if url is None:
        return "nats://127.0.0.1:4222"
    return f"{url.scheme or 'nats'}://{url.hostname}:{url.port or 4222}"


class A2A(Feature):
    """Serve A2A agents (a2a-sdk executors or capabilities) on the agent's connection, bounded and counted."""

    def __init__(self, host: Host) -> None:
        self._host = host
        config = host.config
        self.max_concurrency: int = config["a2a.max_concurrency"]
        self.max_queued: int = config["a2a.max_queued"]
        self.max_queued_bytes: int = config["a2a.max_queued_bytes"]
        self.max_request_bytes: int = config["a2a.max_request_bytes"]
        self.max_streams: int = config["a2a.max_streams"]
        self.streams_per_sender: int = config["a2a.streams_per_sender"]
        self.served: dict[str, Served] = {}
        self.active = 0  # unary requests admitted: running or waiting for a slot
        self.active_bytes = 0  # their bytes (each request is held until answered)
        self.running = 0
        self.streams = 0
        self.per_sender: dict[str, int] = {}
        self.refused: dict[str, int] = {}  # requests refused by a bound, by its config key
        self.errors: dict[str, int] = {}  # refusals by ErrorInfo reason (the servers count the rest)
        self.dropped = 0  # messages that asked for no answer (an A2A operation is always a request)
        self._room = asyncio.Semaphore(self.max_concurrency)

    # ------------------------------------------------------------------ what the agent delegates

    def serve(self, executor: AgentExecutor | str, *, card: AgentCard | None = None, name: str | None = None,
              **fields: Any) -> None:
        """Serve executor (or a declared capability) as the A2A agent name; it starts with the agent (or now)."""
        served = self._add(executor, card, name, fields)
        host = self._host
        if host.status in ("running", "paused"):
            loop = host.loop
            assert loop is not None
            if host.on_loop_thread():
                host.spawn(self._start_now(served))  # a failure is logged, and the agent is not served
            else:
                asyncio.run_coroutine_threadsafe(self._start_now(served), loop).result(host.config["agent.request_timeout"])

    async def aserve(self, executor: AgentExecutor | str, *, card: AgentCard | None = None, name: str | None = None,
                     **fields: Any) -> None:
        """Serve like serve() and, when the agent runs, return once the server routes the agent's requests here."""
        served = self._add(executor, card, name, fields)
        if self._host.status in ("running", "paused"):
            await self._start_now(served)

    def _add(self, executor: AgentExecutor | str, card: AgentCard | None, name: str | None,
             fields: dict[str, Any]) -> Served:
        host = self._host
        if isinstance(executor, str) and executor not in host.capability_registrations():
            raise ConfigError(f"serve_a2a({executor!r}): no such capability; add_capability() it first")
        name = validate_token(name or (executor if isinstance(executor, str) else host.agent_id))
        if name in self.served:
            raise ConfigError(f"an A2A agent named {name!r} is served already")
        served = Served(name, f"{host.topics.prefix}.{TOKEN}.{name}", executor, card, fields)
        served.on_request = lambda msg: self._admit(served, msg)
        self.served[name] = served
        return served

    def card(self, name: str | None = None) -> AgentCard:
        """Return the card served for name (default: the only one), with its NATS interface once started."""
        if name is None and len(self.served) == 1:
            served = next(iter(self.served.values()))
        elif name in self.served:
            served = self.served[name]
        else:
            raise ConfigError(f"no A2A agent named {name!r} is served (served: {sorted(self.served)})")
        return served.published if served.published is not None else self._card(served, "")

    # ------------------------------------------------------------------ setting up

    async def _start_now(self, served: Served) -> None:
        try:
            await self._build(served)
        except BaseException:
            self.served.pop(served.name, None)  # not served: the name may be served again once the cause is fixed
            raise
        await self._host.sync()

    async def _build(self, served: Served) -> None:
        """Make the handler, store and server of served on the current connection, and register its subjects."""
        import nats.errors
        from a2a.server.request_handlers import DefaultRequestHandler

        from .binding import BINDING_URI
        from .capability import CapabilityExecutor
        from .server import A2ANatsServer
        from .store import BoundedTaskStore

        host, config = self._host, self._host.config
        nc = host.connection.require()
        card = served.published = self._card(served, _server_url(nc))
        served.url = next(i.url for i in card.supported_interfaces if i.protocol_binding == BINDING_URI)
        executor = served.executor
        if isinstance(executor, str):
            executor = CapabilityExecutor(self._capability(executor), executor)
        store_kind = config["a2a.store"]
        jetstream = store_kind == "jetstream" or (store_kind == "auto" and config["jetstream.enabled"])
        locate = None
        if jetstream:
            import nats.js.errors

            from .claims import Claims
            from .jetstream import JetStreamEventStream, inline_limit
            from .store import CappedKVTaskStore
            from .watch import replica_probe

            js = nc.jetstream()
            bucket = service_name(f"{host.topics.env}_{served.name}")  # environments on one account stay apart
            ttl = config["a2a.task_ttl"] or None
            cap = config["a2a.jetstream_max_bytes"]
            try:
                limit = inline_limit(js)  # values and events beyond it are claim-checked in object stores (claims.py)
                largest = config["a2a.max_request_bytes"]  # a claim naming more is not read
                kv = CappedKVTaskStore(await js.create_key_value(bucket=f"A2A_TASKS_{bucket}", history=1, ttl=ttl,
                                                                 max_bytes=cap), host.instance, cap,
                                       claims=await Claims.open(js, f"A2A_TASKS_{bucket}_LARGE", limit, ttl=ttl,
                                                                max_bytes=largest, bucket_bytes=cap))
                try:  # events beyond the bound push out the oldest (a late remote reader still has the KV snapshot)
                    await js.add_stream(name=f"A2A_EVENTS_{bucket}", subjects=[f"{served.prefix}.events.>"],
                                        max_age=config["a2a.events_ttl"], max_bytes=cap)
                except nats.js.errors.BadRequestError:  # it exists: its settings are the deployment's
                    pass
                # The event stream watches the task bucket and probes writers: a remote stream ends with its task.
                # Events are signed by the replica writing them and verified by the one reading (identity.*).
                events = JetStreamEventStream(
                    js, served.prefix, tasks=kv.kv, probe=replica_probe(nc, served.prefix),
                    claims=await Claims.open(js, f"A2A_EVENTS_{bucket}_LARGE", limit, ttl=config["a2a.events_ttl"],
                                             max_bytes=largest, bucket_bytes=cap),
                    signer=host.connection.signer, verifier=host.connection.verifier)
            except nats.errors.Error as exc:  # no JetStream on the server or account, or a bucket set up otherwise
                raise PersistenceError(f"the A2A agent {served.name!r} keeps its tasks in JetStream, which refused: "
                                       f"{type(exc).__name__}: {exc}") from None
            handler = DefaultRequestHandler(agent_executor=executor, agent_card=card, task_store=kv, event_stream=events)
            locate = kv.replica_of
            served.store, served.events = kv, events
            served.stored_in = "jetstream"
        else:
            await self._alone(served, nc)
            served.store = BoundedTaskStore(config["a2a.max_store_bytes"])
            handler = DefaultRequestHandler(agent_executor=executor, agent_card=card, task_store=served.store)
            served.stored_in = "memory"
        # The component admits requests itself (bounds above); the server's own semaphore never holds one back.
        served.server = A2ANatsServer(nc, handler, card, served.prefix, idle_timeout=config["a2a.idle_timeout"],
                                      max_concurrency=self.max_concurrency + self.max_streams,
                                      replica=host.instance, locate=locate, signer=host.connection.signer,
                                      verifier=host.connection.verifier,
                                      max_request_bytes=config["a2a.max_request_bytes"],
                                      max_pulls=config["a2a.max_pulls"], pulls_per_sender=config["a2a.pulls_per_sender"],
                                      delegates=tuple(config["a2a.delegates"]),
                                      inboxes=host.connection.inbox_prefixes())
        served.handler = handler
        served.replica_subject = f"{served.prefix}.replica.{host.instance}.*"
        host.register(f"{served.prefix}.*", served.on_request, kind=RAW, queue=served.prefix)
        # System: a paused replica still answers CancelTask forwarded for the tasks it runs.
        host.register(served.replica_subject, served.on_request, kind=RAW, system=True)

    async def _alone(self, served: Served, nc: NATSClient) -> None:
        """Memory mode is for one replica: refuse to start beside another server of the same A2A agent."""
        import nats.errors

        from .binding import CARD, H_VERSION, PROTOCOL_VERSION

        try:
            await nc.request(f"{served.prefix}.{CARD}", b"", timeout=self._host.config["agent.discovery_timeout"],
                             headers={H_VERSION: PROTOCOL_VERSION})
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return
        raise ConfigError(f"another agent already serves the A2A agent {served.name!r} ({served.prefix}) with its "
                          "tasks in memory, where replicas cannot see each other's tasks; set jetstream.enabled (or "
                          "a2a.store: jetstream) on every replica, or give this one another name")

    def _card(self, served: Served, server_url: str) -> AgentCard:
        """The card as served: the given one (or one made of the fields) with this binding's interface first."""
        from a2a.types.a2a_pb2 import AgentCapabilities, AgentCard, AgentInterface, AgentSkill

        from .binding import BINDING_URI, PROTOCOL_VERSION, prefix_from_url, url_for

        card = AgentCard()
        if served.card is not None:
            card.CopyFrom(served.card)
        else:
            fields = served.fields
            skill = served.executor if isinstance(served.executor, str) else served.name
            skills: Sequence[AgentSkill | Mapping[str, Any]] = fields.get("skills") or [
                AgentSkill(id=skill, name=skill, description=fields.get("description") or skill, tags=[skill])]
            card = AgentCard(
                name=fields.get("title") or served.name, version=fields.get("version") or "1.0.0",
                description=fields.get("description") or f"{self._host.agent_type} agent {self._host.agent_id}",
                capabilities=AgentCapabilities(streaming=fields.get("streaming", True)),
                default_input_modes=list(fields.get("input_modes") or ("text/plain", "application/json")),
                default_output_modes=list(fields.get("output_modes") or ("text/plain", "application/json")),
                skills=[s if isinstance(s, AgentSkill) else AgentSkill(**s) for s in skills])
        written = [i.url for i in card.supported_interfaces if i.protocol_binding == BINDING_URI]
        if any(prefix_from_url(url) != served.prefix for url in written):
            raise ConfigError(f"the card of the A2A agent {served.name!r} lists a NATS interface ({written[0]}) whose "
                              f"subject prefix is not {served.prefix!r}, where it is served")
        if server_url and not written:
            # An interface of this binding the author wrote (a public host name, say) is kept as written.
            ours = AgentInterface(url=url_for(server_url, served.prefix), protocol_binding=BINDING_URI,
                                  protocol_version=PROTOCOL_VERSION)
            others = list(card.supported_interfaces)
            del card.supported_interfaces[:]
            card.supported_interfaces.extend([ours, *others])
        return card

    def _capability(self, capability: str) -> Callable[[dict[str, Any]], Any]:
        """The handler add_capability registered (contracts included), called as the agent calls it."""
        host = self._host

        def call(message: dict[str, Any]) -> Any:
            regs = host.capability_registrations().get(capability) or []
            fn = next((reg.handler for reg in regs if reg.handler is not None), None)
            if fn is None:
                raise ConfigError(f"capability {capability!r} has no handler of its own to serve over A2A")
            if inspect.isasyncgenfunction(fn):
                return fn(message)  # its items stream as artifact chunks (CapabilityExecutor)
            return host.call_handler(fn, message)

        return call

    # ------------------------------------------------------------------ admission (inline, as nats-py reads)

    def _admit(self, served: Served, msg: Msg) -> None:
        server = served.server
        if not msg.reply or server is None:
            self.dropped += 1
            return
        if not server.answers_to(msg.reply):  # no refusal either: it would go where the reply subject points
            served.refused += 1
            return
        served.requests += 1
        streaming = msg.subject.rpartition(".")[2] in _STREAMING
        size = _size(msg)
        if size > self.max_request_bytes:
            from a2a.utils.errors import InvalidRequestError

            self._refuse(served, msg, streaming, "a2a.max_request_bytes", InvalidRequestError(
                message=f"the request has {size} bytes, over the agent's a2a.max_request_bytes ({self.max_request_bytes})",
                data={"reason": "payload_too_large", "size": str(size), "limit": str(self.max_request_bytes)}))
        elif streaming:
            sender = _sender(msg)
            if self.streams >= self.max_streams:
                self._overloaded(served, msg, True, "a2a.max_streams", self.max_streams)
            elif self.per_sender.get(sender, 0) >= self.streams_per_sender:
                self._overloaded(served, msg, True, "a2a.streams_per_sender", self.streams_per_sender)
            else:
                self.streams += 1
                self.per_sender[sender] = self.per_sender.get(sender, 0) + 1
                self._host.spawn(self._stream(served, server, msg, sender))
        elif self.active >= self.max_concurrency + self.max_queued:
            self._overloaded(served, msg, False, "a2a.max_queued", self.max_queued)
        elif self.active_bytes + size > self.max_queued_bytes:
            self._overloaded(served, msg, False, "a2a.max_queued_bytes", self.max_queued_bytes)
        else:
            self.active += 1
            self.active_bytes += size
            self._host.spawn(self._unary(served, server, msg, size))

    async def _unary(self, served: Served, server: A2ANatsServer, msg: Msg, size: int) -> None:
        started = time.perf_counter()
        try:
            async with self._room:
                self.running += 1
                try:
                    await server.serve(msg)
                finally:
                    self.running -= 1
        finally:
            self.active -= 1
            self.active_bytes -= size
            served.seconds += time.perf_counter() - started

    async def _stream(self, served: Served, server: A2ANatsServer, msg: Msg, sender: str) -> None:
        started = time.perf_counter()
        try:
            await server.serve(msg)
        finally:
            self.streams -= 1
            left = self.per_sender[sender] - 1
            if left:
                self.per_sender[sender] = left
            else:
                del self.per_sender[sender]
            served.seconds += time.perf_counter() - started

    def _overloaded(self, served: Served, msg: Msg, streaming: bool, bound: str, limit: int) -> None:
        from .errors import OverloadedError

        what = "open streams" if streaming else "bytes of requests" if bound.endswith("_bytes") else "requests waiting"
        self._refuse(served, msg, streaming, bound, OverloadedError(
            message=f"the agent has {limit} {what}, its {bound}; retry later", data={"bound": bound, "limit": str(limit)}))

    def _refuse(self, served: Served, msg: Msg, streaming: bool, bound: str, error: A2AError) -> None:
        from a2a.utils.errors import A2A_ERROR_REASONS

        reason = A2A_ERROR_REASONS.get(type(error), "INTERNAL_ERROR")
        self.refused[bound] = self.refused.get(bound, 0) + 1
        self.errors[reason] = self.errors.get(reason, 0) + 1
        served.refused += 1
        served.last_error = str(error)
        self._host.spawn(self._answer_refusal(served, msg, streaming, error))

    async def _answer_refusal(self, served: Served, msg: Msg, streaming: bool, error: Exception) -> None:
        """Tell the requester at once, as the server answers (binding §6, §7.4): an error answer or one error frame."""
        import nats.errors

        from ..errors import StreamTimeoutError

        server = served.server
        if server is None:
            return
        try:
            await server.refuse(msg, error, streaming=streaming)
        except (nats.errors.Error, StreamTimeoutError) as exc:
            log.debug("A2A refusal to %s not sent: %s", msg.reply, exc)

    # ------------------------------------------------------------------ the Component protocol

    async def start(self) -> None:
        """Connected, before subscribing: make each served agent's handler, store and server, register its subjects."""
        self._room = asyncio.Semaphore(self.max_concurrency)  # of this start's loop (start() makes a new one each time)
        for served in self.served.values():
            await self._build(served)

    async def stop(self) -> None:
        """Stopped: close each handler (its running tasks end) and forget this start's replica subject."""
        for served in self.served.values():
            if served.server is not None:  # its counts outlive it: get_metrics() and $SRV.STATS are since creation
                for reason, n in served.server.errors.items():
                    self.errors[reason] = self.errors.get(reason, 0) + n
                served.failed += sum(served.server.errors.values())
            handler, served.handler, served.server = served.handler, None, None
            if served.replica_subject:
                self._host.unregister(served.replica_subject, served.on_request)
            if handler is not None:
                try:
                    await asyncio.wait_for(handler.aclose(), self._host.config["nats.drain_timeout"])
                except (asyncio.TimeoutError, Exception):  # stopping goes on; what failed is logged
                    log.warning("agent %s: closing the A2A handler of %s failed", self._host.agent_id, served.name,
                                exc_info=True)

    def describe(self) -> Mapping[str, Any]:
        """The served A2A agents: where each answers and where its card is (discovery, heartbeats)."""
        if not self.served:
            return {}
        from .binding import BINDING_URI, CARD, PROTOCOL_VERSION

        return {"a2a": [{"name": s.name, "url": s.url, "protocolBinding": BINDING_URI, "protocolVersion": PROTOCOL_VERSION,
                         "card": f"{s.prefix}.{CARD}", "store": s.stored_in} for s in self.served.values()]}

    def endpoints(self) -> list[Endpoint]:
        """One NATS service endpoint per served A2A agent: its subjects, where its card is, its counters."""
        if not self.served:
            return []
        from .binding import BINDING_URI, CARD, PROTOCOL_VERSION

        found = []
        for s in self.served.values():
            errors = s.refused + s.failed + (sum(s.server.errors.values()) if s.server is not None else 0)
            found.append(Endpoint(
                name=f"a2a-{service_name(s.name)}", subject=f"{s.prefix}.*", queue_group=s.prefix,
                metadata={"a2a.name": s.name, "a2a.protocolBinding": BINDING_URI, "a2a.protocolVersion": PROTOCOL_VERSION,
                          "a2a.url": s.url, "a2a.card": f"{s.prefix}.{CARD}", "a2a.store": s.stored_in},
                num_requests=s.requests, num_errors=errors, processing_time=int(s.seconds * 1e9),
                last_error=s.last_error))
        return found

    def gauges(self) -> Mapping[str, float]:
        """Requests, refusals and errors by reason, streams open, store bytes (docs/limits.md)."""
        if not self.served:
            return {}
        errors = dict(self.errors)
        for s in self.served.values():
            for reason, n in (s.server.errors if s.server is not None else {}).items():
                errors[reason] = errors.get(reason, 0) + n
        stores = [s.store for s in self.served.values() if s.store is not None]
        memory = [store for store in stores if not hasattr(store, "kv")]  # BoundedTaskStore (a2a-sdk loads lazily)
        levels: dict[str, float] = {
            "a2a_requests": sum(s.requests for s in self.served.values()), "a2a_in_flight": self.running,
            "a2a_queued": self.active - self.running, "a2a_queued_bytes": self.active_bytes,
            "a2a_streams_open": self.streams,
            "a2a_refused": sum(self.refused.values()), "a2a_errors": sum(errors.values()),
            "a2a_store_bytes": sum(store.bytes for store in memory),
            "a2a_store_max_bytes": sum(store.max_bytes for store in memory),
            "a2a_store_evictions": sum(store.evictions for store in memory),
            "a2a_store_refused": sum(store.refused for store in stores),
            "a2a_events_dropped": sum(s.events.dropped for s in self.served.values() if s.events is not None),
        }
        for s in self.served.values():  # signed-identity refusals and pulled bodies (the server's own counters)
            counters = s.server.metrics() if s.server is not None else {}
            for key, n in counters.items():
                if not key.startswith("a2a_") and f"a2a_{key}" in counters:
                    continue  # the pull gate's pulls_refused counts what the server counts as a2a_pulls_refused
                key = key if key.startswith("a2a_") else f"a2a_{key}"  # the core's own pulls_active & co. stay its own
                levels[key] = levels.get(key, 0) + n
        for bound, n in self.refused.items():
            levels[f"a2a_refused_{bound.partition('.')[2]}"] = n
        for reason, n in errors.items():
            levels[f"a2a_errors_{reason.lower()}"] = n
        return levels
