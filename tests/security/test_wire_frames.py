"""A stranger cannot forge frames through the fast read path: a payload is read by its size, never by its content."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import nats
import orjson

from agentcore import NO_REPLY, NATSAgent, new_message
from nats_fixtures import eventually, subscribed


async def test_frames_embedded_in_a_payload_are_never_delivered(make_agent: Callable[..., Any], raw_nc: nats.NATS) -> None:
    seen: list[Any] = []

    async def sink(message: dict[str, Any]) -> Any:
        seen.append(message["payload"]["content"])
        return NO_REPLY

    agent: NATSAgent = await make_agent(capabilities={"sink": sink})
    subject = agent.topics.task("sink")
    sids = list(agent.nc._ps.targets)  # the agent's own fast-path sids (a transport internal)
    assert sids
    forged = orjson.dumps(new_message("task", "forged", source_id="x", source_type="t", capabilities=["sink"]))
    # What a MSG frame for each of the agent's sids would look like, inside one payload (and a cut one at the end).
    inner = b"".join(b"MSG %s %d %d\r\n%s\r\n" % (subject.encode(), sid, len(forged), forged) for sid in sids)
    for payload in (b"junk\r\n" + inner, inner, inner + b"MSG " + subject.encode() + b" 1 999999\r\n"):
        await raw_nc.publish(subject, payload)
    honest = orjson.dumps(new_message("task", "honest", source_id="y", source_type="t", capabilities=["sink"]))
    await raw_nc.publish(subject, honest)
    await subscribed(raw_nc)
    await eventually(lambda: seen == ["honest"], what="only the honest message handled")
    assert agent.get_metrics()["messages_invalid"] == 3  # each forged payload is one malformed message, refused


async def test_a_subject_that_is_not_utf8_never_stops_the_agents_reading(make_agent: Callable[..., Any],
                                                                         nats_server: Any) -> None:
    """nats-py decodes every subject in its read loop; one that is not UTF-8 raised there and ended the loop for
    good (the connection stayed 'connected', reading nothing). Such frames are dropped; the agent keeps reading."""
    seen: list[Any] = []

    async def sink(message: dict[str, Any]) -> Any:
        seen.append(message["payload"]["content"])
        return NO_REPLY

    agent: NATSAgent = await make_agent(capabilities={"sink": sink})
    prefix = agent.topics.task("sink").rpartition(".")[0].encode()  # the capability's subscription is a wildcard
    honest = orjson.dumps(new_message("task", "honest", source_id="y", source_type="t", capabilities=["sink"]))
    reader, writer = await asyncio.open_connection("127.0.0.1", nats_server.port)
    try:
        await reader.readline()  # INFO
        bad = prefix + b".\xff\xfe"
        writer.write(b'CONNECT {"verbose":false,"headers":true}\r\n'
                     b"PUB %s 2\r\nhi\r\n" % bad +                                   # plain MSG: the scanner's
                     b"HPUB %s 12 14\r\nNATS/1.0\r\n\r\nhi\r\n" % bad +                 # HMSG: nats-py's parser's
                     b"PUB %s _INBOX.\xff 2\r\nhi\r\n" % agent.topics.task("sink").encode() +  # a reply that is not UTF-8
                     b"PUB %s %d\r\n%s\r\nPING\r\n" % (agent.topics.task("sink").encode(), len(honest), honest))
        await writer.drain()
        assert (await reader.readline()).startswith(b"PONG")
        await eventually(lambda: seen == ["honest"], what="the honest message after the bad ones")
        assert not agent.nc._reading_task.done()
    finally:
        writer.close()
