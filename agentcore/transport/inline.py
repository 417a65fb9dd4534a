"""Inline delivery: hand a subscription's messages to the agent as nats-py reads them, and a request mux on top.

nats-py queues every message of a callback subscription and wakes a per-subscription task to run the callback:
one event-loop iteration (tens of microseconds here) per message. The agent's dispatch never blocks (handlers
start as their own Tasks), so it can run right where nats-py reads the message. The same holds for replies to
our requests: a reply resolves its waiting future directly, and the timeout is a timer rather than a wait_for
(which costs another iteration). Both rely on two attributes of nats-py's Subscription (`_pending_queue`,
`_pending_size`); where they are missing, the plain callback path is used.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.aio.client
import nats.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol.command import hpub_cmd

from .._impl import Frame, pub_frame
from .tracecontext import TRACE_HEADERS

from .reader import BURSTS, take_over

__all__ = ("deliver_inline", "forget_connection", "send_now", "queue_now", "RequestMux", "REJECT", "Accept", "MAX_NAMED_SUBJECT")

log = logging.getLogger("agentcore.agent")

#: Read the agent's own MSG frames straight from the buffer (tests turn it off to compare with nats-py's parser).
READ_FRAMES = True

_NO_RESPONDERS = "503"

#: The longest subject a stranger may name for us to publish to (a replyTo, a pull or credit subject): nats-server
#: closes a connection whose PUB control line passes 4,096 bytes, so one long forged subject would cut the agent off.
MAX_NAMED_SUBJECT = 1024

#: What an accept callback returns for a message that does not answer its request: it is dropped, the wait goes on.
REJECT: Any = object()
#: Checks one message that came to a request's inbox (a Frame, or a nats-py Msg when it has headers): returns what
#: the request returns, or REJECT.
Accept = Callable[[Msg], Any]


class _InlineQueue(asyncio.Queue):  # type: ignore[type-arg]
    """Stands in for a subscription's pending queue: each message is dispatched as nats-py puts it."""

    def __init__(self, sub: Subscription, dispatch: Callable[..., None], tag: Any = None) -> None:
        super().__init__()
        self._sub = sub
        self._dispatch = dispatch
        self._tag = tag

    def put_nowait(self, msg: Msg) -> None:
        # nats-py counted the message as pending for its slow-consumer limit; it is handled right here.
        self._sub._pending_size -= len(msg.data)
        try:
            if self._tag is None:
                self._dispatch(msg)
            else:
                self._dispatch(msg, self._tag)
        except Exception:  # never into nats-py's read loop: that would drop the connection
            log.exception("dispatching a message on %s failed", msg.subject)


def deliver_inline(sub: Subscription, dispatch: Callable[..., None], tag: Any = None) -> bool:
    """Make sub hand its messages to dispatch as they are read; False when this nats-py cannot.

    Its plain MSG frames are read straight from the connection's buffer (transport.reader); the rest (HMSG)
    still comes through nats-py's parser and the inline queue. Without a tag, dispatch(msg) gets a nats-py Msg;
    with one, dispatch(message, tag) gets a slim Frame for a plain MSG (subject, reply, data, headers None) and
    the nats-py Msg for the rest: one call per message, no closure binding the tag.
    """
    if not isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue) or not hasattr(sub, "_pending_size"):
        return False
    sub._pending_queue = _InlineQueue(sub, dispatch, tag)
    conn = getattr(sub, "_conn", None)
    if conn is not None and READ_FRAMES:
        take_over(conn, sub, dispatch, tag)
    return True


_CONNECTED = NATSClient.CONNECTED
_NATS_PUBLISH = NATSClient.publish  # a publish wrapped or replaced (tracing, tests) is always called
_validate_subject: Callable[[str], None] | None = getattr(nats.aio.client, "_validate_subject", None)
_sent_now: set[NATSClient] = set()  # connections that wrote a message directly in this event-loop iteration


def _header_block(headers: dict[str, str]) -> bytes | None:
    """Return headers as NATS/1.0 header lines (as nc.publish writes them); None for anything but plain trace headers."""
    lines = [b"NATS/1.0\r\n"]
    for key, value in headers.items():
        if key not in TRACE_HEADERS or "\r" in value or "\n" in value:
            return None  # other headers, or values nc.publish would have to clean: its own path
        lines.append(f"{key}: {value.strip()}\r\n".encode())
    lines.append(b"\r\n")
    return b"".join(lines)


def _command(nc: NATSClient, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> bytes | None:
    """Return the PUB (HPUB with trace headers) nc.publish would write, its subjects checked as it checks them.

    None when the headers are not plain trace headers (nc.publish cleans those).
    """
    strict = _validate_subject is not None and not getattr(nc, "_skip_subject_validation", False)
    if headers is None:
        # pub_cmd's bytes, built in one buffer (compiled core); None for subjects nats-py refuses
        command: bytes | None = pub_frame(subject, reply, data, strict)
        if command is not None:
            return command
    else:  # trace headers passed through: HPUB, as nc.publish would write it
        block = _header_block(headers)
        if block is None:
            return None
        command = hpub_cmd(subject, reply, block, data)
    if strict and _validate_subject is not None:  # nats-py's own check, and its error for what it refuses
        _validate_subject(subject)
        if reply:
            _validate_subject(reply)
    if command is None:  # pub_frame refused a subject that nats-py's check let pass: nats-py's own bytes
        command = pub_frame(subject, reply, data)
    return command


def send_now(nc: NATSClient, subject: str, data: bytes, reply: str = "", headers: dict[str, str] | None = None) -> bool:
    """Write one PUB straight to the socket, as nc.publish would queue it; False when nc.publish must send it.

    nc.publish appends the PUB to nats-py's pending buffer and wakes its flusher task, which writes it one
    event-loop iteration later, after whatever runs first (on a reply: the rest of the read chunk and the
    handler Task's bookkeeping), and costs a future, a queue hop and a task step. A request or a reply is
    latency-bound: when nothing is pending (order kept), the socket has nothing buffered (no backpressure to
    respect), this connection has not written directly yet in this iteration and its reader is not delivering a
    read of several frames (a burst coalesces in the flusher: one write), it goes out now. The checks and
    counters are nats-py's publish's own.
    """
    try:
        if nc._status != _CONNECTED or nc._pending_data_size or nc in _sent_now or nc in BURSTS or not subject:
            return False
        if type(nc).publish is not _NATS_PUBLISH or "publish" in nc.__dict__:
            return False
        writer = getattr(nc._transport, "_io_writer", None)  # TCP or TLS; a websocket transport has none
        if writer is None:
            return False
        transport = writer.transport
        if transport.get_write_buffer_size() or transport.is_closing() or len(data) > nc._max_payload:
            return False
        # Over TLS the writer's transport wraps a TCP one whose own buffer it does not count: check that too.
        bare = getattr(nc._transport, "_bare_io_writer", None)
        if bare is not None and bare is not writer and bare.transport.get_write_buffer_size():
            return False
    except AttributeError:  # a nats-py whose internals differ: its own publish
        return False
    command = _command(nc, subject, reply, data, headers)
    if command is None:
        return False
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += len(data)
    transport.write(command)
    _sent_now.add(nc)
    _loop_of(nc).call_soon(_sent_now.discard, nc)
    return True


def queue_now(nc: NATSClient, subject: str, data: bytes, reply: str = "", headers: dict[str, str] | None = None) -> bool:
    """Append one PUB to nc's pending buffer and kick its flusher, as nc.publish does; False when nc.publish must.

    What send_now declines (something is pending, or this iteration already wrote directly) goes out through
    nats-py's flusher in order either way; nc.publish gets there through three awaited coroutines per message,
    which a burst of answers (a read chunk of pipelined requests) pays for each one. Only the plain case is
    taken: connected, the flusher alive and already kicked or kickable, the pending buffer within its limit;
    anything else (a forced flush, a reconnect's buffering, a wrapped publish) stays nc.publish's.
    """
    try:
        if nc._status != _CONNECTED or not subject or len(data) > nc._max_payload:
            return False
        if type(nc).publish is not _NATS_PUBLISH or "publish" in nc.__dict__:
            return False
        queue = nc._flush_queue
        flusher = nc._flusher_task
        if queue is None or flusher is None or flusher.done():
            return False
        pending = nc._pending
        size = nc._pending_data_size
        limit = nc._max_pending_size
    except AttributeError:  # a nats-py whose internals differ: its own publish
        return False
    command = _command(nc, subject, reply, data, headers)
    if command is None or 0 < limit < size + len(command):
        return False  # headers to clean, or a full pending buffer nc.publish flushes with a wait: its own path
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += len(data)
    pending.append(command)
    nc._pending_data_size = size + len(command)
    if queue.empty():  # the flusher is not kicked yet: what nc.publish's _flush_pending does (an empty queue has room)
        queue.put_nowait(flusher.get_loop().create_future())
    return True


def _loop_of(nc: NATSClient) -> asyncio.AbstractEventLoop:
    """Return nc's loop (its flusher Task's): before 3.12 asyncio.get_running_loop() costs a getpid() system call."""
    flusher = nc._flusher_task
    return flusher.get_loop() if flusher is not None else asyncio.get_running_loop()


def forget_connection(nc: NATSClient) -> None:
    """Drop nc from send_now's bookkeeping (its loop may close before the pending discard runs, or mid-burst)."""
    _sent_now.discard(nc)
    BURSTS.discard(nc)  # a read loop whose loop closed while it waited inside a burst never runs its own discard


_REPLIES = "replies"  # the tag the request mux's inbox subscription is delivered with


class RequestMux:
    """Requests over one wildcard inbox subscription, with replies resolved inline.

    A request may name an accept callback: it sees each message that reaches the request's inbox, right where
    nats-py reads it, and returns what the request returns (a decoded, verified reply, say) or REJECT to drop
    the message and keep waiting for the real answer. nats-server's no-responders status bypasses it.
    """

    def __init__(self, nc: NATSClient) -> None:
        self.nc = nc
        self._prefix = ""
        # token -> (future, accept, subject the request went to: a permission violation names it)
        self._waiting: dict[str, tuple[asyncio.Future[Any], Accept | None, str]] = {}
        self._tokens = itertools.count(1)
        self._sub: Subscription | None = None
        # (deadline, token) of every request, a heap pruned lazily, and the one loop timer that serves it, armed
        # at the earliest deadline: a TimerHandle per request (call_later, then cancel) costs ~3 µs per round trip.
        self._deadlines: list[tuple[float, str]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def _start(self) -> None:
        self._prefix = self.nc.new_inbox() + "."

        async def fallback(msg: Msg) -> None:  # used only where inline delivery is unavailable
            self._resolve(msg)

        sub = await self.nc.subscribe(self._prefix + "*", cb=fallback)
        deliver_inline(sub, self._resolve, _REPLIES)  # plain replies come as slim Frames (accept reads four fields)
        self._sub = sub

    def _resolve(self, msg: Any, tag: Any = None) -> None:  # a nats-py Msg, or a Frame (see deliver_inline)
        token = msg.subject[len(self._prefix):]
        entry = self._waiting.get(token)
        if entry is None:
            return
        fut, accept, _subject = entry
        if fut.done():
            return
        headers = msg.headers
        if headers and not msg.data and headers.get("Status") == _NO_RESPONDERS:
            del self._waiting[token]
            fut.set_exception(nats.errors.NoRespondersError())
            return
        if accept is None:
            value: Any = msg if type(msg) is not Frame else self.nc.msg_class(
                self.nc, msg.subject, msg.reply, msg.data, None, None, False, self._sub._id if self._sub else 0)
        else:
            try:
                value = accept(msg)
            except Exception as exc:  # the request fails with it; never into nats-py's read loop
                del self._waiting[token]
                fut.set_exception(exc)
                return
            if value is REJECT:
                return
        del self._waiting[token]
        fut.set_result(value)

    async def request(self, subject: str, data: bytes, timeout: float, accept: Accept | None = None,
                      headers: dict[str, str] | None = None, *, inbox: list[str] | None = None) -> Any:
        """Publish data (with headers: trace headers only) to subject and return the reply (what accept made of it).

        Raise nats' NoRespondersError or TimeoutError. inbox, when given, gets the reply inbox appended.
        """
        _check_timeout(timeout)
        if self._sub is None:
            await self._start()  # SUB goes out before the PUB on the same connection: no flush needed
        token, fut, reply = self._open(timeout, accept, subject, inbox)
        try:
            nc = self.nc  # written at once, else queued behind what is pending: no publish coroutine per request
            if not send_now(nc, subject, data, reply, headers) and not queue_now(nc, subject, data, reply, headers):
                await nc.publish(subject, data, reply=reply, headers=headers)
            return await fut
        finally:
            self._waiting.pop(token, None)

    async def request_via(self, publish: Callable[[str], Awaitable[None]], timeout: float, accept: Accept | None = None,
                          subject: str = "", inbox: list[str] | None = None) -> Any:
        """Call publish(inbox) and return the reply that comes to that inbox within timeout (same errors as request).

        subject is where publish sends the request: a permission violation the server reports for it fails the
        request at once (fail_subject). inbox, when given, receives the inbox used (a cancel names it).
        """
        _check_timeout(timeout)
        if self._sub is None:
            await self._start()  # SUB goes out before the PUB on the same connection: no flush needed
        token, fut, reply = self._open(timeout, accept, subject, inbox)
        try:
            await publish(reply)
            return await fut
        finally:
            self._waiting.pop(token, None)

    def _open(self, timeout: float, accept: Accept | None, subject: str,
              inbox: list[str] | None) -> tuple[str, asyncio.Future[Any], str]:
        """Start waiting for a reply within timeout: return (token, the future it resolves, the reply inbox)."""
        token = str(next(self._tokens))
        loop = _loop_of(self.nc)
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiting[token] = (fut, accept, subject)
        self._expire_at(loop, loop.time() + timeout, token)
        reply = self._prefix + token
        if inbox is not None:
            inbox.append(reply)
        return token, fut, reply

    def _expire_at(self, loop: asyncio.AbstractEventLoop, when: float, token: str) -> None:
        """Time out the request token at when (loop time), unless it has its answer by then."""
        deadlines, waiting = self._deadlines, self._waiting
        if len(deadlines) > 2 * len(waiting) + 64:  # mostly answered requests: keep the heap small
            deadlines[:] = [entry for entry in deadlines if entry[1] in waiting]
            heapq.heapify(deadlines)
        heapq.heappush(deadlines, (when, token))
        timer = self._timer
        if timer is None or when < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(when, self._expire_due, loop)

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        deadlines, waiting = self._deadlines, self._waiting
        now = loop.time() + _RESOLUTION  # what asyncio itself counts as due
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1] not in waiting):
            entry = waiting.get(heapq.heappop(deadlines)[1])
            if entry is not None:
                _expire(entry[0])
        if deadlines:
            self._timer = loop.call_at(deadlines[0][0], self._expire_due, loop)

    def fail_subject(self, subject: str, exc: Exception) -> int:
        """Fail the waiting requests sent to subject (compared lowercased, as nats-py reports it); return how many."""
        subject = subject.lower()
        return self._fail([t for t, (_f, _a, s) in self._waiting.items() if s.lower() == subject], exc)

    def fail_inbox(self, inbox: str, exc: Exception) -> int:
        """Fail the waiting request whose reply inbox is inbox (compared lowercased); return how many (0 or 1)."""
        inbox = inbox.lower()
        prefix = self._prefix.lower()
        # Tokens are digits: the part after the (lowercased) prefix is the token itself.
        return self._fail([inbox[len(prefix):]] if prefix and inbox.startswith(prefix) else [], exc)

    def resolve_inbox(self, inbox: str, value: Any) -> bool:
        """Give the request waiting on reply inbox value as its reply (found another way); False when none waits there."""
        prefix = self._prefix
        entry = self._waiting.pop(inbox[len(prefix):], None) if prefix and inbox.startswith(prefix) else None
        if entry is None or entry[0].done():
            return False
        entry[0].set_result(value)
        return True

    def covers(self, subject: str, sid: int | None = None) -> bool:
        """Return whether subject (lowercased, as nats-py reports it) or sid is this mux's inbox subscription."""
        sub = self._sub
        if sub is None:
            return False
        return (sid is not None and getattr(sub, "_id", None) == sid) or subject.lower() == sub.subject.lower()

    def tokens(self) -> list[str]:
        """Return the tokens of the requests waiting now (fail_tokens fails those still waiting later)."""
        return list(self._waiting)

    def fail_tokens(self, tokens: list[str], exc: Exception) -> int:
        """Fail those of tokens still waiting; return how many."""
        return self._fail(tokens, exc)

    def _fail(self, tokens: list[str], exc: Exception) -> int:
        waiting = self._waiting
        failed = 0
        for token in tokens:
            entry = waiting.pop(token, None)
            if entry is not None and not entry[0].done():
                entry[0].set_exception(exc)
                failed += 1
        return failed

    async def close(self) -> None:
        """Fail the waiting requests and drop the inbox subscription."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
        for fut, _accept, _subject in self._waiting.values():
            if not fut.done():
                fut.set_exception(nats.errors.ConnectionClosedError())
        self._waiting.clear()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                pass
            self._sub = None


_RESOLUTION = time.get_clock_info("monotonic").resolution


def _check_timeout(timeout: float) -> None:
    if not timeout >= 0:  # NaN would never compare due and stall every other request's deadline in the heap
        raise ValueError(f"request timeout must be a number >= 0, got {timeout!r}")


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(nats.errors.TimeoutError())
