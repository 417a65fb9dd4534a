"""A corpus of hostile payloads, sent by a plain nats-py client to every subject an agent serves.

Task, control, discovery, negotiation, MCP (requests and cancels) and stream subjects get malformed JSON, deep
nesting, non-UTF-8, a wrong type in every envelope field, NaN/huge/negative timeouts and priorities, huge
declared sizes, negative or huge credits, out-of-order and duplicate sequence numbers, and odd headers. Each
one is answered with a valid envelope (a typed error, mostly) when it had a reply subject, or dropped by
design and counted in a metric; nothing reaches the loop's exception handler or an error log, and the agent
answers a normal task afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from agentcore import NATSAgent, RemoteError
from agentcore.envelope import decode, encode, new_message, raise_for_error
from agentcore.mcp import MCPClient
from agentcore.transport.frames import H_ACK, H_CANCEL, H_CTL, H_FINAL, H_KIND, H_SEQ, H_STREAM, H_WINDOW
from helpers import paced_producer, task_envelope, watch_streams
from nats_fixtures import eventually, subscribed, within

TOOLS_SERVER = str(Path(__file__).parent.parent / "agent" / "mcp_servers" / "tools_server.py")

TASK = "agents.test.task.work.default"
CONTROL = "agents.test.control.worker"
DISCOVERY = "agents.test.discovery.requests"
NEGOTIATE = "agents.test.a2a.negotiate.worker"
MCP_REQUESTS = "agents.test.mcp.tools.requests"
MCP_CANCEL = "agents.test.mcp.tools.cancel"

# Metrics that move for every message, or that measure rather than count: not a sign that a payload was counted.
NOT_COUNTS = {"messages_received", "messages_published", "avg_latency_ms", "p50_latency_ms", "p99_latency_ms",
              "in_flight", "queued", "subscriptions", "results_owed", "loop_lag_max", "status", "implementation"}

RAW = [
    b"", b"{", b"}", b"null", b"true", b"1", b"-1e999", b'"text"', b"[]", b"{}", b"[1,2,3]",
    b"\xff\xfe\xfd", b'{"id": "\xff\xfe"}', b"\x00" * 64, b"\xef\xbb\xbf{}",  # non-UTF-8, NULs, a BOM
    b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 20_000 + b"1" + b"}" * 20_000,  # deep nesting
    b'{"id": NaN}', b'{"id": Infinity}', b'{"id": "a", "id": "b"}', b'{"id": "x"} trailing', b" " * 500_000,
    "{\"id\": \"ü\"}".encode("utf-16"),
]

WRONG = [None, True, -1, 10**30, 1e308, float("nan"), float("inf"), "", "x" * 20_000, "*", ">", "a.b", "\u0000",
         [], [1, [2, [3]]], {}, {"$gt": ""}]

FIELDS = [
    ("id",), ("timestamp",), ("version",), ("type",), ("source",), ("source", "id"), ("source", "type"), ("target",),
    ("replyTo",), ("correlationId",), ("context",), ("context", "conversationId"), ("context", "metadata"),
    ("payload",), ("routing",), ("routing", "priority"), ("routing", "capabilities"), ("routing", "timeout"),
    ("routing", "stream"),
]

NUMBERS = [-1, 0, -1e308, 1e308, float("nan"), float("inf"), float("-inf"), 10**40, "10", [], 5.5, True]


def dumps(obj: Any) -> bytes:
    """JSON as a careless or hostile client writes it: NaN and Infinity allowed, nothing escaped."""
    return json.dumps(obj, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


def set_path(message: dict[str, Any], path: tuple[str, ...], value: Any, *, delete: bool = False) -> dict[str, Any]:
    node = message
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return message


def envelope(n: int, content: Any = "hello", **fields: Any) -> dict[str, Any]:
    return task_envelope(f"corpus-{n}", content, source="stranger", **fields)


def corpus() -> Iterator[tuple[str, str, bytes, dict[str, str] | None]]:
    """Yield (label, subject, data, headers)."""
    n = 0
    for subject in (TASK, CONTROL, DISCOVERY, NEGOTIATE, MCP_REQUESTS, MCP_CANCEL):
        for i, data in enumerate(RAW):
            yield f"raw[{i}] on {subject}", subject, data, None
    for path in FIELDS:
        for value in WRONG:
            n += 1
            yield f"{'.'.join(path)}={value!r:.30}", TASK, dumps(set_path(envelope(n), path, value)), None
        n += 1
        yield f"{'.'.join(path)} missing", TASK, dumps(set_path(envelope(n), path, None, delete=True)), None
    for field in ("timeout", "priority"):  # NaN, huge and negative numbers where the router reads them
        for value in NUMBERS:
            n += 1
            yield f"routing.{field}={value!r}", TASK, dumps(set_path(envelope(n), ("routing", field), value)), None
    # Control: every shape of content and type, from a stranger (pause/resume/shutdown are not open to it).
    for content in (None, 1, [], "", "PING", "shutdown", "pause", {"command": None}, {"command": 1},
                    {"command": "x" * 5000}, {"command": {"$ne": 1}}, {"command": "status", "extra": [1] * 1000}):
        for kind in ("query", "task", "result", "event"):
            n += 1
            yield f"control {kind} {content!r:.30}", CONTROL, dumps(envelope(n, content, type=kind)), None
    # Discovery queries with odd capability filters.
    for wanted in (None, 1, [], {"a": 1}, "*", "x" * 5000):
        n += 1
        yield f"discovery {wanted!r:.30}", DISCOVERY, dumps(envelope(n, {"capability": wanted}, type="query")), None
    # Negotiation: wrong performatives, fields of the wrong type, NaN and huge rounds.
    for content in (None, "cfp", {"performative": None}, {"performative": "cfp"}, {"performative": "cfp", "negotiation": []},
                    {"performative": "cfp", "negotiation": {"id": None, "type": "deal", "round": float("nan")}},
                    {"performative": "cfp", "negotiation": {"id": "n1", "type": "deal", "round": 10**30, "max_rounds": -1}},
                    {"performative": "cfp", "negotiation": {"id": "x" * 10_000, "type": ["deal"], "proposal": "p"}},
                    {"performative": "cfp", "negotiation": {"id": "n2", "type": "deal", "proposal": {"price": float("inf")},
                                                            "constraints": [1]}},
                    {"performative": "accept-proposal", "negotiation_id": 1},
                    {"performative": "accept-proposal", "negotiation_id": "unknown", "token": None},
                    {"performative": "reject-proposal", "negotiation_id": "n1", "token": "forged"},
                    {"performative": "cancel", "negotiation_id": ["n1"]}, {"performative": "propose" * 1000}):
        n += 1
        yield f"negotiation {content!r:.40}", NEGOTIATE, dumps(envelope(n, content)), None
    # MCP: JSON-RPC that is not, methods of the wrong type, params of every wrong shape, notifications.
    for rpc in (None, [], "tools/call", {"jsonrpc": "1.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": 1},
                {"jsonrpc": "2.0", "id": 1, "method": 7}, {"jsonrpc": "2.0", "method": "tools/call"},
                {"jsonrpc": "2.0", "id": None, "method": "tools/list"},
                {"jsonrpc": "2.0", "id": [1], "method": "ping"}, {"jsonrpc": "2.0", "id": 10**40, "method": "ping"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": []},
                {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": "add"},
                {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": 5}},
                {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "add", "arguments": [1, 2]}},
                {"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "secret", "arguments": {}}},
                {"jsonrpc": "2.0", "id": 7, "method": "resources/read", "params": {"uri": None}},
                {"jsonrpc": "2.0", "id": 8, "method": "prompts/get", "params": {"name": ["review"]}},
                {"jsonrpc": "2.0", "id": 9, "method": "x" * 10_000}):
        for subject in (MCP_REQUESTS, MCP_CANCEL):
            n += 1
            yield f"mcp {subject.rsplit('.', 1)[1]} {rpc!r:.40}", subject, dumps(envelope(n, rpc)), None
    # Large-request offers: huge, negative and odd declared sizes, pull subjects that are no inbox.
    for stream in (None, 1, [], {}, {"pull": "_INBOX.x", "size": 10**15}, {"pull": "_INBOX.x", "size": -1},
                   {"pull": "_INBOX.x", "size": float("nan")}, {"pull": "_INBOX.x", "size": "9"},
                   {"pull": "agents.test.control.worker", "size": 10}, {"pull": ">", "size": 10}, {"pull": None, "size": 10},
                   {"pull": "_INBOX." + "x" * 5000, "size": 10}):
        n += 1
        message = envelope(n, None)
        message["payload"] = {"content": None, "stream": stream}
        yield f"offer {stream!r:.40}", TASK, dumps(message), None
    # Stream frames and credit headers sent where tasks arrive: out-of-order, duplicate, negative and huge numbers.
    for headers in ({H_STREAM: "s", H_SEQ: "-1", H_KIND: "text"}, {H_STREAM: "s", H_SEQ: "99999999999999999999"},
                    {H_STREAM: "s", H_SEQ: "NaN", H_FINAL: "1"}, {H_STREAM: "s", H_SEQ: "1"}, {H_STREAM: "s", H_SEQ: "1"},
                    {H_STREAM: "s", H_SEQ: "0", H_CTL: ">"}, {H_ACK: "-5", H_WINDOW: "1000000000"},
                    {H_ACK: "1e9", H_WINDOW: "-1"}, {H_CANCEL: "1", H_STREAM: "*"}, {H_KIND: "\u00e9" * 10}):
        n += 1
        yield f"frame headers {headers!r:.40}", TASK, b"chunk", headers
    # Odd headers on a valid task.
    for headers in ({"Status": "503"}, {"Nats-Msg-Id": ""}, {"Agent-Signature": "!!"}, {"Agent-Sender": "U" * 56},
                    {"Agent-Timestamp": "-1"}, {"Agent-Timestamp": "NaN"}, {"traceparent": "00-zz"}, {"X": "y" * 4000},
                    {"Content-Type": "application/x-evil"}, {"": "empty name"}):
        n += 1
        yield f"headers {headers!r:.40}", TASK, dumps(envelope(n)), headers


def counted(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Return the counters that grew between two get_metrics() snapshots."""
    return [key for key, value in after.items() if key not in NOT_COUNTS and isinstance(value, (int, float))
            and not isinstance(value, bool) and value > before.get(key, 0)]


async def negotiate(negotiation: dict[str, Any]) -> dict[str, Any]:
    return {"accept": True, "proposal": {"price": 1}}


async def test_the_hostile_corpus_is_answered_or_counted_and_the_agent_still_works(
        nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    payloads = list(corpus())
    assert len(payloads) >= 200
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    config = {"nats.servers": [nats_url], "nats.environment": "test", "agent.heartbeat_interval": 60.0}
    from agentcore import AgentConfig

    worker = NATSAgent("worker", config=AgentConfig(config, environ={}))
    worker.add_capability("work", lambda message: {"echo": message["payload"]["content"]})
    worker.register_a2a_handler("deal", negotiate)
    mcp = MCPClient(server_command=sys.executable, server_args=[TOOLS_SERVER])
    attacker = await nats.connect(nats_url)
    answers: dict[int, bytes] = {}

    async def on_answer(msg: Any) -> None:
        answers[int(msg.subject.rsplit(".", 1)[1])] = msg.data

    try:
        await mcp.connect()
        async with worker:
            await worker.aregister_mcp_server("tools", mcp, tools=["add", "echo"])
            await attacker.subscribe("corpus.answers.*", cb=on_answer)
            await subscribed(attacker)
            outcomes: Counter[str] = Counter()
            counts: dict[int, list[str]] = {}
            with caplog.at_level(logging.WARNING):
                for i, (label, subject, data, headers) in enumerate(payloads):
                    before = worker.get_metrics()
                    await attacker.publish(subject, data, reply=f"corpus.answers.{i}", headers=headers)
                    await subscribed(attacker)
                    try:
                        await eventually(lambda: i in answers or counted(before, worker.get_metrics()), timeout=10,
                                         what=f"an answer or a count for {label}")
                    except AssertionError:
                        raise AssertionError(f"payload {i} ({label} on {subject}) was neither answered nor counted") from None
                    counts[i] = counted(before, worker.get_metrics())
                await subscribed(attacker)
                await eventually(lambda: worker.get_metrics()["in_flight"] == 0, what="the last handlers")
                await subscribed(attacker)  # answers the last handlers sent have arrived
            for i in range(len(payloads)):
                if i in answers:
                    reply = decode(answers[i])  # whatever answers is a valid envelope
                    try:
                        raise_for_error(reply)
                        outcomes["answered"] += 1
                    except RemoteError as exc:
                        outcomes[f"error:{exc.code}"] += 1
                else:
                    outcomes["counted:" + ",".join(sorted(counts[i]))] += 1
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("agentcore")]
            assert not errors, [r.getMessage() for r in errors][:5]
            assert not escaped, escaped[:3]
            assert await within(worker_answers(nats_url), "a normal task after the corpus") == {"echo": "after"}
            print(f"\n{len(payloads)} hostile payloads:", dict(sorted(outcomes.items())))
    finally:
        loop.set_exception_handler(previous)
        await attacker.close()
        await mcp.close()


async def worker_answers(nats_url: str) -> Any:
    from agentcore import AgentConfig

    client = NATSAgent("honest", config=AgentConfig({"nats.servers": [nats_url], "nats.environment": "test",
                                                     "agent.heartbeat_interval": 60.0}, environ={}))
    async with client:
        return await client.send_task("work", "after")


def frame(stream: str, seq: str | None, ctl: str | None, **extra: str) -> dict[str, str]:
    headers = {H_STREAM: stream, H_KIND: "text", **extra}
    if seq is not None:
        headers[H_SEQ] = seq
    if ctl is not None:
        headers[H_CTL] = ctl
    return headers


async def test_hostile_frames_on_a_live_stream_are_dropped_and_counted(make_agent: Any, raw_nc: nats.NATS) -> None:
    """A bystander who sees a stream's task (its id and the consumer's inbox) and the producer's frames (its Agent-Ctl)
    sends frames with malformed, negative, huge, duplicate and out-of-order sequence numbers, frames bound to another
    producer or stream, non-UTF-8 bodies and odd kinds, and credit with malformed or negative numbers to the
    producer. The frames are dropped and counted (rejected or duplicates); the honest stream arrives whole."""
    watching, injected = asyncio.Event(), asyncio.Event()
    producer = await paced_producer(make_agent, watching, injected)
    client = await make_agent("client")
    other_ctl = raw_nc.new_inbox()
    sent = [0]

    async def inject(task_id: str, inbox: str, headers: dict[str, str]) -> None:
        ctl = headers[H_CTL]  # the producer's: seen on the wire, so a bystander can copy it
        forgeries: list[tuple[bytes, dict[str, str]]] = [
            (b"dup", frame(task_id, "0", ctl)), (b"dup", frame(task_id, "0", ctl, **{H_FINAL: "1"})),
            *((b"bad-seq", frame(task_id, seq, ctl)) for seq in ("-1", "NaN", "", "1e3", "0x1", "\u0661", "1_0")),
            # (nats-py strips header values: " 1" arrives as "1", a frame a bystander can always forge unsigned)
            *((b"other", frame(task_id, seq, other_ctl)) for seq in ("1", " 2", "3", "99999999999999999999", "-5")),
            (b"other", frame(task_id, "1", None)), (b"other", frame("another-stream", "1", ctl)),
            (b"\xff\xfe", frame(task_id, "1", other_ctl, **{H_KIND: "bytes"})),
            (b"kind", frame(task_id, "2", other_ctl, **{H_KIND: "\u00e9" * 20, H_FINAL: "yes"})),
            (encode(new_message("result", "forged", source_id="producer", correlation_id=task_id)), {}),
            (b"not an envelope", {}),
        ]
        for data, forged in forgeries:
            await raw_nc.publish(inbox, data, headers=forged or None)
            sent[0] += 1
        for credit in ({H_ACK: "-5"}, {H_ACK: "NaN"}, {H_WINDOW: "-1"}, {H_WINDOW: "0"}, {H_WINDOW: "x"},
                       {H_ACK: "", H_WINDOW: ""}):
            await raw_nc.publish(ctl, b"", headers=credit)  # malformed credit: ignored, the window stays

    await watch_streams(raw_nc, watching, injected, other_ctl, inject)
    async with client.request_stream(producer.topics.task("gen"), None, window=2) as stream:
        chunks = [c async for c in stream]
    assert "".join(c.text for c in chunks) == "abcde"
    assert [c.seq for c in chunks] == list(range(5))
    assert stream.rejected + stream.duplicates == sent[0] == 20
    assert client.get_metrics()["replies_rejected"] >= stream.rejected
