"""A bystander answers a request's inbox with a forged JetStream publish acknowledgement (the task was stored, not
answered): it never cuts the request short, the honest answer still wins, and with no answer the request fails at
its timeout, typed (the acknowledgement then names the reason), never at once."""

from __future__ import annotations

import time
from typing import Any

import nats
import orjson
import pytest

from agentcore import NoRespondersError, PersistenceError
from security.test_replies import bystander, forged_result, slow_worker


def _ack(stream: str) -> bytes:
    return orjson.dumps({"stream": stream, "seq": 1})


async def test_a_forged_pub_ack_never_cuts_a_request_short(make_agent: Any, raw_nc: nats.NATS) -> None:
    await slow_worker(make_agent)
    client = await make_agent("client")
    sent = await bystander(raw_nc, lambda request, _msg: [
        (_ack("FORGED"), None),
        (forged_result("forged", source="worker", correlation="not-" + request["id"]), None),
    ])
    for i in range(5):
        assert await client.send_task("work", i, timeout=5) == {"honest": i}
    assert sent[0] == 10
    assert client.get_metrics()["replies_rejected"] >= 5  # the wrong correlationId, each time


async def test_with_no_answer_a_forged_pub_ack_fails_the_request_at_its_timeout_typed(
        make_agent: Any, raw_nc: nats.NATS) -> None:
    client = await make_agent("client")
    await bystander(raw_nc, lambda request, _msg: [(_ack("FORGED"), None)])
    started = time.monotonic()
    with pytest.raises(PersistenceError, match="FORGED"):
        await client.send_task("work", "x", timeout=0.5)
    assert time.monotonic() - started >= 0.5  # at the timeout, not at once: the honest answer had all its time
    await raw_nc.drain()
    with pytest.raises(NoRespondersError):  # nobody subscribed any more: said by the server, typed, at once
        await client.send_task("work", "x", timeout=30)
