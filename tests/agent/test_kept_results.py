"""Results kept for a requester that was away, task status in JetStream, claim-checked large tasks and results."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import nats.js.errors
import pytest
from nats_fixtures import eventually, within

from agentcore import NATSAgent, PersistenceError, RequestTimeoutError
from agentcore.server import NATSServer

JS = {"jetstream__enabled": True, "jetstream__pull_expires": 0.3}


@pytest.fixture
def nats_server() -> Iterator[NATSServer]:
    """This module's agents need JetStream: a fresh server with it for each test."""
    with NATSServer(jetstream=True) as server:
        yield server


class _Gate:
    """A handler that starts, then waits until the test opens the gate, and answers its content doubled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.open = asyncio.Event()

    async def __call__(self, message: dict[str, Any]) -> Any:
        self.started.set()
        await self.open.wait()
        return message["payload"]["content"] * 2


async def _status(agent: NATSAgent, task_id: str) -> str | None:
    record = await agent._persistence.status_of(task_id)
    return None if record is None else record["state"]


async def _done(agent: NATSAgent, task_id: str, status: str = "done") -> bool:
    return await _status(agent, task_id) == status


async def test_a_requester_that_gave_up_fetches_the_kept_result_later(make_agent) -> None:
    gate = _Gate()
    worker = await make_agent("worker", capabilities={"double": gate}, **JS)
    client = await make_agent("client", **JS)
    with pytest.raises(RequestTimeoutError) as info:
        await client.send_task("double", 21, timeout=0.5)
    task_id = info.value.task_id
    assert task_id and task_id in str(info.value)
    assert await _status(client, task_id) in ("queued", "running")
    await within(gate.started.wait(), "the handler to start")
    await eventually(lambda: _done(client, task_id, "running"), what="the running status")  # noqa: B023
    gate.open.set()
    assert await within(client.result(task_id, timeout=10), "the kept result") == 42
    assert await client.result(task_id, timeout=1) == 42  # kept until result_ttl: asked again, the same
    await eventually(lambda: _done(client, task_id), what="the done status")
    await eventually(lambda: worker.get_metrics().get("results_kept") == 1, what="the keep acknowledged")  # noqa: B023
    assert client.get_metrics()["results_recovered"] == 2


async def test_only_the_requester_knows_how_to_read_a_kept_result(make_agent) -> None:
    worker = await make_agent("worker", capabilities={"echo": lambda m: m["payload"]["content"]}, **JS)
    client = await make_agent("client", **JS)
    other = await make_agent("other", **JS)
    reply = await client.request_message(client.topics.task("echo"), "secret", timeout=5)
    task_id = reply["correlationId"]
    assert await client.result(task_id, timeout=5) == "secret"
    with pytest.raises(PersistenceError, match="remembers"):
        await other.result(task_id, timeout=1)
    await eventually(lambda: worker.get_metrics().get("results_kept") == 1, what="the keep acknowledged")  # noqa: B023


async def test_status_of_a_persisted_task_survives_an_agent_restart(make_agent, agent_config) -> None:
    worker = await make_agent("worker", capabilities={"echo": lambda m: m["payload"]["content"]}, **JS)
    client = await make_agent("client", **JS)
    reply = await client.request_message(client.topics.task("echo"), "x", timeout=5)
    task_id = reply["correlationId"]
    await eventually(lambda: _status(client, task_id), what="a status")  # noqa: B023
    await eventually(lambda: _done(worker, task_id), what="the done status")
    await worker.astop()
    again = NATSAgent("worker", "worker", agent_config(**JS))  # the same agent, restarted
    await again.astart()
    try:
        assert await _status(again, task_id) == "done"
        record = await again._persistence.status_of(task_id)
        assert record is not None and record["agent"] == "worker"
        # task_status answers from the kept status too: a finished task's state outlives the agent that served it.
        assert (await client.task_status(task_id))["state"] == "done"
        assert await again._persistence.status_of("no-such-task") is None
    finally:
        await again.astop()


async def test_a_failed_task_is_recorded_failed_and_its_kept_error_raises(make_agent) -> None:
    from agentcore import HandlerError

    gate = asyncio.Event()

    async def broken(message: dict[str, Any]) -> None:
        await gate.wait()
        raise ValueError("no")

    await make_agent("worker", capabilities={"broken": broken}, **JS)
    client = await make_agent("client", **JS)
    with pytest.raises(RequestTimeoutError) as info:
        await client.send_task("broken", 1, timeout=0.3)
    task_id = info.value.task_id
    assert task_id is not None
    gate.set()
    with pytest.raises(HandlerError, match="no"):
        await within(client.result(task_id, timeout=10), "the kept error")
    await eventually(lambda: _done(client, task_id, "failed"), what="the failed status")


async def test_a_task_that_waits_for_a_worker_is_queued(make_agent) -> None:
    client = await make_agent("client", **JS)
    with pytest.raises(RequestTimeoutError) as info:
        await client.send_task("nobody", 1, timeout=0.3)
    task_id = info.value.task_id
    assert task_id is not None
    await eventually(lambda: _status(client, task_id), what="the queued status")  # noqa: B023
    assert await _status(client, task_id) == "queued"


async def test_a_20_mb_persisted_task_and_result_go_through_the_object_store(make_agent) -> None:
    worker = await make_agent("worker", capabilities={"double": lambda m: m["payload"]["content"] * 2},
                              agent__max_request_bytes=64 * 1024 * 1024, **JS)
    client = await make_agent("client", **JS)
    content = "ab" * (5 * 1024 * 1024)  # 10 MB of task, 20 MB of result
    reply = await within(client.request_message(client.topics.task("double"), content, timeout=60), "the 20 MB result", 90)
    assert reply["payload"]["content"] == content * 2
    task_id = reply["correlationId"]
    assert client.get_metrics()["claims_stored"] == 1
    assert worker.get_metrics()["claims_fetched"] == 1
    await eventually(lambda: worker.get_metrics().get("results_kept") == 1, what="the keep acknowledged")  # noqa: B023
    assert client.get_metrics()["results_recovered"] == 1  # sent as a notice, taken from the store
    assert await within(client.result(task_id, timeout=30), "the kept 20 MB result", 60) == content * 2


async def test_a_20_mb_task_is_claim_checked_and_its_object_dropped(make_agent) -> None:
    worker = await make_agent("worker", capabilities={"size": lambda m: len(m["payload"]["content"])},
                              agent__max_request_bytes=64 * 1024 * 1024, **JS)
    client = await make_agent("client", **JS)
    content = "x" * (20 * 1024 * 1024)
    assert await within(client.send_task("size", content, timeout=60), "the answer to a 20 MB task", 90) == len(content)
    assert worker.get_metrics()["claims_fetched"] == 1
    store = worker._persistence.keeping.store

    async def dropped() -> bool:
        try:
            objects = await store.objects.list(ignore_deletes=True)
        except nats.js.errors.NotFoundError:  # nats-py's word for an empty bucket
            return True
        return not [o for o in objects if (o.size or 0) > 1024 * 1024]

    await eventually(dropped, timeout=10, what="the task's object to be deleted")


async def test_a_peer_that_asks_for_no_kept_result_still_gets_its_task_s_status(make_agent, raw_nc) -> None:
    """A task stored by another client (no routing.keep): answered as before, nothing kept, its status recorded."""
    from agentcore.envelope import decode, encode
    from helpers import task_envelope
    from nats_fixtures import subscribed

    worker = await make_agent("worker", capabilities={"echo": lambda m: m["payload"]["content"]}, **JS)
    inbox = raw_nc.new_inbox()
    answers = await raw_nc.subscribe(inbox)
    await subscribed(raw_nc)
    task = {**task_envelope("go-1", "hi", capability="echo"), "replyTo": inbox}
    await raw_nc.jetstream().publish("agents.test.task.echo.default", encode(task), headers={"Nats-Msg-Id": "go-1"})
    assert decode((await answers.next_msg(timeout=10)).data)["payload"]["content"] == "hi"
    await eventually(lambda: _done(worker, "go-1"), what="the peer's task recorded done")
    assert worker.get_metrics().get("results_kept", 0) == 0
