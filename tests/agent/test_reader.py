"""The agent's own MSG frames read straight from nats-py's buffer: every edge against a real server.

Plain MSG frames of the agent's subscriptions take the fast path (agentcore.transport.reader); HMSG, other sids,
PING/PONG and INFO go through nats-py's parser one frame at a time. These tests mix them on one connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import nats
import orjson

from agentcore import NO_REPLY, AgentConfig, NATSAgent, new_message
from agentcore.server import NATSServer
from nats_fixtures import eventually, subscribed, within


def envelope(content: Any, capability: str = "sink") -> bytes:
    return orjson.dumps(new_message("task", content, source_id="raw", source_type="test", capabilities=[capability]))


def fast_sids(agent: NATSAgent) -> dict[int, Any]:
    """The sids the agent's connection reads through the fast path (a transport internal)."""
    targets: dict[int, Any] = getattr(agent.nc._ps, "targets", {})
    return targets


async def sink_agent(make_agent: Callable[..., Any], seen: list[Any]) -> NATSAgent:
    async def sink(message: dict[str, Any]) -> Any:
        seen.append(message["payload"]["content"])
        return NO_REPLY

    agent: NATSAgent = await make_agent(capabilities={"sink": sink})
    return agent


async def test_plain_frames_headers_and_large_payloads_arrive_in_order(make_agent: Callable[..., Any],
                                                                      raw_nc: nats.NATS) -> None:
    """Small, 300 KB (split over many reads) and header-carrying messages, interleaved: all handled, in order."""
    seen: list[Any] = []
    agent = await sink_agent(make_agent, seen)
    assert fast_sids(agent), "the agent's subscriptions are read through the fast path"
    subject = agent.topics.task("sink")
    big = "x" * 300_000
    sent = []
    for i in range(300):
        content = {"i": i, "pad": big} if i % 50 == 7 else {"i": i}
        sent.append(content)
        if i % 3 == 1:
            await raw_nc.publish(subject, envelope(content), headers={"X-Trace": str(i)})  # HMSG: nats-py's parser
        else:
            await raw_nc.publish(subject, envelope(content))
    await eventually(lambda: len(seen) == len(sent), timeout=30, what="every message handled")
    assert seen == sent


async def test_requests_and_replies_take_the_fast_path_both_ways(make_agent: Callable[..., Any]) -> None:
    async def echo(message: dict[str, Any]) -> Any:
        return message["payload"]["content"]

    await make_agent("echo", capabilities={"echo": echo})
    client: NATSAgent = await make_agent("client")
    results = await within(asyncio.gather(*(client.send_task("echo", {"n": i}, timeout=10) for i in range(200))),
                           "200 requests in flight")
    assert results == [{"n": i} for i in range(200)]
    assert fast_sids(client)  # the reply inbox too


async def test_other_subscriptions_on_the_agents_connection_get_nats_py_messages(make_agent: Callable[..., Any],
                                                                                 raw_nc: nats.NATS) -> None:
    seen: list[Any] = []
    agent = await sink_agent(make_agent, seen)
    theirs: list[nats.aio.msg.Msg] = []

    async def on_user(msg: nats.aio.msg.Msg) -> None:
        theirs.append(msg)

    user_sub = await agent.nc.subscribe("user.subject", cb=on_user)
    await subscribed(agent.nc)
    assert user_sub._id not in fast_sids(agent)
    for i in range(100):
        await raw_nc.publish(agent.topics.task("sink"), envelope({"i": i}))
        await raw_nc.publish("user.subject", b"%d" % i, reply="their.reply")
    await eventually(lambda: len(seen) == 100 and len(theirs) == 100, timeout=30, what="both streams")
    assert seen == [{"i": i} for i in range(100)]
    assert [m.data for m in theirs] == [b"%d" % i for i in range(100)] and theirs[0].reply == "their.reply"
    assert agent.nc.stats["in_msgs"] >= 200


async def test_pause_and_resume_drop_and_restore_the_fast_path(make_agent: Callable[..., Any], raw_nc: nats.NATS) -> None:
    seen: list[Any] = []
    agent = await sink_agent(make_agent, seen)
    subject = agent.topics.task("sink")
    before = set(fast_sids(agent))
    await agent.pause()  # drains the task subscription
    await raw_nc.publish(subject, envelope({"i": "while paused"}))
    await subscribed(raw_nc)
    await agent.resume()
    await raw_nc.publish(subject, envelope({"i": "after"}))
    await eventually(lambda: seen == [{"i": "after"}], what="only the message sent after resuming")
    # the drained subscription's sid was forgotten once a new one was taken over
    assert not (before - set(agent.nc._subs)) & set(fast_sids(agent))


async def test_a_reconnect_mid_stream_keeps_the_fast_path(agent_config: Callable[..., AgentConfig]) -> None:
    with NATSServer() as server:
        config = AgentConfig({"nats.servers": [server.url], "nats.environment": "rc", "agent.heartbeat_interval": 60.0,
                              "nats.reconnect_time_wait": 0.05}, environ={})
        seen: list[Any] = []

        async def sink(message: dict[str, Any]) -> Any:
            seen.append(message["payload"]["content"]["i"])
            return NO_REPLY

        agent = NATSAgent("rc", config=config)
        agent.add_capability("sink", sink)
        await agent.astart()
        publisher = await nats.connect(server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
        try:
            subject = agent.topics.task("sink")
            for i in range(200):
                await publisher.publish(subject, envelope({"i": i}))
            await asyncio.to_thread(server.restart)
            await eventually(lambda: agent.nc.is_connected and publisher.is_connected, timeout=20, what="reconnected")
            await eventually(lambda: agent.get_metrics()["reconnects"] >= 1, what="the agent counted the reconnect")
            before = len(seen)
            assert fast_sids(agent)

            async def delivered() -> bool:  # resubscribed on the new server once a message gets through
                await publisher.publish(subject, envelope({"i": -1}))
                await subscribed(publisher)
                return -1 in seen[before:]

            await eventually(delivered, timeout=20, what="the subscription is back after the restart")
            for i in range(1000, 1300):
                await publisher.publish(subject, envelope({"i": i}))
            await eventually(lambda: seen[-1:] == [1299], timeout=30, what="the stream after the reconnect")
            assert [i for i in seen if i >= 1000] == list(range(1000, 1300))
        finally:
            await publisher.close()
            await agent.astop()


async def test_an_auto_unsubscribe_limit_set_later_is_honoured(make_agent: Callable[..., Any], raw_nc: nats.NATS) -> None:
    """nats-py's unsubscribe(limit=n) on a subscription read through the fast path stops it after n messages."""
    seen: list[Any] = []
    agent = await sink_agent(make_agent, seen)
    subject = agent.topics.task("sink")
    sub = next(s for s in agent.nc._subs.values() if ".task.sink" in s.subject)
    assert sub._id in fast_sids(agent)
    await sub.unsubscribe(limit=3)
    await subscribed(agent.nc)
    for i in range(5):
        await raw_nc.publish(subject, envelope({"i": i}))
    await subscribed(raw_nc)
    await eventually(lambda: len(seen) == 3, what="three messages")
    assert sub._id not in agent.nc._subs
    await raw_nc.publish(subject, envelope({"i": "late"}))
    await subscribed(raw_nc)
    assert seen == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_nats_pys_slow_consumer_limit_still_applies(make_agent: Callable[..., Any], raw_nc: nats.NATS) -> None:
    """A message at or over a subscription's pending-bytes limit is dropped and reported, as nats-py does."""
    seen: list[Any] = []
    agent = await sink_agent(make_agent, seen)
    sub = next(s for s in agent.nc._subs.values() if ".task.sink" in s.subject)
    assert sub._id in fast_sids(agent)
    sub._pending_bytes_limit = 2000  # nats-py's own setting (subscribe(pending_bytes_limit=...)); the agent keeps the default
    subject = agent.topics.task("sink")
    await raw_nc.publish(subject, envelope({"pad": "x" * 3000}))
    await raw_nc.publish(subject, envelope({"i": "small"}))
    await eventually(lambda: seen == [{"i": "small"}], what="the small message")
    await eventually(lambda: agent.get_metrics()["async_errors"] == 1, what="the drop reported as nats-py reports it")
