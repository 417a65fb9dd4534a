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

async def test_task_cache_bounds_and_sweep() -> None:
    """The TaskCache alone, on a fake clock: bytes bounds, the NOT_KEPT marker, and the sweep timer's life."""
    from agentcore.core.caching import DONE, IN_FLIGHT, MISS, NOT_KEPT
    from agentcore.metrics import AgentMetrics

    clock, metrics = FakeClock(), AgentMetrics()
    cache = TaskCache(10.0, 100, metrics, clock, max_bytes=1000, duplicate_bytes=10_000, replay_max_bytes=500)
    cache.put(1, "a" * 600, 600)
    cache.put(2, "b" * 600, 600)  # the first goes: 1,200 bytes is over max_bytes
    assert cache.get(1) is MISS and cache.get(2) == "b" * 600
    cache.put(3, "c" * 2000, 2000)  # larger than the bound alone: not kept, counted
    assert cache.get(3) is MISS and metrics.counters["cache_too_large"] == 1
    scope = ("subscription", "")
    small, large, done = ({"id": name, "source": {"id": "sender"}} for name in ("small", "large", "done"))
    assert cache.seen(scope, small) is MISS and cache.seen(scope, small) is IN_FLIGHT
    cache.finish(scope, small, {"ok": 1}, "_INBOX.a")  # its size is measured when not given
    cache.seen(scope, large)
    cache.finish(scope, large, "x" * 1000, "_INBOX.a", 1000)
    assert cache.seen(scope, small) == ("_INBOX.a", {"ok": 1})
    assert cache.seen(scope, large) == ("_INBOX.a", NOT_KEPT)
    assert metrics.counters["duplicates_not_kept"] == 1
    cache.seen(scope, done)
    cache.finish(scope, done, DONE)
    gauges = cache.gauges()
    assert gauges["cache_bytes"] == 600 and gauges["duplicate_entries"] == 3 and gauges["duplicate_kept"] == 2
    assert gauges["duplicate_bytes"] <= gauges["duplicate_max_bytes"] == 10_000
    assert cache._timer is not None  # armed by the first put, on this loop
    clock.advance(10.0)
    assert cache.sweep() == 3 and cache.gauges()["cache_bytes"] == 0 and cache.gauges()["duplicate_kept"] == 0
    cache.stop()
    assert cache._timer is None


def test_cache_keys_are_seeded_with_a_secret_of_each_cache() -> None:
    """Nobody outside can compute a key: not by hashing the task as the cache does, nor from another agent's keys."""
    import xxhash

    from agentcore.metrics import AgentMetrics

    content = {"text": "hello"}
    message = {"id": "m1", "source": {"id": "alice", "type": "agent"}, "payload": {"content": content}}
    one, other = (TaskCache(10.0, 100, AgentMetrics()) for _ in range(2))
    assert one.key("p", message) == one.key("p", message) != other.key("p", message)
    unkeyed = xxhash.xxh3_64_intdigest(orjson.dumps(("p", "alice", None, content), option=orjson.OPT_SORT_KEYS))
    assert one.key("p", message) != unkeyed and one.key("p", message, True) != other.key("p", message, True)


async def test_a_hit_and_a_replay_answer_what_the_first_answer_carried(make_agent: Any, raw_nc: nats.NATS) -> None:
    """A handler that changes the object it returned, after returning it, changes no kept answer."""
    shared: dict[str, Any] = {"calls": []}

    async def remembering(message: dict[str, Any]) -> Any:
        shared["calls"].append(message["payload"]["content"])
        return shared  # the same object every time: each call's append shows in what was returned before

    worker = await make_agent(capabilities={"r": remembering})
    client = await make_agent("client")
    assert await client.send_task("r", "a") == {"calls": ["a"]}
    assert await client.send_task("r", "b") == {"calls": ["a", "b"]}
    assert await client.send_task("r", "a") == {"calls": ["a"]}  # a hit: what its answer carried, not the object now
    data = task_bytes("kept-1", "c", source="plain", capability="r", context={"conversationId": None,
                                                                           "metadata": {"cache": False}})
    inbox = raw_nc.new_inbox()
    answers = await raw_nc.subscribe(inbox)
    await raw_nc.publish(worker.topics.task("r"), data, reply=inbox)
    assert orjson.loads((await answers.next_msg(timeout=5)).data)["payload"]["content"] == {"calls": ["a", "b", "c"]}
    assert await client.send_task("r", "d") == {"calls": ["a", "b", "c", "d"]}
    await raw_nc.publish(worker.topics.task("r"), data, reply=inbox)  # a retry of kept-1: its answer replayed
    assert orjson.loads((await answers.next_msg(timeout=5)).data)["payload"]["content"] == {"calls": ["a", "b", "c"]}
    assert worker.get_metrics()["duplicates_replayed"] == 1


async def test_kept_results_keep_no_object_alive(make_agent: Any, raw_nc: nats.NATS) -> None:
    """Results kept for hits and replays are their JSON: no result object outlives its request (or the collector's
    young collections come twice as often: every kept object counts toward the next one)."""
    import gc
    import weakref

    class Result(dict):  # type: ignore[type-arg]  # a dict orjson writes as one, that a weak reference can follow
        __slots__ = ("__weakref__",)

    alive: list[weakref.ref[Result]] = []

    async def fresh(message: dict[str, Any]) -> Any:
        result = Result(echo=message["payload"]["content"])
        alive.append(weakref.ref(result))
        return result

    worker = await make_agent(capabilities={"f": fresh})
    client = await make_agent("client")
    for i in range(20):
        assert await client.send_task("f", i) == {"echo": i}  # each kept by the result cache and for a replay
    assert await client.send_task("f", 3) == {"echo": 3}  # a hit
    assert len(alive) == 20 and worker.get_metrics()["cache_hits"] == 1
    gc.collect()
    assert [ref for ref in alive if ref() is not None] == []


def _echo_sync(message: dict[str, Any]) -> Any:
    return {"echo": message["payload"]["content"]}


async def _echo_async(message: dict[str, Any]) -> Any:
    return {"echo": message["payload"]["content"]}


@pytest.mark.parametrize("echo", [_echo_async, _echo_sync], ids=["plain", "handle"])  # both of the dispatcher's paths
async def test_a_hit_keeps_for_a_replay_no_more_than_it_counts(make_agent: Any, raw_nc: nats.NATS, echo: Any) -> None:
    """A stranger's hit must not leave the first answer's envelope in the duplicate store counted as its own answer:
    that envelope carries the first request's conversationId (any size), so cache.replay_max_bytes and
    cache.duplicate_bytes would bound nothing."""
    worker = await make_agent(capabilities={"e": echo}, cache__replay_max_bytes=4096)
    cache = worker._core.work.cache
    finished: list[tuple[Any, int | None]] = []
    finish = cache.finish

    def recording(scope: Any, message: dict[str, Any], result: Any = None, reply: Any = None, size: Any = None,
                  now: Any = None) -> None:
        finished.append((result, size))
        finish(scope, message, result, reply, size, now)

    cache.finish = recording
    inbox = raw_nc.new_inbox()
    answers = await raw_nc.subscribe(inbox)
    subject = worker.topics.task("e")
    # The first request carries a 50 kB conversationId: its answer (the envelope the cache keeps) does too.
    await raw_nc.publish(subject, task_bytes("big-1", "x", capability="e", conversation="c" * 50_000), reply=inbox)
    assert len((await answers.next_msg(timeout=5)).data) > 50_000
    # The same content again, with a short conversationId: a hit, whose answer is a few hundred bytes.
    await raw_nc.publish(subject, task_bytes("small-1", "x", capability="e"), reply=inbox)
    small = (await answers.next_msg(timeout=5)).data
    assert orjson.loads(small)["payload"]["content"] == {"echo": "x"} and len(small) < 4096
    assert worker.get_metrics()["cache_hits"] == 1
    await eventually(lambda: len(finished) == 2)
    kept = [(len(result), size) for result, size in finished if isinstance(result, bytes)]
    assert kept and all(length <= size for length, size in kept), kept  # what is held is what is counted
    # and a retry of the hit is still answered with what it was sent
    await raw_nc.publish(subject, task_bytes("small-1", "x", capability="e"), reply=inbox)
    assert orjson.loads((await answers.next_msg(timeout=5)).data)["payload"]["content"] == {"echo": "x"}
    assert worker.get_metrics()["duplicates_replayed"] == 1
