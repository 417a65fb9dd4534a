"""nats-server fixtures: every test that needs NATS gets a real server; a missing binary fails, never skips."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import nats
import pytest

from agentcore import AgentConfig, NATSAgent
from agentcore.server import NATSServer

_envs = itertools.count(1)


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
        if agent._own_thread is not None:
            agent.stop()
        else:
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
    import asyncio
    import inspect
    import time

    async def holds() -> bool:
        result = condition()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    deadline = time.monotonic() + timeout
    while not await holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.002)


async def subscribed(nc: nats.NATS) -> None:
    """Return once the server has every SUB nc sent: nats-py's flush() alone can overtake SUBs still buffered."""
    from agentcore.transport.subscriptions import confirm as _confirm

    await _confirm(nc)
