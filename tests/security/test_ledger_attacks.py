"""Finished tasks' status records under attack: a plain nats-py client reuses a finished task's id under many names.

Source ids are whatever the sender says (unsigned), so the stranger sends the requester's task id again under a few
hundred made-up requester names. Each is another requester's task: the requester still learns its own task's state,
the stranger asking under its own name learns nothing, an agent in control.allow sees the latest of any requester,
and the records stay within their byte bound.
"""

from __future__ import annotations

from typing import Any

import nats
import orjson
import pytest

from agentcore import TaskNotFoundError
from helpers import task_bytes
from nats_fixtures import eventually, subscribed


def _fail(message: dict[str, Any]) -> Any:
    if message["source"]["id"] != "client":
        raise ValueError("not for strangers")
    return "ok"


async def test_a_finished_tasks_id_reused_under_many_names_changes_nothing_for_its_requester(
        make_agent: Any, raw_nc: nats.NATS) -> None:
    server = await make_agent("server", capabilities={"work": _fail}, cache__enabled=False, control__allow=["auditor"],
                              tasks__max_status_bytes=64 * 1024)
    client = await make_agent("client")
    auditor = await make_agent("auditor")
    mallory = await make_agent("mallory")
    # The stranger watches the task subject and learns the task's id.
    seen: list[Any] = []
    answers: list[Any] = []

    async def see(msg: Any) -> None:
        seen.append(msg)

    async def answered(msg: Any) -> None:
        answers.append(msg)

    sub = await raw_nc.subscribe(server.topics.task("work"), cb=see)
    await subscribed(raw_nc)
    assert await client.send_task("work", 1) == "ok"
    await eventually(lambda: len(seen) == 1, what="the stranger to see the task")
    await sub.unsubscribe()
    task_id = orjson.loads(seen[0].data)["id"]
    assert (await client.task_status(task_id))["state"] == "done"
    inbox = raw_nc.new_inbox()
    sub = await raw_nc.subscribe(inbox, cb=answered)
    await subscribed(raw_nc)
    for n in range(300):  # the same id under 300 made-up requesters: each is another requester's task, and fails
        await raw_nc.publish(server.topics.task("work"), task_bytes(task_id, n, source=f"m{n}"), reply=inbox)
    await eventually(lambda: len(answers) == 300, what="the 300 answers")
    assert all(orjson.loads(a.data)["payload"].get("error") for a in answers)
    assert (await client.task_status(task_id))["state"] == "done"  # its own task, untouched
    with pytest.raises(TaskNotFoundError):
        await mallory.task_status(task_id, timeout=0.5)  # under its own name the stranger finds nothing
    assert (await auditor.task_status(task_id))["state"] == "failed"  # control.allow: the latest of any requester
    metrics = server.get_metrics()
    assert metrics["task_records"] == 301 and metrics["task_records_bytes"] <= 64 * 1024
