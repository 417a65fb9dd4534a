"""A stranger shapes frames that nats-py's own parser reads differently from nats-server, or long control lines a
read cuts: the agent's frame reader (transport.reader) never drops the connection, never wedges, never answers a
subject nats-py misread, and still reads the honest frames around them."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import nats.aio.client
import orjson
import pytest

from agentcore import NO_REPLY, new_message
from agentcore.transport import inline
from agentcore.transport.reader import _Reader
from helpers import task_bytes
from nats_fixtures import eventually, subscribed, within


async def test_a_reply_nats_py_reads_as_whitespace_never_cuts_the_agent_off(make_agent: Any, raw_nc: nats.NATS) -> None:
    """nats-server splits subjects on space and tab only; nats-py's parser also on \\x0b and \\x0c. A header message
    (read by nats-py's parser) whose reply holds one raised ProtocolError (a reconnect, every in-flight message
    lost), was misread ('\\x0c' + a victim's inbox read as the victim's inbox), or, in a frame of 4,096 bytes or
    more, left nats-py waiting for the rest of a frame that was all there: the agent read nothing more."""
    ran: list[Any] = []

    async def work(message: dict[str, Any]) -> Any:
        ran.append(message["payload"]["content"])
        return message["payload"]["content"]

    agent = await make_agent("worker", capabilities={"work": work}, cache__enabled=False)
    user: list[Any] = []

    async def on_user(msg: Any) -> None:
        user.append(msg.data)

    await agent.nc.subscribe("user.subject", cb=on_user)  # a subscription of its own: every frame is nats-py's
    await subscribed(agent.nc)
    victim = raw_nc.new_inbox()
    stolen: list[Any] = []

    async def on_victim(msg: Any) -> None:
        stolen.append(msg.data)

    await raw_nc.subscribe(victim, cb=on_victim)
    inbox = raw_nc.new_inbox()
    answers: asyncio.Queue[Any] = asyncio.Queue()
    await raw_nc.subscribe(inbox, cb=answers.put)
    await subscribed(raw_nc)
    reconnects = agent.nc.stats["reconnects"]
    subject = agent.topics.task("work")
    odd = (("_INBOX.a\x0cb", "odd"), ("_INBOX.a\x0bb", "odd"), ("\x0c" + victim, "odd"), ("_INBOX.a\x0cb", "x" * 5000))
    for i, (reply, content) in enumerate(odd):
        await raw_nc.publish(subject, task_bytes(f"odd-{i}", content), reply=reply, headers={"X-Any": "1"})
    await raw_nc.publish("user.subject", b"odd", reply="their\x0creply")  # a MSG for a sid the reader leaves to nats-py
    await raw_nc.publish("user.subject", b"honest")
    await raw_nc.publish(subject, task_bytes("honest", 7), reply=inbox, headers={"X-Any": "1"})
    answer = await within(answers.get(), "the honest answer", 15)
    assert orjson.loads(answer.data)["payload"]["content"] == 7
    await eventually(lambda: user == [b"honest"], what="the user subscription's honest message")
    assert agent.nc.stats["reconnects"] == reconnects and agent.nc.is_connected
    assert not agent.nc._reading_task.done()
    await subscribed(raw_nc)
    assert stolen == [] and ran == [7]
    assert agent.get_metrics()["frames_unreadable"] == len(odd) + 1  # each dropped frame counted, not only logged


def _frame(subject: bytes, sid: int, payload: bytes, reply: bytes = b"") -> bytes:
    line = b"MSG %s %d %s%d\r\n" % (subject, sid, reply + b" " if reply else b"", len(payload))
    return line + payload + b"\r\n"


@pytest.mark.parametrize("subject", [
    "x." + "€" * 1400,           # UTF-8, cut inside a three-byte character by the read
    None,                         # a stranger's subject that is not UTF-8
])
async def test_a_control_line_longer_than_4096_bytes_cut_by_a_read_is_read_whole(raw_nc: nats.NATS,
                                                                                  subject: str | None) -> None:
    """A subject near nats-server's 4,096-byte control line limit makes a MSG line a few bytes longer than that
    (the sid is added). A read that ended inside it, past its 4,096th byte, dropped what was read and handed the
    rest of the line to nats-py's parser as a frame of its own: ProtocolError, the connection dropped."""
    sub = await raw_nc.subscribe("x.>")
    await subscribed(raw_nc)
    raw = subject.encode() if subject is not None else b"x." + b"\xff" * 4100
    fast: list[Any] = []
    reader = _Reader(raw_nc)
    reader.targets = {sub._id: lambda s, r, d: fast.append(d)}
    long_frame = _frame(raw, sub._id, b"long")
    assert long_frame.index(b"\r\n") > 4096
    stream = long_frame + _frame(b"x.after", sub._id, b"after")
    cut = 4098 if subject is None else next(  # after the second byte of a character
        i for i in range(4097, 4200) if stream[i] & 0xC0 == 0x80 and stream[i - 1] & 0xC0 == 0x80)
    await reader.parse(stream[:cut])
    await reader.parse(stream[cut:])  # raised ProtocolError: nats-py's read loop would have dropped the connection
    assert fast == [b"after"]
    if subject is not None:  # the long frame went through nats-py's parser, whole
        msg = await within(sub.next_msg(timeout=5), "the long frame")
        assert (msg.subject, msg.data) == (subject, b"long")
    else:
        assert sub.pending_msgs == 0


async def test_a_reply_to_with_whitespace_on_an_allowed_pattern_is_refused_before_any_handler(
        make_agent: Any, raw_nc: nats.NATS, monkeypatch: pytest.MonkeyPatch) -> None:
    """agentcore's MCP response pattern (always allowed) matches a replyTo whose last token holds CR/LF or spaces.
    Only nats-py's publish-side check (nats-py 2.15+; agentcore takes 2.9+) kept the PUB off the socket; without it
    the stranger's CRLF wrote a PUB of its choosing from the agent's connection. It is refused as a replyTo the
    agent does not answer: typed, before any handler runs, on any nats-py."""
    # What nats-py before 2.15 does: no subject check in publish (the attack needs nothing else).
    monkeypatch.setattr(nats.aio.client, "_validate_subject", lambda subject, **_: None, raising=False)
    monkeypatch.setattr(inline, "_validate_subject", None)
    ran: list[Any] = []

    async def work(message: dict[str, Any]) -> Any:
        ran.append(message["payload"]["content"])
        return NO_REPLY if message["payload"]["content"] == "quiet" else "done"

    agent = await make_agent("worker", capabilities={"work": work}, cache__enabled=False)
    injected: list[Any] = []

    async def on_evil(msg: Any) -> None:
        injected.append(msg.data)

    await raw_nc.subscribe("evil", cb=on_evil)
    inbox = raw_nc.new_inbox()
    answers: asyncio.Queue[Any] = asyncio.Queue()
    await raw_nc.subscribe(inbox, cb=answers.put)
    await subscribed(raw_nc)
    pattern = agent.topics.mcp_responses_any().replace("*", "s", 1)[:-1]
    for i, forged in enumerate((pattern + "x\r\nPUB evil 2\r\nhi", pattern + "x y", pattern + "x\ty")):
        await raw_nc.publish(agent.topics.task("work"), task_bytes(f"inj-{i}", i, replyTo=forged), reply=inbox)
        error = orjson.loads((await within(answers.get(), f"the refusal of replyTo {forged!r}", 15)).data)["payload"]
        assert error["error"]["code"] == "forbidden" and error["error"]["reason"] == "reply_to", error
    await raw_nc.publish(agent.topics.task("work"), task_bytes("honest", "x", replyTo=pattern + "ok"), reply=inbox)
    await eventually(lambda: ran == ["x"], what="the honest task")
    await subscribed(agent.nc)  # whatever the agent wrote is at the server before the marker
    await raw_nc.publish("evil", b"marker")  # from the stranger's own connection: after anything injected before
    await eventually(lambda: injected[-1:] == [b"marker"], what="the marker")
    assert injected == [b"marker"] and ran == ["x"]


async def test_a_subject_of_one_byte_that_is_not_utf8_never_reaches_a_wildcard_handler(
        make_agent: Any, nats_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A raw client publishes to the subject b'\\xff', which an agent subscribed to '>' receives: the compiled scanner
    handed it on with subject None (a logged traceback per message, no rate limit: a flood floods the log)."""
    seen: list[Any] = []

    def watch(topic: str, message: dict[str, Any]) -> bool:
        seen.append((topic, message["payload"]["content"]))
        return True

    agent = await make_agent("watcher")
    await agent.asubscribe(">", watch)
    honest = orjson.dumps(new_message("event", "honest", source_id="y", source_type="t"))
    reader, writer = await asyncio.open_connection("127.0.0.1", nats_server.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false}\r\n' + b"".join(b"PUB \xff %d\r\n%s\r\n" % (len(honest), honest)
                                                                for _ in range(3))
                     + b"PUB ok %d\r\n%s\r\nPING\r\n" % (len(honest), honest))
        await writer.drain()
        assert (await reader.readline()).startswith(b"PONG")
        await eventually(lambda: ("ok", "honest") in seen, what="the honest message")
    finally:
        writer.close()
    assert seen == [("ok", "honest")]
    assert agent.get_metrics()["frames_unreadable"] == 3  # dropped on the compiled fast path, counted there too
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
