"""A plain nats-py client attacks the serving hot path: answers written straight to the socket or queued behind
pending ones (transport.inline send_now/queue_now), and the task records a handler started inline leaves behind."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import orjson
import pytest

from agentcore.envelope import decode, encode, new_message
from helpers import task_bytes, task_envelope
from nats_fixtures import eventually, subscribed, within
from task_helpers import Blocking

CANCEL, STATUS = "agents.test.lifecycle.cancel", "agents.test.lifecycle.status"


async def test_a_reply_to_carrying_protocol_lines_never_reaches_the_socket(make_agent: Any, raw_nc: nats.NATS) -> None:
    """A replyTo matching agent.reply_subjects but holding CR/LF would inject a PUB if written raw: it is not."""
    worker = await make_agent("worker", capabilities={"echo": lambda m: m["payload"]["content"]}, cache__enabled=False,
                              agent__reply_subjects=["custom.>"])
    injected: list[Any] = []

    async def sink(msg: Any) -> None:
        injected.append(msg)

    await raw_nc.subscribe("evil", cb=sink)
    answers: asyncio.Queue[Any] = asyncio.Queue()
    await raw_nc.subscribe("custom.ok", cb=answers.put)
    await subscribed(raw_nc)
    for forged in ("custom.x\r\nPUB evil 2\r\nhi", "custom.x PUB", "custom.x\tevil"):
        await raw_nc.publish(worker.topics.task("echo"), orjson.dumps(task_envelope(f"inj-{len(forged)}-{forged[-2:]}", 1,
                                                                                      replyTo=forged)))
    await raw_nc.publish(worker.topics.task("echo"), orjson.dumps(task_envelope("honest", 2, replyTo="custom.ok")))
    await raw_nc.flush()
    honest = await within(answers.get(), "the honest answer")
    assert orjson.loads(honest.data)["payload"]["content"] == 2
    # An injected PUB would have come from the agent's connection ahead of the honest answer, to this connection.
    assert injected == []
    assert worker.get_metrics()["messages_processed"] == 1


async def test_a_stranger_reusing_a_running_tasks_id_does_not_take_it_over(make_agent: Any, raw_nc: nats.NATS) -> None:
    """The stranger saw the task (id, requester) and sends its own task with that id while the first one suspended."""
    blocking = Blocking()
    server = await make_agent("server", capabilities={"slow": blocking}, cache__enabled=False)
    client = await make_agent("client")
    seen: asyncio.Queue[Any] = asyncio.Queue()
    await raw_nc.subscribe("agents.test.task.>", cb=seen.put)
    await subscribed(raw_nc)
    async with client.request_stream(server.topics.task("slow"), None) as stream:
        task = await within(seen.get(), "the attacker to see the task")
        await within(blocking.started.wait(), "the handler to start")
        task_id = decode(task.data)["id"]
        assert stream.task_id == task_id
        # the stranger's own task with the victim's id, from its own source: it runs too (another task)
        inbox = raw_nc.new_inbox()
        answers: asyncio.Queue[Any] = asyncio.Queue()
        await raw_nc.subscribe(inbox, cb=answers.put)
        await subscribed(raw_nc)
        await raw_nc.publish(server.topics.task("slow"), task_bytes(task_id, "mine", source="mallory", capability="slow"),
                             reply=inbox)
        await raw_nc.flush()
        await eventually(lambda: len(blocking.ids) == 2, what="the stranger's task to start")
        # the victim's task is still its own: running, and its cancel reaches its handler
        assert (await client.task_status(task_id))["state"] == "running"
        # the stranger cancels "its" task naming the victim's id: it must not cancel the victim's
        await raw_nc.publish(CANCEL, encode(new_message("event", {"task_id": task_id, "reply_to": inbox}, source_id="mallory",
                                                        correlation_id=task_id)))
        await raw_nc.flush()
        assert (await client.task_status(task_id))["state"] == "running"
        # ... it cancelled its own task of that id, which the lifecycle sees beside the victim's
        assert (await _status(raw_nc, task_id, "mallory"))["content"]["state"] == "cancelled"
        await client.cancel(task_id)
        assert (await client.task_status(task_id))["state"] == "cancelled"
    blocking.release.set()
    assert answers.empty()  # a task cancelled by its requester answers nothing


async def _status(nc: nats.NATS, task_id: str, source: str) -> Any:
    reply = await nc.request(STATUS, encode(new_message("query", {"task_id": task_id}, source_id=source)), timeout=2)
    return decode(reply.data)["payload"]


async def test_two_requesters_with_one_task_id_each_see_and_cancel_their_own(make_agent: Any, raw_nc: nats.NATS) -> None:
    blocking = Blocking()
    server = await make_agent("server", capabilities={"slow": blocking}, cache__enabled=False)
    inbox = raw_nc.new_inbox()
    sink: asyncio.Queue[Any] = asyncio.Queue()
    await raw_nc.subscribe(inbox + ".>", cb=sink.put)
    await subscribed(raw_nc)
    try:
        await _both_running(server, raw_nc, blocking, inbox)
    finally:
        blocking.release.set()


async def _both_running(server: Any, raw_nc: nats.NATS, blocking: Blocking, inbox: str) -> None:
    for who in ("mallory", "alice"):  # mallory first: alice's task-1 comes while mallory's task-1 runs
        await raw_nc.publish(server.topics.task("slow"), task_bytes("task-1", who, source=who, capability="slow"),
                             reply=f"{inbox}.{who}")
        await raw_nc.flush()
        started = 1 if who == "mallory" else 2
        await eventually(lambda: len(blocking.ids) == started, what=f"{who}'s task to start")  # noqa: B023
    assert (await _status(raw_nc, "task-1", "mallory"))["content"]["state"] == "running"
    assert (await _status(raw_nc, "task-1", "alice"))["content"]["state"] == "running"
