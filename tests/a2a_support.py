"""Shared by the A2A binding's tests (tests/a2a, tests/security/test_a2a.py): an echo executor, its card, an agent
served over NATS with an unmodified DefaultRequestHandler, and a ClientFactory with the NATS transport registered.

Needs a2a-sdk (extra ``a2a``, in the test extra).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import nats
import nats.errors
from a2a.client import Client, ClientConfig, ClientFactory
from a2a.helpers import new_task, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Role, SendMessageRequest, SubscribeToTaskRequest,
    TaskState,
)
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg

from agentcore.a2a import BINDING_URI, PROTOCOL_VERSION, A2ANatsServer, register, url_for
from agentcore.a2a.jetstream import JetStreamEventStream, KVTaskStore
from agentcore.a2a.watch import replica_probe

PREFIX = "agents.test.a2a-protocol.echo"


class Echo(AgentExecutor):
    """Answer every message with a task whose one artifact echoes the text: Task, working, artifact, completed."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None and context.context_id is not None
        if context.current_task is None:  # a new task: the stream begins with it
            await event_queue.enqueue_event(new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED,
                                                     history=[context.message] if context.message else []))
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.start_work()
        await updater.add_artifact([new_text_part(context.get_user_input())], name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None and context.context_id is not None
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


class Held(Echo):
    """Echo, producing nothing until released (so a forgery on the requester's inbox reaches it first)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        await self.release.wait()
        await super().execute(context, event_queue)


class Gate(AgentExecutor):
    """Start a task and wait until released or cancelled; record what the cancellation looked like."""

    def __init__(self, artifact: str | None = None) -> None:
        self.artifact = artifact  # added as the task's one artifact once released, when given
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled_in_execute = asyncio.Event()
        self.cancel_calls = 0

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None and context.context_id is not None
        await event_queue.enqueue_event(new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED))
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.start_work()
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled_in_execute.set()
            raise
        if self.artifact is not None:
            await updater.add_artifact([new_text_part(self.artifact)], name="result")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None and context.context_id is not None
        self.cancel_calls += 1
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def card(nats_url: str, *, streaming: bool = True) -> AgentCard:
    """The echo agent's card: its NATS interface and one skill."""
    return AgentCard(
        name="echo", description="echoes", version="1.0.0",
        supported_interfaces=[AgentInterface(url=url_for(nats_url, PREFIX), protocol_binding=BINDING_URI,
                                             protocol_version=PROTOCOL_VERSION)],
        capabilities=AgentCapabilities(streaming=streaming), default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="echo", description="echoes the text", tags=["echo"])])


@asynccontextmanager
async def serving(nats_url: str, executor: AgentExecutor | None = None) -> AsyncIterator[tuple[NATSClient, AgentCard]]:
    """Serve executor (default Echo) over NATS; yield a separate client connection and the card."""
    agent_card = card(nats_url)
    server_nc = await nats.connect(nats_url)
    client_nc = await nats.connect(nats_url)
    handler = DefaultRequestHandler(agent_executor=executor or Echo(), task_store=InMemoryTaskStore(),
                                    agent_card=agent_card)
    server = A2ANatsServer(server_nc, handler, agent_card, PREFIX)
    await server.start()
    try:
        yield client_nc, agent_card
    finally:
        await server.stop()
        await handler.aclose()
        await client_nc.close()
        await server_nc.close()


@asynccontextmanager
async def a2a_server(nats_url: str, executor: AgentExecutor, **options: Any) -> AsyncIterator[A2ANatsServer]:
    """A standalone A2ANatsServer for executor (memory store, the echo card) on a connection of its own; options go
    to A2ANatsServer (signer, verifier, delegates, bounds...)."""
    agent_card = card(nats_url)
    nc = await nats.connect(nats_url)
    handler = DefaultRequestHandler(agent_executor=executor, task_store=InMemoryTaskStore(), agent_card=agent_card)
    server = A2ANatsServer(nc, handler, agent_card, PREFIX, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await handler.aclose()
        await nc.close()


class Replica:
    """One replica of the echo agent: its own connection and DefaultRequestHandler, the shared KV bucket and event
    stream (watching the task's key and probing writers, with short intervals, when watch is set)."""

    def __init__(self, nc: NATSClient, handler: DefaultRequestHandler, server: A2ANatsServer, store: KVTaskStore) -> None:
        self.nc, self.handler, self.server, self.store = nc, handler, server, store

    @classmethod
    async def start(cls, url: str, executor: AgentExecutor, name: str, *, watch: bool = False,
                    **options: Any) -> Replica:
        """Start replica name serving executor; options go to A2ANatsServer (signer, verifier, delegates...)."""
        nc = await nats.connect(url)
        js = nc.jetstream()
        agent_card = card(url)
        store = await KVTaskStore.open(js, "A2A_TASKS_echo", replica=name)
        watching_options: dict[str, Any] = ({"tasks": store.kv, "probe": replica_probe(nc, PREFIX), "probe_interval": 0.5,
                                             "grace": 0.5} if watch else {})
        events = await JetStreamEventStream.open(js, "A2A_EVENTS_echo", PREFIX, **watching_options)
        handler = DefaultRequestHandler(agent_executor=executor, agent_card=agent_card, task_store=store,
                                        event_stream=events)
        server = A2ANatsServer(nc, handler, agent_card, PREFIX, replica=name, locate=store.replica_of, **options)
        await server.start()
        return cls(nc, handler, server, store)

    async def close(self) -> None:
        """Stop serving and close the connection; a killed replica (its connection closed) only drops its work."""
        if self.nc.is_closed:  # what it ran dies with it (its writes fail on the closed connection)
            with contextlib.suppress(nats.errors.Error):
                await self.handler.aclose()
            return
        await self.server.stop()
        await self.handler.aclose()
        await self.nc.close()


def factory(nc: NATSClient, *, streaming: bool, **options: Any) -> ClientFactory:
    """A ClientFactory that speaks only the NATS binding, over connection nc."""
    made = ClientFactory(ClientConfig(supported_protocol_bindings=[BINDING_URI], streaming=streaming))
    register(made, nc, **{"timeout": 10.0, **options})
    return made


def into(found: list[Msg]) -> Callable[[Msg], Awaitable[None]]:
    """A subscription callback keeping each message in found."""

    async def keep(msg: Msg) -> None:
        found.append(msg)

    return keep


def text_request(text: str) -> SendMessageRequest:
    """A SendMessageRequest with one user text part."""
    return SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))


async def started(client: Client, text: str) -> str:
    """Send text with returnImmediately and return the id of the task it started."""
    request = text_request(text)
    request.configuration.return_immediately = True
    async for first in client.send_message(request):
        return str(first.task.id)
    raise AssertionError("SendMessage answered nothing")


async def held_task(nc: NATSClient, nats_url: str, gate: Gate, text: str = "run on A") -> str:
    """Start a task on the agent whose executor is gate (returnImmediately); return its id once the executor runs."""
    task_id = await asyncio.wait_for(started(factory(nc, streaming=False).create(card(nats_url)), text), 30.0)
    await asyncio.wait_for(gate.started.wait(), 30.0)
    return task_id


def watching(client: Client, task_id: str) -> tuple[list[Any], asyncio.Task[None]]:
    """Subscribe to task_id in the background: the events as they come, and the task that ends with the stream."""
    events: list[Any] = []

    async def watch() -> None:
        async for event in client.subscribe(SubscribeToTaskRequest(id=task_id)):
            events.append(event)

    return events, asyncio.create_task(watch())
