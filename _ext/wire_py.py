"""Read NATS MSG frames straight from a connection's read buffer and hand them to their targets (pure-Python twin)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ("scan_frames", "frame_end", "pub_frame", "Frame", "Target")

#: scan() stopped because the buffer ends inside a frame (or is used up): wait for more bytes.
MORE = 0
#: scan() stopped at a frame that is not a MSG for one of its targets: the general parser takes that one.
OTHER = 1

_CRLF = b"\r\n"
_SPACED = re.compile(r"[ \t\r\n]")  # what nats-py's publish refuses in a subject
_MAX_LINE = 4096  # nats-server's default max control line: longer never comes from a server we speak to


def frame_end(buf: Any, pos: int) -> int:
    """Return where the protocol frame starting at pos ends (after its CRLFs), or -1 when it is not all in buf yet."""
    # MSG and HMSG carry a payload whose size their control line gives; every other operation is one line. A
    # control line this cannot read returns the end of buf, so the general parser sees it (and raises).
    nl: int = buf.find(_CRLF, pos)
    if nl < 0:
        return -1 if len(buf) - pos <= _MAX_LINE else len(buf)
    line = bytes(buf[pos:nl])
    if line.startswith((b"MSG ", b"HMSG ")):
        # the last token (spaces or tabs between them) is the total size; a MSG/HMSG has at least 4 tokens
        args = [arg for arg in line.replace(b"\t", b" ").split(b" ") if arg]
        size = _number(args[-1])
        if len(args) < 4 or size < 0:
            return len(buf)
        end = nl + 2 + size + 2
        return end if end <= len(buf) else -1
    return nl + 2


def _number(text: bytes) -> int:
    """The decimal number text (ASCII digits only, at most 18), or -1."""
    return int(text) if 0 < len(text) <= 18 and text.isdigit() else -1


def scan_frames(buf: Any, pos: int, targets: Mapping[int, Callable[[str, str, bytes], None]],
                dropped: list[int] | None = None) -> tuple[int, int, int, int]:
    """Deliver MSG frames from pos to targets[sid](subject, reply, payload); return (stop, MORE/OTHER, msgs, bytes)."""
    # dropped: a one-item list counting the frames dropped because their subject or reply is not UTF-8.
    # A target must not raise. Scanning stops at the first frame that is not all in buf (MORE) or that is not a
    # MSG for a sid with a target (OTHER: HMSG, PING, another sid, a malformed line), which the caller's general
    # parser handles.
    n = len(buf)
    msgs = 0
    nbytes = 0
    while pos < n:
        if n - pos < 4:
            return pos, (MORE if b"MSG "[:n - pos] == bytes(buf[pos:n]) else OTHER), msgs, nbytes
        if buf[pos:pos + 4] != b"MSG ":
            return pos, OTHER, msgs, nbytes
        nl = buf.find(_CRLF, pos, pos + _MAX_LINE)
        if nl < 0:
            return pos, (MORE if n - pos < _MAX_LINE else OTHER), msgs, nbytes
        args = bytes(buf[pos + 4:nl]).split(b" ")
        if len(args) == 3:
            subject, sid_text, size_text = args
            reply = b""
        elif len(args) == 4 and args[2]:
            subject, sid_text, reply, size_text = args
        else:
            return pos, OTHER, msgs, nbytes  # not the server's single-spaced form: the general parser decides
        sid, size = _number(sid_text), _number(size_text)
        if sid < 0 or size < 0 or not subject:
            return pos, OTHER, msgs, nbytes
        target = targets.get(sid)
        if target is None:
            return pos, OTHER, msgs, nbytes
        start = nl + 2
        end = start + size
        if end + 2 > n:
            return pos, MORE, msgs, nbytes
        if buf[end:end + 2] != _CRLF:
            return pos, OTHER, msgs, nbytes
        try:
            subject_text, reply_text = subject.decode(), reply.decode()
        except UnicodeDecodeError:  # a stranger's subject that is not UTF-8: dropped (nats-py's decode would raise)
            pos = end + 2
            if dropped is not None:
                dropped[0] += 1
            continue
        payload = bytes(buf[start:end])
        pos = end + 2
        msgs += 1
        nbytes += size
        target(subject_text, reply_text, payload)
    return pos, MORE, msgs, nbytes


class Frame:
    """One MSG frame as the dispatcher reads it: subject, reply ("" for none), data, and no headers."""

    __slots__ = ("subject", "reply", "data", "headers")

    def __init__(self, subject: str, reply: str, data: bytes) -> None:
        self.subject = subject
        self.reply = reply
        self.data = data
        self.headers: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"Frame(subject={self.subject!r}, reply={self.reply!r}, data={self.data!r})"


class Target:
    """Delivers one subscription's frames as nats-py's _process_msg would, minus the pending queue."""

    # sub is the nats-py Subscription, subs the client's sid -> subscription dict, targets the scanner's
    # sid -> target dict. With a key, each frame goes to dispatch(Frame(subject, reply, data), key); without one
    # (None), dispatch gets make(nc, subject, reply, data, None, None, False, sid) (a nats-py Msg). on_slow(subject,
    # reply) reports one over the subscription's pending-bytes limit (it is dropped), on_error(subject) a dispatch
    # that raised (called inside the except block: it may log the exception).

    __slots__ = ("nc", "sub", "sid", "subs", "targets", "dispatch", "key", "make", "on_slow", "on_error")

    def __init__(self, nc: Any, sub: Any, sid: int, subs: dict[int, Any], targets: dict[int, Any],
                 dispatch: Callable[..., None], key: Any, make: Callable[..., Any], on_slow: Callable[[str, str], None],
                 on_error: Callable[[str], None]) -> None:
        self.nc = nc
        self.sub = sub
        self.sid = sid
        self.subs = subs
        self.targets = targets
        self.dispatch = dispatch
        self.key = key
        self.make = make
        self.on_slow = on_slow
        self.on_error = on_error

    def __call__(self, subject: str, reply: str, data: bytes) -> None:
        if self.subs.get(self.sid) is not self.sub:  # unsubscribed or drained: nats-py drops what still arrives for it
            self.targets.pop(self.sid, None)
            return
        sub: Any = self.sub  # (declared: the test above would narrow it to what subs.get returns)
        sub._received += 1
        if sub._max_msgs and sub._received >= sub._max_msgs:  # unsubscribe(limit=n) since: nats-py's auto-unsubscribe
            self.subs.pop(self.sid, None)
        limit = sub._pending_bytes_limit
        if 0 < limit <= len(data):  # nats-py's slow-consumer rule (the inline queue never holds one message)
            self.on_slow(subject, reply)
            return
        try:
            if self.key is not None:
                self.dispatch(Frame(subject, reply, data), self.key)
            else:
                self.dispatch(self.make(self.nc, subject, reply, data, None, None, False, self.sid))
        except Exception:  # never into nats-py's read loop: that would drop the connection
            self.on_error(subject)


def pub_frame(subject: str, reply: str, payload: bytes, strict: bool = False) -> bytes | None:
    """Return the PUB command nats-py's pub_cmd writes for payload (one buffer: control line, payload, CRLF)."""
    # strict: None instead when nats-py's publish would refuse the subjects (an empty subject, or whitespace or
    # CRLF in either), so that the caller raises nats-py's own error; the check costs no regex search per message.
    if strict and (not subject or _SPACED.search(subject) or _SPACED.search(reply)):
        return None
    return b"".join((f"PUB {subject} {reply} {len(payload)}\r\n".encode(), payload, b"\r\n"))
