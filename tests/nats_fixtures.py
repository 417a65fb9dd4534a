"""nats-server fixtures: every test that needs NATS gets a real server; a missing binary fails, never skips."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import nats
import pytest

from agentcore import AgentConfig, AgentCoreError, NATSAgent
from agentcore.server import NATSServer

_envs = itertools.count(1)
T = TypeVar("T")


@pytest.fixture
def nats_server() -> Iterator[NATSServer]:
    """A fresh nats-server on a free port for one test."""
    with NATSServer() as server:
        yield server


@pytest.fixture
def nats_url(nats_server: NATSServer) -> str:
    return nats_server.url


@pytest.fixture
def agent_config(nats_url: str) -> Callable[..., AgentConfig]:
    """Make an AgentConfig for the test server (extra dotted keys as keyword pairs in a dict)."""

    def make(**values: Any) -> AgentConfig:
        base: dict[str, Any] = {"nats.servers": [nats_url], "nats.environment": "test", "agent.heartbeat_interval": 60.0}
        base.update({k.replace("__", "."): v for k, v in values.items()})
        return AgentConfig(base, environ={})

    return make


@pytest.fixture
async def make_agent(agent_config: Callable[..., AgentConfig]) -> AsyncIterator[Callable[..., Any]]:
    """Create agents (each on its own connection) that are started on request and stopped after the test."""
    agents: list[NATSAgent] = []

    async def make(agent_id: str | None = None, agent_type: str = "worker", *, cls: type[NATSAgent] = NATSAgent,
                   start: bool = True, capabilities: dict[str, Any] | None = None, **config: Any) -> NATSAgent:
        agent = cls(agent_id or f"agent-{next(_envs)}", agent_type, agent_config(**config))
        for name, handler in (capabilities or {}).items():
            agent.add_capability(name, handler)
        agents.append(agent)
        if start:
            await agent.astart()
        return agent

    yield make
    for agent in reversed(agents):
        try:
            agent.stop()  # an agent the test started on its own thread (agent.start())
        except AgentCoreError:  # "use `await agent.astop()`": it runs on this loop
            await agent.astop()


@pytest.fixture
async def raw_nc(nats_url: str) -> AsyncIterator[nats.NATS]:
    """A plain nats-py connection that knows nothing of agentcore."""
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


async def eventually(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """Wait until condition() holds: for state another connection or thread updates after the reply we awaited.

    condition may return an awaitable (a query to the server, say): its result is what must hold.
    """
    async def holds() -> bool:
        result = condition()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    deadline = time.monotonic() + timeout
    while not await holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.002)


async def within(awaitable: Awaitable[T], what: str, timeout: float = 30.0) -> T:
    """Await awaitable for at most timeout seconds: a wait that would hang fails as an assertion naming what."""
    try:
        async with asyncio.timeout(timeout) as scope:
            return await awaitable
    except TimeoutError:
        if scope.expired():
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
        raise  # the awaitable's own timeout error (RequestTimeoutError is a TimeoutError too)


async def subscribed(nc: nats.NATS) -> None:
    """Return once the server has everything nc sent: every SUB registered, every PUB routed to its subscribers.

    nats-py's flush() alone does not prove it: it writes its PING straight to the socket, ahead of what still waits
    in nats-py's pending buffer (a SUB, or messages published just before). Push that buffer out first (a nats-py
    internal), then the PING/PONG round trip proves the server has it all.
    """
    await nc._flush_pending(force_flush=True)
    await nc.flush()
