"""Kept results, task status and claim-checked tasks against a stranger with full JetStream access.

The attacker is a plain nats-py client that may use the JetStream API (list and read every bucket, write
entries, put objects, publish into the task stream). It knows task ids (the status bucket's keys are task
ids) but did not read the tasks themselves (NATS permissions keep it off the task subjects and inboxes; see
docs/security.md). Each test asserts that the attack fails and that the honest path still works.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

import nats
import nats.js.errors
import orjson
import pytest

from agentcore import NATSAgent, PersistenceError, RequestTimeoutError
from agentcore.envelope import decode, encode
from agentcore.server import NATSServer
from helpers import task_envelope
from nats_fixtures import eventually, subscribed, within

JS = {"jetstream__enabled": True, "jetstream__pull_expires": 0.3}
SECRET = "the launch codes are 0000"


@pytest.fixture
def nats_server() -> Iterator[NATSServer]:
    with NATSServer(jetstream=True) as server:
        yield server


async def _kept_task(make_agent) -> tuple[NATSAgent, NATSAgent, str]:
    worker = await make_agent("worker", capabilities={"echo": lambda m: m["payload"]["content"]}, **JS)
    client = await make_agent("client", **JS)
    reply = await client.request_message(client.topics.task("echo"), SECRET, timeout=10)
    return worker, client, reply["correlationId"]


async def _entries(js: Any, bucket: str) -> dict[str, bytes]:
    """Every live entry of a bucket, read from its stream's subjects.

    Not `kv.keys()`: nats-py's watcher behind it can signal "no more keys" before it hands over an entry already
    delivered to it, and so now and then reports an empty bucket that is not empty.
    """
    kv, prefix = await js.key_value(bucket), f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + ">")
    entries = {}
    for subject in info.state.subjects or {}:
        try:
            entries[subject[len(prefix):]] = (await kv.get(subject[len(prefix):])).value
        except nats.js.errors.KeyDeletedError:
            pass
    return entries


async def test_a_stranger_who_knows_the_task_id_cannot_read_or_find_the_kept_result(make_agent, raw_nc) -> None:
    _, client, task_id = await _kept_task(make_agent)
    js = raw_nc.jetstream()
    status_bucket, results_bucket = "AGENTS_TEST_STATUS", "AGENTS_TEST_RESULTS"

    async def written() -> bool:  # the answer goes out first; its status and kept result are written after it
        return task_id in await _entries(js, status_bucket) and len(await _entries(js, results_bucket)) == 1

    await eventually(written, what="the task's status and kept result written")
    status = await _entries(js, status_bucket)
    assert task_id in status  # ids are no secret: the status bucket is keyed by them
    assert SECRET.encode() not in status[task_id]
    results = await _entries(js, results_bucket)
    assert len(results) == 1 and task_id not in results  # the entry's key tells nobody which task it answers
    assert not any(SECRET.encode() in value or task_id.encode() in value for value in results.values())  # sealed
    stranger = await make_agent("stranger", **JS)
    with pytest.raises(PersistenceError, match="remembers"):
        await stranger.result(task_id, timeout=1)
    assert await client.result(task_id, timeout=5) == SECRET  # the requester still reads it


async def test_forged_kept_results_are_not_taken(make_agent, raw_nc) -> None:
    _, client, task_id = await _kept_task(make_agent)
    js = raw_nc.jetstream()
    kv = await js.key_value("AGENTS_TEST_RESULTS")

    async def kept() -> bool:  # the answer goes out first and the result is kept after it: forge over the kept one
        return len(await _entries(js, "AGENTS_TEST_RESULTS")) == 1

    await eventually(kept, what="the task's kept result written")
    forged = encode({**task_envelope("f1", "forged"), "type": "result", "correlationId": task_id,
                     "source": {"id": "worker", "type": "agent"}})
    for key in list(await _entries(js, "AGENTS_TEST_RESULTS")) + [task_id]:
        await kv.put(key, b"S" + forged)  # plain, where sealed is expected; and under the id itself
    before = client.get_metrics()["replies_rejected"]
    with pytest.raises(RequestTimeoutError):
        await client.result(task_id, timeout=0.5)  # overwritten: lost (a denial of service), never the forgery
    assert client.get_metrics()["replies_rejected"] > before
    assert await client.send_task("echo", "still fine", timeout=10) == "still fine"


async def test_a_forged_kept_notice_neither_ends_nor_answers_a_request(make_agent, raw_nc) -> None:
    release = asyncio.Event()

    async def slow(message: dict[str, Any]) -> Any:
        await release.wait()
        return "genuine"

    await make_agent("worker", capabilities={"slow": slow}, **JS)
    client = await make_agent("client", **JS)
    seen: asyncio.Queue[Any] = asyncio.Queue()
    await raw_nc.subscribe("agents.test.task.>", cb=seen.put)  # this attacker reads the task subjects too
    await subscribed(raw_nc)
    waiting = asyncio.ensure_future(client.send_task("slow", 1, timeout=30))
    task = decode((await within(seen.get(), "the stored task to go by")).data)
    notice = {**task_envelope("n1", None), "type": "result", "correlationId": task["id"],
              "source": {"id": "worker", "type": "agent"}, "payload": {"content": None, "kept": True}}
    await raw_nc.publish(task["replyTo"], orjson.dumps(notice))
    await raw_nc.flush()
    await eventually(lambda: client.get_metrics().get("kept_notices") == 1, what="the notice to be looked into")
    assert not waiting.done()
    release.set()
    assert await within(waiting, "the genuine answer") == "genuine"


async def test_a_claim_whose_object_does_not_match_is_refused(make_agent, raw_nc) -> None:
    ran: list[Any] = []
    worker = await make_agent("worker", capabilities={"echo": lambda m: ran.append(m) or "ran"}, **JS)
    js = raw_nc.jetstream()
    objects = await js.object_store("AGENTS_TEST_OBJECTS")
    honest = encode(task_envelope("t-honest", "honest"))
    swapped = encode(task_envelope("t-honest", "swapped in by the stranger"))
    digest = hashlib.sha256(honest).hexdigest()
    await objects.put(digest, swapped)  # the name claims the honest bytes, the object holds others
    inbox = raw_nc.new_inbox()
    answers = await raw_nc.subscribe(inbox)
    await subscribed(raw_nc)
    stub = {**task_envelope("t-honest", None), "replyTo": inbox}
    await js.publish("agents.test.task.echo.default", encode(stub),
                     headers={"Nats-Msg-Id": "t-honest", "Agent-Claim": f"{digest} {len(honest)}"})
    refusal = decode((await answers.next_msg(timeout=10)).data)
    assert refusal["payload"]["error"]["code"] == "invalid_message"
    assert worker.get_metrics()["claims_refused"] == 1 and not ran
    # A claim larger than the worker takes is refused before anything is fetched.
    await js.publish("agents.test.task.echo.default", encode({**stub, "id": "t-big"}),
                     headers={"Nats-Msg-Id": "t-big", "Agent-Claim": f"{digest} {10 ** 12}"})
    refusal = decode((await answers.next_msg(timeout=10)).data)
    assert "max_request_bytes" in refusal["payload"]["error"]["message"] or "bytes" in refusal["payload"]["error"]["message"]
    assert not ran
    client = await make_agent("client", **JS)
    assert await client.send_task("echo", "x", timeout=10) == "ran"  # the honest path still works


async def test_a_signed_claim_checked_task_and_kept_result_pass_with_signatures_required(make_agent) -> None:
    """The stub carries the signature of the whole task: checked once the object is fetched; the result is kept."""
    import os

    import nkeys

    from agentcore.transport.identity import Signer

    worker_seed, client_seed = (nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode() for _ in range(2))

    def public(seed: str) -> str:
        return Signer(seed.encode()).public_key

    big = "s" * (2 * 1024 * 1024)
    worker = await make_agent("worker", capabilities={"echo": lambda m: m["payload"]["content"] + "!"},
                              identity__seed=worker_seed, identity__trusted={"client": public(client_seed)},
                              identity__require=True, **JS)
    client = await make_agent("client", identity__seed=client_seed, identity__trusted={"worker": public(worker_seed)},
                              identity__require=True, **JS)
    assert await within(client.send_task("echo", "small", timeout=10), "a small signed answer") == "small!"
    reply = await within(client.request_message(client.topics.task("echo"), big, timeout=30), "the signed answer")
    assert reply["payload"]["content"] == big + "!"
    assert worker.get_metrics()["claims_fetched"] == 1 and client.get_metrics()["results_recovered"] == 1
    for agent in (worker, client):
        assert agent.get_metrics().get("identity_refused", 0) == 0
