"""Verified replies: a bystander answering a requester's inbox first never wins (a plain nats-py client attacks).

The attacker subscribes to the task subjects, sees every request (its id and its reply inbox) and answers the
inbox before the worker does: with a wrong correlationId, with a wrong source when the request named its
target, with something that is not an envelope, with a forged offer of a large result. Each test asserts the
forgery is dropped and counted (replies_rejected) and that the honest answer still arrives.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import orjson
import pytest

from agentcore import HandlerError, NATSAgent
from agentcore.envelope import encode, new_message
from agentcore.transport import offload
from agentcore.transport.frames import ENVELOPE, H_CTL, H_FINAL, H_KIND, H_SEQ, H_STREAM, H_WINDOW
from nats_fixtures import eventually, subscribed, within

ROUNDS = 20


# Request id -> set once the bystander's answers to that request are at the server. The server sends what it
# routes to one connection in the order it routed it, so an answer published after that reaches the requester after
# every forgery: the forgeries always come first, on a loaded machine too.
_FORGED: dict[str, asyncio.Event] = {}


def forged(request_id: str) -> asyncio.Event:
    """The event the bystander sets once its answers to request_id are at the server."""
    return _FORGED.setdefault(request_id, asyncio.Event())


async def slow_worker(make_agent: Any, agent_id: str = "worker") -> NATSAgent:
    """A worker that answers once the bystander has answered: the bystander always answers first."""

    async def work(message: dict[str, Any]) -> Any:
        await within(forged(message["id"]).wait(), "the bystander's forgeries to reach the server")
        _FORGED.pop(message["id"], None)
        content = message["payload"]["content"]
        if content == "boom":
            raise ValueError("honest failure")
        return {"honest": content}

    return await make_agent(agent_id, capabilities={"work": work}, cache__enabled=False)


async def bystander(raw_nc: nats.NATS, forge: Any, subject: str = "agents.test.task.>") -> list[int]:
    """Answer every request seen on subject with forge(request, msg) -> [(data, headers)], then set forged(its id);
    return the count sent."""
    sent = [0]

    async def on_request(msg: Any) -> None:
        request = orjson.loads(msg.data)
        for data, headers in forge(request, msg):
            await raw_nc.publish(msg.reply, data, headers=headers)
            sent[0] += 1
        await subscribed(raw_nc)  # the server has routed them: a slow_worker may answer now
        forged(request["id"]).set()

    await raw_nc.subscribe(subject, cb=on_request)
    await subscribed(raw_nc)
    return sent


def forged_result(content: Any, *, source: str, correlation: str | None) -> bytes:
    return encode(new_message("result", content, source_id=source, correlation_id=correlation))


async def test_a_reply_with_a_wrong_correlation_id_never_wins(make_agent: Any, raw_nc: nats.NATS) -> None:
    await slow_worker(make_agent)
    client = await make_agent("client")
    sent = await bystander(raw_nc, lambda request, _msg: [
        (forged_result("forged", source="worker", correlation="not-" + request["id"]), None),
        (forged_result("forged", source="worker", correlation=None), None),
    ])

    for i in range(ROUNDS):
        assert await client.send_task("work", i, timeout=5) == {"honest": i}
    assert sent[0] == 2 * ROUNDS
    await eventually(lambda: client.get_metrics()["replies_rejected"] == 2 * ROUNDS, what="every forgery counted")
    # The honest path keeps its typed errors: an error result that correlates is the answer.
    with pytest.raises(HandlerError, match="honest failure"):
        await client.send_task("work", "boom", timeout=5)


async def test_a_reply_from_another_source_than_the_target_named_never_wins(make_agent: Any, raw_nc: nats.NATS) -> None:
    await slow_worker(make_agent)
    client = await make_agent("client")
    # The right correlationId this time: only the source gives it away.
    await bystander(raw_nc, lambda request, _msg: [
        (forged_result("forged", source="mallory", correlation=request["id"]), None),
    ])

    for i in range(ROUNDS):
        assert await client.send_task("work", i, target="worker", timeout=5) == {"honest": i}
    assert client.get_metrics()["replies_rejected"] == ROUNDS
    # Control answers are checked against the agent asked.
    status = await client.control("worker", "ping")
    assert status["agent_id"] == "worker"


async def test_control_answers_come_from_the_agent_asked(make_agent: Any, raw_nc: nats.NATS) -> None:
    await make_agent("worker")
    client = await make_agent("client")
    await bystander(raw_nc, lambda request, _msg: [
        (forged_result({"pong": True, "agent_id": "worker", "status": "forged"}, source="mallory", correlation=request["id"]), None),
    ], subject="agents.test.control.>")
    # A ping is answered inline, so the forgery arrives first only some of the time: whichever comes first, the
    # answer is the worker's own.
    for _ in range(ROUNDS):
        assert (await client.control("worker", "ping"))["status"] == "running"
    assert client.get_metrics()["replies_rejected"] <= ROUNDS


async def test_garbage_and_foreign_messages_on_the_inbox_are_dropped(make_agent: Any, raw_nc: nats.NATS) -> None:
    await slow_worker(make_agent)
    client = await make_agent("client")
    await bystander(raw_nc, lambda request, _msg: [
        (b"not json", None),
        (b'{"id": "x"}', None),  # JSON, not an envelope
        (encode(new_message("task", "a task, not an answer", source_id="mallory")), None),
    ])
    for i in range(5):
        assert await client.send_task("work", i, timeout=5) == {"honest": i}
    assert client.get_metrics()["replies_rejected"] == 15


async def test_a_forged_large_result_offer_never_wins(make_agent: Any, raw_nc: nats.NATS) -> None:
    """An offer (payload.stream) is a reply like any other: it must correlate before anything is pulled."""
    await slow_worker(make_agent)
    client = await make_agent("client")
    pulls: list[Any] = []
    trap = raw_nc.new_inbox()

    async def on_pull(msg: Any) -> None:
        pulls.append(msg)

    await raw_nc.subscribe(trap, cb=on_pull)

    def offer(request: dict[str, Any], _msg: Any) -> list[tuple[bytes, Any]]:
        envelope = new_message("result", None, source_id="worker", correlation_id="not-" + request["id"])
        envelope["payload"]["stream"] = {"pull": trap, "size": 10}
        return [(encode(envelope), None)]

    await bystander(raw_nc, offer)
    for i in range(5):
        assert await client.send_task("work", i, timeout=5) == {"honest": i}
    await subscribed(raw_nc)
    assert pulls == []  # the forged offer was never pulled
    assert client.get_metrics()["replies_rejected"] == 5


async def test_frames_injected_into_the_pull_of_a_large_result_are_dropped(make_agent: Any, raw_nc: nats.NATS,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The requester pulls an oversized result from the producer's control inbox: frames from anyone else (another
    Agent-Ctl, another stream id) are dropped, the result arrives whole and correlates."""
    blob = "r" * 2_500_000  # over the 1 MB max_payload: offered, then pulled

    async def big(message: dict[str, Any]) -> Any:
        await asyncio.sleep(0.05)
        return {"blob": blob, "n": message["payload"]["content"]}

    await make_agent("worker", capabilities={"big": big}, cache__enabled=False)
    client = await make_agent("client")
    injected, held = [0], [0]
    # The producer holds its frames until the attacker's are at the server: without that, the whole result could
    # arrive and close the requester's pull inbox first, and the forged frames would reach nobody.
    injected_at_server = asyncio.Event()
    serve = offload.serve_pull

    async def serve_after_the_attacker(sender: Any, data: bytes, timeout: float) -> bool:
        await sender.wait_pulled(timeout)
        await within(injected_at_server.wait(), "the forged frames at the server")
        injected_at_server.clear()
        held[0] += 1
        return await serve(sender, data, timeout)

    monkeypatch.setattr(offload, "serve_pull", serve_after_the_attacker)

    async def on_pull(msg: Any) -> None:  # the attacker watches the inboxes and sees the requester's pull
        if not (msg.headers and H_WINDOW in msg.headers and msg.reply):
            return
        poison = b'{"id": "x"}'
        for headers in ({H_STREAM: "anything", H_SEQ: "0", H_KIND: ENVELOPE, H_CTL: msg.subject, H_FINAL: "1"},
                        {H_STREAM: "anything", H_SEQ: "0", H_KIND: ENVELOPE, H_CTL: raw_nc.new_inbox(), H_FINAL: "1"}):
            await raw_nc.publish(msg.reply, poison, headers=headers)
            injected[0] += 1
        await raw_nc.flush()  # the server has routed them to the requester before it answers the flush
        injected_at_server.set()

    await raw_nc.subscribe("_INBOX.>", cb=on_pull)
    await subscribed(raw_nc)
    for i in range(3):
        result = await within(client.send_task("big", i, timeout=10), "the large result")
        assert result == {"blob": blob, "n": i}
    assert injected[0] >= 6 and held[0] == 3
    await eventually(lambda: client.get_metrics()["replies_rejected"] >= injected[0], what="the injected frames counted")
