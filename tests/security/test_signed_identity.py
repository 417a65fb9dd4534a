"""Signed identities: every message an agent sends is signed with its nkey; receivers that trust keys check them.

The attacker is a plain nats-py client: it sends valid signed messages (its own key, or a stolen one), unsigned
ones, messages signed with the wrong key, tampered bodies, replays and stale signatures. Each test asserts the
attack is refused with IdentityError (and counted) and that the honest path still works.
"""

from __future__ import annotations

import os
import time
from typing import Any

import nats
import nkeys
import orjson
import pytest

from agentcore import AgentConfig, IdentityError, NATSAgent
from agentcore.envelope import decode, raise_for_error
from agentcore.errors import ConfigError
from agentcore.transport.identity import H_SIGNATURE, H_TIMESTAMP, Signer, Verifier
from agentcore.metrics import AgentMetrics
from helpers import task_envelope
from nats_fixtures import subscribed


def new_seed() -> str:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


def public(seed: str) -> str:
    return Signer(seed.encode()).public_key


BOSS, WORKER, MALLORY = new_seed(), new_seed(), new_seed()


async def signed_worker(make_agent: Any, *, require: bool = True, **extra: Any) -> NATSAgent:
    agent: NATSAgent = await make_agent(
        "worker", capabilities={"work": lambda m: f"done {m['payload']['content']}"},
        identity__seed=WORKER, identity__trusted={"boss": public(BOSS)}, identity__require=require, **extra)
    return agent


async def ask(nc: nats.NATS, agent: NATSAgent, envelope: dict[str, Any], headers: dict[str, str] | None = None,
              data: bytes | None = None) -> dict[str, Any]:
    subject = agent.topics.task("work")
    reply = await nc.request(subject, data if data is not None else orjson.dumps(envelope), timeout=5, headers=headers)
    return decode(reply.data)


def reason_of(answer: dict[str, Any]) -> str:
    with pytest.raises(IdentityError) as info:
        raise_for_error(answer)
    assert info.value.code == "identity"
    return str(info.value.details["reason"])


async def test_a_signed_agent_is_answered_and_its_answer_is_verified(make_agent: Any) -> None:
    worker = await signed_worker(make_agent)
    boss: NATSAgent = await make_agent("boss", identity__seed=BOSS, identity__trusted={"worker": public(WORKER)},
                                       identity__require=True)
    for i in range(5):
        assert await boss.send_task("work", i) == f"done {i}"
    assert "identity_refused" not in worker.get_metrics() and "identity_refused" not in boss.get_metrics()
    assert worker.get_metrics()["identity_replay_entries"] >= 5


async def test_unsigned_is_refused_when_required_and_accepted_when_not(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker = await signed_worker(make_agent)
    assert reason_of(await ask(raw_nc, worker, task_envelope("u-1", 1, source="boss"))) == "unsigned"
    assert worker.get_metrics()["identity_unsigned"] == 1
    await worker.astop()
    lenient = await signed_worker(make_agent, require=False)
    answer = await ask(raw_nc, lenient, task_envelope("u-2", 2, source="someone"))
    assert answer["payload"]["content"] == "done 2"


async def test_a_message_claiming_an_id_must_carry_that_ids_key(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker = await signed_worker(make_agent)
    mallory = Signer(MALLORY.encode())
    subject = worker.topics.task("work")
    # Mallory signs well, with her own key, but claims to be boss: wrong key for that id.
    data = orjson.dumps(task_envelope("w-1", 1, source="boss"))
    msg = await raw_nc.request(subject, data, timeout=5, headers=mallory.headers(subject, "", data))
    assert reason_of(decode(msg.data)) == "wrong_key"
    # As herself she is not trusted at all.
    inbox = raw_nc.new_inbox()
    sub = await raw_nc.subscribe(inbox)
    data = orjson.dumps(task_envelope("w-2", 2, source="mallory"))
    await raw_nc.publish(subject, data, reply=inbox, headers=mallory.headers(subject, inbox, data))
    assert reason_of(decode((await sub.next_msg(timeout=5)).data)) == "untrusted"
    assert worker.get_metrics()["identity_refused"] == 2


async def test_tampered_reaimed_replayed_and_stale_are_refused(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker = await signed_worker(make_agent)
    boss = Signer(BOSS.encode())  # boss's own client, for the valid case; the attacks reuse what it sent
    subject = worker.topics.task("work")
    inbox = raw_nc.new_inbox()
    sub = await raw_nc.subscribe(inbox)

    async def send(data: bytes, headers: dict[str, str], reply: str = inbox) -> dict[str, Any]:
        await raw_nc.publish(subject, data, reply=reply, headers=headers)
        return decode((await sub.next_msg(timeout=5)).data)

    data = orjson.dumps(task_envelope("t-1", 1, source="boss"))
    headers = boss.headers(subject, inbox, data)
    assert (await send(data, headers))["payload"]["content"] == "done 1"  # the valid signed path
    assert reason_of(await send(data, headers)) == "replayed"  # the same bytes again
    tampered = data.replace(b'"content":1', b'"content":9')
    assert reason_of(await send(tampered, headers)) == "bad_signature"
    other_inbox = raw_nc.new_inbox()  # re-aimed: the answer asked somewhere else than signed
    other = await raw_nc.subscribe(other_inbox)
    fresh = orjson.dumps(task_envelope("t-2", 2, source="boss"))
    await raw_nc.publish(subject, fresh, reply=other_inbox, headers=boss.headers(subject, inbox, fresh))
    assert reason_of(decode((await other.next_msg(timeout=5)).data)) == "bad_signature"
    stale_data = orjson.dumps(task_envelope("t-3", 3, source="boss"))
    stale = _signed_at(boss, subject, inbox, stale_data, time.time_ns() - 120 * 10**9)
    assert reason_of(await send(stale_data, stale)) == "stale"
    garbage = dict(headers, **{H_SIGNATURE: "not-base64!!"})
    assert reason_of(await send(orjson.dumps(task_envelope("t-4", 4, source="boss")), garbage)) == "bad_signature"
    metrics = worker.get_metrics()
    assert metrics["identity_replayed"] == 1 and metrics["identity_stale"] == 1 and metrics["identity_bad_signature"] == 3
    assert metrics["messages_processed"] == 1


def _signed_at(signer: Signer, subject: str, reply: str, data: bytes, stamp: int) -> dict[str, str]:
    import base64

    from agentcore.transport.identity import H_SENDER, signed_bytes

    headers = {H_SENDER: signer.public_key, H_TIMESTAMP: str(stamp)}
    signature = signer._sign(signed_bytes(subject, reply, headers, data))
    headers[H_SIGNATURE] = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    return headers


async def test_a_forged_reply_is_refused_by_the_requester(make_agent: Any, raw_nc: nats.NATS) -> None:
    # A bystander answers boss's request first, claiming to be the worker, unsigned: boss refuses the reply.
    boss: NATSAgent = await make_agent("boss", identity__seed=BOSS, identity__trusted={"worker": public(WORKER)},
                                       identity__require=True)

    async def forge(msg: Any) -> None:
        request = decode(msg.data)
        forged = task_envelope("f-1", "forged", source="worker", type="result", correlationId=request["id"])
        await raw_nc.publish(msg.reply, orjson.dumps(forged))

    await raw_nc.subscribe(boss.topics.task("work"), cb=forge)
    await subscribed(raw_nc)
    with pytest.raises(IdentityError) as info:  # the forged reply is dropped; at the timeout its refusal is the reason
        await boss.send_task("work", 1, timeout=5)
    assert info.value.details == {"reason": "unsigned"}


async def test_control_allow_holds_once_ids_are_signed(make_agent: Any, raw_nc: nats.NATS) -> None:
    await signed_worker(make_agent, control__allow=["boss"])
    boss: NATSAgent = await make_agent("boss", identity__seed=BOSS, identity__trusted={"worker": public(WORKER)})
    assert await boss.control("worker", "pause") == {"status": "paused"}
    assert await boss.control("worker", "resume") == {"status": "running"}
    # A stranger claiming boss's id, unsigned: refused before control looks at the id.
    envelope = task_envelope("c-1", {"command": "shutdown"}, source="boss", type="query", capability="control")
    answer = decode((await raw_nc.request(boss.topics.control("worker"), orjson.dumps(envelope), timeout=5)).data)
    assert reason_of(answer) == "unsigned"


def test_config_and_verifier_edges(tmp_path: Any) -> None:
    seed_file = tmp_path / "worker.nk"
    seed_file.write_text(WORKER + "\n")
    config = AgentConfig({"identity.seed": str(seed_file), "identity.trusted": [public(BOSS)],
                          "identity.replay_bytes": 1000}, environ={})
    # The seed is a secret: neither it nor any seed-like text shows (a random public key may contain "SU" itself).
    assert WORKER not in repr(config) and "SU" not in repr(config).replace(public(BOSS), "")
    with pytest.raises(ConfigError):
        AgentConfig({"identity.trusted": ["not-a-key"]}, environ={})
    with pytest.raises(ConfigError):
        Signer(b"SUBOGUS")
    # A replay set smaller than the window holds: what it evicted early cannot come back (the floor).
    metrics = AgentMetrics()
    verifier = Verifier("worker", config, metrics, None)
    boss = Signer(BOSS.encode())
    sent = []
    for i in range(20):
        data = orjson.dumps(task_envelope(f"r-{i}", i))
        headers = boss.headers("s", "", data)
        assert verifier.check("s", "", headers, data, "anyone") is None
        sent.append((headers, data))
    assert verifier.gauges()["identity_replay_bytes"] <= 1000
    assert metrics.counters["identity_replay_evicted"] > 0
    assert all(verifier.check("s", "", h, d, "anyone") == "replayed" for h, d in sent)
