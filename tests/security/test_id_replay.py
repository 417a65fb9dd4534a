"""Ids carry no secret and grant nothing: an attacker (a plain nats-py client) replaying or pre-sending message ids.

Each test asserts that the attack fails and that the honest path still works.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import orjson
import pytest

from agentcore import DuplicateMessageError, NATSAgent
from agentcore.envelope import decode, raise_for_error
from helpers import task_bytes, task_envelope
from nats_fixtures import eventually, subscribed


def per_requester(message: dict[str, Any]) -> dict[str, Any]:
    """An answer meant for whoever asked (a secret for alice is alice's)."""
    return {"for": message["source"]["id"], "secret": f"secret-of-{message['source']['id']}",
            "asked": message["payload"]["content"]}


async def _watch(nc: nats.NATS, subject: str) -> tuple[list[dict[str, Any]], Any]:
    """Subscribe subject as a bystander (no queue group) and collect every envelope seen on it."""
    seen: list[dict[str, Any]] = []

    async def keep(msg: Any) -> None:
        seen.append(orjson.loads(msg.data))

    sub = await nc.subscribe(subject, cb=keep)
    await subscribed(nc)
    return seen, sub


async def test_a_replayed_id_with_the_attackers_reply_to_gets_no_result(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker = await make_agent("worker", capabilities={"secret": per_requester})
    victim: NATSAgent = await make_agent("victim")
    seen, _ = await _watch(raw_nc, "agents.test.task.secret.*")  # the attacker sees the victim's tasks go by
    inbox = raw_nc.new_inbox()
    stolen = await raw_nc.subscribe(inbox)
    for i in range(20):
        # The honest path: the victim's own answer (once with the cache on, once with it off for that request).
        metadata = {"cache": False} if i % 2 else None
        assert (await victim.send_task("secret", {"n": i}, metadata=metadata))["for"] == "victim"
        await eventually(lambda: any(m["payload"]["content"] == {"n": i} for m in seen), what="the bystander's copy")
        original = next(m for m in seen if m["payload"]["content"] == {"n": i})
        # The attack: the same id and source, the answer asked for on the attacker's inbox.
        replay = {**original, "replyTo": inbox}
        await raw_nc.publish(worker.topics.task("secret"), orjson.dumps(replay))
        answer = decode((await stolen.next_msg(timeout=5)).data)
        assert "secret" not in orjson.dumps(answer["payload"]["content"]).decode()
        with pytest.raises(DuplicateMessageError):
            raise_for_error(answer)
        # Asked on a NATS reply subject of the attacker's instead: the same refusal.
        direct = decode((await raw_nc.request(worker.topics.task("secret"), orjson.dumps(original), timeout=5)).data)
        with pytest.raises(DuplicateMessageError):
            raise_for_error(direct)
    metrics = worker.get_metrics()
    assert metrics["duplicates"] == 40 and "duplicates_replayed" not in metrics


async def test_a_retry_where_the_original_asked_is_still_replayed(make_agent: Any, raw_nc: nats.NATS) -> None:
    calls: list[Any] = []

    def once(message: dict[str, Any]) -> Any:
        calls.append(message["id"])
        return {"n": len(calls)}

    worker = await make_agent("worker", capabilities={"once": once})
    inbox = raw_nc.new_inbox()
    answers = await raw_nc.subscribe(inbox)
    envelope = orjson.dumps(task_envelope("retry-1", "x", source="client", capability="once", replyTo=inbox))
    await raw_nc.publish(worker.topics.task("once"), envelope)
    first = decode((await answers.next_msg(timeout=5)).data)
    await raw_nc.publish(worker.topics.task("once"), envelope)  # a client's retry (or JetStream's redelivery)
    second = decode((await answers.next_msg(timeout=5)).data)
    assert first["payload"]["content"] == second["payload"]["content"] == {"n": 1} and len(calls) == 1
    assert worker.get_metrics()["duplicates_replayed"] == 1


async def test_ids_of_the_past_do_not_tell_the_next_ones(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker = await make_agent("worker", capabilities={"secret": per_requester})
    victim: NATSAgent = await make_agent("victim")
    seen, _ = await _watch(raw_nc, "agents.test.task.secret.*")
    for i in range(5):
        await victim.send_task("secret", {"warmup": i})
    await eventually(lambda: len(seen) == 5, what="the bystander's copies")
    # The attack that worked on prefix-counter ids: pre-send the likely next ids as the victim, with poison.
    observed = [m["id"] for m in seen]
    guesses = set()
    for past in observed:
        value = int(past, 16) if all(c in "0123456789abcdef" for c in past) else None
        if value is not None:
            guesses.update(f"{value + k:032x}" for k in range(1, 60))
        prefix, _, counter = past.rpartition("-")
        if counter.isdigit():
            guesses.update(f"{prefix}-{int(counter) + k}" for k in range(1, 60))
    assert guesses
    for guess in guesses:
        poison = task_envelope(guess, {"poison": True}, source="victim", capability="secret")
        await raw_nc.publish(worker.topics.task("secret"), orjson.dumps(poison))
    await subscribed(raw_nc)
    # The honest path: 50 later requests, each answered with its own result.
    for i in range(50):
        assert await victim.send_task("secret", {"n": i}) == {"for": "victim", "secret": "secret-of-victim", "asked": {"n": i}}
    assert "duplicates" not in worker.get_metrics()


async def test_an_id_known_in_advance_poisons_nothing(make_agent: Any, raw_nc: nats.NATS, nats_url: str) -> None:
    # Ids no longer leak ahead, but no decision rests on one: suppose the attacker knew the victim's next id.
    worker = await make_agent("worker", capabilities={"secret": per_requester})
    victim = await nats.connect(nats_url)
    try:
        # (What the attacker gets back for a task sent in the victim's name is the self-declared source problem that
        # signed identities solve; here the point is what the victim gets.)
        poison = task_envelope("known-id", {"poison": True}, source="victim", capability="secret")
        await raw_nc.request(worker.topics.task("secret"), orjson.dumps(poison), timeout=5)
        honest = task_envelope("known-id", {"n": 1}, source="victim", capability="secret")
        answer = decode((await victim.request(worker.topics.task("secret"), orjson.dumps(honest), timeout=5)).data)
        with pytest.raises(DuplicateMessageError):
            raise_for_error(answer)  # refused, never the attacker's result
        honest["id"] = "fresh-id"  # the honest retry with a new id
        answer = decode((await victim.request(worker.topics.task("secret"), orjson.dumps(honest), timeout=5)).data)
        assert answer["payload"]["content"] == {"for": "victim", "secret": "secret-of-victim", "asked": {"n": 1}}
    finally:
        await victim.close()


async def test_large_answers_to_a_flood_of_ids_do_not_push_out_an_id_in_flight(make_agent: Any, raw_nc: nats.NATS,
                                                                               nats_url: str) -> None:
    """Kept answers have their own share of cache.duplicate_bytes: a stranger's large answers fill only that, and an
    honest id still in flight stays recorded (its retry does not run it twice) for cache.max_entries newer ids."""
    release = asyncio.Event()
    runs: list[str] = []

    async def slow(message: dict[str, Any]) -> str:
        runs.append(message["id"])
        await release.wait()
        return "done"

    worker = await make_agent("worker", capabilities={"slow": slow, "big": lambda m: "b" * 10_000},
                              cache__max_entries=64, cache__duplicate_bytes=64 * 4 * 56 + 40_000)  # 4 answers kept
    honest = await nats.connect(nats_url)
    try:
        inbox = honest.new_inbox()
        answers = await honest.subscribe(inbox)
        original = orjson.dumps(task_envelope("honest-1", "x", source="honest", capability="slow", replyTo=inbox))
        await honest.publish(worker.topics.task("slow"), original)
        await eventually(lambda: runs == ["honest-1"], what="the honest task to start")
        flood = raw_nc.new_inbox()
        flooded = await raw_nc.subscribe(flood)
        for i in range(60):  # fewer than cache.max_entries, each answered with 10 KB asked at the attacker's inbox
            await raw_nc.publish(worker.topics.task("big"), task_bytes(f"flood-{i}", i, source="mallory", capability="big"),
                                 reply=flood)
            await flooded.next_msg(timeout=5)
        assert worker.get_metrics()["duplicate_bytes"] <= 64 * 4 * 56 + 40_000
        await honest.publish(worker.topics.task("slow"), original)  # the honest retry, while the first still runs
        with pytest.raises(DuplicateMessageError):
            raise_for_error(decode((await answers.next_msg(timeout=5)).data))
        release.set()
        assert decode((await answers.next_msg(timeout=5)).data)["payload"]["content"] == "done"
        assert runs == ["honest-1"]  # ran once
    finally:
        await honest.close()
