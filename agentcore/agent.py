"""NATSAgent: the guide's agent API, wiring the feature-blind core and the feature components."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from nats.aio.client import Client as NATSClient

from ._eager import step_now
from ._impl import validate_token
from .a2a.component import A2A
from .batching import Batching
from .config import AgentConfig
from .contracts import Contracts, Schema
from .core.engine import Core
from .core.records import NO_REPLY, Handler
from .errors import AgentCoreError, LoopThreadError, NotConnectedError
from .fields import CONTENT, PAYLOAD
from .loops import new_event_loop
from .mcp.hosting import MCP
from .negotiation import CheckCallback, CounterCallback, Negotiation, NegotiationHandler, OutcomeCallback, SelectCallback
from .persistence import Persistence
from .services import Services
from .streaming import StreamReceiver, Streaming
from .topics import Topics
from .tracing import Tracing

if TYPE_CHECKING:
    from a2a.server.agent_execution import AgentExecutor
    from a2a.types.a2a_pb2 import AgentCard

    from .mcp.client import MCPClient

__all__ = ("NATSAgent", "NO_REPLY")

log = logging.getLogger("agentcore.agent")

T = TypeVar("T")


class NATSAgent:
    """An agent on the NATS bus: serves its capabilities, answers control and discovery, reports metrics."""

    def __init__(self, agent_id: str, agent_type: str = "agent", config: AgentConfig | Mapping[str, Any] | None = None) -> None:
        self.agent_id = validate_token(agent_id)
        self.agent_type = agent_type
        self.config = config if isinstance(config, AgentConfig) else AgentConfig(config)
        # The override points are looked up when used, so one assigned on the instance counts too.
        core = self._core = Core(self.agent_id, agent_type, self.config, lambda: self.process_message)
        self.environment: str = core.environment
        self.topics: Topics = core.topics
        self.capabilities: list[str] = core.registry.capabilities
        # Features, each over the core's Host interface; the core calls them at start, reconnect, drain and stop.
        self._persistence = Persistence(core)
        self._streaming = Streaming(core)
        self._batching = Batching(core, lambda messages: self.process_batch(messages))
        self._negotiation = Negotiation(core)
        self._mcp = MCP(core)
        self._services = Services(core)  # the NATS service API ($SRV.PING/INFO/STATS)
        self._contracts = Contracts(core)  # capability input/output schemas
        self._services.endpoint_metadata = self._contracts.metadata
        self._tracing = Tracing(core)  # OpenTelemetry spans, when enabled (trace headers pass through regardless)
        self._a2a = A2A(core)  # the A2A protocol (Agent2Agent, a2a-sdk) served over NATS: serve_a2a
        self._services.endpoints = self._a2a.endpoints
        core.components.extend((self._persistence, self._streaming, self._batching, self._negotiation, self._mcp,
                                self._services, self._contracts, self._tracing, self._a2a))
        core.setup = self._setup_subscriptions  # looked up now: a subclass's override (the guide's style) runs at start
        core.face = self  # control, discovery and status use this agent's (possibly overridden) public methods
        self._own_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ capabilities and subscriptions

    def add_capability(self, capability: str, handler: Handler | None = None, *, cache: bool | str = True,
                       input_schema: Schema | None = None, output_schema: Schema | None = None) -> None:
        """Declare a capability; its tasks go to handler(message) -> result, or else to process_message.

        With the result cache on (cache.enabled), a request whose content matches one answered within
        cache.ttl is answered from the cache. cache=True (the default) scopes that to the requester: the same
        source.id and context.metadata.tenant. cache="shared" shares results between requesters: only for a
        handler whose result depends on the content alone. cache=False runs the handler for every task (side
        effects, sampling). A task nobody waits for (no reply subject, no replyTo) always runs the handler.
        input_schema and output_schema (JSON Schema dicts or pydantic model classes) are the capability's
        contract: published in discovery and the service API, a task whose content breaks it is answered
        invalid_message naming the field, a result that breaks it result_invalid.
        """
        self._core.add_capability(capability, self._contracts.wrap(capability, handler, input_schema, output_schema), cache)

    def subscribe(self, topic: str, handler: Handler | None = None, *, queue: str | None = None) -> None:
        """Subscribe a topic or subject (wildcards allowed); messages go to handler(topic, message) or process_message.

        Task topics of the agent's own capabilities join that capability's queue group by default, so
        replicas share the work and the agent never receives one task twice.
        """
        self._core.subscribe(topic, handler, queue)

    async def asubscribe(self, topic: str, handler: Handler | None = None, *, queue: str | None = None) -> None:
        """Subscribe like subscribe() and return once the server has the interest registered."""
        self._core.subscribe(topic, handler, queue)
        await self._core.sync()

    def unsubscribe(self, topic: str, handler: Handler | None = None) -> None:
        """Remove the registrations of a topic (only those of handler, when given)."""
        self._core.unsubscribe(topic, handler)

    # ------------------------------------------------------------------ override points

    def _setup_subscriptions(self) -> None:
        """Register control, discovery and the capabilities' task topics at start (a subclass may add its own)."""
        self._core.register_base()

    def process_message(self, topic: str, message: dict[str, Any]) -> bool:
        """Handle a message no specific handler took; return True when handled (override in a subclass)."""
        log.debug("agent %s has no handler for %s", self.agent_id, topic)
        return False

    async def process_batch(self, messages: list[dict[str, Any]]) -> list[Any] | None:
        """Process one batch of message envelopes (override point).

        Return one result per message, in order, and each goes to that message's requester as a task
        result would; return None (the default) and each message is processed as usual, by its handler.
        May be a plain function too.
        """
        return None

    # ------------------------------------------------------------------ answering

    def publish_result(self, message_id: str, result: Any) -> concurrent.futures.Future[None] | asyncio.Future[None]:
        """Send result to whoever asked for message_id: its replyTo, else its reply subject, else the result topic.

        Callable from any thread: on the agent's loop (async code, or a sync handler running inline) it writes at once
        and returns a future (await it, or not); from another thread it waits until sent.
        """
        core = self._core
        delivery = core.replies.lookup(message_id)
        if core.on_loop_thread() and core.replies.answer_now(delivery, result):
            return core.sent  # written already, with no coroutine (the guide's sync handler runs inline, on the loop)
        return self._call_soon(core.answer(delivery, result))

    def publish_error(self, message_id: str, code: str, text: str) -> concurrent.futures.Future[None] | asyncio.Future[None]:
        """Send an error result (payload.error = {code, message}) for message_id."""
        return self._call_soon(self._core.fail(self._core.replies.lookup(message_id), code, text))

    def _call_soon(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T] | asyncio.Future[T]:
        loop = self._core.loop
        if loop is None:
            coro.close()
            raise NotConnectedError(f"agent {self.agent_id} is not started")
        if self._core.on_loop_thread():
            # On the loop (an async handler, or a sync one running inline): the answer is written now, with no
            # Task unless sending has to wait (the direct write needs none).
            try:
                finished, value = step_now(coro)
            except Exception as exc:
                fut: asyncio.Future[T] = loop.create_future()
                fut.set_exception(exc)
                self._core.spawn(fut)  # logged there unless awaited
                return fut
            if not finished:
                self._core.spawn(value)
                return value  # type: ignore[no-any-return]
            fut = loop.create_future()
            fut.set_result(value)
            return fut
        cfut = asyncio.run_coroutine_threadsafe(coro, loop)
        cfut.result(self.config["agent.request_timeout"])
        return cfut

    # ------------------------------------------------------------------ sending

    async def publish(self, topic: str, content: Any, *, type: str = "event", **fields: Any) -> str:
        """Publish a message (an event by default) to a topic or subject; return its id."""
        return await self._core.publish(topic, content, type=type, **fields)

    async def publish_event(self, event_type: str, detail: str, content: Any) -> str:
        """Publish content on agents.{env}.event.{event_type}.{detail}."""
        return await self._core.publish(self.topics.event(event_type, detail), content)

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
        reply = await self._core.request_message(
            topic, content, type=type, timeout=timeout, priority=priority, capabilities=capabilities,
            target=target, conversation_id=conversation_id, metadata=metadata,
        )
        return reply[PAYLOAD][CONTENT]

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
        return await self._core.request_message(
            topic, content, type=type, timeout=timeout, priority=priority, capabilities=capabilities,
            target=target, conversation_id=conversation_id, metadata=metadata,
        )

    async def send_task(self, capability: str, content: Any, *, specificity: str = "default", **options: Any) -> Any:
        """Send a task to whichever agent serves capability and return its result (see request() for options)."""
        return await self.request(self.topics.task(capability, specificity), content, type="task", capabilities=[capability], **options)

    # ------------------------------------------------------------------ control, status, discovery

    @property
    def status(self) -> str:
        """Return the lifecycle status: created, running, paused, stopping or stopped."""
        return self._core.status

    @property
    def nc(self) -> NATSClient:
        """Return the underlying nats-py client (for what agentcore does not wrap)."""
        return self._core.connection.require()

    def describe(self) -> dict[str, Any]:
        """Return what discovery and heartbeats say about this agent."""
        return self._core.describe()

    async def pause(self) -> None:
        """Stop taking new work (task subscriptions are dropped so replicas take it); control still answers."""
        await self._core.pause()

    async def resume(self) -> None:
        """Take work again after pause()."""
        await self._core.resume()

    async def control(self, agent_id: str, command: str, *, timeout: float = 5.0) -> Any:
        """Send a control command (ping, status, pause, resume, shutdown) to an agent and return its answer.

        ping and status are open to anyone (the target's control.open); pause, resume and shutdown are taken only
        from the target itself and the agent ids in its control.allow, anyone else gets ForbiddenError. The
        target goes by the source.id this agent sends: unless identities are signed (identity.seed and identity.trusted, docs/security.md) that is a claim, so NATS
        permissions on agents.{env}.control.{agent_id} are what keep others out for real (docs/security.md).
        """
        return await self.request(self.topics.control(agent_id), {"command": command}, type="query", timeout=timeout, target=agent_id)

    async def discover(
        self, capability: str | None = None, *, timeout: float | None = None, expected: int | None = None, include_self: bool = False
    ) -> list[dict[str, Any]]:
        """Return the live agents (optionally only those with capability), collected for timeout seconds.

        With expected=N it returns as soon as N agents have answered.
        """
        return await self._core.discover(capability, timeout=timeout, expected=expected, include_self=include_self)

    def enable_tracing(self, tracer_provider: Any = None, propagator: Any = None) -> None:
        """Record OpenTelemetry spans (extra otel) with tracer_provider and propagator (default: the global ones)."""
        self._tracing.enable(tracer_provider, propagator)

    def get_metrics(self) -> dict[str, Any]:
        """Return counters and latencies: messages_processed, messages_failed, avg/p50/p99 latency_ms, in_flight, reconnects, ..."""
        return self._core.get_metrics()

    def service_info(self) -> dict[str, Any]:
        """Return what this agent answers on $SRV.INFO (the NATS service API): identity and one endpoint per capability."""
        return self._services.info().to_dict()

    def service_stats(self) -> dict[str, Any]:
        """Return what this agent answers on $SRV.STATS: requests, errors and processing time (ns) per capability."""
        return self._services.stats().to_dict()

    # ------------------------------------------------------------------ streaming

    async def stream_response(
        self, task_id: str, response_generator: Any, chunk_size: int = 1024, *, idle_timeout: float = 30.0,
        linger: float = 0.0,
    ) -> None:
        """Stream a generator's output to the requester of task_id in ordered chunks of at most chunk_size bytes.

        Items may be str, bytes or JSON-able objects. A chunk goes out as soon as the generator pauses (its next
        item is not ready, or not within linger seconds), so tokens arrive live; items that are ready at once
        (of one kind) are coalesced up to chunk_size. A generator that raises ends the stream with an error
        frame (and the exception propagates). The requester's cancel closes the generator and returns early.
        """
        await self._streaming.stream_response(task_id, response_generator, chunk_size, idle_timeout=idle_timeout,
                                              linger=linger)

    def request_stream(
        self,
        topic: str,
        content: Any,
        *,
        window: int = 16,
        idle_timeout: float = 30.0,
        gap_timeout: float = 1.0,
        type: str = "task",
        capabilities: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        priority: int = 5,
    ) -> StreamReceiver:
        """Send a task whose handler streams its answer; return the receiver (``async with`` / ``async for`` it).

        Up to window chunks are in flight; a gap that stays open gap_timeout seconds raises StreamGapError,
        no chunk for idle_timeout seconds raises StreamTimeoutError, an error frame raises StreamError.
        """
        return self._streaming.request_stream(topic, content, window=window, idle_timeout=idle_timeout, gap_timeout=gap_timeout,
                                              type=type, capabilities=capabilities, metadata=metadata, priority=priority)

    def receive_stream(
        self,
        task_id: str | None = None,
        *,
        reply_to: str | None = None,
        source: str | None = None,
        window: int = 16,
        idle_timeout: float = 30.0,
        gap_timeout: float = 1.0,
    ) -> StreamReceiver:
        """Return a receiver for the stream of a task you send yourself (``async with`` it, then send the task).

        The task must carry ``replyTo`` = ``receiver.reply_to`` (a fresh inbox, or reply_to: a subject of your
        choosing that the agent does not otherwise subscribe) and the id ``receiver.task_id`` (task_id, or a
        new one); ``receiver.stamp(envelope)`` sets both plus ``routing.stream = {"window": window}``, which
        bounds the producer from its first chunk (without it the producer adopts the window at the first credit).
        ``agent.publish(topic, content, type="task", message_id=r.task_id, reply_to=r.reply_to)`` addresses
        a task as well, without the window. Entering the receiver subscribes and confirms the subscription with the server, so
        the task may then go out on any connection. Only frames and results of that task id are yielded.
        source="agent-id" (or "*") reads what that agent streams for a task id it does not serve (``stream_response``
        called outside a handler, as the guide's snippet does): its result topic ``agents.{env}.result.{source}.stream``.
        """
        return self._streaming.receive_stream(task_id, reply_to=reply_to, source=source, window=window,
                                              idle_timeout=idle_timeout, gap_timeout=gap_timeout)

    # ------------------------------------------------------------------ task lifecycle

    async def cancel(self, task_id: str, *, reply_to: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
        """Cancel a task of ours that some agent serves; return its word ({"task_id", "state": "cancelled", "agent"}).

        The serving agent cancels the handler (it sees CancelledError), sends nothing more and terminates a persisted
        task. reply_to is where the task's answer goes (known already for request_stream's tasks). Cancelling an
        awaiting send_task/request/request_stream (or its timeout) does the same by itself. TaskNotFoundError when no
        agent holds that task of ours (ended, never arrived, or not ours) within timeout. See docs/cancellation.md.
        """
        return await self._core.cancel_task(task_id, reply_to, timeout)

    async def task_status(self, task_id: str, *, timeout: float = 2.0) -> dict[str, Any]:
        """Return what became of a task of ours: {"task_id", "state", "agent", "since"}; state is queued, running, done,
        failed or cancelled. Only the task's requester (or an agent in the server's control.allow) is answered;
        TaskNotFoundError when no agent answers within timeout (see docs/cancellation.md)."""
        return await self._core.task_status(task_id, timeout)

    # ------------------------------------------------------------------ batching

    def enable_batch_processing(self, batch_size: int | None = None, batch_timeout: float | None = None) -> None:
        """Accumulate incoming messages and process them in batches (defaults: nats.batch_size, nats.batch_timeout)."""
        self._batching.enable(batch_size, batch_timeout)

    def disable_batch_processing(self) -> None:
        """Stop batching; what is pending is flushed first."""
        self._batching.disable()

    @property
    def batch_processing(self) -> bool:
        """Return whether batch processing is on."""
        return self._batching.enabled

    # ------------------------------------------------------------------ persistence

    @property
    def persistent(self) -> bool:
        """Whether this agent sends and takes tasks through JetStream (config jetstream.enabled)."""
        return self._persistence.enabled

    async def persistence_info(self) -> dict[str, Any]:
        """Return the task stream's name and state (messages kept, consumers), or {"enabled": False}."""
        return await self._persistence.persistence_info()

    async def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Return the result of a persisted task this agent sent, kept for jetstream.result_ttl (waits up to timeout)."""
        return await self._persistence.result(task_id, timeout)

    # ------------------------------------------------------------------ negotiation (FIPA Contract Net)

    def register_a2a_handler(
        self, negotiation_type: str, handler: NegotiationHandler, *, on_outcome: OutcomeCallback | None = None
    ) -> None:
        """Answer calls for proposals of negotiation_type with handler(negotiation) -> {"accept": ..., ...}.

        handler (sync: run as agent.sync_handlers says; async: run on the loop) receives a dict with id,
        type, initiator, proposal, constraints, round, max_rounds and feedback, and returns
        ``{"accept": True, "terms": {...}}`` or ``{"accept": False, "reason": "..."}``, optionally with
        ``"counter_proposal": {...}`` to ask for another round. If it raises, the initiator gets a refusal
        carrying the error. on_outcome(record), if given, learns the end of each negotiation this agent
        took part in (state "confirmed", "rejected" or "cancelled"); raising on "confirmed" withdraws the
        offer (the initiator sees a failure).
        """
        self._negotiation.register_a2a_handler(negotiation_type, handler, on_outcome=on_outcome)

    async def aregister_a2a_handler(
        self, negotiation_type: str, handler: NegotiationHandler, *, on_outcome: OutcomeCallback | None = None
    ) -> None:
        """Register like register_a2a_handler() and return once the server routes calls for proposals here."""
        await self._negotiation.aregister_a2a_handler(negotiation_type, handler, on_outcome=on_outcome)

    def unregister_a2a_handler(self, negotiation_type: str) -> None:
        """Stop answering negotiation_type (its calls for proposals are then refused as unknown)."""
        self._negotiation.unregister_a2a_handler(negotiation_type)

    def negotiation_status(self, negotiation_id: str) -> dict[str, Any] | None:
        """Return this agent's record of a negotiation: the result it initiated, or its participant record."""
        return self._negotiation.negotiation_status(negotiation_id)

    async def negotiate_with_agents(
        self,
        target_agents: Iterable[str] | None,
        negotiation_type: str,
        proposal: dict[str, Any],
        constraints: dict[str, Any] | None = None,
        timeout: float = 10.0,
        *,
        capability: str | None = None,
        max_rounds: int = 3,
        max_winners: int | None = None,
        select: SelectCallback | None = None,
        counter: CounterCallback | None = None,
        check: CheckCallback | None = None,
        confirm_timeout: float | None = None,
        discovery_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Negotiate proposal with target agents (or those offering capability) and return the outcome.

        timeout bounds the collection of proposals over all rounds; confirming the winners adds at most
        confirm_timeout (default min(timeout, 5 s)). Offers are checked against constraints by check
        (default ``check_constraints``); select(offers) -> agent ids overrides the default choice (every
        offer within the constraints, cheapest first, at most max_winners). Counter-proposals and offers
        that broke the constraints go to another round (up to max_rounds); counter(agent_id,
        counter_proposal, negotiation) -> revised proposal or None overrides adopting a counter that
        fits the constraints. The result has state, responses, outcomes, accepted, agreements, reasons,
        silent, no_responders, negotiation_id and history; see docs/negotiation.md.
        """
        return await self._negotiation.negotiate_with_agents(
            target_agents, negotiation_type, proposal, constraints, timeout, capability=capability, max_rounds=max_rounds,
            max_winners=max_winners, select=select, counter=counter, check=check, confirm_timeout=confirm_timeout,
            discovery_timeout=discovery_timeout,
        )

    # ------------------------------------------------------------------ the A2A protocol (Agent2Agent, a2a-sdk)

    def serve_a2a(self, executor: AgentExecutor | str, *, card: AgentCard | None = None, name: str | None = None,
                  **card_fields: Any) -> None:
        """Serve an a2a-sdk AgentExecutor (or a capability added with add_capability) as an A2A agent over NATS.

        Not the FIPA Contract Net of register_a2a_handler: this is the Agent2Agent protocol (extra a2a,
        docs/a2a-binding.md). It answers under agents.{env}.a2a-protocol.{name} (name: the capability, else the
        agent id) in a queue group shared by replicas, from start() on (or at once when running). card is the
        Agent Card (its NATS interface is added first); without it one is made of card_fields (title, description,
        version, skills, streaming, input_modes, output_modes). Tasks live in JetStream with jetstream.enabled (or
        a2a.store: jetstream), else in memory on one replica; the a2a.* bounds are in docs/limits.md.
        """
        self._a2a.serve(executor, card=card, name=name, **card_fields)

    async def aserve_a2a(self, executor: AgentExecutor | str, *, card: AgentCard | None = None, name: str | None = None,
                         **card_fields: Any) -> None:
        """Serve like serve_a2a() and, when the agent runs, return once the server routes its requests here."""
        await self._a2a.aserve(executor, card=card, name=name, **card_fields)

    def a2a_card(self, name: str | None = None) -> AgentCard:
        """Return the Agent Card served for the A2A agent name (default: the only one), NATS interface first."""
        return self._a2a.card(name)

    # ------------------------------------------------------------------ MCP over NATS

    def register_mcp_server(self, server_id: str, client: MCPClient, *, tools: Iterable[str] | None = None,
                            cache: Mapping[str, float] | None = None, resources: Iterable[str] | None = None,
                            prompts: Iterable[str] | None = None) -> None:
        """Serve a connected MCPClient's tools to the bus under server_id.

        tools is an allow-list: a tool not on it is neither listed nor callable over NATS; resources (resource
        URIs and templates) and prompts are allow-lists the same way: anything not listed is refused as not found.
        cache maps tool names to a time-to-live in seconds: identical calls (same canonical arguments) within it
        are answered from the content-hash cache (opt in only for pure lookups).
        """
        self._mcp.register_mcp_server(server_id, client, tools=tools, cache=cache, resources=resources, prompts=prompts)

    async def aregister_mcp_server(self, server_id: str, client: MCPClient, *, tools: Iterable[str] | None = None,
                                   cache: Mapping[str, float] | None = None, resources: Iterable[str] | None = None,
                                   prompts: Iterable[str] | None = None) -> None:
        """Register like register_mcp_server() and return once its tools are listed and the server has the subscription."""
        await self._mcp.aregister_mcp_server(server_id, client, tools=tools, cache=cache, resources=resources, prompts=prompts)

    async def serve_mcp_server(self, server_id: str, server: Any, *, tools: Iterable[str] | None = None,
                               cache: Mapping[str, float] | None = None, resources: Iterable[str] | None = None,
                               prompts: Iterable[str] | None = None) -> MCPClient:
        """Expose an in-process SDK server (MCPServer or low-level Server) on the bus, no subprocess; return its client."""
        return await self._mcp.serve_mcp_server(server_id, server, tools=tools, cache=cache, resources=resources, prompts=prompts)

    def unregister_mcp_server(self, server_id: str) -> MCPClient | None:
        """Stop serving server_id (the client stays open; close it yourself) and return its client."""
        return self._mcp.unregister_mcp_server(server_id)

    def hosted_mcp_servers(self) -> dict[str, list[str]]:
        """Return the hosted server ids and the tool names each exposes (as discovery shows them)."""
        return self._mcp.hosted_mcp_servers()

    async def call_mcp_tool(
        self,
        server_id: str,
        tool_name: str,
        arguments: dict[str, Any] | None = None,
        timeout: float = 30.0,
        *,
        progress: Callable[[float, float | None, str | None], Any] | None = None,
        raw: bool = False,
    ) -> Any:
        """Call a tool of an MCP server hosted by some agent on the bus and return its content as plain data.

        The result is the MCP content list ([{"type": "text", "text": ...}, ...]); raw=True returns the whole
        CallToolResult as a dict and does not raise on isError. progress(progress, total, message) is called
        for the server's progress notifications. Raises MCPServerNotFoundError (nobody hosts server_id, at
        once), MCPToolNotFoundError, MCPToolError (the tool reported isError), MCPTimeoutError,
        MCPServerDiedError or MCPResultTooLargeError.
        """
        return await self._mcp.call_mcp_tool(server_id, tool_name, arguments, timeout, progress=progress, raw=raw)

    async def list_mcp_tools(self, server_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Return the tools (name, description, inputSchema, ...) an MCP server exposes on the bus."""
        return await self._mcp.list_mcp_tools(server_id, timeout)

    # ------------------------------------------------------------------ lifecycle on the running loop

    async def astart(self) -> None:
        """Connect, subscribe and start heartbeats on the running event loop."""
        await self._core.astart()

    async def astop(self, timeout: float | None = None) -> None:
        """Stop taking work, let in-flight handlers finish (up to timeout), announce it and close the connection."""
        await self._core.astop(timeout)

    async def wait_stopped(self) -> None:
        """Wait until the agent has stopped (by stop(), a shutdown command or an error)."""
        if self._core.stopped is not None:
            await self._core.stopped.wait()

    async def __aenter__(self) -> NATSAgent:
        await self.astart()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.astop()

    # ------------------------------------------------------------------ the thread facade (plain scripts)

    @property
    def runs_own_loop(self) -> bool:
        """Whether the agent was started with start() and runs on its own event-loop thread."""
        return self._own_thread is not None

    def start(self, timeout: float = 10.0) -> bool:
        """Start the agent on its own event-loop thread (for plain scripts); return True once connected and subscribed."""
        if self.status in ("running", "paused"):
            return True
        loop = new_event_loop(self.config)  # uvloop when installed (extra "fast"), unless turned off
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
            asyncio.run_coroutine_threadsafe(self._core.abort_start(), loop).result(10)
            self._close_own_loop(loop)
            return False
        return True

    def stop(self, timeout: float | None = None) -> None:
        """Stop the agent started with start() and end its event-loop thread (timeout: as astop's)."""
        loop = self._core.loop
        if loop is None:
            return
        if self._own_thread is None or self._core.on_loop_thread():
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
        loop = self._core.loop
        if loop is None:
            coro.close()
            raise NotConnectedError(f"agent {self.agent_id} is not started")
        if self._core.on_loop_thread():  # it would wait for the loop it holds (a sync handler running inline, say)
            coro.close()
            raise LoopThreadError(f"agent {self.agent_id}: call() cannot be called from a running event loop (its "
                                  "own thread); await the coroutine there")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.agent_id} ({self.agent_type}) {self.status}>"
