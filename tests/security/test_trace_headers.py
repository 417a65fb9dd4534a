"""A stranger's trace headers: the agent copies them onto what it sends for the task, so they must not hurt it.

An attacker sends tasks with a malformed traceparent, an oversized baggage or tracestate (copied onto the answer,
it would push the answer past max_payload: the server would refuse it and close the agent's connection), or with
header values meant to smuggle more headers. Each is dropped from what is passed on; the honest trace still goes through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import nats

from agentcore.envelope import decode, encode, new_message
from agentcore.transport.tracecontext import MAX_BAGGAGE

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _task(content: Any) -> bytes:
    return encode(new_message("task", content, source_id="stranger", source_type="client"))


async def test_malformed_or_oversized_trace_headers_are_not_passed_on(make_agent: Callable[..., Any], raw_nc: nats.NATS) -> None:
    agent = await make_agent("victim", capabilities={"echo": lambda m: m["payload"]["content"],
                                                     "double": lambda m: m["payload"]["content"] * 2})
    subject = agent.topics.task("echo")
    room = raw_nc.max_payload - 2048  # what a task's content and headers may take beside its envelope
    for bad in ("garbage", GOOD + "-more", GOOD.upper(), "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                "ff" + GOOD[2:]):
        reply = await raw_nc.request(subject, _task("x"), timeout=10, headers={"traceparent": bad, "baggage": "k=v"})
        assert decode(reply.data)["payload"]["content"] == "x"
        assert not reply.headers, (bad, reply.headers)  # nothing of it passed on

    # A huge baggage next to a good traceparent, on a task whose answer is twice its content: copied onto that answer,
    # the baggage would take it past max_payload. The trace goes on, the baggage (and an oversized tracestate) do not.
    body, baggage_size = int(room * 0.3), int(room * 0.6)
    reply = await raw_nc.request(agent.topics.task("double"), _task("y" * body), timeout=10,
                                 headers={"traceparent": GOOD, "baggage": "k=" + "v" * baggage_size, "tracestate": "s" * 1024})
    assert decode(reply.data)["payload"]["content"] == "y" * (2 * body)
    assert reply.headers == {"traceparent": GOOD}
    # Within the limits, baggage and tracestate travel.
    baggage = "k=" + "v" * (MAX_BAGGAGE - 2)
    reply = await raw_nc.request(subject, _task(1), timeout=10,
                                 headers={"traceparent": GOOD, "baggage": baggage, "tracestate": "a=b"})
    assert reply.headers == {"traceparent": GOOD, "baggage": baggage, "tracestate": "a=b"}
    # The agent is still connected and answering.
    assert agent.get_metrics()["reconnects"] == 0
    assert decode((await raw_nc.request(subject, _task(2), timeout=10)).data)["payload"]["content"] == 2


async def test_a_traceparent_does_not_reach_headers_it_was_not_sent_with(make_agent: Callable[..., Any], raw_nc: nats.NATS) -> None:
    """Other headers of the stranger's task (Nats-Msg-Id, a forged Agent-Signature) are never copied onto the answer."""
    agent = await make_agent("victim2", capabilities={"echo": lambda m: m["payload"]["content"]})
    reply = await raw_nc.request(agent.topics.task("echo"), _task(3), timeout=10,
                                 headers={"traceparent": GOOD, "Nats-Msg-Id": "dup-me", "Agent-Signature": "forged",
                                          "Status": "503"})
    assert decode(reply.data)["payload"]["content"] == 3
    assert reply.headers == {"traceparent": GOOD}
