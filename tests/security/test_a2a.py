"""The A2A binding's client takes only its own answers: a bystander that sees every request (a plain nats-py client
subscribed to the agent's operations) answers first with forgeries; they are dropped and the genuine answer wins.

What a reader of every subject can still do (copy the request's Agent-Request id into its forgery, or bind a stream
before the agent's first frame) is closed by NATS permissions and signed identities (docs/a2a-binding.md §9).
"""

from __future__ import annotations

from typing import Any

import nats
from a2a.client import ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import TaskState
from a2a_support import PREFIX, Held, factory, serving, text_request
from nats.aio.msg import Msg
from nats_fixtures import eventually, subscribed, within

from agentcore.a2a import BINDING_URI, NatsTransport

FORGED_TASK = b'{"task": {"id": "forged", "contextId": "x", "status": {"state": "TASK_STATE_COMPLETED"}}}'


async def test_forged_unary_answers_are_dropped_and_the_genuine_one_taken(nats_url: str) -> None:
    held = Held()
    async with serving(nats_url, held) as (nc, card):
        attacker = await nats.connect(nats_url)

        async def forge(msg: Msg) -> None:
            if msg.reply:  # answers on the requester's inbox first: one without an id, one with a wrong id
                await attacker.publish(msg.reply, FORGED_TASK)
                await attacker.publish(msg.reply, FORGED_TASK, headers={"Agent-Request": "0" * 32})
                # The agent answers only once the client has taken and dropped both forgeries: the order of
                # deliveries from two connections is no longer the test's assumption.
                await eventually(lambda: made and made[0].rejected == 2, what="both forgeries dropped")
                held.release.set()

        await attacker.subscribe(f"{PREFIX}.*", cb=forge)
        await subscribed(attacker)
        made: list[NatsTransport] = []

        def producer(agent_card: Any, url: str, _config: ClientConfig) -> NatsTransport:
            made.append(NatsTransport(nc, agent_card, url, timeout=10.0))
            return made[-1]

        client_factory = ClientFactory(ClientConfig(supported_protocol_bindings=[BINDING_URI], streaming=False))
        client_factory.register(BINDING_URI, producer)
        client = client_factory.create(card)

        async def send() -> list[Any]:
            return [event async for event in client.send_message(text_request("who answers?"))]

        events = await within(send(), "SendMessage with forgeries on the inbox")
        assert events[0].task.id != "forged" and events[0].task.status.state == TaskState.TASK_STATE_COMPLETED
        assert made[0].rejected == 2
        await attacker.close()


async def test_forged_stream_frames_are_dropped(nats_url: str) -> None:
    async with serving(nats_url) as (nc, card):
        attacker = await nats.connect(nats_url)

        async def forge(msg: Msg) -> None:
            if msg.reply:  # a frame of another stream, and one with no sequence number: neither is this stream's
                await attacker.publish(msg.reply, FORGED_TASK + b"\n", headers={
                    "Agent-Stream": "f" * 32, "Agent-Seq": "0", "Agent-Kind": "json", "Agent-Ctl": "_INBOX.evil",
                    "Agent-Final": "1"})

        await attacker.subscribe(f"{PREFIX}.*", cb=forge)
        await subscribed(attacker)
        client = factory(nc, streaming=True).create(card)

        async def send() -> list[Any]:
            return [event async for event in client.send_message(text_request("streamed"))]

        events = await within(send(), "SendStreamingMessage with forged frames on the inbox")
        assert all(event.WhichOneof("payload") != "task" or event.task.id != "forged" for event in events)
        assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
        await attacker.close()
