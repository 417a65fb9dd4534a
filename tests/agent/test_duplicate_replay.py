"""A retried message id that was handled without a kept result is refused as a duplicate, never answered with a marker."""

from __future__ import annotations

import asyncio
from typing import Any

import nats

from agentcore import NATSAgent
from agentcore.envelope import decode, encode, new_message
from nats_fixtures import subscribed, within


class Guide(NATSAgent):
    def process_message(self, topic: str, message: dict[str, Any]) -> bool:
        self.publish_result(message["id"], {"echo": message["payload"]["content"]})
        return True


async def test_a_retry_of_a_handled_guide_task_is_a_duplicate_not_a_marker(make_agent, raw_nc: nats.NATS) -> None:
    worker = await make_agent("worker", cls=Guide, capabilities={"analysis": None})
    answers: asyncio.Queue[Any] = asyncio.Queue()
    inbox = raw_nc.new_inbox()  # the retry asks for its answer at the same place as the original

    async def collect(msg: Any) -> None:
        answers.put_nowait(decode(msg.data))

    await raw_nc.subscribe(inbox, cb=collect)
    await subscribed(raw_nc)
    task = encode(new_message("task", 1, source_id="raw-client", source_type="client"))
    await raw_nc.publish(worker.topics.task("analysis"), task, reply=inbox)
    first = await within(answers.get(), "the first answer")
    assert first["payload"]["content"] == {"echo": 1}
    await raw_nc.publish(worker.topics.task("analysis"), task, reply=inbox)
    again = await within(answers.get(), "the retry's answer")
    assert (again["payload"].get("error") or {}).get("code") == "duplicate", again["payload"]
