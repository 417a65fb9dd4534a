"""Content-hash caching of task results and dropping of redelivered duplicates, against a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import orjson
import pytest

from agentcore import HandlerError, NATSAgent
from agentcore.core.caching import TaskCache
from helpers import FakeClock, task_bytes, task_envelope
from nats_fixtures import eventually


def counting(calls: list[Any]) -> Any:
    async def handler(message: dict[str, Any]) -> Any:
        calls.append(message["payload"]["content"])
        return {"n": len(calls)}

    return handler


async def test_cache_hit_skips_the_handler(make_agent: Any) -> None:
    calls: list[Any] = []
    worker = await make_agent(capabilities={"summarise": counting(calls)})
    client = await make_agent("client")
    first = await client.send_task("summarise", {"text": "hello", "lang": "en"})
    # Same content with the keys in another order: the canonical hash matches, the handler does not run.
    second = await client.send_task("summarise", {"lang": "en", "text": "hello"})
    assert first == second == {"n": 1}
    assert calls == [{"text": "hello", "lang": "en"}]
    third = await client.send_task("summarise", {"text": "other", "lang": "en"})
    assert third == {"n": 2}
    metrics = worker.get_metrics()
    assert metrics["cache_hits"] == 1 and metrics["cache_misses"] == 2
    assert metrics["messages_processed"] == 3


async def test_same_content_for_another_capability_is_not_a_hit(make_agent: Any) -> None:
    calls: list[Any] = []
    await make_agent(capabilities={"a": counting(calls), "b": counting(calls)})
    client = await make_agent("client")
    assert await client.send_task("a", "x") == {"n": 1}
    assert await client.send_task("b", "x") == {"n": 2}


async def test_ttl_expiry_runs_the_handler_again(make_agent: Any) -> None:
    calls: list[Any] = []
    worker = await make_agent(capabilities={"summarise": counting(calls)})
    clock = FakeClock()
    # INTERNAL: the result cache's clock can only be injected by replacing the dispatcher's cache
    worker._core.work.cache = TaskCache(10.0, 100, worker._core.metrics, clock)  # the injectable clock instead of waiting 10 s
    client = await make_agent("client")
    assert await client.send_task("summarise", "x") == {"n": 1}
    clock.advance(9.0)
    assert await client.send_task("summarise", "x") == {"n": 1}
    clock.advance(1.5)
    assert await client.send_task("summarise", "x") == {"n": 2}
    assert len(calls) == 2


async def test_per_message_opt_out(make_agent: Any) -> None:
    calls: list[Any] = []
    await make_agent(capabilities={"summarise": counting(calls)})
    client = await make_agent("client")
    assert await client.send_task("summarise", "x") == {"n": 1}
    assert await client.send_task("summarise", "x", metadata={"cache": False}) == {"n": 2}
    assert await client.send_task("summarise", "x") == {"n": 1}  # the cached result is still there for others


async def test_errors_are_never_cached(make_agent: Any) -> None:
    calls: list[Any] = []

    async def flaky(message: dict[str, Any]) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first time fails")
        return "ok"

    await make_agent(capabilities={"flaky": flaky})
    client = await make_agent("client")
    try:
        await client.send_task("flaky", "x")
    except HandlerError:
        pass
    else:
        raise AssertionError("the first call should fail")
    assert await client.send_task("flaky", "x") == "ok"
    assert await client.send_task("flaky", "x") == "ok"
    assert len(calls) == 2


async def test_disabled_cache_runs_every_time(make_agent: Any) -> None:
    calls: list[Any] = []
    worker = await make_agent(capabilities={"summarise": counting(calls)}, cache__enabled=False)
    client = await make_agent("client")
    assert [await client.send_task("summarise", "x") for _ in range(3)] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert "cache_hits" not in worker.get_metrics()
    assert not {"cache_misses", "duplicates"} & worker.get_metrics().keys()  # no cache at all: nothing looked up


async def test_max_entries_evicts_the_least_recently_used(make_agent: Any) -> None:
    calls: list[Any] = []
    await make_agent(capabilities={"s": counting(calls)}, cache__max_entries=2)
    client = await make_agent("client")
    for text in ("a", "b", "c"):
        await client.send_task("s", text)
    assert await client.send_task("s", "a") == {"n": 4}  # "a" was evicted by "c"
    assert await client.send_task("s", "c") == {"n": 3}


async def test_redelivered_duplicate_never_runs_the_handler_twice(make_agent: Any, raw_nc: nats.NATS) -> None:
    calls: list[Any] = []
    worker = await make_agent(capabilities={"s": counting(calls)})
    data = task_bytes("redelivered-1", "x", source="plain", capability="s", timeout_ms=None, timestamp=1e12,
                      context={"conversationId": None, "metadata": {"cache": False}})
    inbox = raw_nc.new_inbox()
    answers = await raw_nc.subscribe(inbox)
    await raw_nc.publish(worker.topics.task("s"), data, reply=inbox)
    assert orjson.loads((await answers.next_msg(timeout=5)).data)["payload"]["content"] == {"n": 1}
    # A redelivery nobody waits for is dropped; a retry that waits where the original did gets the first result
    # replayed. (One that asks elsewhere is refused: tests/security/test_id_replay.py.)
    await raw_nc.publish(worker.topics.task("s"), data)
    await raw_nc.publish(worker.topics.task("s"), data, reply=inbox)
    again = await answers.next_msg(timeout=5)
    assert orjson.loads(again.data)["payload"]["content"] == {"n": 1}
    assert orjson.loads(again.data)["correlationId"] == "redelivered-1"
    assert calls == ["x"]
    metrics = worker.get_metrics()
    assert metrics["duplicates"] == 2 and metrics["duplicates_replayed"] == 1


async def test_duplicate_of_a_message_in_flight_is_answered_not_dropped(make_agent: Any, raw_nc: nats.NATS) -> None:
    from agentcore.envelope import decode, raise_for_error
    from agentcore.errors import DuplicateMessageError

    gate = asyncio.Event()

    async def slow(message: dict[str, Any]) -> str:
        await gate.wait()
        return "done"

    worker = await make_agent(capabilities={"s": slow})
    envelope = task_envelope("twice", "x", source="plain", capability="s", timestamp=1e12)
    first = asyncio.ensure_future(raw_nc.request(worker.topics.task("s"), orjson.dumps(envelope), timeout=5))
    await eventually(lambda: worker.get_metrics()["in_flight"] == 1)
    second = await raw_nc.request(worker.topics.task("s"), orjson.dumps(envelope), timeout=5)
    with pytest.raises(DuplicateMessageError, match="is being handled"):
        raise_for_error(decode(second.data))
    gate.set()
    assert decode((await first).data)["payload"]["content"] == "done"


async def test_a_retry_after_a_failure_runs_again(make_agent: Any, raw_nc: nats.NATS) -> None:
    attempts: list[int] = []

    def flaky(message: dict[str, Any]) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("transient")
        return "ok"

    worker = await make_agent(capabilities={"s": flaky})
    envelope = task_bytes("retry-1", "x", source="plain", capability="s", timestamp=1e12)
    first = orjson.loads((await raw_nc.request(worker.topics.task("s"), envelope, timeout=5)).data)
    assert first["payload"]["error"]["code"] == "handler_error"
    second = orjson.loads((await raw_nc.request(worker.topics.task("s"), envelope, timeout=5)).data)
    assert second["payload"]["content"] == "ok" and len(attempts) == 2


async def test_capability_can_opt_out_of_the_result_cache(make_agent: Any) -> None:
    calls: list[Any] = []
    worker = await make_agent(start=False)
    worker.add_capability("roll", counting(calls), cache=False)
    await worker.astart()
    client = await make_agent("client")
    assert await client.send_task("roll", "same") == {"n": 1}
    assert await client.send_task("roll", "same") == {"n": 2}