"""The frame scanner (agentcore._ext.wire): MSG frames read from a buffer, exactly; everything else left to nats-py."""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

import pytest

from conftest import CoreImplementation

MORE, OTHER = 0, 1

STREAM = (b"MSG a.b 1 5\r\nhello\r\n"            # 0..20
          b"MSG a.b 1 _INBOX.x.1 3\r\nabc\r\n"   # 20..49
          b"MSG e 1 0\r\n\r\n"                   # 49..62: an empty payload
          b"PING\r\n"                            # 62..68
          b"MSG c 2 1\r\nz\r\n"                  # 68..82: sid 2 has no target
          b"HMSG h 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")  # 82..114: headers, nats-py's


def _scan(wire: ModuleType, buf: Any, pos: int = 0, sids: tuple[int, ...] = (1,)) -> tuple[tuple[int, int, int, int], list[Any]]:
    got: list[Any] = []
    targets = {sid: (lambda *frame, sid=sid: got.append((sid, *frame))) for sid in sids}
    return wire.scan_frames(buf, pos, targets), got


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_frames_for_targets_are_delivered_until_another_frame(wire_module: ModuleType, kind: type) -> None:
    result, got = _scan(wire_module, kind(STREAM))
    assert result == (62, OTHER, 3, 8)
    assert got == [(1, "a.b", "", b"hello"), (1, "a.b", "_INBOX.x.1", b"abc"), (1, "e", "", b"")]
    assert wire_module.frame_end(kind(STREAM), 62) == 68  # PING: one line, for nats-py
    assert _scan(wire_module, kind(STREAM), 68) == ((68, OTHER, 0, 0), [])  # sid 2: no target
    assert _scan(wire_module, kind(STREAM), 68, (1, 2))[0] == (82, OTHER, 1, 1)
    assert wire_module.frame_end(kind(STREAM), 82) == len(STREAM)  # HMSG: headers and payload, for nats-py
    assert _scan(wire_module, kind(STREAM), 82) == ((82, OTHER, 0, 0), [])


def test_a_frame_split_anywhere_waits_for_the_rest(wire_module: ModuleType) -> None:
    """Every prefix of the stream delivers only whole frames and stops at the first cut one (MORE)."""
    ends = [20, 49, 62]
    for cut in range(0, 63):
        result, got = _scan(wire_module, bytearray(STREAM[:cut]))
        whole = [e for e in ends if e <= cut]
        assert result[0] == (whole[-1] if whole else 0), cut
        assert result[1] == MORE and result[2] == len(whole) == len(got), cut
    for start, end in ((62, 68), (68, 82), (82, len(STREAM))):
        for cut in range(start, end + 1):
            assert wire_module.frame_end(STREAM[:cut], start) == (end if cut == end else -1), cut


def test_a_large_payload_and_one_split_inside_it(wire_module: ModuleType) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, CRLFs and "MSG " inside
    frame = b"MSG big.one 7 reply.to %d\r\n" % len(payload) + payload + b"\r\n"
    assert _scan(wire_module, frame[:-1], 0, (7,)) == ((0, MORE, 0, 0), [])
    result, got = _scan(wire_module, frame + b"MSG x 7 1\r\n", 0, (7,))
    assert result == (len(frame), MORE, 1, len(payload))
    assert got == [(7, "big.one", "reply.to", payload)]
    assert wire_module.frame_end(frame, 0) == len(frame) and wire_module.frame_end(frame[:-1], 0) == -1


@pytest.mark.parametrize("line", [
    b"MSG  a 1 5\r\nhello\r\n",        # a double space: not the server's form
    b"MSG a 1 r  5\r\nhello\r\n",
    b"MSG a x 5\r\nhello\r\n",         # a sid that is no number
    b"MSG a 1 -5\r\nhello\r\n",
    b"MSG a 1 5\r\nhelloXX",           # no CRLF after the payload
    b"MSG a 1 r s 5\r\nhello\r\n",     # too many fields
    b"MSG a 1\r\n",                    # too few
    b"MSG a 1 1000000000000000000\r\n",
    b"MSGa 1 5\r\nhello\r\n",
    b"+OK\r\n",
    b"-ERR 'Unknown Protocol Operation'\r\n",
])
def test_anything_not_a_plain_frame_for_a_target_is_left_to_nats_py(wire_module: ModuleType, line: bytes) -> None:
    assert _scan(wire_module, line) == ((0, OTHER, 0, 0), [])


def test_frame_end_of_unreadable_control_lines_hands_the_rest_to_nats_py(wire_module: ModuleType) -> None:
    for line in (b"MSG a 1 x\r\nzz", b"HMSG a 1\r\n", b"MSG a 1 5 5 5 y\r\n"):
        assert wire_module.frame_end(line, 0) == len(line)
    assert wire_module.frame_end(b"PIN", 0) == -1
    assert wire_module.frame_end(b"X" * 5000, 0) == 5000  # no control line is that long
    assert wire_module.frame_end(b"MSG a\t1  5\r\nhello\r\n", 0) == 19  # nats-py's parser reads tabs too


def test_a_target_that_changes_the_table_is_seen_at_the_next_frame(wire_module: ModuleType) -> None:
    got: list[bytes] = []
    targets: dict[int, Any] = {}

    def first(subject: str, reply: str, data: bytes) -> None:
        got.append(data)
        del targets[1]  # unsubscribed while handling this message

    targets[1] = first
    assert wire_module.scan_frames(STREAM, 0, targets) == (20, OTHER, 1, 5)
    assert got == [b"hello"]


def test_twins_agree_on_random_streams(twins: tuple[CoreImplementation, CoreImplementation]) -> None:
    rng = random.Random(7)
    pieces = [b"MSG a.b 1 5\r\nhello\r\n", b"MSG a 1 r 0\r\n\r\n", b"MSG c 2 1\r\nz\r\n", b"PING\r\n", b"PONG\r\n",
              b"HMSG h 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n", b"MSG  a 1 1\r\nz\r\n", b"MSG a 3 x 2\r\nzz\r\n", b"+OK\r\n"]
    compiled, pure = twins
    for _ in range(300):
        stream = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        stream = stream[:rng.randint(0, len(stream))] if rng.random() < 0.5 else stream
        for pos in {0, rng.randint(0, len(stream))}:
            for sids in ((1,), (1, 3), ()):
                assert _scan(compiled.wire, stream, pos, sids) == _scan(pure.wire, stream, pos, sids), (stream, pos, sids)
            assert compiled.wire.frame_end(stream, pos) == pure.wire.frame_end(stream, pos), (stream, pos)


def test_only_bytes_and_bytearray_are_read(wire_module: ModuleType) -> None:
    assert wire_module.scan_frames(b"", 0, {}) == (0, MORE, 0, 0)
    if wire_module.__name__.endswith("_py"):
        return  # the twin reads any buffer; the compiled scanner insists on the two types nats-py hands it
    with pytest.raises(TypeError):
        wire_module.scan_frames(memoryview(STREAM), 0, {})


def test_a_frame_whose_subject_or_reply_is_not_utf8_is_dropped(wire_module: ModuleType) -> None:
    stream = b"MSG a.\xff 1 2\r\nhi\r\nMSG a 1 \xfe 2\r\nhi\r\nMSG a 1 2\r\nok\r\n"
    result, got = _scan(wire_module, stream)
    assert result == (len(stream), MORE, 1, 2)
    assert got == [(1, "a", "", b"ok")]


def test_a_one_byte_subject_that_is_not_utf8_is_dropped_too(wire_module: ModuleType) -> None:
    """The compiled scanner's repeated-subject cache started from b"\\xff" standing for "no subject yet": a frame whose
    subject was that byte (a raw client's, on a '>' subscription) was handed on with subject None."""
    stream = b"MSG \xff 1 2\r\nhi\r\nMSG \xff 1 r 2\r\nhi\r\nMSG a 1 2\r\nok\r\nMSG \xff 1 2\r\nhi\r\n"
    result, got = _scan(wire_module, stream)
    assert result == (len(stream), MORE, 1, 2)
    assert got == [(1, "a", "", b"ok")]


class _Sub:
    def __init__(self, sid: int, max_msgs: int = 0, limit: int = 0) -> None:
        self._id, self._received, self._max_msgs, self._pending_bytes_limit = sid, 0, max_msgs, limit


def _target(wire: ModuleType, sub: _Sub, subs: dict[int, Any], targets: dict[int, Any]) -> tuple[Any, dict[str, list[Any]]]:
    seen: dict[str, list[Any]] = {"msgs": [], "slow": [], "errors": []}

    def dispatch(msg: Any) -> None:
        if msg[1] == "boom":
            raise ValueError("boom")
        seen["msgs"].append(msg)

    def on_error(subject: str) -> None:
        import sys
        seen["errors"].append((subject, type(sys.exc_info()[1]).__name__))  # called inside the except block

    target = wire.Target("nc", sub, sub._id, subs, targets, dispatch, None, lambda *a: a,
                         lambda subject, reply: seen["slow"].append((subject, reply)), on_error)
    targets[sub._id] = target
    return target, seen


def test_target_delivers_counts_and_keeps_errors_out_of_the_reader(wire_module: ModuleType) -> None:
    sub = _Sub(7)
    subs: dict[int, Any] = {7: sub}
    targets: dict[int, Any] = {}
    target, seen = _target(wire_module, sub, subs, targets)
    target("a.b", "_INBOX.1", b"hi")
    target("boom", "", b"x")  # a dispatch that raises is reported, never raised into the read loop
    assert seen["msgs"] == [("nc", "a.b", "_INBOX.1", b"hi", None, None, False, 7)]
    assert seen["errors"] == [("boom", "ValueError")]
    assert sub._received == 2


def test_target_follows_nats_py_rules_for_limits_and_unsubscribes(wire_module: ModuleType) -> None:
    sub = _Sub(3, max_msgs=2, limit=4)
    subs: dict[int, Any] = {3: sub}
    targets: dict[int, Any] = {}
    target, seen = _target(wire_module, sub, subs, targets)
    target("s", "", b"12345")  # over the pending-bytes limit: reported as a slow consumer, dropped
    assert seen["slow"] == [("s", "")] and seen["msgs"] == []
    target("s", "r", b"1")  # the second of max_msgs: delivered, and the subscription forgotten as nats-py would
    assert len(seen["msgs"]) == 1 and 3 not in subs
    target("s", "", b"1")  # unsubscribed: dropped, and the target removes itself
    assert len(seen["msgs"]) == 1 and 3 not in targets


def test_a_keyed_target_hands_slim_frames_and_its_key_to_dispatch(wire_module: ModuleType) -> None:
    sub = _Sub(5)
    subs: dict[int, Any] = {5: sub}
    targets: dict[int, Any] = {}
    got: list[tuple[Any, Any]] = []
    key = ("agents.x.>", "")
    target = wire_module.Target("nc", sub, 5, subs, targets, lambda frame, k: got.append((frame, k)), key,
                                lambda *a: pytest.fail("no nats-py Msg is made for a keyed target"),
                                lambda subject, reply: None, lambda subject: None)
    target("a.b", "_INBOX.9", b"hi")
    target("a.c", "", b"")
    (first, k1), (second, k2) = got
    assert k1 is key and k2 is key
    assert (first.subject, first.reply, first.data, first.headers) == ("a.b", "_INBOX.9", b"hi", None)
    assert (second.subject, second.reply, second.data, second.headers) == ("a.c", "", b"", None)
    assert type(first) is wire_module.Frame and "a.b" in repr(first)
    assert sub._received == 2


def test_a_frame_is_read_only(wire_module: ModuleType) -> None:
    frame = wire_module.Frame("s", "r", b"d")
    assert (frame.subject, frame.reply, frame.data, frame.headers) == ("s", "r", b"d", None)
    if wire_module.__name__.endswith("_py"):
        return  # the pure twin's slots are plain attributes; nothing in agentcore writes to a frame
    with pytest.raises(AttributeError):
        frame.subject = "other"


def test_repeated_and_changing_subjects_are_each_delivered_as_sent(wire_module: ModuleType) -> None:
    # The compiled scanner hands the previous frame's subject str again when the bytes repeat: what changes (a
    # subject of the same length, a prefix, a non-UTF-8 one dropped in between) must still come out as sent.
    frames = [b"a.b", b"a.b", b"a.c", b"a.b", b"a.b\xff", b"a.b", b"\xc3\xa9.b", b"\xc3\xa9.b", b"a", b"a.bb", b"a.b"]
    buf = b"".join(b"MSG %s 1 %d\r\n%d\r\n" % (subject, len(str(i)), i) for i, subject in enumerate(frames))
    result, got = _scan(wire_module, buf)
    assert result == (len(buf), MORE, len(frames) - 1, sum(len(str(i)) for i in range(len(frames)) if i != 4))
    assert [(subject, data) for _, subject, _, data in got] == [
        (subject.decode(), str(i).encode()) for i, subject in enumerate(frames) if i != 4]


def test_a_target_called_directly_delivers_as_the_scanner_does(wire_module: ModuleType) -> None:
    got: list[Any] = []
    sub = type("Sub", (), {"_received": 0, "_max_msgs": 0, "_pending_bytes_limit": 0})()
    subs: dict[int, Any] = {1: sub}
    targets: dict[int, Any] = {}
    target = wire_module.Target(None, sub, 1, subs, targets, lambda frame, key: got.append((frame.subject, frame.data, key)),
                                "k", None, None, None)
    targets[1] = target
    target("x.y", "", b"direct")
    assert wire_module.scan_frames(b"MSG x.y 1 7\r\nscanned\r\n", 0, targets)[2] == 1
    assert got == [("x.y", b"direct", "k"), ("x.y", b"scanned", "k")] and sub._received == 2


def test_twins_count_the_same_dropped_frames(twins: tuple[CoreImplementation, CoreImplementation]) -> None:
    """get_metrics()['frames_unreadable'] counts what scan_frames drops: both twins count the same frames."""
    rng = random.Random(11)
    pieces = [b"MSG a.b 1 5\r\nhello\r\n", b"MSG a.\xff 1 2\r\nhi\r\n", b"MSG \xff 1 2\r\nhi\r\n", b"MSG a 1 \xfe 2\r\nhi\r\n",
              b"MSG a.b 1 \xc3 0\r\n\r\n", b"MSG a.\xe2\x82 1 r 1\r\nz\r\n", b"MSG c 2 1\r\nz\r\n", b"PING\r\n",
              b"MSG a.\xff 3 1\r\nz\r\n"]
    compiled, pure = twins
    for _ in range(300):
        stream = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        stream = stream[:rng.randint(0, len(stream))] if rng.random() < 0.3 else stream
        for sids in ((1,), (1, 3), ()):
            counts = []
            for wire in (compiled.wire, pure.wire):
                dropped = [0]
                got: list[Any] = []
                targets = {sid: (lambda *frame, sid=sid: got.append((sid, *frame))) for sid in sids}
                counts.append((wire.scan_frames(stream, 0, targets, dropped), got, dropped[0]))
            assert counts[0] == counts[1], (stream, sids)
    dropped = [0]
    pure.wire.scan_frames(b"MSG a.\xff 1 2\r\nhi\r\nMSG a 1 \xfe 2\r\nhi\r\n", 0, {1: lambda *frame: None}, dropped)
    assert dropped == [2]
