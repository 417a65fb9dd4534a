"""Persisted task round trip (JetStream) against the same pattern in raw nats-py, and against a core NATS task.

raw_js: the requester publishes to a work-queue stream with js.publish (waits for the PubAck, as ours does) and
the reply inbox in a header; the responder takes it from a durable push consumer in a queue group, publishes
the reply and acks. agent_js: send_task with jetstream.enabled on both agents (envelopes, dedup id, ack after
the answer; the result kept sealed and the task's status recorded). agent_js_untracked: the same with
jetstream.track_status off (the result still kept). agent_core: the same task over core NATS, for what
persistence costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import nats
import orjson
import pytest
from nats.js import api

from agentcore import AgentConfig
from agentcore.server import NATSServer
from harness import KindBench, interleaved, opened, summarise_pair

CONTENT = {"text": "summarise the quarterly numbers for the board " * 4, "lang": "en"}
KINDS = ("raw_js", "agent_js", "agent_js_untracked", "agent_core")


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(jetstream=True) as s:
        yield s


class Pair(KindBench):
    """A requester and a responder on separate connections, driven on one private event loop."""

    async def _setup(self) -> Callable[[], Awaitable[Any]]:
        if self.kind == "raw_js":
            return await self._setup_raw()
        config = AgentConfig({"nats.servers": [self.url], "nats.environment": f"bench-{self.kind.replace('_', '-')}",
                              "agent.heartbeat_interval": 60.0, "cache.enabled": False,
                              "jetstream.enabled": self.kind.startswith("agent_js"),
                              "jetstream.track_status": self.kind == "agent_js"}, environ={})
        client = await summarise_pair(self, config)

        async def call() -> Any:
            return await client.send_task("summarise", CONTENT, timeout=5)

        return call

    async def _setup_raw(self) -> Callable[[], Awaitable[Any]]:
        responder = await nats.connect(self.url)
        requester = await nats.connect(self.url)
        self.closers += [responder.close, requester.close]
        rjs, qjs = responder.jetstream(), requester.jetstream()
        await rjs.add_stream(api.StreamConfig(name="RAW", subjects=["raw.task.>"], retention=api.RetentionPolicy.WORK_QUEUE))

        async def respond(msg: Any) -> None:
            await responder.publish(msg.headers["Reply"], orjson.dumps({"ok": orjson.loads(msg.data)["lang"]}))
            await msg.ack()

        consumer = api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT)
        await rjs.subscribe("raw.task.summarise", queue="summarise", durable="summarise", cb=respond, manual_ack=True,
                            config=consumer)
        await responder.flush()
        inbox = requester.new_inbox()
        waiting: dict[str, asyncio.Future[Any]] = {}

        async def on_reply(msg: Any) -> None:
            waiting.pop(msg.subject).set_result(orjson.loads(msg.data))

        await requester.subscribe(inbox + ".*", cb=on_reply)
        await requester.flush()
        counter = iter(range(1 << 62))
        payload = orjson.dumps(CONTENT)

        async def call() -> Any:
            reply = f"{inbox}.{next(counter)}"
            fut = waiting[reply] = asyncio.get_running_loop().create_future()
            await qjs.publish("raw.task.summarise", payload, headers={"Reply": reply, "Nats-Msg-Id": reply})
            return await asyncio.wait_for(fut, 5)

        return call


@pytest.fixture(scope="module")
def pairs(server: NATSServer) -> Iterator[dict[str, KindBench]]:
    yield from opened({kind: Pair(server.url, kind) for kind in KINDS})


@pytest.mark.parametrize("kind", KINDS)
def test_persisted_roundtrip(benchmark: Any, pairs: dict[str, KindBench], kind: str) -> None:
    """Median time of 100 sequential round trips per round."""
    benchmark.group = "persisted-roundtrip"
    benchmark.pedantic(pairs[kind].run, args=(100,), rounds=10, warmup_rounds=1)


def test_persisted_roundtrip_ratio(pairs: dict[str, KindBench]) -> None:
    """Interleave the three paths in blocks so machine noise hits them alike; print p50/p99 and ratios."""
    stats = interleaved(pairs, blocks=10, per_block=100)
    raw = stats["raw_js"]
    print(f"\npersisted round trip over {raw[2]} calls each: raw nats-py JetStream p50 {raw[0]:.1f} µs p99 {raw[1]:.1f} µs")
    for kind in ("agent_js", "agent_js_untracked", "agent_core"):
        p50, p99, _ = stats[kind]
        print(f"  {kind:<11} p50 {p50:.1f} µs p99 {p99:.1f} µs; ratio to raw JetStream p50 {p50 / raw[0]:.3f}x p99 {p99 / raw[1]:.3f}x")
