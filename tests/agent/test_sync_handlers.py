"""Where sync handlers run (agent.sync_handlers): inline until seen to block, then in the thread pool."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from agentcore import AgentConfig, ConfigError, LoopThreadError, NATSAgent


async def test_a_quick_sync_handler_runs_inline_and_publish_result_answers_from_there(make_agent) -> None:
    threads: list[int] = []

    class Guide(NATSAgent):
        def process_message(self, topic: str, message: dict[str, Any]) -> bool:
            threads.append(threading.get_ident())
            self.publish_result(message["id"], {"echo": message["payload"]["content"]})
            return True

    worker = await make_agent("worker", cls=Guide, capabilities={"analysis": None})
    client = await make_agent("client")
    assert await client.send_task("analysis", 1) == {"echo": 1}
    assert threads == [threading.get_ident()]  # the first call runs on the loop (this test's thread), no hop
    assert worker.get_metrics()["messages_processed"] == 1


async def test_a_sync_handler_seen_to_block_moves_to_the_pool_and_stalls_nothing_after(make_agent, caplog) -> None:
    release = threading.Event()
    threads: list[int] = []

    def blocking(message: dict[str, Any]) -> str:
        threads.append(threading.get_ident())
        release.wait(message["payload"]["content"])  # an LLM call, say: blocks its thread until released (or times out)
        return "done"

    worker = await make_agent("worker", capabilities={"blocking": blocking}, agent__sync_block_threshold=0.02,
                              nats__drain_timeout=0.5)
    client = await make_agent("client")
    # The first call runs inline and holds the loop for its 0.1 s: that is how it is seen to block.
    with caplog.at_level(logging.WARNING, logger="agentcore.agent"):
        assert await client.send_task("blocking", 0.1) == "done"
    assert threads == [threading.get_ident()]
    assert worker.get_metrics()["sync_handlers_moved"] == 1
    moved = [r for r in caplog.records if "thread pool from now on" in r.getMessage()]
    assert len(moved) == 1 and "agent.sync_block_threshold" in moved[0].getMessage()

    # From now on it runs in worker threads: while three calls block, control still answers on the loop.
    pending = [asyncio.ensure_future(client.send_task("blocking", 30, timeout=40)) for _ in range(3)]
    from nats_fixtures import eventually

    await eventually(lambda: worker.get_metrics()["in_flight"] == 3, what="three blocking calls in flight")
    assert (await client.control("worker", "ping", timeout=5))["pong"] is True
    assert all(t != threading.get_ident() for t in threads[1:])
    release.set()
    assert await asyncio.gather(*pending) == ["done"] * 3
    assert worker.get_metrics()["sync_handlers_moved"] == 1  # moved once, logged once


async def test_thread_mode_runs_every_sync_handler_in_the_pool(make_agent) -> None:
    threads: list[int] = []

    def quick(message: dict[str, Any]) -> int:
        threads.append(threading.get_ident())
        return 1

    await make_agent("worker", capabilities={"quick": quick}, agent__sync_handlers="thread")
    client = await make_agent("client")
    assert await client.send_task("quick", None) == 1
    assert threads and threads[0] != threading.get_ident()


async def test_inline_mode_never_moves_a_handler(make_agent) -> None:
    threads: list[int] = []

    def slowish(message: dict[str, Any]) -> int:
        threads.append(threading.get_ident())
        threading.Event().wait(0.05)  # over the threshold below, yet "inline" keeps it on the loop
        return 2

    worker = await make_agent("worker", capabilities={"slowish": slowish}, agent__sync_handlers="inline",
                              agent__sync_block_threshold=0.01)
    client = await make_agent("client")
    assert [await client.send_task("slowish", i) for i in range(2)] == [2, 2]  # different content: no cache hit
    assert threads == [threading.get_ident()] * 2
    assert worker.get_metrics()["sync_handlers_moved"] == 0


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")  # the one asyncio.run() refused on the loop
async def test_a_sync_handler_that_needs_its_own_loop_is_run_in_the_pool(make_agent) -> None:
    # asyncio.run() inside a sync handler worked in a worker thread; inline it refuses, so "auto" moves the
    # handler and runs it again in the pool, and the requester gets the answer all the same.
    async def compute(x: int) -> int:
        return x * 2

    def uses_asyncio_run(message: dict[str, Any]) -> int:
        return asyncio.run(compute(message["payload"]["content"]))

    worker = await make_agent("worker", capabilities={"double": uses_asyncio_run})
    client = await make_agent("client")
    assert await client.send_task("double", 21) == 42
    assert await client.send_task("double", 2) == 4
    assert worker.get_metrics()["sync_handlers_moved"] == 1


async def test_call_from_the_agents_own_loop_is_refused_not_a_deadlock(make_agent) -> None:
    agent = await make_agent("worker")

    async def nothing() -> int:
        return 1

    with pytest.raises(LoopThreadError, match="running event loop"):
        agent.call(nothing())


def test_sync_handler_settings_are_checked() -> None:
    assert AgentConfig({}, environ={})["agent.sync_handlers"] == "auto"
    with pytest.raises(ConfigError):
        AgentConfig({"agent.sync_handlers": "sometimes"}, environ={})
    with pytest.raises(ConfigError):
        AgentConfig({"agent.sync_block_threshold": 0}, environ={})
