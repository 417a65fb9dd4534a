"""A stranger cannot keep an agent's loop stalled through a sync handler that runs inline.

Sync handlers run inline on the loop until one is seen to block (agent.sync_handlers "auto"). The attacker (a plain
nats-py client) sends tasks whose content takes the handler's slow path (an expensive input, an LLM call), as many
as it likes: the first holds the loop once, the handler then runs in the thread pool, and the honest paths (control,
another capability) keep answering while the attacker's tasks block in worker threads.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import nats
import orjson

from agentcore import NATSAgent
from helpers import task_bytes
from nats_fixtures import eventually


async def test_a_flood_of_slow_inputs_stalls_the_loop_once_then_never(make_agent: Any, raw_nc: nats.NATS) -> None:
    release = threading.Event()
    slow_calls = itertools.count()

    def analyse(message: dict[str, Any]) -> str:
        if message["payload"]["content"].startswith("expensive"):
            release.wait(0.2 if next(slow_calls) == 0 else 30)  # the first: 0.2 s; the rest: until released
        return "analysed"

    async def echo(message: dict[str, Any]) -> Any:
        return message["payload"]["content"]

    worker: NATSAgent = await make_agent("worker", capabilities={"analyse": analyse, "echo": echo},
                                         agent__sync_block_threshold=0.05, nats__drain_timeout=0.5)
    client = await make_agent("client")
    subject = worker.topics.task("analyse")
    # The first expensive task runs inline and holds the loop for its 0.2 s: the handler moves to the pool.
    first = await raw_nc.request(subject, task_bytes("stall-0", "expensive", capability="analyse"), timeout=10)
    assert orjson.loads(first.data)["payload"]["content"] == "analysed"
    assert worker.get_metrics()["sync_handlers_moved"] == 1

    # Now a flood of them (each its own content, so none is a cache hit): each blocks a worker thread, none the loop.
    flood = [asyncio.ensure_future(raw_nc.request(subject, task_bytes(f"stall-{i}", f"expensive {i}", capability="analyse"),
                                                  timeout=40)) for i in range(1, 9)]
    await eventually(lambda: worker.get_metrics()["in_flight"] >= 4, what="the flood in flight")
    assert (await client.control("worker", "ping", timeout=5))["pong"] is True  # control answers meanwhile
    assert await client.send_task("echo", "honest", timeout=5) == "honest"  # and so does another capability
    assert worker.get_metrics()["sync_handlers_moved"] == 1  # the attacker cannot make it log or count again
    release.set()
    for answer in await asyncio.gather(*flood):
        assert orjson.loads(answer.data)["payload"]["content"] == "analysed"
