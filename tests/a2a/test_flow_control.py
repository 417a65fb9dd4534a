"""A slow consumer of an A2A stream over NATS is never sent more than its window, and still gets every event in order.

The consumer is a plain nats-py client speaking the binding (docs/a2a-binding.md §7): it asks for a window of 4 and
grants credit only as it processes, and checks every frame against the credit it has given.
"""

from __future__ import annotations

import asyncio
import secrets

import orjson


from a2a.helpers import new_task, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types.a2a_pb2 import TaskState
from a2a_support import PREFIX, serving, text_request
from google.protobuf.json_format import MessageToJson
from nats.aio.msg import Msg
from nats_fixtures import subscribed, within

CHUNKS = 40
WINDOW = 4


class Burst(AgentExecutor):
    """Produce CHUNKS artifact updates as fast as the event queue takes them."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None and context.context_id is not None
        await event_queue.enqueue_event(new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED))
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        for i in range(CHUNKS):
            await updater.add_artifact([new_text_part(f"{i}\n")], artifact_id="out", append=i > 0,
                                       last_chunk=i == CHUNKS - 1)
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        return None


async def test_a_slow_consumer_is_never_sent_more_than_its_window(nats_url: str) -> None:
    async with serving(nats_url, Burst()) as (nc, _card):
        request_id = secrets.token_hex(16)
        inbox = nc.new_inbox()
        frames: asyncio.Queue[Msg] = asyncio.Queue()
        acked = -1
        overruns: list[int] = []

        async def on_frame(msg: Msg) -> None:
            seq = int((msg.headers or {})["Agent-Seq"])
            if seq > acked + WINDOW:  # checked on arrival, against the credit given so far
                overruns.append(seq)
            await frames.put(msg)

        await nc.subscribe(inbox, cb=on_frame)
        await subscribed(nc)
        await nc.publish(f"{PREFIX}.SendStreamingMessage", MessageToJson(text_request("go"), indent=None).encode(),
                         reply=inbox, headers={"A2A-Version": "1.0", "Agent-Request": request_id,
                                               "Agent-Window": str(WINDOW)})

        async def consume() -> list[dict[str, object]]:
            nonlocal acked
            events: list[dict[str, object]] = []
            expected = 0
            while True:
                msg = await frames.get()
                headers = msg.headers or {}
                assert headers["Agent-Stream"] == request_id and int(headers["Agent-Seq"]) == expected
                expected += 1
                events.extend(orjson.loads(line) for line in msg.data.splitlines() if line.strip())
                if headers.get("Agent-Final") == "1":
                    return events
                if expected % 2 == 0:  # the slow part: credit only for what has been processed
                    acked = expected - 1
                    await nc.publish(headers["Agent-Ctl"], b"",
                                     headers={"Agent-Ack": str(acked), "Agent-Window": str(WINDOW)})

        events = await within(consume(), "the whole stream under credit")
        assert overruns == []
        assert "task" in events[0]
        chunks = [e["artifactUpdate"] for e in events if "artifactUpdate" in e]
        assert [c["artifact"]["parts"][0]["text"] for c in chunks] == [f"{i}\n" for i in range(CHUNKS)]  # type: ignore[index]
        assert events[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"  # type: ignore[index]
