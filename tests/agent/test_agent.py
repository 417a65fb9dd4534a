"""NATSAgent against a real nats-server: the guide's example, wire format, queue groups, errors, priorities."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Dict

import nats
import orjson
import pytest

from agentcore import (
    AgentConfig,
    AgentCoreError,
    HandlerError,
    MessageExpiredError,
    NATSAgent,
    NoRespondersError,
    PayloadTooLargeError,
    RemoteError,
    RequestTimeoutError,
)
from agentcore.envelope import new_message
from agentcore.errors import InvalidMessageError
from helpers import Deferring, Never, task_envelope
from nats_fixtures import eventually


GUIDE = {"capability": "analysis", "conversation": "conv-1"}  # the guide's task, as a plain client sends it


def test_guide_my_agent_receives_a_task_and_its_result_comes_back(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The guide's example, nearly verbatim; NATS_URL points its hard-coded localhost at the test server.
    monkeypatch.setenv("NATS_URL", nats_url)

    class MyAgent(NATSAgent):
        def __init__(self):
            config = AgentConfig({
                "nats.servers": ["nats://localhost:4222"],
                "nats.environment": "prod"
            })
            super().__init__(agent_id="my-agent-001", agent_type="worker", config=config)

            # Add capabilities
            self.add_capability("analysis")
            self.add_capability("processing")

        def _setup_subscriptions(self):
            """Set up topic subscriptions."""
            super()._setup_subscriptions()

            # Subscribe to specific task types
            self.subscribe("agents/task/analysis/*")

        def perform_analysis(self, message):
            self.seen_topics.append(self.current_topic)
            return {"words": len(message["payload"]["content"]["text"].split())}

        def process_message(self, topic: str, message: Dict[str, Any]) -> bool:
            """Process incoming messages."""
            # Handle the message based on topic
            self.current_topic = topic
            if "task/analysis" in topic:
                result = self.perform_analysis(message)
                self.publish_result(message.get("id"), result)
            return True

    agent = MyAgent()
    agent.seen_topics = []
    if agent.start():
        print(f"Agent {agent.agent_id} started successfully")
    try:
        assert agent.status == "running"

        async def ask() -> dict[str, Any]:
            nc = await nats.connect(nats_url)
            try:
                data = orjson.dumps(task_envelope("task-1", {"text": "one two three"}, **GUIDE))
                msg = await nc.request("agents.prod.task.analysis.sentiment", data, timeout=5)
                return orjson.loads(msg.data)
            finally:
                await nc.close()

        reply = asyncio.run(ask())
        assert reply["type"] == "result"
        assert reply["correlationId"] == "task-1"
        assert reply["payload"]["content"] == {"words": 3}
        assert reply["source"] == {"id": "my-agent-001", "type": "worker"}
        assert reply["context"]["conversationId"] == "conv-1"
        # Subscribing the capability's own task topic again must not deliver the task twice.
        assert agent.seen_topics == ["agents/task/analysis/sentiment"]
        # The result went out from inside process_message; the count follows when it returns.
        asyncio.run(eventually(lambda: agent.get_metrics()["messages_processed"] == 1))
    finally:
        agent.stop()
    assert agent.status == "stopped"


async def test_plain_nats_client_gets_result_with_correlation_id(make_agent, raw_nc) -> None:
    await make_agent("worker-1", capabilities={"analysis": lambda m: {"echo": m["payload"]["content"]}})
    data = orjson.dumps(task_envelope("unique-message-id", {"x": 1}, **GUIDE))
    msg = await raw_nc.request("agents.test.task.analysis.default", data, timeout=5)
    reply = orjson.loads(msg.data)
    assert reply["correlationId"] == "unique-message-id"
    assert reply["payload"] == {"content": {"echo": {"x": 1}}}
    assert reply["target"] == "plain-client"


async def test_reply_to_field_wins_over_the_reply_subject(make_agent, raw_nc) -> None:
    await make_agent("worker-1", capabilities={"analysis": lambda m: "done"})
    sub = await raw_nc.subscribe("agents.test.result.plain-client.analysis")
    await raw_nc.publish("agents.test.task.analysis.default", orjson.dumps(
        task_envelope("m-7", None, **GUIDE, replyTo="agents.test.result.plain-client.analysis")))
    msg = await sub.next_msg(timeout=5)
    assert orjson.loads(msg.data)["correlationId"] == "m-7"


async def test_result_without_reply_goes_to_the_result_topic(make_agent, raw_nc) -> None:
    await make_agent("worker-1", capabilities={"analysis": lambda m: 42})
    sub = await raw_nc.subscribe("agents.test.result.plain-client.analysis")
    await raw_nc.publish("agents.test.task.analysis.default", orjson.dumps(task_envelope("m-8", None, **GUIDE)))
    reply = orjson.loads((await sub.next_msg(timeout=5)).data)
    assert reply["correlationId"] == "m-8" and reply["payload"]["content"] == 42


async def test_sync_and_async_handlers_and_send_task(make_agent) -> None:
    async def shout(message: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        return message["payload"]["content"].upper()

    await make_agent("w", capabilities={"shout": shout, "count": lambda m: len(m["payload"]["content"])})
    client = await make_agent("client", "coordinator")
    assert await client.send_task("shout", "hello") == "HELLO"
    assert await client.send_task("count", "hello", specificity="strings") == 5


async def test_discovery_across_connections(make_agent) -> None:
    await make_agent("a1", capabilities={"analysis": lambda m: 1})
    await make_agent("a2", capabilities={"analysis": lambda m: 1, "search": lambda m: 2})
    await make_agent("s1", "searcher", capabilities={"search": lambda m: 2})
    coordinator = await make_agent("coord", "coordinator")

    everyone = await coordinator.discover(expected=3, timeout=5)
    assert [a["id"] for a in everyone] == ["a1", "a2", "s1"]
    s1 = next(a for a in everyone if a["id"] == "s1")
    assert s1["type"] == "searcher" and s1["capabilities"] == ["search"] and s1["status"] == "running"

    searchers = await coordinator.discover("search", timeout=0.5)
    assert [a["id"] for a in searchers] == ["a2", "s1"]
    assert await coordinator.discover("nothing", timeout=0.2) == []


async def test_queue_group_shares_tasks_across_replicas(make_agent) -> None:
    handled: dict[str, int] = {}

    def handler_for(name: str):
        async def handle(message: dict[str, Any]) -> str:
            handled[name] = handled.get(name, 0) + 1
            await asyncio.sleep(0.001)  # let other replicas win some of the queue-group draws
            return name

        return handle

    for i in range(3):
        await make_agent(f"replica-{i}", capabilities={"work": handler_for(f"replica-{i}")})
    client = await make_agent("client")
    results = await asyncio.gather(*(client.send_task("work", i) for i in range(90)))
    assert sum(handled.values()) == 90  # each task handled exactly once
    assert set(handled) == {"replica-0", "replica-1", "replica-2"}
    assert sorted(set(results)) == ["replica-0", "replica-1", "replica-2"]


async def test_control_ping_status_pause_resume_shutdown(make_agent) -> None:
    # pause, resume and shutdown are taken only from senders in control.allow (tests/security covers strangers).
    worker = await make_agent("worker", capabilities={"work": lambda m: "ok"}, control__allow=["client"])
    client = await make_agent("client")
    assert (await client.control("worker", "ping"))["pong"] is True
    assert (await client.control("worker", "status"))["capabilities"] == ["work"]

    assert (await client.control("worker", "pause")) == {"status": "paused"}
    with pytest.raises(NoRespondersError):
        await client.send_task("work", 1, timeout=2)
    assert (await client.control("worker", "ping"))["status"] == "paused"  # control still answers
    assert (await client.control("worker", "resume")) == {"status": "running"}
    assert await client.send_task("work", 1) == "ok"

    with pytest.raises(RemoteError) as info:
        await client.control("worker", "dance")
    assert info.value.code == "unknown_command"

    assert (await client.control("worker", "shutdown")) == {"status": "stopping"}
    await asyncio.wait_for(worker.wait_stopped(), 5)
    assert worker.status == "stopped"
    with pytest.raises(NoRespondersError):
        await client.control("worker", "ping", timeout=2)


async def test_handler_exception_reaches_the_requester_and_agent_keeps_running(make_agent) -> None:
    def fragile(message: dict[str, Any]) -> int:
        if message["payload"]["content"] == "boom":
            raise ValueError("cannot handle boom")
        return 1

    worker = await make_agent("worker", capabilities={"work": fragile})
    client = await make_agent("client")
    with pytest.raises(HandlerError) as info:
        await client.send_task("work", "boom")
    assert "ValueError: cannot handle boom" in str(info.value)
    assert info.value.source == "worker"
    assert await client.send_task("work", "fine") == 1
    metrics = worker.get_metrics()
    assert metrics["messages_failed"] == 1 and metrics["messages_processed"] == 1


async def test_expired_message_is_not_processed(make_agent, raw_nc) -> None:
    calls: list[Any] = []
    worker = await make_agent("worker", capabilities={"analysis": lambda m: calls.append(m) or "ran"})
    stale = task_envelope("old-1", "late", **GUIDE, timestamp=time.time() - 10, routing={"priority": 5, "capabilities": [], "timeout": 1000})
    msg = await raw_nc.request("agents.test.task.analysis.default", orjson.dumps(stale), timeout=5)
    reply = orjson.loads(msg.data)
    assert reply["payload"]["error"]["code"] == "expired"
    assert reply["correlationId"] == "old-1"
    assert calls == []
    assert worker.get_metrics()["messages_expired"] == 1

    from agentcore.envelope import decode, raise_for_error

    with pytest.raises(MessageExpiredError):
        raise_for_error(decode(msg.data))


async def test_malformed_bytes_are_counted_and_the_agent_serves_the_next_message(
    make_agent, raw_nc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="agentcore")
    worker = await make_agent("worker", capabilities={"analysis": lambda m: "ok"})
    await raw_nc.publish("agents.test.task.analysis.default", b"\xff\xfe not json")
    await raw_nc.publish("agents.test.task.analysis.default", orjson.dumps({"id": "x"}))
    msg = await raw_nc.request("agents.test.task.analysis.default", b"{not json", timeout=5)
    reply = orjson.loads(msg.data)
    assert reply["type"] == "result"
    assert reply["payload"]["error"]["code"] == "invalid_message"
    assert "JSON" in reply["payload"]["error"]["message"]
    missing = await raw_nc.request("agents.test.task.analysis.default", orjson.dumps({"id": "x", "type": "task"}), timeout=5)
    assert "timestamp" in orjson.loads(missing.data)["payload"]["error"]["message"]

    client = await make_agent("client")
    assert await client.send_task("analysis", "again") == "ok"
    metrics = worker.get_metrics()
    assert metrics["messages_invalid"] == 4
    assert metrics["messages_processed"] == 1
    dropped = [r for r in caplog.records if r.name == "agentcore.agent" and "malformed" in r.getMessage()]
    assert len(dropped) == 4 and all("agents.test.task.analysis.default" in r.getMessage() for r in dropped)


async def test_invalid_message_error_is_typed_for_agent_requesters(make_agent) -> None:
    await make_agent("worker", capabilities={"analysis": lambda m: "ok"})
    client = await make_agent("client")
    # A request whose bytes are not an envelope: the agent answers with an error, never a silent timeout.
    msg = await client.nc.request("agents.test.task.analysis.default", b"[]", timeout=5)
    from agentcore.envelope import decode, raise_for_error

    with pytest.raises(InvalidMessageError):
        raise_for_error(decode(msg.data))


async def test_higher_priority_goes_first_when_messages_queue(make_agent) -> None:
    order: list[int] = []
    gate = asyncio.Event()

    async def work(message: dict[str, Any]) -> int:
        value = message["payload"]["content"]
        if value == 0:
            await gate.wait()
        order.append(value)
        return value

    worker = await make_agent("worker", capabilities={"work": work}, agent__max_concurrency=1)
    client = await make_agent("client")
    first = asyncio.ensure_future(client.request(client.topics.task("work"), 0, priority=1))
    await eventually(lambda: worker.get_metrics()["in_flight"] == 1)
    others = [asyncio.ensure_future(client.request(client.topics.task("work"), p, priority=p)) for p in (1, 9, 5, 3)]
    await eventually(lambda: worker.get_metrics()["queued"] == 4)
    gate.set()
    assert await asyncio.gather(first, *others) == [0, 1, 9, 5, 3]
    assert order == [0, 9, 5, 3, 1]


async def test_slow_handlers_do_not_stall_control(make_agent) -> None:
    release = threading.Event()

    def blocking(message: dict[str, Any]) -> str:
        release.wait(10)  # a sync handler that blocks, as an LLM SDK call would
        return "done"

    async def slow(message: dict[str, Any]) -> str:
        await asyncio.sleep(10)
        return "late"

    # "thread": every sync handler in the pool from its first call (under "auto" the first blocking call would hold
    # this test's own loop until it was moved; tests/agent/test_sync_handlers.py covers that).
    worker = await make_agent("worker", capabilities={"blocking": blocking, "slow": slow}, nats__drain_timeout=0.2,
                              agent__sync_handlers="thread")
    client = await make_agent("client")
    pending = [asyncio.ensure_future(client.send_task("blocking", i)) for i in range(3)]
    pending.append(asyncio.ensure_future(client.send_task("slow", 1, timeout=20)))
    await eventually(lambda: worker.get_metrics()["in_flight"] == 4)
    pong = await client.control("worker", "ping", timeout=2)
    assert pong["pong"] is True
    release.set()
    assert await asyncio.gather(*pending[:3]) == ["done"] * 3
    pending[3].cancel()


async def test_status_heartbeats_keep_coming_while_a_sync_handler_blocks(make_agent, raw_nc) -> None:
    from nats_fixtures import subscribed

    release = threading.Event()
    beats: list[dict[str, Any]] = []

    async def on_status(msg: Any) -> None:
        beats.append(orjson.loads(msg.data)["payload"]["content"])

    await raw_nc.subscribe("agents.test.status.worker", cb=on_status)
    await subscribed(raw_nc)
    worker = await make_agent("worker", capabilities={"blocking": lambda m: release.wait(10) and "done"},
                              agent__heartbeat_interval=0.05, agent__sync_handlers="thread")
    client = await make_agent("client")
    pending = asyncio.ensure_future(client.send_task("blocking", None))
    await eventually(lambda: worker.get_metrics()["in_flight"] == 1)
    seen = len(beats)
    await eventually(lambda: len(beats) >= seen + 3, what="three heartbeats while the handler blocks")
    assert beats[-1]["id"] == "worker" and beats[-1]["status"] == "running" and beats[-1]["in_flight"] == 1
    assert beats[-1]["capabilities"] == ["blocking"]
    release.set()
    assert await pending == "done"


async def test_no_responders_fails_fast_and_timeouts_are_typed(make_agent) -> None:
    client = await make_agent("client")
    t0 = time.perf_counter()
    with pytest.raises(NoRespondersError):
        await client.send_task("nobody", 1, timeout=10)
    assert time.perf_counter() - t0 < 5  # fast, long before the 10 s timeout

    await make_agent("sleepy", capabilities={"sleep": Never()}, nats__drain_timeout=0.2)
    with pytest.raises(RequestTimeoutError):
        await client.send_task("sleep", 1, timeout=0.2)


async def test_oversized_payloads_give_clear_errors(make_agent) -> None:
    await make_agent("worker", capabilities={"big": lambda m: "x" * 2_000_000, "echo": lambda m: "ok"})
    client = await make_agent("client")
    # A request too large for one message goes out as a stream (tests/test_streaming.py); a publish cannot.
    with pytest.raises(PayloadTooLargeError) as info:
        await client.publish(client.topics.task("echo"), "y" * 2_000_000)
    assert info.value.limit == client.nc.max_payload
    # An agentcore requester pulls an oversized result as a stream (tests/test_streaming.py); a plain
    # nats-py requester, which cannot, gets the clear error.
    assert await client.send_task("big", None) == "x" * 2_000_000
    plain = new_message("task", None, source_id="plain", capabilities=["big"])
    reply = orjson.loads((await client.nc.request(client.topics.task("big"), orjson.dumps(plain), timeout=5)).data)
    assert reply["payload"]["error"]["code"] == "payload_too_large"
    assert await client.send_task("echo", None) == "ok"


async def test_unhandled_message_answers_instead_of_timing_out(make_agent) -> None:
    await make_agent("worker", capabilities={"analysis": None})  # base process_message handles nothing
    client = await make_agent("client")
    with pytest.raises(RemoteError) as info:
        await client.send_task("analysis", 1, timeout=5)
    assert info.value.code == "unhandled"


async def test_subscribe_with_handler_and_wildcards(make_agent, raw_nc) -> None:
    seen: list[str] = []
    got = asyncio.Event()

    async def on_event(topic: str, message: dict[str, Any]) -> bool:
        seen.append(topic)
        if len(seen) == 2:
            got.set()
        return True

    listener = await make_agent("listener")
    await listener.asubscribe("agents/event/>", on_event)
    publisher = await make_agent("publisher")
    await publisher.publish_event("deploy", "started", {"v": 1})
    await publisher.publish("agents/event/deploy/finished", {"v": 1})
    await asyncio.wait_for(got.wait(), 5)
    assert seen == ["agents/event/deploy/started", "agents/event/deploy/finished"]


async def test_metrics_report_latency_and_counts(make_agent) -> None:
    worker = await make_agent("worker", capabilities={"work": lambda m: 1})
    client = await make_agent("client")
    for i in range(20):
        await client.send_task("work", i)
        await client.control("worker", "ping")  # control messages never count against max_concurrency
    assert [a["id"] for a in await client.discover(expected=1, timeout=5)] == ["worker"]
    m = worker.get_metrics()
    assert m["messages_processed"] == 41 and m["messages_failed"] == 0  # 20 tasks, 20 pings, 1 discovery query
    assert 0 < m["p50_latency_ms"] <= m["p99_latency_ms"]
    assert m["avg_latency_ms"] > 0 and m["in_flight"] == 0 and m["reconnects"] == 0
    assert m["implementation"] in ("compiled", "pure")


async def test_server_restart_reconnects_and_serves_again(nats_server, make_agent) -> None:
    worker = await make_agent("worker", capabilities={"work": lambda m: "ok"}, nats__reconnect_time_wait=0.05)
    client = await make_agent("client", nats__reconnect_time_wait=0.05)
    assert await client.send_task("work", 1) == "ok"
    await asyncio.to_thread(nats_server.restart)
    await eventually(lambda: worker.get_metrics()["reconnects"] >= 1 and client.get_metrics()["reconnects"] >= 1, 10)
    assert await client.send_task("work", 2, timeout=5) == "ok"


def test_start_returns_false_when_no_server(caplog: pytest.LogCaptureFixture) -> None:
    from agentcore.server import free_port

    agent = NATSAgent("lonely", config=AgentConfig({"nats.servers": [f"nats://127.0.0.1:{free_port()}"],
                                                    "nats.connect_timeout": 0.5, "nats.max_reconnect_attempts": 0}, environ={}))
    assert agent.start(timeout=10) is False
    assert "failed to start" in caplog.text


async def test_handler_timeouts_and_context_belong_to_the_handler(make_agent) -> None:
    """A handler runs inline for speed, yet as its own Task: asyncio.timeout() and contextvars see only it."""
    import contextvars

    user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")
    seen: list[str] = []

    async def bounded(message: dict[str, Any]) -> str:
        try:
            async with asyncio.timeout(0.05):  # entered before the handler first suspends
                await asyncio.Event().wait()
        except TimeoutError:
            return "timed out"
        return "never"

    async def who(message: dict[str, Any]) -> str:
        seen.append(user.get())
        user.set(message["payload"]["content"])  # must not leak into the next handler
        return user.get()

    await make_agent("worker", capabilities={"bounded": bounded, "who": who})
    client = await make_agent("client")
    assert await client.send_task("bounded", 1, timeout=5) == "timed out"
    assert await client.send_task("bounded", 2, timeout=5) == "timed out"  # the subscription survived
    assert await client.send_task("who", "alice") == "alice"
    assert await client.send_task("who", "bob") == "bob"
    assert seen == ["nobody", "nobody"]


async def test_deferred_answers_and_no_silent_timeouts(make_agent) -> None:
    """A handler may answer after it returns; if it never does, the requester hears no_result, not silence."""
    worker = await make_agent("worker", cls=Deferring, capabilities={"analysis": None})
    client = await make_agent("client")
    pending = asyncio.ensure_future(client.send_task("analysis", "later", timeout=5))
    await eventually(lambda: len(worker.taken_ids("later")) == 1)
    later = worker.taken_ids("later")
    await worker.publish_result(later[0], {"done": True})
    assert await pending == {"done": True}
    with pytest.raises(AgentCoreError, match="no pending message"):
        worker.publish_result(later[0], "twice")

    with pytest.raises(RemoteError) as info:
        await client.send_task("analysis", "forgotten", timeout=0.5)
    assert info.value.code == "no_result"


async def test_a_deep_queue_drains_without_recursion(make_agent) -> None:
    gate = asyncio.Event()

    async def work(message: dict[str, Any]) -> int:
        if message["payload"]["content"] == -1:
            await gate.wait()
        return message["payload"]["content"]

    worker = await make_agent("worker", capabilities={"work": work}, agent__max_concurrency=1, cache__enabled=False)
    client = await make_agent("client")
    blocker = asyncio.ensure_future(client.send_task("work", -1, timeout=30))
    await eventually(lambda: worker.get_metrics()["in_flight"] == 1)
    many = [asyncio.ensure_future(client.send_task("work", i, timeout=30)) for i in range(2000)]
    await eventually(lambda: worker.get_metrics()["queued"] == 2000, timeout=20)
    gate.set()
    assert await asyncio.gather(blocker, *many) == [-1, *range(2000)]
    assert worker.get_metrics()["in_flight"] == 0 and worker.get_metrics()["queued"] == 0


async def test_control_ignores_results_reflected_onto_it(make_agent, raw_nc) -> None:
    victim = await make_agent("victim")
    await make_agent("echo", capabilities={"echo": lambda m: m["payload"]["content"]})
    # A task whose replyTo points at the victim's control subject: the echo's *result* lands there.
    forged = task_envelope("f-1", {"command": "shutdown"}, **GUIDE, replyTo="agents.test.control.victim")
    await raw_nc.publish("agents.test.task.echo.default", orjson.dumps(forged))
    client = await make_agent("client")
    assert (await client.control("victim", "ping"))["pong"] is True
    assert victim.status == "running"


async def test_stop_finishes_queued_work_or_says_why(make_agent) -> None:
    async def slow(message: dict[str, Any]) -> int:
        await asyncio.sleep(0.01)  # real work that takes a while (not synchronisation)
        return message["payload"]["content"]

    worker = await make_agent("worker", capabilities={"work": slow}, agent__max_concurrency=2)
    client = await make_agent("client")
    calls = [asyncio.ensure_future(client.send_task("work", i, timeout=10)) for i in range(10)]
    await eventually(lambda: worker.get_metrics()["in_flight"] == 2 and worker.get_metrics()["queued"] == 8)
    await worker.astop()  # within the drain timeout every queued task still runs
    assert await asyncio.gather(*calls) == list(range(10))

    gate = asyncio.Event()

    async def stuck(message: dict[str, Any]) -> int:
        await gate.wait()
        return 0

    worker2 = await make_agent("worker2", capabilities={"stuck": stuck}, agent__max_concurrency=1, nats__drain_timeout=0.2)
    calls = [asyncio.ensure_future(client.send_task("stuck", i, timeout=10)) for i in range(3)]
    await eventually(lambda: worker2.get_metrics()["queued"] == 2)
    await worker2.astop()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert sorted(e.code for e in outcomes) == ["cancelled", "shutting_down", "shutting_down"]


async def test_messages_are_dispatched_inline_without_nats_py_queueing(make_agent) -> None:
    """The agent's subscriptions and its request inbox hand messages over as nats-py reads them."""
    from agentcore.transport.inline import _InlineQueue  # INTERNAL by design: this test checks the inline delivery itself

    worker = await make_agent("worker", capabilities={"work": lambda m: "ok"})
    client = await make_agent("client")
    assert await client.send_task("work", 1) == "ok"
    # Every subscription on the agents' connections (nats-py's own registry): the worker's control, discovery
    # and task subscriptions, and the client's request inbox.
    worker_subs, client_subs = list(worker.nc._subs.values()), list(client.nc._subs.values())
    assert any(sub.subject.startswith("agents.test.task.work.") for sub in worker_subs)
    assert any(sub.subject.startswith("_INBOX.") for sub in client_subs)  # the request inbox
    assert all(isinstance(sub._pending_queue, _InlineQueue) for sub in worker_subs + client_subs)
    assert all(sub.pending_msgs == 0 and sub.pending_bytes == 0 for sub in worker_subs)


async def test_stopping_fails_the_agents_own_waiting_requests_at_once(make_agent) -> None:
    from agentcore import NotConnectedError

    never = Never()
    await make_agent("sleepy", capabilities={"sleep": never}, nats__drain_timeout=0.2)
    client = await make_agent("client")
    waiting = asyncio.ensure_future(client.send_task("sleep", 1, timeout=30))
    await never.wait_started()  # the request is out and waits for its answer
    t0 = time.perf_counter()
    await client.astop()
    with pytest.raises(NotConnectedError):
        await waiting
    assert time.perf_counter() - t0 < 10  # not the 30 s timeout


async def test_latency_bound_sends_skip_nats_py_flusher_and_keep_order(make_agent, raw_nc) -> None:
    """Requests and replies are written at once when nothing is pending (this nats-py's internals allow it)."""
    from agentcore.transport.inline import send_now  # INTERNAL by design: this test checks the direct write itself
    from nats_fixtures import subscribed

    got: list[bytes] = []

    async def collect(msg: Any) -> None:
        got.append(msg.data)

    await raw_nc.subscribe("direct.x", cb=collect)
    await subscribed(raw_nc)
    client = await make_agent("client")
    await subscribed(client.nc)  # nothing left in the pending buffer
    assert send_now(client.nc, "direct.x", b"first") is True
    assert send_now(client.nc, "direct.x", b"x") is False  # a second one in the same iteration goes through the flusher
    await client.nc.publish("direct.x", b"second")
    await eventually(lambda: got == [b"first", b"second"])


async def test_sends_behind_pending_ones_are_queued_inline_in_order(make_agent, raw_nc) -> None:
    """What cannot be written at once is appended to nats-py's pending buffer as nc.publish would, order kept."""
    from agentcore.transport.inline import queue_now, send_now  # INTERNAL by design: this test checks the queueing itself
    from nats_fixtures import subscribed

    got: list[bytes] = []

    async def collect(msg: Any) -> None:
        got.append(msg.data)

    await raw_nc.subscribe("queued.x", cb=collect)
    await subscribed(raw_nc)
    client = await make_agent("client")
    await subscribed(client.nc)
    sent = client.nc.stats["out_msgs"]
    assert send_now(client.nc, "queued.x", b"1") is True
    assert queue_now(client.nc, "queued.x", b"2") is True  # behind the direct write: into the pending buffer
    await client.nc.publish("queued.x", b"3")
    assert queue_now(client.nc, "queued.x", b"4", headers={"X-Other": "v"}) is False  # not a trace header: publish's
    assert client.nc.stats["out_msgs"] == sent + 3
    await eventually(lambda: got == [b"1", b"2", b"3"])


async def test_overridden_public_methods_are_what_the_bus_sees(make_agent) -> None:
    """A subclass's describe() answers status and discovery; process_message assigned late still handles."""

    class Described(NATSAgent):
        def describe(self) -> dict[str, Any]:
            return {**super().describe(), "extra": "yes"}

    worker = await make_agent("described", cls=Described, start=False)
    seen: list[str] = []

    def late(topic: str, message: dict[str, Any]) -> bool:
        seen.append(topic)
        return True

    worker.subscribe("agents/event/late/*")
    worker.process_message = late  # type: ignore[method-assign]
    await worker.astart()
    client = await make_agent("client")
    assert (await client.control("described", "status"))["extra"] == "yes"
    assert [a.get("extra") for a in await client.discover(expected=1, timeout=5)] == ["yes"]
    await client.publish("agents/event/late/x", {"n": 1})
    await eventually(lambda: seen == ["agents/event/late/x"], what="the late process_message to run")
