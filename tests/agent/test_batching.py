"""Batch processing against a real nats-server: full and timeout flushes, results to each requester, the hook."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentcore import HandlerError, NATSAgent
from nats_fixtures import eventually


def pending_in_batch(worker: NATSAgent) -> int:
    """Messages taken but not yet flushed: with batching on and no flush yet, every task received is in the batch."""
    metrics = worker.get_metrics()
    return metrics["messages_received"] if not metrics.get("batches") else -1


class Batcher(NATSAgent):
    """Answers each task in a batch with its text upper-cased and records the batch sizes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sizes: list[int] = []
        self.add_capability("upper", self.never_called)

    async def never_called(self, message: dict[str, Any]) -> Any:
        raise AssertionError("batched tasks go to process_batch")

    async def process_batch(self, messages: list[dict[str, Any]]) -> list[Any]:
        self.sizes.append(len(messages))
        return [m["payload"]["content"].upper() for m in messages]


async def test_25_messages_make_batches_of_10_10_and_a_timeout_flush_of_5(make_agent: Any) -> None:
    worker = await make_agent(cls=Batcher, cache__enabled=False)
    # A deadline long enough that 25 local requests surely arrive before it, even on a loaded machine.
    worker.enable_batch_processing(batch_size=10, batch_timeout=1.0)
    client = await make_agent("client")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    results = await asyncio.gather(*(client.send_task("upper", f"m{i}") for i in range(25)))
    elapsed = loop.time() - t0
    assert results == [f"M{i}" for i in range(25)]
    assert worker.sizes == [10, 10, 5]
    assert elapsed >= 0.99  # the last five waited for the deadline
    metrics = worker.get_metrics()
    assert metrics["batches"] == 3 and metrics["batched_messages"] == 25
    assert metrics["batch_flush_full"] == 2 and metrics["batch_flush_timeout"] == 1
    assert metrics["batch_size_max"] == 10 and metrics["messages_processed"] == 25


async def test_default_process_batch_runs_each_handler(make_agent: Any) -> None:
    async def double(message: dict[str, Any]) -> Any:
        return message["payload"]["content"] * 2

    worker = await make_agent(capabilities={"double": double}, cache__enabled=False, agent__max_concurrency=2)
    worker.enable_batch_processing(batch_size=4, batch_timeout=5.0)
    client = await make_agent("client")
    assert await asyncio.gather(*(client.send_task("double", i) for i in range(8))) == [i * 2 for i in range(8)]
    assert worker.get_metrics()["batch_flush_full"] == 2


async def test_disable_flushes_what_is_pending(make_agent: Any) -> None:
    worker = await make_agent(cls=Batcher, cache__enabled=False)
    worker.enable_batch_processing(batch_size=10, batch_timeout=60.0)
    client = await make_agent("client")
    pending = [asyncio.ensure_future(client.send_task("upper", f"m{i}")) for i in range(3)]
    await eventually(lambda: pending_in_batch(worker) == 3, what="three pending messages")
    worker.disable_batch_processing()
    assert await asyncio.gather(*pending) == ["M0", "M1", "M2"]
    assert worker.sizes == [3] and worker.get_metrics()["batch_flush_disable"] == 1
    assert not worker.batch_processing
    # Batching off: the handler runs per message again.
    with pytest.raises(HandlerError):
        await client.send_task("upper", "x")


async def test_defaults_come_from_config_and_control_is_never_batched(make_agent: Any) -> None:
    worker = await make_agent(cls=Batcher, nats__batch_size=3, nats__batch_timeout=60.0)
    worker.enable_batch_processing()
    metrics = worker.get_metrics()  # the batch settings in force
    assert metrics["batch_size_limit"] == 3 and metrics["batch_timeout"] == 60.0
    client = await make_agent("client")
    assert (await client.control(worker.agent_id, "ping"))["pong"] is True
    assert worker.get_metrics().get("batches", 0) == 0


async def test_a_failing_batch_answers_every_requester_with_an_error(make_agent: Any) -> None:
    class Broken(Batcher):
        def process_batch(self, messages: list[dict[str, Any]]) -> list[Any]:  # a plain function works too
            raise ValueError("bad batch")

    worker = await make_agent(cls=Broken, cache__enabled=False)
    worker.enable_batch_processing(batch_size=2, batch_timeout=60.0)
    client = await make_agent("client")
    results = await asyncio.gather(*(client.send_task("upper", i) for i in range(2)), return_exceptions=True)
    assert all(isinstance(r, HandlerError) and "bad batch" in str(r) for r in results)


async def test_a_clean_stop_processes_the_pending_batch(make_agent: Any) -> None:
    worker = await make_agent(cls=Batcher, cache__enabled=False)
    worker.enable_batch_processing(batch_size=10, batch_timeout=60.0)
    client = await make_agent("client")
    pending = [asyncio.ensure_future(client.send_task("upper", f"m{i}")) for i in range(3)]
    await eventually(lambda: pending_in_batch(worker) == 3, what="three pending messages")
    await worker.astop()
    assert await asyncio.gather(*pending) == ["M0", "M1", "M2"]
    assert worker.sizes == [3] and worker.get_metrics()["batch_flush_stop"] == 1
    assert worker.status == "stopped"


async def test_a_clean_stop_runs_the_handlers_of_a_pending_default_batch(make_agent: Any) -> None:
    running = 0
    most = 0

    async def slow_double(message: dict[str, Any]) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)  # suspend, so the handlers could overlap
        running -= 1
        return message["payload"]["content"] * 2

    worker = await make_agent(capabilities={"double": slow_double}, cache__enabled=False, agent__max_concurrency=2)
    worker.enable_batch_processing(batch_size=10, batch_timeout=60.0)
    client = await make_agent("client")
    pending = [asyncio.ensure_future(client.send_task("double", i)) for i in range(7)]
    await eventually(lambda: pending_in_batch(worker) == 7, what="seven pending messages")
    await worker.astop()
    assert await asyncio.gather(*pending) == [i * 2 for i in range(7)]
    assert most <= 2 and worker.get_metrics()["messages_processed"] == 7


async def test_a_bad_batch_answers_every_requester_and_retries_run_again(make_agent: Any) -> None:
    from agentcore import RemoteError

    class Miscounting(NATSAgent):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.add_capability("upper", self.never_called)
            self.calls = 0

        async def never_called(self, message: dict[str, Any]) -> Any:
            raise AssertionError("batched tasks go to process_batch")

        async def process_batch(self, messages: list[dict[str, Any]]) -> list[Any]:
            self.calls += 1
            if self.calls == 1:
                return ["only one"]  # one result for two messages: every requester must hear of it
            for m in messages:  # publish_result works from inside process_batch too
                self.publish_result(m["id"], m["payload"]["content"].upper())
            return [None] * len(messages)

    worker = await make_agent(cls=Miscounting, cache__enabled=True)
    worker.enable_batch_processing(batch_size=2, batch_timeout=5.0)
    client = await make_agent("client")
    first = await asyncio.gather(*(client.send_task("upper", t, timeout=5) for t in ("a", "b")), return_exceptions=True)
    assert all(isinstance(e, RemoteError) and "1 results for 2 messages" in str(e) for e in first)
    assert sorted(await asyncio.gather(*(client.send_task("upper", t, timeout=5) for t in ("a", "b")))) == ["A", "B"]


async def test_a_replay_of_a_batched_task_answers_what_was_sent(make_agent: Any, raw_nc: Any) -> None:
    """process_batch's result is kept for a retry as the answer it was sent as: a change to the object afterwards
    changes no replay."""
    import orjson

    from helpers import task_bytes

    shared: dict[str, Any] = {"calls": []}

    class Remembering(NATSAgent):
        async def process_batch(self, messages: list[dict[str, Any]]) -> list[Any]:
            shared["calls"].extend(m["payload"]["content"] for m in messages)
            return [shared for _ in messages]  # the same object: each later batch's extend shows in it

    worker = await make_agent(cls=Remembering, capabilities={"r": lambda message: None})
    worker.enable_batch_processing(batch_size=1, batch_timeout=60.0)
    inbox = raw_nc.new_inbox()
    answers = await raw_nc.subscribe(inbox)
    data = task_bytes("batched-1", "a", source="plain", capability="r")
    await raw_nc.publish(worker.topics.task("r"), data, reply=inbox)
    assert orjson.loads((await answers.next_msg(timeout=5)).data)["payload"]["content"] == {"calls": ["a"]}
    await raw_nc.publish(worker.topics.task("r"), task_bytes("batched-2", "b", source="plain", capability="r"),
                         reply=inbox)
    assert orjson.loads((await answers.next_msg(timeout=5)).data)["payload"]["content"] == {"calls": ["a", "b"]}
    await raw_nc.publish(worker.topics.task("r"), data, reply=inbox)  # a retry of batched-1: its answer replayed
    assert orjson.loads((await answers.next_msg(timeout=5)).data)["payload"]["content"] == {"calls": ["a"]}
    assert worker.get_metrics()["duplicates_replayed"] == 1
