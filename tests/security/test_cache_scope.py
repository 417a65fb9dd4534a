"""The result cache is scoped to the requester: an attacker (or just another requester) never gets another's answer.

Each test asserts that the attack fails and that the honest path (caching for the same requester, the shared
opt-in for pure functions) still works.
"""

from __future__ import annotations

from typing import Any

import nats
import orjson
import pytest

from agentcore import ConfigError, NATSAgent
from helpers import task_envelope
from nats_fixtures import eventually


def counting_per_requester(calls: list[str]) -> Any:
    async def handler(message: dict[str, Any]) -> dict[str, Any]:
        calls.append(message["source"]["id"])
        tenant = (message["context"]["metadata"] or {}).get("tenant")
        return {"for": message["source"]["id"], "tenant": tenant, "balance": f"balance-of-{message['source']['id']}-{tenant}"}

    return handler


async def test_bob_never_gets_alices_cached_result(make_agent: Any) -> None:
    calls: list[str] = []
    worker = await make_agent("worker", capabilities={"balance": counting_per_requester(calls)})
    alice: NATSAgent = await make_agent("alice")
    bob: NATSAgent = await make_agent("bob")
    for _ in range(10):
        assert (await alice.send_task("balance", {"account": "main"}))["for"] == "alice"
        assert (await bob.send_task("balance", {"account": "main"}))["for"] == "bob"  # the attack: same content
    # The honest path: each requester's repeats are answered from the cache.
    assert calls == ["alice", "bob"]
    metrics = worker.get_metrics()
    assert metrics["cache_hits"] == 18 and metrics["cache_misses"] == 2


async def test_tenants_of_one_requester_are_kept_apart(make_agent: Any) -> None:
    calls: list[str] = []
    await make_agent("worker", capabilities={"balance": counting_per_requester(calls)})
    gateway: NATSAgent = await make_agent("gateway")  # one agent asking on behalf of several tenants
    for _ in range(5):
        for tenant in ("acme", "globex"):
            answer = await gateway.send_task("balance", {"account": "main"}, metadata={"tenant": tenant})
            assert answer["tenant"] == tenant
    assert (await gateway.send_task("balance", {"account": "main"}))["tenant"] is None  # no tenant: its own entry
    assert len(calls) == 3


async def test_a_shared_capability_shares_results_between_requesters(make_agent: Any) -> None:
    calls: list[Any] = []

    async def square(message: dict[str, Any]) -> int:  # a pure function of its content
        calls.append(message["payload"]["content"])
        return int(message["payload"]["content"]) ** 2

    worker: NATSAgent = await make_agent("worker", start=False)
    worker.add_capability("square", square, cache="shared")
    await worker.astart()
    alice: NATSAgent = await make_agent("alice")
    bob: NATSAgent = await make_agent("bob")
    assert await alice.send_task("square", 7) == 49
    assert await bob.send_task("square", 7) == 49
    assert await bob.send_task("square", 7, metadata={"tenant": "t"}) == 49
    assert calls == [7]
    with pytest.raises(ConfigError):
        worker.add_capability("square", square, cache="everyone")  # True, False or "shared" only


async def test_a_message_nobody_waits_for_always_runs_its_handler(make_agent: Any, raw_nc: nats.NATS) -> None:
    calls: list[Any] = []

    async def record(message: dict[str, Any]) -> str:
        calls.append(message["id"])
        return "ok"

    worker = await make_agent("worker", capabilities={"record": record})
    client: NATSAgent = await make_agent("client")
    for _ in range(20):  # requests with the same content: the first runs, the rest are answered from the cache
        assert await client.send_task("record", {"event": "login"}) == "ok"
    assert len(calls) == 1
    # Fire-and-forget tasks and events with that same content, in the same requester's name: each one runs.
    for i in range(200):
        task = task_envelope(f"ff-{i}", {"event": "login"}, source="client", capability="record",
                             type="task" if i % 2 else "event")
        await raw_nc.publish(worker.topics.task("record"), orjson.dumps(task))
    await eventually(lambda: len(calls) == 201, what="every fire-and-forget message to run its handler")
    assert worker.get_metrics()["cache_hits"] == 19
