"""The agent's own subscriptions read straight from nats-py's read buffer: no regex parse, no coroutine, per message.

nats-py parses each frame with regular expressions, copies it out of its buffer, awaits ``_process_msg`` and
``_process_headers`` and builds the Msg, per message. For the subscriptions the agent delivers inline
(``inline.deliver_inline``) the compiled frame scanner (``agentcore._ext.wire``) finds the complete MSG frames
at the head of the buffer and hands each one, through the compiled ``Target``, to the subscription's dispatch: as
a slim ``Frame`` with the subscription's tag when it has one, else as a nats-py Msg. Everything else -- HMSG (headers: signed identities, no-responders), messages for every other sid (JetStream, the user's own
subscriptions), PING/PONG, INFO, -ERR, +OK -- goes one frame at a time through nats-py's own parser, so
connect, reconnect, auth, TLS and JetStream stay nats-py's. Where nats-py's parser is not the one this module
was written against, the connection keeps it and only delivery stays inline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import nats.errors
from nats.aio.client import Client as NATSClient
from nats.aio.subscription import Subscription
from nats.protocol import parser as nats_parser

from .._impl import Target, frame_end, scan_frames

__all__ = ("BURSTS", "dropped", "take_over")

log = logging.getLogger("agentcore.agent")

#: Connections whose reader is delivering a read of more than one frame: their answers wait for the flusher.
BURSTS: set[NATSClient] = set()

_Parser = nats_parser.Parser
_WAITING = nats_parser.AWAITING_CONTROL_LINE
_CRLF_SIZE = 2


def _target(nc: NATSClient, sub: Subscription, dispatch: Callable[..., None], targets: dict[int, Target], tag: Any) -> Target:
    """Return what delivers sub's frames as nats-py's _process_msg would, minus the pending queue (compiled core).

    With a tag (not None) each frame goes to dispatch(Frame, tag): a slim message of subject, reply and data,
    without nats-py's Msg. Without one, dispatch gets a nats-py Msg.
    """
    sid: int = sub._id

    def on_slow(subject: str, reply: str) -> None:  # nats-py's slow-consumer report: the message is dropped
        asyncio.ensure_future(nc._error_cb(nats.errors.SlowConsumerError(subject=subject, reply=reply, sid=sid, sub=sub)))

    def on_error(subject: str) -> None:  # called inside the Target's except block: the exception is logged
        log.exception("dispatching a message on %s failed", subject)

    return Target(nc, sub, sid, nc._subs, targets, dispatch, tag, nc.msg_class, on_slow, on_error)


class _Reader(_Parser):
    """nats-py's Parser with a fast path for the frames of the agent's own subscriptions."""

    targets: dict[int, Target]
    dropped: list[int]  # frames dropped unread: a subject or reply not UTF-8, or one nats-py misreads (_readable)

    def __init__(self, nc: NATSClient) -> None:  # take_over swaps the class of nats-py's own parser instead
        super().__init__(nc)
        self.targets = {}
        self.dropped = [0]

    async def parse(self, data: bytes = b"") -> None:
        buf: bytearray = self.buf
        if self.state != _WAITING:  # nats-py's parser is inside a frame's payload: let it finish that frame
            need = self.needed + _CRLF_SIZE - len(buf)
            if len(data) < need:
                buf.extend(data)
                return
            await _Parser.parse(self, data[:need])
            data = data[need:]
            if self.buf is not buf or buf or self.state != _WAITING:  # reset (a reconnect) or not what we know
                await _Parser.parse(self, data)
                return
        if buf:
            buf.extend(data)
            view: bytes | bytearray = buf
        else:
            view = data
        targets = self.targets
        nc = self.nc
        stats = nc.stats
        pos, end_of = 0, len(view)
        # A read that holds more than one frame is a burst (pipelined requests): the answers its handlers give at
        # once go out together through nats-py's flusher, in one write at the end of this loop iteration, instead
        # of the first alone straight to the socket (inline.send_now) and the rest after it, which doubles the
        # writes here and the reads of whoever waits for them. A lone frame's answer still goes out at once.
        burst = 0 <= frame_end(view, 0) < end_of
        if burst:
            BURSTS.add(nc)
        try:
            while pos < end_of:
                pos, other, msgs, nbytes = scan_frames(view, pos, targets, self.dropped)
                if msgs:
                    stats["in_msgs"] += msgs
                    stats["in_bytes"] += nbytes
                if not other:
                    break
                end = frame_end(view, pos)
                if end < 0:
                    break  # a frame for nats-py that is not all here yet: kept below until it is
                line_end = view.find(b"\r\n", pos, end)
                if line_end < 0:
                    # A control line past 4,096 bytes (a subject near nats-server's limit: the MSG line adds the
                    # sid) that a read cut: kept until its end is here, never judged or handed on in part.
                    break
                # nats-py's parser takes exactly this frame (a MSG for another sid, HMSG, PING, INFO, -ERR, ...).
                if not _readable(view[pos:line_end]):
                    self.dropped[0] += 1
                    pos = end  # nats-py would raise or misread it in its read loop, which would stop for good
                    continue
                own = self.buf = bytearray(view[pos:end])
                await _Parser.parse(self)
                pos = end
                if self.buf is not own or self.state != _WAITING:  # reset by a reconnect, or a close
                    return
                if own:  # nats-py waits for the rest of a frame that is all here (a line it cannot read): never
                    self.dropped[0] += 1
                    _unreadable(own[:own.find(b"\r\n")])
                    own.clear()
        finally:
            if burst:
                BURSTS.discard(nc)
        if view is buf:
            del buf[:pos]
            self.buf = buf
        else:
            self.buf = bytearray(view[pos:])


def _readable(line: bytes | bytearray) -> bool:
    """Return whether nats-py's parser reads the control line line as nats-server wrote it.

    A MSG/HMSG subject or reply a stranger chose may not be UTF-8 (nats-py's decode raises), or may hold \\x0b or
    \\x0c: nats-server splits subjects on spaces and tabs only, nats-py's parser on those two as well (it raises
    ProtocolError, reads another reply subject, or waits for good on a frame that is all there).
    """
    if line.startswith((b"MSG ", b"HMSG ")) and (b"\x0b" in line or b"\x0c" in line):
        _unreadable(line)
        return False
    try:
        line.decode()
    except UnicodeDecodeError:
        _unreadable(line)
        return False
    return True


def _unreadable(line: bytes | bytearray) -> None:
    """Count (and now and then log) a frame dropped because nats-py's parser cannot read its control line."""
    _dropped[0] += 1
    if _dropped[0] % 1000 == 1:  # once per thousand: a flood must not flood the log
        log.warning("dropped %d messages whose subject or reply nats-py cannot read (not UTF-8, or \\x0b/\\x0c "
                    "inside), the last: %r", _dropped[0], bytes(line[:200]))


_dropped = [0]  # messages dropped by _readable, in this process


def _usable(parser: object) -> bool:
    """Return whether parser is nats-py's own Parser, in the shape this module was written against."""
    return type(parser) is _Parser and all(
        hasattr(parser, name) for name in ("buf", "state", "needed", "nc", "reset"))


def dropped(nc: NATSClient | None) -> int:
    """Return how many frames nc's reader dropped unread (a subject or reply not UTF-8, or one nats-py misreads)."""
    parser = getattr(nc, "_ps", None)
    return parser.dropped[0] if type(parser) is _Reader else 0


def take_over(nc: NATSClient, sub: Subscription, dispatch: Callable[..., None], tag: Any = None) -> bool:
    """Read sub's MSG frames straight from nc's buffer into dispatch (see _target for tag); False when this nats-py cannot."""
    try:
        parser = nc._ps
        if type(parser) is not _Reader:
            if not _usable(parser):
                return False
            # The parser object stays (nats-py's reconnect resets it in place); only its parse() changes.
            parser.__class__ = _Reader
            cast(_Reader, parser).targets = {}
            cast(_Reader, parser).dropped = [0]
        if sub._max_msgs or sub._jsi is not None or nc._subs.get(sub._id) is not sub:
            return False  # auto-unsubscribe and JetStream bookkeeping stay nats-py's
        targets = cast(_Reader, parser).targets
        for sid in [sid for sid in targets if sid not in nc._subs]:  # subscriptions gone since: nats-py forgot them
            del targets[sid]
        targets[sub._id] = _target(nc, sub, dispatch, targets, tag)
    except AttributeError:  # a nats-py whose internals differ: delivery stays inline through its own parser
        return False
    return True
