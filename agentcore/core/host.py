"""The narrow interface feature components see of the core, and the protocol every component follows.

A feature (streaming, batching, persistence, negotiation, MCP hosting) is an object built over a ``Host``:
it never imports the agent module and never touches another feature's state. What it may do to the core
is listed here; if a feature needs more, the member belongs here, named for what it means.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

from ..config import AgentConfig
from ..metrics import AgentMetrics
from ..topics import Topics
from ..transport.connection import Connection
from ..transport.inline import Accept
from ..transport.puller import TaskPuller
from ..transport.settlement import Settlement
from .replies import Keeper
from .records import TASK, Delivery, Handler, Incoming, Queued, Registration, SubscriptionKey
from .task_control import StatusSource

__all__ = ("Host", "Work", "Component", "Feature", "PersistedSource", "RequestRoute", "StatusSource")

#: Sends a request the core does not carry itself (a task stored in JetStream): (subject, envelope, timeout, accept)
#: -> what accept made of the reply that reached the request's inbox (accept drops what does not answer it).
RequestRoute = Callable[[str, dict[str, Any], float, Accept], Awaitable[Any]]


class PersistedSource(Protocol):
    """Serves some wire subscriptions from elsewhere than core NATS (JetStream pull consumers)."""

    def serves(self, key: SubscriptionKey) -> bool:
        """Return whether this source serves the subscription key."""
        ...

    async def subscribe(self, key: SubscriptionKey) -> TaskPuller:
        """Start serving key; the returned puller is retired like a subscription."""
        ...


class Work(Protocol):
    """The dispatcher's face for features that take part in running messages (batching, persistence)."""

    max_concurrency: int
    settlement: Settlement

    def dispatch(self, msg: Incoming, key: SubscriptionKey) -> None:
        """Route one incoming message of the wire subscription key to its handlers."""
        ...

    def intercept(self, take: Callable[[Queued], None] | None) -> None:
        """Hand every non-system message to take instead of running it (None: run messages again)."""
        ...

    def submit(self, queued: Queued) -> None:
        """Run queued now if a handler slot is free, else queue it (refused when the queue is full)."""
        ...

    async def run_counted(self, queued: Queued) -> None:
        """Run queued's handler now, counted as in flight, and return when it has answered."""
        ...

    def finish(self, queued: Queued, replay: Any, size: int | None = None) -> None:
        """Record queued as handled for duplicate detection: replay is its result, or MISS to forget it; size is its
        encoded answer in bytes, measured when not given."""
        ...


class Host(Protocol):
    """What the core offers a feature component."""

    agent_id: str
    agent_type: str
    instance: str  # tells replicas sharing an agent id apart (agent.instance, else random per start-up)
    config: AgentConfig
    topics: Topics
    metrics: AgentMetrics
    connection: Connection

    @property
    def work(self) -> Work:
        """Return the dispatcher's face for features that take part in running messages."""
        ...

    @property
    def status(self) -> str:
        """Return the lifecycle status: created, running, paused, stopping or stopped."""
        ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """Return the event loop the agent runs on (None before it starts)."""
        ...

    def on_loop_thread(self) -> bool:
        """Return whether the caller runs on the agent's loop thread."""
        ...

    def register(self, subject: str, handler: Handler, *, kind: int = TASK, queue: str = "", system: bool = False,
                 fallback: Callable[[dict[str, Any]], str | None] | None = None) -> Registration:
        """Route messages on subject to handler (synced to the server by sync() or at start; never served from the result cache)."""
        ...

    def capability_registrations(self) -> dict[str, list[Registration]]:
        """Return each declared capability's task registrations (their counters are its service-API stats)."""
        ...

    def unregister(self, subject: str, handler: Handler | None = None) -> None:
        """Remove the registrations of subject (only handler's, when given); sync() or schedule_sync() ends the subscription."""
        ...

    async def sync(self) -> None:
        """Make the wire subscriptions match the registrations and return once the server has them."""
        ...

    def schedule_sync(self) -> None:
        """Sync the subscriptions soon (from any thread), when the agent is connected."""
        ...

    def spawn(self, work: Coroutine[Any, Any, Any] | asyncio.Future[Any]) -> None:
        """Run work in the background on the loop; stopping waits for it, a failure is logged."""
        ...

    async def call_handler(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a user function: async ones on the loop, sync ones as agent.sync_handlers says."""
        ...

    def pending(self, message_id: str) -> Delivery | None:
        """Return the request with message_id that this agent still holds (claim() tells whether it is answered)."""
        ...

    def hold(self, delivery: Delivery) -> None:
        """Make delivery answerable by its id (publish_result) until unhold()."""
        ...

    def unhold(self, delivery: Delivery) -> None:
        """Stop offering delivery by its id."""
        ...

    def claim(self, delivery: Delivery) -> bool:
        """Take over answering delivery (a stream, say); False when it was answered already."""
        ...

    async def answer(self, delivery: Delivery, content: Any) -> None:
        """Send content as the result of delivery (at most one answer per delivery)."""
        ...

    async def fail(self, delivery: Delivery, code: str, text: str) -> None:
        """Send an error result for delivery."""
        ...

    async def try_send(self, answer: Coroutine[Any, Any, None]) -> None:
        """Await one send, logging a failure instead of raising it."""
        ...

    def route_requests(self, prefix: str, route: RequestRoute | None) -> None:
        """Send requests to subjects starting with prefix through route (None: through core NATS again)."""
        ...

    def serve_from(self, source: PersistedSource | None) -> None:
        """Let source serve the wire subscriptions it claims (None: all from core NATS)."""
        ...

    def keep_answers(self, keeper: Keeper | None) -> None:
        """Let keeper keep the answers it wants before they are sent (None: answers are only sent)."""
        ...

    def status_from(self, source: StatusSource | None) -> None:
        """Let source answer task_status first (persisted tasks' status kept in JetStream; None: the agents only)."""
        ...

    def asking(self, task_id: str, reply_to: str) -> None:
        """Remember where our open task's answer comes (cancel(task_id) names it)."""
        ...

    def answered(self, task_id: str) -> None:
        """Forget an open task of ours."""
        ...

    def abandon(self, task_id: str, reply_to: str | None, reason: str) -> None:
        """Tell the agent serving our task task_id (answering to reply_to) that we gave up on it: it cancels it."""
        ...

    async def request_message(self, topic: str, content: Any, *, type: str = "task", timeout: float | None = None,
                              priority: int = 5, capabilities: list[str] | None = None, target: str | None = None,
                              conversation_id: str | None = None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request (as NATSAgent.request_message) and return the result envelope."""
        ...

    async def publish(self, topic: str, content: Any, *, type: str = "event", **fields: Any) -> str:
        """Publish a message (as NATSAgent.publish); return its id."""
        ...

    async def discover(self, capability: str | None = None, *, timeout: float | None = None,
                       expected: int | None = None, include_self: bool = False) -> list[dict[str, Any]]:
        """Return the live agents (as NATSAgent.discover)."""
        ...


class Feature:
    """Default Component hooks that do nothing: a feature overrides the lifecycle points it takes part in."""

    async def start(self) -> None:
        """Nothing to set up."""

    def reconnected(self) -> None:
        """Nothing to renew."""

    def drain(self) -> None:
        """Nothing held for the handlers being drained."""

    async def stop(self) -> None:
        """Nothing left to end."""

    def describe(self) -> Mapping[str, Any]:
        """Add nothing to discovery."""
        return {}

    def gauges(self) -> Mapping[str, float]:
        """No levels of its own."""
        return {}


class Component(Protocol):
    """A feature plugged into the core; the core calls these at the points of the agent's lifecycle."""

    async def start(self) -> None:
        """Connected, before the subscriptions are made: set up what the feature needs on the server."""
        ...

    def reconnected(self) -> None:
        """The connection came back after an outage."""
        ...

    def drain(self) -> None:
        """Stopping: subscriptions are ended; hand what the feature holds to the handlers being drained."""
        ...

    async def stop(self) -> None:
        """Stopped: the connection is closed; end what is left (fail waiting callers, cancel timers)."""
        ...

    def describe(self) -> Mapping[str, Any]:
        """Return what the feature adds to discovery answers and heartbeats."""
        ...

    def gauges(self) -> Mapping[str, float]:
        """Return the feature's current levels (what it holds now) for get_metrics()."""
        ...
