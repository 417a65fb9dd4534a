"""Stream frames on the wire: NATS headers carry the framing, the body carries the chunk's bytes untouched.

A frame is one NATS message to the stream's inbox with headers
  Agent-Stream (task id), Agent-Seq (0, 1, ...), Agent-Kind (text | bytes | json | envelope | error),
  Agent-Final ("1" on the last frame) and Agent-Ctl (where the consumer sends credit and cancel).
Credit: the consumer publishes to Agent-Ctl a message with Agent-Ack (highest sequence consumed) and
Agent-Window (W): the producer may send sequence numbers up to ack + W. Agent-Cancel: 1 stops the producer.
The bodies are raw bytes, so a 20 MB result costs no base64 or JSON re-encoding.

Anyone who sees a stream may send to its inboxes, so neither end trusts the other's numbers: a producer never
widens its window beyond the first one configured (its own, or the consumer's first) and takes no credit for
frames it has not sent; a receiver that asked for a window aborts the transfer (``StreamLimitError``, the
producer is told to stop, what was buffered is freed) on a frame beyond the credit it granted, a gap wider than
its window, or more bytes than the size it was told.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import orjson
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .._eager import start_eager
from .._impl import validate_subject
from ..envelope import decode, raise_for_error
from ..errors import (
    AgentCoreError, NoRespondersError, PersistenceError, StreamError, StreamGapError, StreamLimitError, StreamTimeoutError,
    SubjectError,
)
from .identity import H_SENDER, Signer, Verifier
from .inline import MAX_NAMED_SUBJECT
from .settlement import pub_ack_stream
from .subscriptions import confirm
from .tracecontext import CURRENT, TRACE_ROOM

__all__ = ("StreamChunk", "StreamReceiver", "FrameSender", "offer_receiver", "decode_pulled", "pull_offer", "pull_answer", "serve_pull", "encode_item", "split_point", "HEADER_ROOM",
           "H_STREAM", "H_SEQ", "H_KIND", "H_FINAL", "H_CTL", "H_ACK", "H_WINDOW", "H_CANCEL")

H_STREAM = "Agent-Stream"
H_SEQ = "Agent-Seq"
H_KIND = "Agent-Kind"
H_FINAL = "Agent-Final"
H_CTL = "Agent-Ctl"
H_ACK = "Agent-Ack"
H_WINDOW = "Agent-Window"
H_CANCEL = "Agent-Cancel"

TEXT, BYTES, JSON, ENVELOPE, ERROR = "text", "bytes", "json", "envelope", "error"

log = logging.getLogger("agentcore.streaming")


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One chunk of a stream, in order: data is at most chunk_size bytes of items of one kind."""

    task_id: str
    seq: int
    kind: str  # "text" (UTF-8, never split inside a character), "bytes", or "json" (JSON Lines: one item per line)
    data: bytes
    final: bool

    @property
    def text(self) -> str:
        """Return the chunk's data as text."""
        return self.data.decode("utf-8")

    def items(self) -> list[Any]:
        """Return the JSON items of a json chunk (an item larger than chunk_size spans chunks: join their data)."""
        return [orjson.loads(line) for line in self.data.splitlines() if line]


def encode_item(item: Any) -> tuple[str, bytes]:
    """Return (kind, bytes) for one generator item: str -> text, bytes -> bytes, anything else -> one JSON line."""
    if isinstance(item, str):
        return TEXT, item.encode("utf-8")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return BYTES, bytes(item)
    return JSON, orjson.dumps(item) + b"\n"


def split_point(kind: str, data: bytes | bytearray, size: int) -> int:
    """Return where to cut data so the first part holds at most size bytes (text is never cut inside a character)."""
    if kind != TEXT:
        return size
    cut = size
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # a UTF-8 continuation byte: back up to the character start
        cut -= 1
    return cut or size


# Headers and subject share max_payload with the body (nats-py checks the body alone): a frame's own headers and
# signature, and the trace headers it carries on (up to W3C's limits, which a stranger's task may fill).
HEADER_ROOM = 1024 + TRACE_ROOM



def _header_int(headers: dict[str, str], name: str) -> int | None:
    """Return an integer stream header, or None when it is absent or malformed (peer input is never trusted)."""
    text = headers.get(name)
    # ASCII digits only, at most 18: int() also takes " 1", "1_0" and other scripts' digits ("\u0661" is 1), and
    # a bystander's "1" spelled so would pass for the producer's own frame 1.
    if text is None or not 0 < len(text.removeprefix("-")) <= 18 or not text.removeprefix("-").isascii() \
            or not text.removeprefix("-").isdigit():
        return None
    return int(text)

class FrameSender:
    """Send frames to one consumer, waiting for credit when the consumer asked for a window."""

    def __init__(self, nc: NATSClient, task_id: str, dest: str | None, window: int | None, idle_timeout: float,
                 signer: Signer | None = None, verifier: Verifier | None = None) -> None:
        self.nc = nc
        self.signer = signer  # frames are signed (subject, headers with the sequence number, body) when the agent signs
        # Identities verified: credit, cancel and the pull are taken only signed by a trusted key, and from the first
        # one on only from that key (the consumer); anything else on the control inbox is ignored.
        self.verifier = verifier
        self._consumer: str | None = None
        self.task_id = task_id
        self.dest = dest
        self.window = window  # None: the requester did not ask for flow control, send freely
        # The widest window it ever allows: its own, else the first a consumer asks for; credit beyond it is clamped.
        self.limit = window
        self.clamped = 0  # credit messages that asked for more than was granted (a forgery, or a confused consumer)
        self.idle_timeout = idle_timeout
        self.acked = -1
        self.seq = 0
        self.cancelled = False
        self.max_in_flight = 0
        self.ctl = nc.new_inbox()
        self._wake = asyncio.Event()
        self._sub: Subscription | None = None

    async def open(self) -> None:
        self._sub = await self.nc.subscribe(self.ctl, cb=self._on_ctl)

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                pass

    async def _on_ctl(self, msg: Msg) -> None:
        headers = msg.headers or {}
        if self.verifier is not None and not self._from_consumer(msg, headers):
            return
        if headers.get(H_CANCEL):
            self.cancelled = True
        if msg.reply and self.dest is None:  # a pull: where the frames go
            self.dest = msg.reply
        window, acked = _header_int(headers, H_WINDOW), _header_int(headers, H_ACK)
        if window is not None:
            window = max(1, window)
            if self.limit is None:
                self.limit = window
            elif window > self.limit:
                self.clamped += 1
                window = self.limit
            self.window = window
        if acked is not None:
            if acked >= self.seq:  # credit for frames never sent: no consumer consumed them
                self.clamped += 1
                acked = self.seq - 1
            self.acked = max(self.acked, acked)
        self._wake.set()

    def _from_consumer(self, msg: Msg, headers: dict[str, str]) -> bool:
        """Return whether a control message is signed by the consumer (the first verified key); count a refusal."""
        verifier = self.verifier
        assert verifier is not None
        sender = headers.get(H_SENDER)
        source_id = verifier.owner(sender) if sender is not None else None
        reason = "wrong_key" if self._consumer is not None and sender != self._consumer else verifier.check(
            msg.subject, msg.reply, headers, msg.data, source_id)
        if reason is not None:
            verifier.refuse(reason, source_id, msg.subject)
            return False
        if self._consumer is None:
            self._consumer = sender
        return True

    async def wait_pulled(self, timeout: float) -> None:
        while self.dest is None and not self.cancelled:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                raise StreamTimeoutError(f"nobody pulled stream {self.task_id} within {timeout}s", task_id=self.task_id) from None

    async def abort(self, code: str, text: str) -> None:
        """End the stream with an error frame right away, without waiting for credit."""
        if self.cancelled or self.dest is None:
            return
        headers = {H_STREAM: self.task_id, H_SEQ: str(self.seq), H_KIND: ERROR, H_CTL: self.ctl, H_FINAL: "1"}
        trace = CURRENT.get()  # the stream's handler was traced: each frame carries its trace context
        if trace is not None:
            headers.update(trace)
        data = orjson.dumps({"code": code, "message": text})
        if self.signer is not None:
            headers = self.signer.headers(self.dest, "", data, headers)
        try:
            await self.nc.publish(self.dest, data, headers=headers)
        except nats.errors.Error as exc:
            log.debug("stream %s: could not send its error frame: %s", self.task_id, exc)
        self.seq += 1

    async def send(self, kind: str, data: bytes, final: bool = False) -> bool:
        """Send one frame once credit allows; return False when the consumer cancelled."""
        while self.window is not None and self.seq > self.acked + self.window and not self.cancelled:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.idle_timeout)
            except asyncio.TimeoutError:
                raise StreamTimeoutError(
                    f"stream {self.task_id}: no credit from the consumer within {self.idle_timeout}s", task_id=self.task_id
                ) from None
        if self.cancelled:
            return False
        headers = {H_STREAM: self.task_id, H_SEQ: str(self.seq), H_KIND: kind, H_CTL: self.ctl}
        if final:
            headers[H_FINAL] = "1"
        trace = CURRENT.get()
        if trace is not None:
            headers.update(trace)
        assert self.dest is not None
        if self.signer is not None:
            headers = self.signer.headers(self.dest, "", data, headers)
        await self.nc.publish(self.dest, data, headers=headers)
        self.max_in_flight = max(self.max_in_flight, self.seq - self.acked)
        self.seq += 1
        return True


class StreamReceiver:
    """Yield a stream's chunks in order: duplicates dropped, gaps detected, credit granted as chunks are consumed.

    Use ``async with`` (or call ``aclose()``) so that leaving early tells the producer to stop.
    """

    def __init__(
        self,
        nc: NATSClient,
        *,
        window: int = 16,
        idle_timeout: float = 30.0,
        gap_timeout: float = 1.0,
        start: Any = None,
        task_id: str | None = None,
        reply_to: str | None = None,
        producer: str | None = None,
        on_reject: Callable[[], None] | None = None,
        verifier: Verifier | None = None,
        source_id: str | None = None,
        signer: Signer | None = None,
        max_bytes: int | None = None,
        on_limit: Callable[[], None] | None = None,
        on_close: Callable[[str | None, str, bool], None] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.nc = nc
        self.inbox = reply_to or nc.new_inbox()
        self.window = window
        self.idle_timeout = idle_timeout
        self.gap_timeout = gap_timeout
        self.duplicates = 0
        self.rejected = 0  # messages on the inbox that are not this stream's: other streams, other producers, forgeries
        self.max_buffered = 0
        self.task_id: str | None = task_id
        self._expect = task_id  # when set, frames and results of other tasks on the same subject are ignored
        self._start = start  # coroutine function(inbox) that asks the producer to begin
        self._frames: dict[int, Msg] = {}
        self._next = 0
        self._acked = -1
        # Bounds on what a producer (or a forger) can make it hold: frames beyond the granted credit (when it asked
        # for the window itself: a start, or stamp()), gaps wider than the window, more than max_bytes in all.
        self.max_bytes = max_bytes
        self._strict = start is not None
        self._received = 0  # bytes of the frames taken (buffered or yielded)
        self._contiguous = 0  # the first sequence number not yet received
        self._error: StreamError | None = None  # the transfer was aborted: raised to the consumer
        self._on_limit = on_limit
        # The stream is bound to its producer from the first frame on: its Agent-Stream and its Agent-Ctl (given
        # up front for a pulled offer, whose producer's control inbox is the pull subject).
        self._stream: str | None = None
        self._ctl: str | None = producer
        self._answered = False  # a plain result was taken: nothing else can be the answer
        self._on_reject = on_reject
        # Signed identities (verifier not None): every frame and result is checked before it may bind the stream;
        # frames carry no envelope source, so they are bound to source_id's keys (the agent asked, when known),
        # and from the first verified signed frame on, to that frame's Agent-Sender key.
        self._verifier = verifier
        self._source_id = source_id
        self._signer = signer  # credit, cancel and pulls are signed when the agent signs
        self._key: str | None = None
        self._stored: str | None = None  # a JetStream stream acknowledged storing the task instead of an agent answering
        self._granting: set[asyncio.Task[Any]] = set()
        # Called once when the stream ends: (task id, inbox, whether it was left before its end: a cancellation).
        self._on_close = on_close
        self._done = False
        self._arrived = asyncio.Event()
        self._sub: Subscription | None = None

    @property
    def reply_to(self) -> str:
        """Return the subject the task must name as its replyTo (or NATS reply subject) for its stream to arrive here."""
        return self.inbox

    def stamp(self, message: dict[str, Any]) -> dict[str, Any]:
        """Address a task envelope to this receiver: replyTo, routing.stream window and the id it expects; return it."""
        if self._expect is None:
            self._expect = self.task_id = message["id"]
        else:
            message["id"] = self._expect
        message["replyTo"] = self.inbox
        routing = message.get("routing")
        if routing is None:
            routing = message["routing"] = {}
        routing["stream"] = {"window": self.window}
        self._strict = True  # the producer is told the window: a frame beyond the credit is a violation
        return message

    async def _open(self) -> None:
        if self._sub is None:
            self._sub = await self.nc.subscribe(self.inbox, cb=self._on_frame)
            if self._start is not None:
                await self._start(self.inbox)
            else:  # the task goes out some other way, maybe on another connection: the server must know us first
                await confirm(self.nc)

    async def _on_frame(self, msg: Msg) -> None:
        headers = msg.headers or {}
        if not self._accepts(msg, headers):
            self.rejected += 1
            if self._on_reject is not None:
                self._on_reject()
            log.debug("stream %s: dropped a message on %s that is not this stream's", self.task_id, msg.subject)
            return
        if H_SEQ in headers:
            seq = _header_int(headers, H_SEQ)
            if seq is None or seq < 0:
                self.duplicates += 1  # counted with the frames dropped: a malformed frame carries nothing usable
                log.warning("stream %s: dropped a frame with a malformed %s header", self.task_id, H_SEQ)
                return
        else:
            seq = -1  # a plain result envelope (no stream)
        if seq >= 0 and (seq < self._next or seq in self._frames):
            self.duplicates += 1
            return
        if seq < 0:
            seq = self._next
            self._answered = True
        elif self._outside(seq, len(msg.data)):
            return
        self._frames[seq] = msg
        self.max_buffered = max(self.max_buffered, len(self._frames))
        self._arrived.set()

    def _outside(self, seq: int, size: int) -> bool:
        """Take a frame's place and bytes; abort the transfer and return True when it lies outside the bounds."""
        if self._strict and seq > self._acked + self.window:
            problem = f"frame {seq} is beyond the credit granted (up to {self._acked + self.window})"
        elif seq > max(self._contiguous, self._next) + self.window:
            problem = f"frame {seq} leaves a gap wider than the window of {self.window} (next expected {self._contiguous})"
        elif self.max_bytes is not None and self._received + size > self.max_bytes:
            problem = f"its frames exceed the {self.max_bytes} bytes it may hold"
        else:
            self._received += size
            if seq == self._contiguous:
                self._contiguous += 1
                while self._contiguous in self._frames:
                    self._contiguous += 1
            return False
        self.abort(StreamLimitError(f"stream {self.task_id}: {problem}; the transfer was aborted", task_id=self.task_id))
        return True

    def abort(self, error: StreamError) -> None:
        """End the transfer with error (raised to the consumer): tell the producer to stop and free what is buffered."""
        if self._error is not None or self._done:
            return
        self._error = error
        self._frames.clear()
        if self._on_limit is not None:
            self._on_limit()
        log.debug("%s", error)  # raised to the consumer; a flood of forged frames must not flood the log
        if self._ctl is not None and not self.nc.is_closed:
            self._grant(self._acked, cancel=True)
        self._arrived.set()

    def _accepts(self, msg: Msg, headers: dict[str, str]) -> bool:
        """Return whether msg belongs to this stream; the first frame binds it to its producer."""
        if self._answered or self._error is not None:
            return False  # the task was answered with one plain result already
        stream = headers.get(H_STREAM)
        if stream is not None or H_SEQ in headers:  # a frame
            ctl = headers.get(H_CTL)
            if self._stream is None:
                if stream is None or not ctl or len(ctl) > MAX_NAMED_SUBJECT or (self._expect is not None and stream != self._expect):
                    return False
                if self._ctl is not None and ctl != self._ctl:
                    return False
                if self._verifier is not None and not self._verified(msg, headers, self._source_id):
                    return False  # checked before it binds the stream: a forged first frame binds nothing
                self._stream, self._ctl = stream, ctl
                return True
            if stream != self._stream or ctl != self._ctl:
                return False
            return self._verifier is None or self._verified(msg, headers, self._source_id)
        if self._stream is not None or self._ctl is not None:
            return False  # the producer streams (or an offer is being pulled): a plain result is not its answer
        if self._expect is None:
            return self._verifier is None or self._verified(msg, headers, self._result_source(msg))
        if not msg.data and headers.get("Status") == "503":
            return True  # the server's no-responders status: nobody took the task (before any frame came)
        try:  # a plain result (or an offer) answers the task it correlates with
            result = orjson.loads(msg.data)
            correlation = result.get("correlationId")
        except (orjson.JSONDecodeError, AttributeError):
            stored = pub_ack_stream(msg.data)
            if stored is not None:  # said at the idle timeout, unless the answer comes after all
                self._stored = stored
            return False
        if correlation != self._expect:
            return False
        if self._verifier is None:
            return True
        source = result.get("source")
        return self._verified(msg, headers, source.get("id") if isinstance(source, dict) else None)

    def _result_source(self, msg: Msg) -> Any:
        """Return the source.id a plain result claims (None when it claims none)."""
        try:
            source = orjson.loads(msg.data).get("source")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return source.get("id") if isinstance(source, dict) else None

    def _verified(self, msg: Msg, headers: dict[str, str], source_id: Any) -> bool:
        """Check msg's signed identity (the verifier is set); count a refusal and return False when it fails.

        A frame is bound to source_id's keys when the agent asked is known, else to any key trusted for some
        agent; the first verified signed frame pins the stream to its Agent-Sender key, so a later frame
        signed by another trusted key, or not signed at all, is refused even where identity.require is off.
        """
        verifier = self._verifier
        assert verifier is not None
        sender = headers.get(H_SENDER)
        reason: str | None
        if self._key is not None and sender != self._key:
            reason = "wrong_key"
        else:
            if source_id is None and sender is not None:
                source_id = verifier.owner(sender)
            reason = verifier.check(msg.subject, msg.reply, headers, msg.data, source_id)
        if reason is not None:
            verifier.refuse(reason, source_id, msg.subject)
            log.debug("stream %s: refused a message on %s (%s)", self.task_id, msg.subject, reason)
            return False
        if sender is not None and self._key is None and (H_SEQ in headers or H_STREAM in headers):
            self._key = sender
        return True

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def __aenter__(self) -> StreamReceiver:
        await self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def __anext__(self) -> StreamChunk:
        await self._open()
        while True:
            if self._error is not None and not self._done:
                self._done = True
                await self._release()
                raise self._error
            if self._done:
                self._closed(False)
                raise StopAsyncIteration
            msg = self._frames.pop(self._next, None)
            if msg is not None:
                if msg.headers is None or H_SEQ not in msg.headers:
                    return await self._result(msg)
                chunk = self._chunk(msg)
                if chunk is None:
                    continue
                return chunk
            await self._wait()

    async def _wait(self) -> None:
        gap = bool(self._frames)  # later frames are here, the next one is not: wait briefly for reordering
        timeout = self.gap_timeout if gap else self.idle_timeout
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except asyncio.TimeoutError:
            await self.aclose()
            if self._stored is not None and not self._frames:
                raise PersistenceError(f"JetStream stream {self._stored} stored task {self.task_id} instead of an agent "
                                       "streaming its answer: streams travel over core NATS only") from None
            if gap:
                raise StreamGapError(
                    f"stream {self.task_id}: chunk {self._next} missing (have {sorted(self._frames)[:5]}...)", task_id=self.task_id
                ) from None
            raise StreamTimeoutError(f"stream {self.task_id}: no chunk within {self.idle_timeout}s", task_id=self.task_id) from None

    async def _result(self, msg: Msg) -> StreamChunk:
        """Return the one chunk of a task that answered with a plain result instead of streaming (errors raise)."""
        seq = self._next
        self._next += 1
        self._done = True
        if not msg.data and (msg.headers or {}).get("Status") == "503":  # the server: nobody took the task
            raise NoRespondersError("no agent is subscribed to the stream's task subject")
        reply = decode(msg.data)
        offer = reply["payload"].get("stream")
        if isinstance(offer, dict) and offer.get("pull"):  # a result too large for one message: pull it whole
            await self._release()
            reply = await pull_answer(self.nc, reply, window=self.window, timeout=self.idle_timeout, on_reject=self._on_reject,
                                      verifier=self._verifier, signer=self._signer)
        raise_for_error(reply)
        self.task_id = reply.get("correlationId") or self.task_id
        return StreamChunk(self.task_id or "", seq, JSON, orjson.dumps(reply["payload"]["content"]) + b"\n", True)

    def _chunk(self, msg: Msg) -> StreamChunk | None:
        headers = msg.headers
        assert headers is not None
        seq = self._next
        self._next += 1
        self.task_id = headers.get(H_STREAM)
        kind = headers.get(H_KIND, BYTES)
        final = headers.get(H_FINAL) == "1"
        if kind == ERROR:
            self._done = True
            error = orjson.loads(msg.data) if msg.data else {}
            raise StreamError(str(error.get("message", "stream failed")), code=str(error.get("code", "stream_error")), task_id=self.task_id)
        if final:
            self._done = True
        elif seq - self._acked >= max(1, self.window // 2):
            self._grant(seq)
        if final and not msg.data:
            return None
        return StreamChunk(self.task_id or "", seq, kind, msg.data, final)

    def _grant(self, seq: int, cancel: bool = False) -> None:
        if self._ctl is None:
            return
        self._acked = seq
        headers = {H_ACK: str(seq), H_WINDOW: str(self.window)}
        if cancel:
            headers[H_CANCEL] = "1"
        if self._signer is not None:
            headers = self._signer.headers(self._ctl, "", b"", headers)
        # Credit is fire-and-forget: nats-py buffers the publish; the next grant is cumulative if one is lost.
        task = start_eager(self.nc.publish(self._ctl, b"", headers=headers))
        if task is not None:  # keep it alive until it is written
            self._granting.add(task)
            task.add_done_callback(self._granting.discard)

    async def arrived(self) -> None:
        """Open the stream and wait until its first frame or answer is here (StreamTimeoutError after idle_timeout)."""
        await self._open()
        while not self._frames and not self._done and self._error is None:
            await self._wait()

    def widen(self, window: int) -> None:
        """Grant the producer a wider window (up to what it allows) from now on."""
        self.window = window
        self._grant(self._acked)

    async def read_all(self, max_bytes: int | None = None) -> bytes:
        """Return every chunk's data joined (and close the stream); StreamError beyond max_bytes (the producer is told to stop)."""
        if max_bytes is not None and (self.max_bytes is None or max_bytes < self.max_bytes):
            self.max_bytes = max_bytes  # frames beyond it are refused as they arrive, not only once yielded
        parts = []
        total = 0
        try:
            async for chunk in self:
                total += len(chunk.data)
                if max_bytes is not None and total > max_bytes:
                    raise StreamError(f"stream {self.task_id} is larger than the {max_bytes} bytes allowed", task_id=self.task_id)
                parts.append(chunk.data)
        finally:
            await self.aclose()
        return b"".join(parts)

    def _closed(self, abandoned: bool) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None and self._sub is not None:
            on_close(self.task_id, self.inbox, abandoned)

    async def aclose(self) -> None:
        """Stop receiving; tell the producer to stop if the stream has not ended."""
        self._closed(not self._done)
        if not self._done:
            self._done = True
            if self._ctl is not None and not self.nc.is_closed:
                self._grant(self._acked, cancel=True)
        await self._release()

    async def _release(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            self._start = None
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass


def offer_receiver(
    nc: NATSClient, offer: dict[str, Any], *, window: int = 8, timeout: float = 30.0, max_bytes: int | None = None,
    stream_id: str | None = None, on_reject: Callable[[], None] | None = None, verifier: Verifier | None = None,
    signer: Signer | None = None, source_id: str | None = None, on_limit: Callable[[], None] | None = None,
) -> StreamReceiver:
    """Return the receiver that pulls an offer ``{"pull": subject, ...}`` (entering it sends the pull, asking for window)."""
    pull = offer.get("pull")
    try:
        if not isinstance(pull, str):
            raise SubjectError("not a string")
        validate_subject(pull)  # peer input: no wildcards, no whitespace
    except SubjectError:
        raise StreamError(f"the offer names {pull!r} to pull from, which is not a subject") from None

    async def start(inbox: str) -> None:
        headers = {H_WINDOW: str(window)}
        if signer is not None:
            headers = signer.headers(pull, inbox, b"", headers)
        await nc.publish(pull, b"", reply=inbox, headers=headers)

    return StreamReceiver(nc, window=window, idle_timeout=timeout, start=start, task_id=stream_id, producer=pull,
                          on_reject=on_reject, verifier=verifier, source_id=source_id, signer=signer,
                          max_bytes=max_bytes, on_limit=on_limit)


def decode_pulled(data: bytes) -> dict[str, Any]:
    """Return the envelope a pulled stream reassembled (StreamError when it does not decode)."""
    try:
        reply: dict[str, Any] = decode(data)
    except AgentCoreError as exc:
        raise StreamError(f"the reassembled message does not decode: {exc}") from exc
    return reply


async def pull_offer(
    nc: NATSClient, offer: dict[str, Any], *, window: int = 8, timeout: float = 30.0, max_bytes: int | None = None,
    stream_id: str | None = None, on_reject: Callable[[], None] | None = None, verifier: Verifier | None = None,
    signer: Signer | None = None, source_id: str | None = None,
) -> dict[str, Any]:
    """Pull an oversized message (a result or a request) offered as ``payload.stream = {"pull": subject, ...}``; return its envelope.

    The frames must come from the producer that offered it (Agent-Ctl = the pull subject) and, when stream_id is
    given, carry it as Agent-Stream; anything else reaching the inbox is dropped (on_reject() is called for each).
    """
    receiver = offer_receiver(nc, offer, window=window, timeout=timeout, max_bytes=max_bytes, stream_id=stream_id,
                              on_reject=on_reject, verifier=verifier, signer=signer, source_id=source_id)
    return decode_pulled(await receiver.read_all(max_bytes))


async def pull_answer(nc: NATSClient, offer: dict[str, Any], *, window: int = 8, timeout: float = 30.0,
                      on_reject: Callable[[], None] | None = None, verifier: Verifier | None = None,
                      signer: Signer | None = None, limit: int | None = None) -> dict[str, Any]:
    """Pull the result offered by offer (an answer already verified as ours) and return it: it must be that same answer.

    The frames carry the request's id (the offer's correlationId) from the offer's producer, at most the size
    offered, and the reassembled result must have the offer's correlationId and source.
    """
    stream = offer["payload"]["stream"]
    request_id = offer.get("correlationId")
    size = stream.get("size")
    source = offer.get("source")
    max_bytes = size if isinstance(size, int) and not isinstance(size, bool) else None
    if limit is not None:
        if max_bytes is not None and max_bytes > limit:
            raise StreamLimitError(f"the result offered for {request_id} declares {max_bytes} bytes, more than the "
                                   f"{limit} allowed (agent.max_request_bytes)", task_id=request_id)
        max_bytes = limit if max_bytes is None else max_bytes
    reply = await pull_offer(nc, stream, window=window, timeout=timeout, stream_id=request_id, on_reject=on_reject,
                             max_bytes=max_bytes,
                             verifier=verifier, signer=signer, source_id=source.get("id") if isinstance(source, dict) else None)
    if reply.get("correlationId") != request_id or reply["source"] != offer["source"]:
        raise StreamError(f"the result offered for {request_id} carried another message ({reply['id']} from "
                          f"{reply['source'].get('id')})", task_id=request_id)
    return reply


async def serve_pull(sender: FrameSender, data: bytes, timeout: float) -> bool:
    """Wait until the offer is pulled, then send data as ENVELOPE frames; False when the puller cancelled."""
    await sender.wait_pulled(timeout)
    step = (sender.nc.max_payload or 1024 * 1024) - HEADER_ROOM
    view = memoryview(data)
    for start in range(0, len(data), step):
        end = start + step
        if not await sender.send(ENVELOPE, bytes(view[start:end]), final=end >= len(data)):
            return False
    return True
