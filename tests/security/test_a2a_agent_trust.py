"""Signed identities end to end through NATSAgent: two replicas of one agent, configured with ``identity.seed``,
``identity.trusted`` and ``identity.require``, serve A2A with ``agent.serve_a2a`` over one JetStream bucket; a2a-sdk
clients reach them through agentcore's NatsTransport, signing their requests and verifying the answers. A task
belongs to its creator (another identity finds nothing), unsigned requests are refused, CancelTask reaching the
replica that does not run the task is forwarded on its owner's behalf (``a2a.delegates``), and forged answers on
the client's inbox are dropped."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import nkeys
import orjson
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import (
    AgentCard, CancelTaskRequest, GetTaskRequest, ListTasksRequest, SubscribeToTaskRequest, TaskState,
)
from a2a.utils.errors import TaskNotFoundError
from a2a_support import Gate, started, text_request
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats_fixtures import eventually, subscribed, within

from agentcore import AgentConfig, NATSAgent
from agentcore.a2a import BINDING_URI, NatsTransport
from agentcore.a2a.binding import H_REQUEST, A2APermissionError
from agentcore.metrics import AgentMetrics
from agentcore.server import NATSServer
from agentcore.transport.identity import Signer, Verifier


def _seed() -> str:
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)).decode()


REPLICA_A, REPLICA_B, ALICE, BOB, MALLORY = (_seed() for _ in range(5))
KEYS = {name: Signer(seed.encode()).public_key for name, seed in
        (("alice", ALICE), ("bob", BOB))}
# Both replicas are the agent "worker" (each with its own key); each delegates to the other for forwarded cancels.
TRUSTED = {**KEYS, "worker": [Signer(REPLICA_A.encode()).public_key, Signer(REPLICA_B.encode()).public_key]}


@pytest.fixture
def js_url() -> Iterator[str]:
    with NATSServer(jetstream=True) as server:
        yield server.url


def _config(url: str, seed: str, signed: bool = True) -> dict[str, Any]:
    config = {"nats.servers": [url], "nats.environment": "test", "agent.heartbeat_interval": 60.0,
              "agent.duplicate_id": "allow", "jetstream.enabled": True}
    if signed:
        config.update({"identity.seed": seed, "identity.trusted": TRUSTED, "identity.require": True,
                       "a2a.delegates": ["worker"]})
    return config


@asynccontextmanager
async def replicas(url: str, gate: Gate, other: Gate | None = None,
                   signed: bool = True) -> AsyncIterator[tuple[NATSAgent, NATSAgent]]:
    """Two started replicas of the (signed) agent "worker" serving gate (on a) and other (on b) as the A2A agent "echo"."""
    a = NATSAgent("worker", config=_config(url, REPLICA_A, signed))
    b = NATSAgent("worker", config=_config(url, REPLICA_B, signed))
    a.serve_a2a(gate, name="echo")
    b.serve_a2a(other or Gate(), name="echo")
    await a.astart()
    try:
        await b.astart()
        try:
            yield a, b
        finally:
            await b.astop()
    finally:
        await a.astop()


def client(nc: NATSClient, card: AgentCard, seed: str | None, *, streaming: bool = False,
           made: list[NatsTransport] | None = None, verify: bool = True) -> Any:
    """An unmodified a2a-sdk client whose NATS transport signs with seed (None: unsigned) and (verify) takes only
    answers signed by the agent "worker"."""
    me = Signer(seed.encode()) if seed else None
    check = (Verifier("client", AgentConfig({"identity.trusted": TRUSTED, "identity.require": True}), AgentMetrics(), me)
             if verify else None)
    factory = ClientFactory(ClientConfig(supported_protocol_bindings=[BINDING_URI], streaming=streaming))

    def producer(agent_card: Any, url: str, _config: ClientConfig) -> NatsTransport:
        transport = NatsTransport(nc, agent_card, url, timeout=10.0, signer=me, verifier=check, agent_id="worker")
        if made is not None:
            made.append(transport)
        return transport

    factory.register(BINDING_URI, producer)
    return factory.create(card)


async def test_signed_replicas_scope_tasks_refuse_unsigned_and_forward_cancel_for_the_owner(js_url: str) -> None:
    gate, on_b = Gate(), Gate()
    async with replicas(js_url, gate, on_b) as (a, b):
        nc = await nats.connect(js_url)
        try:
            card = a.a2a_card()
            alice, bob = client(nc, card, ALICE), client(nc, card, BOB)
            await b.pause()  # the task runs on a
            task_id = await within(started(alice, "alice's"), "alice's SendMessage on a")
            await within(gate.started.wait(), "the executor running on a")
            await b.resume()
            await a.pause()  # from now on b takes the queue group's requests: a's tasks are reached by forwarding

            got = await within(alice.get_task(GetTaskRequest(id=task_id)), "alice's GetTask on b")
            assert got.id == task_id and got.status.state == TaskState.TASK_STATE_WORKING
            # Another signed identity finds nothing: not the task, not in a list, not to cancel, not to follow.
            with pytest.raises(TaskNotFoundError):
                await within(bob.get_task(GetTaskRequest(id=task_id)), "bob's GetTask")
            with pytest.raises(TaskNotFoundError):
                await within(bob.cancel_task(CancelTaskRequest(id=task_id)), "bob's CancelTask")
            assert list((await within(bob.list_tasks(ListTasksRequest()), "bob's ListTasks")).tasks) == []
            with pytest.raises(TaskNotFoundError):
                async for _ in client(nc, card, BOB, streaming=True).subscribe(SubscribeToTaskRequest(id=task_id)):
                    pass
            assert gate.cancel_calls == 0
            # Unsigned (identity.require) and signed by an untrusted key: refused, typed, with the reason.
            for seed, reason in ((None, "unsigned"), (MALLORY, "untrusted")):
                with pytest.raises(A2APermissionError) as refused:
                    await within(client(nc, card, seed).get_task(GetTaskRequest(id=task_id)), f"GetTask {reason}")
                assert refused.value.data == {"reason": reason}

            # alice's cancel reaches b, which forwards it to a (signed by b, on alice's behalf): a's executor cancels.
            cancelled = await within(alice.cancel_task(CancelTaskRequest(id=task_id)), "alice's CancelTask via b")
            assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
            await within(gate.cancelled_in_execute.wait(), "the executor on a cancelled")
            assert gate.cancel_calls == 1 and on_b.cancel_calls == 0  # forwarded to a, not cancelled by b's store
            metrics = b.get_metrics()
            assert metrics["a2a_identity_unsigned"] >= 1 and metrics["a2a_identity_untrusted"] >= 1
        finally:
            gate.release.set()
            await nc.close()


async def test_forged_answers_on_a_signed_clients_inbox_are_dropped(js_url: str) -> None:
    """A stranger who sees alice's requests answers them first, unsigned and signed by bob (trusted, but not the
    agent): both are dropped where nats-py reads them, and the agent's signed answer is taken."""
    gate = Gate(artifact="done")
    async with replicas(js_url, gate, gate) as (a, _b):  # whichever replica takes it, the forger releases it
        nc, attacker = await nats.connect(js_url), await nats.connect(js_url)
        forger = Signer(BOB.encode())

        async def forge(msg: Msg) -> None:
            if msg.reply:
                request_id = (msg.headers or {}).get(H_REQUEST, "")
                await attacker.publish(msg.reply, b'{"task": {"id": "forged"}}', headers={H_REQUEST: request_id})
                await attacker.publish(msg.reply, b'{"task": {"id": "forged"}}', headers=forger.headers(
                    msg.reply, "", b'{"task": {"id": "forged"}}', {H_REQUEST: request_id}))
                # The agent answers once the client has dropped both: deliveries from two connections have no order
                # the test may rely on.
                await eventually(lambda: made and made[0].rejected == 2, what="both forgeries dropped")
                gate.release.set()

        await attacker.subscribe("agents.test.a2a-protocol.echo.SendMessage", cb=forge)
        await subscribed(attacker)
        made: list[NatsTransport] = []
        try:
            alice = client(nc, a.a2a_card(), ALICE, made=made)
            async def send() -> list[Any]:
                return [event async for event in alice.send_message(text_request("alice's"))]

            events = await within(send(), "alice's SendMessage with forgeries on her inbox")
            assert events[0].task.id != "forged" and events[0].task.status.state == TaskState.TASK_STATE_COMPLETED
            assert made[0].rejected == 2
        finally:
            gate.release.set()
            await nc.close()
            await attacker.close()


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
async def test_a_remote_reader_drops_events_a_stranger_publishes_on_the_event_stream(js_url: str, signed: bool) -> None:
    """A stranger who may publish on PREFIX.events.> appends a malformed event and a claim on another task's object
    to alice's task, and (signed identities only: without them, whoever may publish there writes the task's events)
    a forged final event, unsigned and signed by bob: alice, following the task from the replica that does not run
    it, gets only the genuine events, ending with the genuine completion."""
    gate = Gate(artifact="genuine")
    seed = ALICE if signed else None
    async with replicas(js_url, gate, signed=signed) as (a, b):
        nc, stranger = await nats.connect(js_url), await nats.connect(js_url)
        try:
            card = a.a2a_card()
            await b.pause()
            task_id = await within(started(client(nc, card, seed, verify=signed), "alice's"), "alice's SendMessage on a")
            await within(gate.started.wait(), "the executor running on a")
            await b.resume()
            await a.pause()  # b answers SubscribeToTask, reading a's events from the stream
            events: list[Any] = []

            async def follow() -> None:
                following = client(nc, card, seed, streaming=True, verify=signed)
                async for event in following.subscribe(SubscribeToTaskRequest(id=task_id)):
                    events.append(event)
                    if len(events) == 1:  # the task (the snapshot) came: now the stranger appends
                        await forge()

            async def forge() -> None:
                token = base64.b32encode(task_id.encode()).decode().rstrip("=").lower()
                subject = f"agents.test.a2a-protocol.echo.events.{token}"
                final = orjson.dumps({"statusUpdate": {"taskId": task_id, "status": {"state": "TASK_STATE_FAILED",
                                                                                     "message": {"messageId": "forged"}}}})
                headers = {"A2A-Task-Version": "999999"}
                if signed:
                    await stranger.publish(subject, final, headers=headers)
                    await stranger.publish(subject, final, headers=Signer(BOB.encode()).headers(subject, "", final, headers))
                await stranger.publish(subject, b"{garbage", headers=headers)
                claim = orjson.dumps({"object": "other.task", "size": 10, "sha256": "0"})
                await stranger.publish(subject, claim, headers={**headers, "A2A-Claim": "1"})
                await stranger.flush()
                gate.release.set()

            await within(follow(), "alice following her task through b with forgeries on the stream")
            assert "forged" not in str(events)
            assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
            assert any(e.HasField("artifact_update") for e in events)
            assert b.get_metrics()["a2a_events_dropped"] == (4 if signed else 2)
        finally:
            gate.release.set()
            await nc.close()
            await stranger.close()
