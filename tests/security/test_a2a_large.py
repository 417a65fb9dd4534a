"""Bodies beyond the server's max_payload on the A2A binding (docs/a2a-binding.md §10.1): a large SendMessage is
offered and pulled by the agent, a large answer is offered and pulled by the client, a large stream event spans
frames; each side bounds what it takes in bytes with a typed error (A2APayloadTooLargeError), and the agent pulls
at most so many bodies per requester (A2AOverloadedError). A plain nats-py client offers bodies the agent must
refuse: beyond its bound, from a subject that is not a reply inbox, without a digest or with a swapped body, and
offers it never serves.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any

import nats
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import TaskState
from a2a.utils.errors import InvalidRequestError
from a2a_support import PREFIX, Echo, a2a_server, card, text_request
from nats.aio.client import Client as NATSClient
from nats_fixtures import eventually, subscribed, within

from agentcore.a2a import BINDING_URI, A2ANatsServer, NatsTransport
from agentcore.a2a.large import Offer
from agentcore.a2a.binding import (
    H_DIGEST, H_PULL, H_REQUEST, H_SIZE, H_VERSION, A2AOverloadedError, A2APayloadTooLargeError, error_from_body,
)

MAX_PAYLOAD = 1024 * 1024  # nats-server's default
BIG = "x" * (2 * MAX_PAYLOAD + 1000)  # the request, the answer (history + artifact) and the artifact event exceed it


def agent(url: str, **options: Any) -> AbstractAsyncContextManager[A2ANatsServer]:
    return a2a_server(url, Echo(), **{"idle_timeout": 5.0, **options})


def client_for(nc: NATSClient, url: str, *, streaming: bool, **options: Any) -> Any:
    made = ClientFactory(ClientConfig(supported_protocol_bindings=[BINDING_URI], streaming=streaming))
    made.register(BINDING_URI, lambda agent_card, iface_url, _config: NatsTransport(
        nc, agent_card, iface_url, timeout=10.0, **options))
    return made.create(card(url))


def artifact_text(events: list[Any]) -> str:
    for event in events:
        which = event.WhichOneof("payload")
        if which == "task" and event.task.artifacts:
            return str(event.task.artifacts[0].parts[0].text)
        if which == "artifact_update":
            return str(event.artifact_update.artifact.parts[0].text)
    raise AssertionError("no artifact")


@pytest.mark.parametrize("streaming", [False, True], ids=["SendMessage", "SendStreamingMessage"])
async def test_messages_beyond_max_payload_travel_whole(nats_url: str, streaming: bool) -> None:
    async with agent(nats_url) as server:
        nc = await nats.connect(nats_url)
        try:
            client = client_for(nc, nats_url, streaming=streaming)

            async def send() -> list[Any]:
                return [event async for event in client.send_message(text_request(BIG))]

            events = await within(send(), "a message twice max_payload, and its answer")
            assert artifact_text(events) == BIG
            last = events[-1]
            state = last.task.status.state if last.WhichOneof("payload") == "task" else last.status_update.status.state
            assert state == TaskState.TASK_STATE_COMPLETED
            assert server.metrics()["a2a_pulled"] == 1 and server.metrics()["pulls_active"] == 0
        finally:
            await nc.close()


async def test_each_side_bounds_what_it_takes(nats_url: str) -> None:
    async with agent(nats_url, max_request_bytes=2 * MAX_PAYLOAD) as server:
        nc = await nats.connect(nats_url)
        try:
            with pytest.raises(A2APayloadTooLargeError):  # the agent refuses before pulling a byte
                await within(client_for(nc, nats_url, streaming=False).send_message(text_request(BIG)).__anext__(),
                             "a request beyond the agent's bound")
            assert server.metrics()["a2a_too_large"] == 1
            small_answers = client_for(nc, nats_url, streaming=False, max_answer_bytes=MAX_PAYLOAD)
            with pytest.raises(A2APayloadTooLargeError):  # the answer is offered, the client refuses to pull it
                await within(small_answers.send_message(text_request("y" * MAX_PAYLOAD)).__anext__(),
                             "an answer beyond the client's bound")
            small_events = client_for(nc, nats_url, streaming=True, max_answer_bytes=MAX_PAYLOAD)
            with pytest.raises(A2APayloadTooLargeError):  # one stream event spanning frames beyond the bound
                async for _ in small_events.send_message(text_request("y" * (MAX_PAYLOAD + MAX_PAYLOAD // 2))):
                    pass
        finally:
            await nc.close()


async def test_forged_offers_are_refused(nats_url: str) -> None:
    async with agent(nats_url, pulls_per_sender=1) as server:  # idle_timeout 5 s: the stalled pull lasts that long
        attacker = await nats.connect(nats_url)
        try:
            victim_hits: list[Any] = []

            async def hit(msg: Any) -> None:
                victim_hits.append(msg)

            await attacker.subscribe(f"{PREFIX}.SendMessage.victim", cb=hit)
            await subscribed(attacker)

            async def offer(pull: str, size: int, digest: str | None = "SHA-256=AAAA") -> Any:
                headers = {H_VERSION: "1.0", H_REQUEST: "c" * 32, H_PULL: pull, H_SIZE: str(size)}
                if digest is not None:
                    headers[H_DIGEST] = digest
                answer = await attacker.request(f"{PREFIX}.SendMessage", b"", timeout=10.0, headers=headers)
                return error_from_body(answer.data)

            huge = await within(offer(attacker.new_inbox(), 10**12), "an offer of a terabyte")
            assert isinstance(huge, A2APayloadTooLargeError)
            # an offer naming a subject that is no reply inbox: the agent must not publish there
            elsewhere = await within(offer(f"{PREFIX}.SendMessage.victim", 10), "an offer pulled from elsewhere")
            assert isinstance(elsewhere, InvalidRequestError) and elsewhere.data == {"reason": "bad_offer"}
            no_digest = await within(offer(attacker.new_inbox(), 10, None), "an offer without a digest")
            assert isinstance(no_digest, InvalidRequestError) and no_digest.data == {"reason": "bad_offer"}
            # an offer served with another body than its digest names (a swapped body)
            swapped = Offer(attacker, "d" * 32, b'{"message": {"messageId": "m", "parts": [{"text": "evil"}]}}', 5.0)
            headers = await swapped.open({H_VERSION: "1.0", H_REQUEST: "d" * 32})
            headers[H_DIGEST] = "SHA-256=" + "A" * 43 + "="
            swapped.start()
            answer = await within(attacker.request(f"{PREFIX}.SendMessage", b"", timeout=10.0, headers=headers),
                                  "an offer whose body does not match its digest")
            await swapped.close()
            mismatch = error_from_body(answer.data)
            assert isinstance(mismatch, InvalidRequestError) and mismatch.data == {"reason": "digest_mismatch"}
            # offers nobody serves: the first holds the requester's one pull until the idle timeout, the second is
            # refused at once; the first then fails with the reason
            first = asyncio.ensure_future(offer(attacker.new_inbox(), 10))
            await eventually(lambda: server.metrics()["pulls_active"] == 1, what="the first pull in progress")
            second = await within(offer(attacker.new_inbox(), 10), "a second concurrent offer")
            assert isinstance(second, A2AOverloadedError)
            stalled = await within(first, "the stalled pull failing")
            assert isinstance(stalled, InvalidRequestError) and stalled.data == {"reason": "pull_failed"}
            assert server.metrics()["pulls_active"] == 0 and server.metrics()["pulls_refused"] == 1
            # the honest path still works
            client = client_for(attacker, nats_url, streaming=False)
            events = await within(client.send_message(text_request(BIG)).__anext__(), "an honest large message")
            assert artifact_text([events]) == BIG
            assert victim_hits == []
        finally:
            await attacker.close()
