"""Only a task's requester may cancel it or learn its status: a plain nats-py client attacks the lifecycle subjects.

The attacker watches the task subject, so it learns each task's id, its requester's source.id and its reply
inbox. It cancels with its own id, with the requester's id but another inbox, floods cancels and status queries
for ids it made up, and asks the status of others' tasks. With signed identities on, it also signs a cancel that
names the requester with its own trusted key, and the requester's replica (another key trusted for the same id)
tries to cancel. Every attack leaves the task running (or unanswered), is counted where it named a real task,
and the honest requester's cancel still works.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import nats
import nkeys
import pytest

from agentcore import NATSAgent, TaskNotFoundError
from agentcore.envelope import decode, encode, new_message
from agentcore.transport.identity import Signer
from nats_fixtures import eventually, subscribed, within
from task_helpers import Blocking

CANCEL, STATUS = "agents.test.lifecycle.cancel", "agents.test.lifecycle.status"


def cancel(task_id: str, reply_to: str, source: str = "mallory") -> bytes:
    return encode(new_message("event", {"task_id": task_id, "reply_to": reply_to, "reason": "attack"}, source_id=source,
                              correlation_id=task_id))


async def watched_task(make_agent: Any, raw_nc: nats.NATS, blocking: Blocking, **config: Any
                       ) -> tuple[NATSAgent, NATSAgent, asyncio.Future[Any], Any]:
    """Start a task from client to server while the attacker watches the task subject; return what it saw."""
    server = await make_agent("server", capabilities={"slow": blocking}, cache__enabled=False, **config.get("server", {}))
    client = await make_agent("client", **config.get("client", {}))
    seen: asyncio.Queue[Any] = asyncio.Queue()
    await raw_nc.subscribe("agents.test.task.>", cb=seen.put)
    await subscribed(raw_nc)
    call = asyncio.ensure_future(client.send_task("slow", None, timeout=30))
    task = await within(seen.get(), "the attacker to see the task")
    await within(blocking.started.wait(), "the handler to start")
    return server, client, call, task


async def test_a_stranger_cannot_cancel_a_task_it_saw(make_agent: Any, raw_nc: nats.NATS) -> None:
    blocking = Blocking()
    server, client, call, task = await watched_task(make_agent, raw_nc, blocking)
    task_id = decode(task.data)["id"]
    # Its own id: the task is not its, nothing is found (and nothing is said).
    await raw_nc.publish(CANCEL, cancel(task_id, task.reply))
    # The requester's id with an inbox of its own choosing: found, refused, counted.
    await raw_nc.publish(CANCEL, cancel(task_id, "_INBOX.mallory", source="client"))
    await raw_nc.publish(CANCEL, cancel(task_id, "", source="client"))
    await eventually(lambda: server.get_metrics()["cancels_rejected"] == 2, what="the spoofed cancels refused")
    # Made-up ids in bulk: nothing found, nothing kept.
    for i in range(200):
        await raw_nc.publish(CANCEL, cancel(f"guess-{i}", "_INBOX.x", source="client"))
    await raw_nc.publish(CANCEL, b"not json")
    # Then one more spoofed cancel, counted when refused: once it is, the agent has read every message before it.
    await raw_nc.publish(CANCEL, cancel(task_id, "_INBOX.mallory", source="client"))
    await eventually(lambda: server.get_metrics()["cancels_rejected"] == 3, what="the made-up cancels read")
    assert server.get_metrics()["task_records"] == 0  # nothing kept for the made-up ids (the running task has no record)
    assert server.get_metrics()["tasks_cancelled"] == 0 and not blocking.cancelled.is_set()
    blocking.release.set()
    assert await within(call, "the honest answer") == "finished"
    assert server.get_metrics()["task_records"] == 1


async def test_a_stranger_learns_nothing_of_anothers_task_status(make_agent: Any, raw_nc: nats.NATS) -> None:
    blocking = Blocking()
    server, client, call, task = await watched_task(make_agent, raw_nc, blocking, server={"control__allow": ["auditor"]})
    task_id = decode(task.data)["id"]
    query = encode(new_message("query", {"task_id": task_id}, source_id="mallory"))
    with pytest.raises(nats.errors.TimeoutError):
        await raw_nc.request(STATUS, query, timeout=0.5)  # not its task: no agent answers
    mallory = await make_agent("mallory")
    with pytest.raises(TaskNotFoundError):
        await mallory.task_status(task_id, timeout=0.5)
    # An agent in the server's control.allow may ask about any task.
    auditor = await make_agent("auditor")
    assert (await auditor.task_status(task_id))["state"] == "running"
    blocking.release.set()
    await within(call, "the honest answer")


def new_seed() -> str:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


async def test_signed_identities_bind_a_cancel_to_the_key_that_signed_the_task(make_agent: Any, raw_nc: nats.NATS) -> None:
    client_key, replica_key, mallory_key, server_key = new_seed(), new_seed(), new_seed(), new_seed()
    keys = {name: Signer(seed.encode()).public_key for name, seed in
            (("client", client_key), ("replica", replica_key), ("mallory", mallory_key), ("server", server_key))}
    trusted = {"client": [keys["client"], keys["replica"]], "mallory": keys["mallory"], "server": keys["server"]}
    blocking = Blocking()
    common = {"identity__trusted": trusted, "identity__require": True}
    server, client, call, task = await watched_task(
        make_agent, raw_nc, blocking, server={"identity__seed": server_key, **common},
        client={"identity__seed": client_key, **common})
    task_id = decode(task.data)["id"]
    # Unsigned, with everything it saw: refused (identity.require).
    await raw_nc.publish(CANCEL, cancel(task_id, task.reply, source="client"))
    # Signed by its own trusted key but naming the requester: wrong key for that id.
    mallory = Signer(mallory_key.encode())
    data = cancel(task_id, task.reply, source="client")
    await raw_nc.publish(CANCEL, data, headers=mallory.headers(CANCEL, "", data, {}))
    await eventually(lambda: server.get_metrics().get("identity_refused", 0) >= 2, what="both refused")
    # The requester's replica: a key trusted for "client", but not the one that signed the task.
    replica = Signer(replica_key.encode())
    data = cancel(task_id, task.reply, source="client")
    await raw_nc.publish(CANCEL, data, headers=replica.headers(CANCEL, "", data, {}))
    await eventually(lambda: server.get_metrics()["cancels_rejected"] == 1, what="the replica's cancel refused")
    assert not blocking.cancelled.is_set()
    # The requester itself: cancelled.
    call.cancel()
    await within(blocking.cancelled.wait(), "the honest cancel to reach the handler", 10)
