"""Token lag: how long after a generator yields a token the requester has it, against raw nats-py in the same run.

A generator yields TOKENS tokens, pausing PAUSE seconds before each (an LLM producing its next token). The lag of
a token is the time from its yield (the producer's clock, sent in the token) to the consumer reading it from
``request_stream`` (both agents on one loop, so one clock). The raw baseline publishes the same tokens with
nats-py after the same pauses and measures publish -> subscriber callback. Rounds alternate agent and raw.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from agentcore import AgentConfig, NATSAgent
from agentcore.server import NATSServer

TOKENS = 30
PAUSE = 0.02
ROUNDS = 5


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as s:
        yield s


async def _agent_lags(producer: NATSAgent, client: NATSAgent) -> list[float]:
    lags: list[float] = []
    async with client.request_stream(producer.topics.task("tokens"), None) as stream:
        async for chunk in stream:
            now = time.perf_counter()
            for stamp in chunk.text.split(";"):
                if stamp:
                    lags.append(now - float(stamp))
    return lags


async def _raw_lags(pub: Any, sub_nc: Any) -> list[float]:
    lags: list[float] = []
    done = asyncio.Event()

    async def on(msg: Any) -> None:
        lags.append(time.perf_counter() - float(msg.data))
        if len(lags) == TOKENS:
            done.set()

    sub = await sub_nc.subscribe("bench.tokens", cb=on)
    await sub_nc.flush()
    for _ in range(TOKENS):
        await asyncio.sleep(PAUSE)
        await pub.publish("bench.tokens", repr(time.perf_counter()).encode())
    await asyncio.wait_for(done.wait(), 10)
    await sub.unsubscribe()
    return lags


async def _run(url: str) -> tuple[list[float], list[float]]:
    config = {"nats.servers": [url], "nats.environment": "bench-lag", "agent.heartbeat_interval": 60.0, "cache.enabled": False}

    async def tokens(message: dict[str, Any]) -> None:
        async def gen() -> Any:
            for _ in range(TOKENS):
                await asyncio.sleep(PAUSE)
                yield f"{time.perf_counter()!r};"

        await producer.stream_response(message["id"], gen(), chunk_size=1024)

    producer = NATSAgent("lag-producer", config=AgentConfig(config, environ={}))
    producer.add_capability("tokens", tokens)
    client = NATSAgent("lag-client", config=AgentConfig(config, environ={}))
    await producer.astart()
    await client.astart()
    pub, sub_nc = await nats.connect(url), await nats.connect(url)
    agent_lags: list[float] = []
    raw_lags: list[float] = []
    try:
        for _ in range(ROUNDS):
            agent_lags += await _agent_lags(producer, client)
            raw_lags += await _raw_lags(pub, sub_nc)
    finally:
        await pub.close()
        await sub_nc.close()
        await client.astop()
        await producer.astop()
    return agent_lags, raw_lags


def test_token_lag(server: NATSServer) -> None:
    agent_lags, raw_lags = asyncio.run(_run(server.url))
    assert len(agent_lags) == len(raw_lags) == TOKENS * ROUNDS
    agent_ms, raw_ms = statistics.median(agent_lags) * 1e3, statistics.median(raw_lags) * 1e3
    print(f"\ntoken lag, {TOKENS} tokens {PAUSE * 1e3:.0f} ms apart x {ROUNDS} rounds: stream_response -> request_stream "
          f"median {agent_ms:.3f} ms (p90 {sorted(agent_lags)[int(len(agent_lags) * 0.9)] * 1e3:.3f} ms); raw nats-py "
          f"publish -> callback median {raw_ms:.3f} ms; ratio {agent_ms / raw_ms:.2f}x")
