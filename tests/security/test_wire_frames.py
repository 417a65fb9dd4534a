"""A stranger cannot forge frames through the fast read path: a payload is read by its size, never by its content."""

from __future__ import annotations

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
