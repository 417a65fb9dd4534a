"""Cancelling a persisted task (JetStream) reaches its handler and takes the task off the stream for good."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from nats_fixtures import eventually, within
from task_helpers import Blocking, server_and_client

from agentcore import NATSAgent
from agentcore.server import NATSServer


@pytest.fixture
def nats_server() -> Iterator[NATSServer]:
    """This module's agents need JetStream: a fresh server with it for each test."""
    with NATSServer(jetstream=True) as server:
        yield server


async def test_a_cancelled_persisted_task_is_terminated(make_agent: Any) -> None:
    blocking = Blocking()
    server, client = await server_and_client(make_agent, blocking, jetstream__enabled=True, jetstream__pull_expires=0.3)
    call = asyncio.ensure_future(client.send_task("slow", None, timeout=30))
    await within(blocking.started.wait(), "the handler to start")
    # Once JetStream's acknowledgement is in (a cancel racing nats-py's wait for it can be lost on Python 3.11).
    await eventually(lambda: client.get_metrics().get("persisted_sent") == 1, what="the task stored")
    call.cancel()
    await within(blocking.cancelled.wait(), "the handler to see CancelledError", 10)
    await eventually(lambda: server.get_metrics().get("persisted_terminated") == 1, what="the task terminated")
    assert server.get_metrics().get("persisted_nakked", 0) == 0  # not handed back to run again
    await eventually(lambda: _stored(server), what="the stream to be empty")
    assert blocking.ids == [blocking.ids[0]]  # never redelivered


async def _stored(agent: NATSAgent) -> bool:
    return (await agent.persistence_info())["messages"] == 0
