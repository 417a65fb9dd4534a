"""Signed identities on the A2A binding: requests are signed by the client transport and verified by the agent;
each task belongs to the identity that created it, and another identity finds nothing (TaskNotFoundError, spec
§13.1) whether it asks with its own valid key, with none, with an untrusted key, or replays, re-aims or relabels a
captured request. ``Agent-On-Behalf-Of`` is honoured only from a delegate's signature (a gateway, a replica
forwarding CancelTask). The attacker is a plain nats-py client, or an honest client with the wrong key.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import nats
import nkeys
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.client.client import ClientCallContext
from a2a.server.agent_execution import AgentExecutor
from a2a.types.a2a_pb2 import (
    AgentInterface, CancelTaskRequest, GetTaskRequest, ListTasksRequest, SubscribeToTaskRequest, TaskState,
)
from a2a.utils.errors import TaskNotFoundError
from a2a_support import PREFIX, Gate, Held, Replica, a2a_server, card, started, text_request
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats_fixtures import eventually, subscribed, within
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection

from agentcore import AgentConfig
from agentcore.a2a import BINDING_URI, A2ANatsServer, NatsTransport, url_for
from agentcore.a2a.binding import H_ON_BEHALF_OF, H_REQUEST, H_VERSION, A2APermissionError, error_from_body
from agentcore.a2a.bridge import bridge_routes
from agentcore.metrics import AgentMetrics
from agentcore.server import NATSServer
from agentcore.transport.identity import Signer, Verifier


def new_seed() -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


ALICE, BOB, MALLORY, GATEWAY, AGENT, REPLICA_A, REPLICA_B = (new_seed() for _ in range(7))
TRUSTED = {"agent": Signer(AGENT).public_key, "alice": Signer(ALICE).public_key, "bob": Signer(BOB).public_key, "gateway": Signer(GATEWAY).public_key,
           "replica-a": Signer(REPLICA_A).public_key, "replica-b": Signer(REPLICA_B).public_key}


def verifier(me: str, own: Signer, *, require: bool = True) -> Verifier:
    config = AgentConfig({"identity.trusted": {**TRUSTED, me: own.public_key}, "identity.require": require})
    return Verifier(me, config, AgentMetrics(), own)


def client_for(nc: NATSClient, url: str, seed: bytes | None, **options: Any) -> Any:
    """An unmodified a2a-sdk client whose NATS transport signs with seed (None: unsigned)."""
    made = ClientFactory(ClientConfig(supported_protocol_bindings=[BINDING_URI], streaming=options.pop("streaming", False)))
    made.register(BINDING_URI, lambda agent_card, iface_url, _config: NatsTransport(
        nc, agent_card, iface_url, timeout=10.0, signer=Signer(seed) if seed else None, **options))
    return made.create(card(url))


def signed_agent(url: str, executor: AgentExecutor, *, require: bool = True) -> AbstractAsyncContextManager[A2ANatsServer]:
    """The agent, verifying with the trusted keys above; the gateway is its one delegate."""
    own = Signer(AGENT)
    return a2a_server(url, executor, signer=own, verifier=verifier("agent", own, require=require), delegates=("gateway",))


async def raw_request(nc: NATSClient, operation: str, body: bytes, headers: dict[str, str]) -> Msg:
    return await nc.request(f"{PREFIX}.{operation}", body, timeout=10.0,
                            headers={H_VERSION: "1.0", H_REQUEST: "a" * 32, **headers})


async def test_a_task_is_seen_only_by_the_identity_that_created_it(nats_url: str) -> None:
    gate = Gate()
    async with signed_agent(nats_url, gate, require=False):
        nc = await nats.connect(nats_url)
        try:
            alice, bob = client_for(nc, nats_url, ALICE), client_for(nc, nats_url, BOB)
            task_id = await within(started(alice, "alice's"), "alice's SendMessage")
            await within(gate.started.wait(), "the task running")
            assert (await within(alice.get_task(GetTaskRequest(id=task_id)), "alice's GetTask")).id == task_id

            # Another valid identity, and an unsigned (anonymous) one, find nothing: not even that it exists.
            for other in (bob, client_for(nc, nats_url, None)):
                with pytest.raises(TaskNotFoundError):
                    await within(other.get_task(GetTaskRequest(id=task_id)), "GetTask by another identity")
                with pytest.raises(TaskNotFoundError):
                    await within(other.cancel_task(CancelTaskRequest(id=task_id)), "CancelTask by another identity")
                page = await within(other.list_tasks(ListTasksRequest()), "ListTasks by another identity")
                assert list(page.tasks) == []
            bob_streaming = client_for(nc, nats_url, BOB, streaming=True)
            with pytest.raises(TaskNotFoundError):
                async for _ in bob_streaming.subscribe(SubscribeToTaskRequest(id=task_id)):
                    pass
            assert gate.cancel_calls == 0 and not gate.cancelled_in_execute.is_set()
            assert [t.id for t in (await alice.list_tasks(ListTasksRequest())).tasks] == [task_id]
        finally:
            gate.release.set()
            await nc.close()


async def test_forged_replayed_and_relabelled_requests_are_refused(nats_url: str) -> None:
    gate = Gate()
    async with signed_agent(nats_url, gate) as server:
        nc = await nats.connect(nats_url)
        sniffer = await nats.connect(nats_url)
        captured: list[Msg] = []

        async def capture(msg: Msg) -> None:
            captured.append(msg)

        await sniffer.subscribe(f"{PREFIX}.GetTask", cb=capture)
        await subscribed(sniffer)
        try:
            alice = client_for(nc, nats_url, ALICE)
            task_id = await within(started(alice, "alice's"), "alice's SendMessage")
            await alice.get_task(GetTaskRequest(id=task_id))
            assert captured, "the sniffer saw alice's GetTask"
            original = captured[0]
            body = original.data
            cases: list[tuple[str, dict[str, str], str]] = [
                ("GetTask", {}, "unsigned"),
                ("GetTask", Signer(MALLORY).headers(f"{PREFIX}.GetTask", "", body, {H_VERSION: "1.0"}), "untrusted"),
                # alice's own signed request, answered to the attacker's inbox: the signature covers the reply subject
                ("GetTask", dict(original.headers or {}), "bad_signature"),
                # re-aimed at another operation: the signature covers the subject
                ("CancelTask", dict(original.headers or {}), "bad_signature"),
            ]
            for operation, headers, reason in cases:
                answer = await raw_request(sniffer, operation, body, headers)
                error = error_from_body(answer.data)
                assert isinstance(error, A2APermissionError) and error.data == {"reason": reason}, (operation, reason)
            # replayed exactly (same reply subject, the answer would go to alice's inbox): refused as seen before
            await sniffer.publish(original.subject, body, reply=original.reply, headers=dict(original.headers or {}))
            # bob signs validly but claims to act for alice: only delegates may
            bob_as_alice = client_for(nc, nats_url, BOB)
            with pytest.raises(A2APermissionError) as refused:
                await within(bob_as_alice.get_task(GetTaskRequest(id=task_id), context=ClientCallContext(
                    service_parameters={H_ON_BEHALF_OF: "alice"})), "bob claiming to be alice")
            assert refused.value.data == {"reason": "not_a_delegate"}
            # the gateway, a delegate, acting for alice sees her task; for itself it sees none
            gateway = client_for(nc, nats_url, GATEWAY)
            got = await within(gateway.get_task(GetTaskRequest(id=task_id), context=ClientCallContext(
                service_parameters={H_ON_BEHALF_OF: "alice"})), "the gateway on behalf of alice")
            assert got.id == task_id
            with pytest.raises(TaskNotFoundError):
                await within(gateway.get_task(GetTaskRequest(id=task_id)), "the gateway for itself")

            metrics = server.metrics()
            for reason in ("unsigned", "untrusted", "bad_signature", "replayed", "not_a_delegate"):
                assert metrics.get(f"a2a_identity_{reason}", 0) >= 1, (reason, metrics)
            assert gate.cancel_calls == 0
        finally:
            gate.release.set()
            await nc.close()
            await sniffer.close()


async def test_answers_are_taken_only_signed_by_the_agent(nats_url: str) -> None:
    """A client verifying answers drops a forgery signed by another trusted key (bob's) and takes the agent's."""
    gate = Gate()
    async with signed_agent(nats_url, gate, require=False):
        nc = await nats.connect(nats_url)
        attacker = await nats.connect(nats_url)
        forger = Signer(BOB)

        async def forge(msg: Msg) -> None:
            if msg.reply:  # on the requester's inbox before the agent answers (it answers once the gate opens)
                headers = forger.headers(msg.reply, "", b"{}", {H_REQUEST: (msg.headers or {}).get(H_REQUEST, "")})
                await attacker.publish(msg.reply, b"{}", headers=headers)
                # The agent answers once the client has dropped the forgery: deliveries from two connections have
                # no order the test may rely on.
                await eventually(lambda: made and made[0].rejected == 1, what="the forgery dropped")
                gate.release.set()

        await attacker.subscribe(f"{PREFIX}.SendMessage", cb=forge)
        await subscribed(attacker)
        made: list[NatsTransport] = []
        factory = ClientFactory(ClientConfig(supported_protocol_bindings=[BINDING_URI], streaming=False))

        def producer(agent_card: Any, url: str, _config: ClientConfig) -> NatsTransport:
            made.append(NatsTransport(nc, agent_card, url, timeout=10.0, signer=Signer(ALICE),
                                      verifier=verifier("alice", Signer(ALICE)), agent_id="agent"))
            return made[-1]

        factory.register(BINDING_URI, producer)
        try:
            alice = factory.create(card(nats_url))

            async def send() -> list[Any]:
                return [event async for event in alice.send_message(text_request("alice's"))]

            events = await within(send(), "a blocking SendMessage with a signed forgery on the inbox")
            assert events[0].task.status.state == TaskState.TASK_STATE_COMPLETED
            assert made[0].rejected == 1  # signed by a trusted key, but not the agent's
        finally:
            gate.release.set()
            await nc.close()
            await attacker.close()


@pytest.fixture
def js_url() -> Iterator[str]:
    with NATSServer(jetstream=True) as server:
        yield server.url


def _signing(name: str, seed: bytes) -> dict[str, Any]:
    own = Signer(seed)
    return {"signer": own, "verifier": verifier(f"replica-{name}", own), "delegates": ("replica-a", "replica-b")}


async def test_cancel_forwarded_between_replicas_keeps_the_owner(js_url: str) -> None:
    """CancelTask reaching replica B for alice's task on A: bob's finds nothing and cancels nothing; alice's is
    forwarded by B (signed by B, on behalf of alice) and cancels the executor on A; a stranger publishing on A's
    own subject, unsigned or naming alice without being a delegate, is refused."""
    gate = Gate()
    a = await Replica.start(js_url, gate, "a", **_signing("a", REPLICA_A))
    nc = await nats.connect(js_url)
    b: Replica | None = None
    try:
        alice, bob = client_for(nc, js_url, ALICE), client_for(nc, js_url, BOB)
        task_id = await within(started(alice, "alice's"), "SendMessage on A")
        await within(gate.started.wait(), "the executor running on A")
        await a.server.leave_queue()
        b = await Replica.start(js_url, Gate(), "b", **_signing("b", REPLICA_B))

        with pytest.raises(TaskNotFoundError):
            await within(bob.cancel_task(CancelTaskRequest(id=task_id)), "bob's CancelTask on B")
        for headers in ({}, Signer(BOB).headers(f"{PREFIX}.replica.a.CancelTask", "", b"", {H_ON_BEHALF_OF: "alice"})):
            answer = await nc.request(f"{PREFIX}.replica.a.CancelTask", f'{{"id": "{task_id}"}}'.encode(), timeout=10.0,
                                      headers={H_VERSION: "1.0", H_REQUEST: "b" * 32, **headers})
            assert isinstance(error_from_body(answer.data), A2APermissionError)
        assert gate.cancel_calls == 0 and not gate.cancelled_in_execute.is_set()

        cancelled = await within(alice.cancel_task(CancelTaskRequest(id=task_id)), "alice's CancelTask on B")
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        await within(gate.cancelled_in_execute.wait(), "CancelledError in A's executor")
        assert gate.cancel_calls == 1
    finally:
        gate.release.set()
        for replica in ([b] if b else []) + [a]:
            await replica.close()
        await nc.close()


class HeaderAuth(AuthenticationBackend):
    """The HTTP side's authentication (a stand-in for OAuth, API keys...): the user named in X-Test-User."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-test-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


async def test_the_bridge_acts_for_its_http_users_and_nobody_else_may(nats_url: str) -> None:
    """The HTTP bridge, a delegate, signs as the gateway and names the HTTP user in Agent-On-Behalf-Of: alice over
    HTTP and alice over NATS (her signed identity) share her tasks; bob over HTTP finds none of them; an HTTP
    client cannot smuggle Agent-On-Behalf-Of through the bridge."""
    gate = Gate()
    async with signed_agent(nats_url, gate):
        nc = await nats.connect(nats_url)
        bridge_card = card(nats_url)
        bridge_card.supported_interfaces.append(AgentInterface(url="http://bridge.test/", protocol_binding="JSONRPC",
                                                               protocol_version="1.0"))
        forwarding = NatsTransport(nc, None, url_for(nats_url, PREFIX), timeout=10.0, signer=Signer(GATEWAY))
        app = Starlette(routes=bridge_routes(bridge_card, forwarding),
                        middleware=[Middleware(AuthenticationMiddleware, backend=HeaderAuth())])

        async def over_http(user: str, extra: dict[str, str] | None = None) -> Any:
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge.test",
                                     headers={"X-Test-User": user, **(extra or {})})
            made = ClientFactory(ClientConfig(supported_protocol_bindings=["JSONRPC"], httpx_client=http,
                                              streaming=False))
            return await made.create_from_url("http://bridge.test")

        try:
            alice_http = await over_http("alice")
            task_id = await within(started(alice_http, "alice over HTTP"), "SendMessage through the bridge")
            alice_nats = client_for(nc, nats_url, ALICE)
            assert (await within(alice_nats.get_task(GetTaskRequest(id=task_id)), "alice over NATS")).id == task_id
            for bob in (await over_http("bob"), await over_http("bob", {H_ON_BEHALF_OF: "alice"})):
                with pytest.raises(TaskNotFoundError):
                    await within(bob.get_task(GetTaskRequest(id=task_id)), "bob through the bridge")
            with pytest.raises(TaskNotFoundError):  # continuing alice's task by its id is refused alike
                request = text_request("bob continues alice's task")
                request.message.task_id = task_id
                await within(client_for(nc, nats_url, BOB).send_message(request).__anext__(), "bob's SendMessage")
        finally:
            gate.release.set()
            await nc.close()


async def test_stream_frames_are_taken_only_signed_by_the_agent(nats_url: str) -> None:
    """A frame of the right stream signed by another trusted key (bob's), sent before the agent's first frame,
    binds nothing: the stream is the agent's, signed and verified frame by frame."""
    held = Held()
    async with signed_agent(nats_url, held):
        nc = await nats.connect(nats_url)
        attacker = await nats.connect(nats_url)
        forger = Signer(BOB)

        async def forge(msg: Msg) -> None:
            if msg.reply:
                body = b'{"message": {"messageId": "forged", "role": "ROLE_AGENT", "parts": [{"text": "forged"}]}}\n'
                frame = {"Agent-Stream": (msg.headers or {}).get(H_REQUEST, ""), "Agent-Seq": "0", "Agent-Kind": "json",
                         "Agent-Ctl": attacker.new_inbox(), "Agent-Final": "1"}
                await attacker.publish(msg.reply, body, headers=forger.headers(msg.reply, "", body, frame))
                await attacker.flush()
                held.release.set()

        await attacker.subscribe(f"{PREFIX}.SendStreamingMessage", cb=forge)
        await subscribed(attacker)
        try:
            alice = client_for(nc, nats_url, ALICE, streaming=True, verifier=verifier("alice", Signer(ALICE)),
                               agent_id="agent")

            async def send() -> list[Any]:
                return [event async for event in alice.send_message(text_request("streamed, signed"))]

            events = await within(send(), "a signed stream with a signed forged frame first")
            assert all(event.WhichOneof("payload") != "message" for event in events)
            assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
        finally:
            held.release.set()
            await nc.close()
            await attacker.close()
