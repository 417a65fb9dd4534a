"""Chunked streaming of responses with ordering, duplicate dropping, gap detection and credit-based backpressure.

The frame format and credit protocol are in stream_frames. Two uses:
- ``stream_response(task_id, generator)`` inside a task handler streams to a requester that asked with
  ``request_stream(...)`` (the task carries ``routing.stream = {"window": W}`` and its reply inbox).
- ``receive_stream(task_id)`` receives the stream of a task the consumer sends some other way (``publish``,
  another client): open the receiver first, then send the task with ``replyTo`` (or the NATS reply subject)
  set to ``receiver.reply_to``, its id set to ``receiver.task_id`` and, for backpressure from the first chunk,
  ``routing.stream = {"window": W}`` -- ``receiver.stamp(envelope)`` sets all three.
- A result larger than the server's max_payload, for a requester that sent ``routing.stream`` (every
  ``request``/``request_message``/``request_stream`` does), is offered with a small result whose
  ``payload.stream = {"pull": subject, "size": n}``; the requester pulls it as a stream and reassembles it
  (a stream receiver does so too, and yields the whole result as its one chunk).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import nats.errors
import orjson
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ._eager import start_eager
from .envelope import decode, encode, new_id, new_message, raise_for_error
from ._impl import validate_subject
from .errors import (
    AgentCoreError, PayloadTooLargeError, RequestTimeoutError, StreamError, StreamGapError, StreamTimeoutError, SubjectError,
)
from .stream_frames import (
    BYTES,
    ENVELOPE,
    ERROR,
    H_ACK,
    H_CANCEL,
    H_CTL,
    H_FINAL,
    H_KIND,
    H_SEQ,
    H_STREAM,
    H_WINDOW,
    JSON,
    StreamChunk,
    encode_item,
    split_point,
)

if TYPE_CHECKING:
    from .agent import NATSAgent, _Delivery

__all__ = ("StreamingMixin", "StreamReceiver", "StreamChunk")

log = logging.getLogger("agentcore.streaming")

_HEADER_ROOM = 1024  # headers and subject share max_payload with the body (PRIOR-ART: nats-py checks the body only)



def _header_int(headers: dict[str, str], name: str) -> int | None:
    """Return an integer stream header, or None when it is absent or malformed (peer input is never trusted)."""
    text = headers.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None

class _Sender:
    """Send frames to one consumer, waiting for credit when the consumer asked for a window."""

    def __init__(self, nc: NATSClient, task_id: str, dest: str | None, window: int | None, idle_timeout: float) -> None:
        self.nc = nc
        self.task_id = task_id
        self.dest = dest
        self.window = window  # None: the requester did not ask for flow control, send freely
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
        if headers.get(H_CANCEL):
            self.cancelled = True
        if msg.reply and self.dest is None:  # a pull: where the frames go
            self.dest = msg.reply
        window, acked = _header_int(headers, H_WINDOW), _header_int(headers, H_ACK)
        if window is not None:
            self.window = max(1, window)
        if acked is not None:
            self.acked = max(self.acked, acked)
        self._wake.set()

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
        try:
            await self.nc.publish(self.dest, orjson.dumps({"code": code, "message": text}), headers=headers)
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
        assert self.dest is not None
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
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.nc = nc
        self.inbox = reply_to or nc.new_inbox()
        self.window = window
        self.idle_timeout = idle_timeout
        self.gap_timeout = gap_timeout
        self.duplicates = 0
        self.max_buffered = 0
        self.task_id: str | None = task_id
        self._expect = task_id  # when set, frames and results of other tasks on the same subject are ignored
        self._start = start  # coroutine function(inbox) that asks the producer to begin
        self._frames: dict[int, Msg] = {}
        self._next = 0
        self._acked = -1
        self._ctl: str | None = None
        self._granting: set[asyncio.Task[Any]] = set()
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
        return message

    async def _open(self) -> None:
        if self._sub is None:
            self._sub = await self.nc.subscribe(self.inbox, cb=self._on_frame)
            if self._start is not None:
                await self._start(self.inbox)
            else:  # the task goes out some other way, maybe on another connection: the server must know us first
                from ._subscriptions import confirm as _confirm

                await _confirm(self.nc)

    async def _on_frame(self, msg: Msg) -> None:
        headers = msg.headers or {}
        if self._expect is not None and not self._is_ours(msg, headers):
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
        self._frames[seq] = msg
        self.max_buffered = max(self.max_buffered, len(self._frames))
        if self._ctl is None and headers.get(H_CTL):
            self._ctl = headers[H_CTL]
        self._arrived.set()

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def __aenter__(self) -> StreamReceiver:
        await self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _is_ours(self, msg: Msg, headers: dict[str, str]) -> bool:
        stream = headers.get(H_STREAM)
        if stream is not None:
            return stream == self._expect
        try:  # a plain result (or an offer) answers the task it correlates with
            return bool(orjson.loads(msg.data).get("correlationId") == self._expect)
        except (orjson.JSONDecodeError, AttributeError):
            return True  # not an envelope at all: let _result() report it

    async def __anext__(self) -> StreamChunk:
        await self._open()
        while True:
            if self._done:
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
        reply = decode(msg.data)
        offer = reply["payload"].get("stream")
        if isinstance(offer, dict) and offer.get("pull"):  # a result too large for one message: pull it whole
            await self._release()
            reply = await pull_offer(self.nc, offer, window=self.window, timeout=self.idle_timeout)
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
        # Credit is fire-and-forget: nats-py buffers the publish; the next grant is cumulative if one is lost.
        task = start_eager(self.nc.publish(self._ctl, b"", headers=headers))
        if task is not None:  # keep it alive until it is written
            self._granting.add(task)
            task.add_done_callback(self._granting.discard)

    async def read_all(self, max_bytes: int | None = None) -> bytes:
        """Return every chunk's data joined (and close the stream); StreamError beyond max_bytes (the producer is told to stop)."""
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

    async def aclose(self) -> None:
        """Stop receiving; tell the producer to stop if the stream has not ended."""
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


async def pull_offer(
    nc: NATSClient, offer: dict[str, Any], *, window: int = 8, timeout: float = 30.0, max_bytes: int | None = None
) -> dict[str, Any]:
    """Pull an oversized message (a result or a request) offered as ``payload.stream = {"pull": subject, ...}``; return its envelope."""
    pull = offer["pull"]

    async def start(inbox: str) -> None:
        await nc.publish(pull, b"", reply=inbox, headers={H_WINDOW: str(window)})

    data = await StreamReceiver(nc, window=window, idle_timeout=timeout, start=start).read_all(max_bytes)
    try:
        reply: dict[str, Any] = decode(data)
    except AgentCoreError as exc:
        raise StreamError(f"the reassembled message does not decode: {exc}") from exc
    return reply


async def _serve_pull(sender: _Sender, data: bytes, timeout: float) -> bool:
    """Wait until the offer is pulled, then send data as ENVELOPE frames; False when the puller cancelled."""
    await sender.wait_pulled(timeout)
    step = (sender.nc.max_payload or 1024 * 1024) - _HEADER_ROOM
    view = memoryview(data)
    for start in range(0, len(data), step):
        end = start + step
        if not await sender.send(ENVELOPE, bytes(view[start:end]), final=end >= len(data)):
            return False
    return True


async def _iterate(generator: Any) -> AsyncIterator[Any]:
    if hasattr(generator, "__aiter__"):
        async for item in generator:
            yield item
    else:
        for item in generator:
            yield item


async def _close_generator(generator: Any) -> None:
    close = getattr(generator, "aclose", None) or getattr(generator, "close", None)
    if close is not None:
        result = close()
        if inspect.isawaitable(result):
            await result


class StreamingMixin:
    """Give NATSAgent stream_response, request_stream and transparent chunking of oversized results."""

    async def stream_response(
        self, task_id: str, response_generator: Any, chunk_size: int = 1024, *, idle_timeout: float = 30.0
    ) -> None:
        """Stream a generator's output to the requester of task_id in ordered chunks of at most chunk_size bytes.

        Items may be str, bytes or JSON-able objects; consecutive items of one kind are coalesced. A
        generator that raises ends the stream with an error frame (and the exception propagates). The
        requester's cancel closes the generator and returns early.
        """
        agent: NATSAgent = self  # type: ignore[assignment]
        delivery = agent._deliveries.get(task_id)
        if delivery is None:
            raise StreamError(f"agent {agent.agent_id} has no pending task {task_id} to stream to", task_id=task_id)
        if not agent._settle(delivery):
            raise StreamError(f"task {task_id} was already answered", task_id=task_id)
        delivery.answered = True  # the stream is the answer: the handler's return value is not sent
        dest = delivery.destination
        if dest is None:
            raise StreamError(f"task {task_id} has no reply destination to stream to", task_id=task_id)
        nc = agent._require_nc()
        limit = (nc.max_payload or 1024 * 1024) - _HEADER_ROOM
        chunk_size = max(1, min(chunk_size, limit))
        wanted = ((delivery.message.get("routing") or {}).get("stream"))
        window = wanted.get("window") if isinstance(wanted, dict) else None
        sender = _Sender(nc, task_id, dest, window if isinstance(window, int) and window > 0 else None, idle_timeout)
        await sender.open()
        counters = agent._metrics.counters
        counters["streams_sent"] += 1
        buffer = bytearray()
        kind = BYTES
        try:
            try:
                async for item in _iterate(response_generator):
                    item_kind, data = encode_item(item)
                    if buffer and item_kind != kind:
                        if not await sender.send(kind, bytes(buffer)):
                            break
                        buffer.clear()
                    kind = item_kind
                    buffer += data
                    while len(buffer) >= chunk_size:
                        cut = split_point(kind, buffer, chunk_size) if len(buffer) > chunk_size else chunk_size
                        if not await sender.send(kind, bytes(buffer[:cut])):
                            break
                        del buffer[:cut]
                    if sender.cancelled:
                        break
            except (StreamError, asyncio.CancelledError):
                raise
            except Exception as exc:
                counters["streams_failed"] += 1
                error = {"code": "stream_error", "message": f"{type(exc).__name__}: {exc}"}
                await sender.send(ERROR, orjson.dumps(error), final=True)
                raise
            if sender.cancelled:
                counters["streams_cancelled"] += 1
                await _close_generator(response_generator)
                return
            await sender.send(kind, bytes(buffer), final=True)
        except StreamTimeoutError:
            await _close_generator(response_generator)
            raise
        except asyncio.CancelledError:
            # The agent is stopping (or the caller cancelled us): end the stream now, credit or not, so the
            # consumer raises at once instead of waiting out its idle timeout.
            counters["streams_failed"] += 1
            await sender.abort("cancelled", f"the producer of stream {task_id} was cancelled")
            raise
        finally:
            await sender.close()

    def request_stream(
        self,
        topic: str,
        content: Any,
        *,
        window: int = 16,
        idle_timeout: float = 30.0,
        gap_timeout: float = 1.0,
        type: str = "task",
        capabilities: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        priority: int = 5,
    ) -> StreamReceiver:
        """Send a task whose handler streams its answer; return the receiver (``async with`` / ``async for`` it).

        Up to window chunks are in flight; a gap that stays open gap_timeout seconds raises StreamGapError,
        no chunk for idle_timeout seconds raises StreamTimeoutError, an error frame raises StreamError.
        """
        agent: NATSAgent = self  # type: ignore[assignment]
        nc = agent._require_nc()
        subject = agent.topics.to_subject(topic, wildcards=False)
        message = new_message(
            type, content, source_id=agent.agent_id, source_type=agent.agent_type, metadata=metadata,
            priority=priority, capabilities=capabilities,
        )
        message["routing"]["stream"] = {"window": window}
        data = encode(message)
        agent._check_size(data)

        async def start(inbox: str) -> None:
            await nc.publish(subject, data, reply=inbox)
            agent._metrics.published += 1

        return StreamReceiver(nc, window=window, idle_timeout=idle_timeout, gap_timeout=gap_timeout, start=start)

    def receive_stream(
        self,
        task_id: str | None = None,
        *,
        reply_to: str | None = None,
        window: int = 16,
        idle_timeout: float = 30.0,
        gap_timeout: float = 1.0,
    ) -> StreamReceiver:
        """Return a receiver for the stream of a task you send yourself (``async with`` it, then send the task).

        The task must carry ``replyTo`` = ``receiver.reply_to`` (a fresh inbox, or reply_to: a subject of your
        choosing that the agent does not otherwise subscribe) and the id ``receiver.task_id`` (task_id, or a
        new one); ``receiver.stamp(envelope)`` sets both plus ``routing.stream = {"window": window}``, which
        bounds the producer from its first chunk (without it the producer adopts the window at the first credit).
        ``agent.publish(topic, content, type="task", message_id=r.task_id, reply_to=r.reply_to)`` addresses
        a task as well, without the window. Entering the receiver subscribes and confirms the subscription with the server, so
        the task may then go out on any connection. Only frames and results of that task id are yielded.
        """
        agent: NATSAgent = self  # type: ignore[assignment]
        return StreamReceiver(
            agent._require_nc(), window=window, idle_timeout=idle_timeout, gap_timeout=gap_timeout,
            task_id=task_id or new_id(), reply_to=reply_to,
        )

    # ------------------------------------------------------------------ oversized results

    async def _offer_large(self, delivery: _Delivery, data: bytes, *, window: int = 8, timeout: float = 30.0) -> None:
        """Offer an encoded result too large for one message, then stream it to whoever pulls it."""
        agent: NATSAgent = self  # type: ignore[assignment]
        nc = agent._require_nc()
        dest = delivery.destination
        assert dest is not None
        sender = _Sender(nc, delivery.message["id"], None, window, timeout)
        await sender.open()
        try:
            request = delivery.message
            offer = new_message(
                "result", None, source_id=agent.agent_id, source_type=agent.agent_type,
                target=request["source"]["id"], correlation_id=request["id"],
            )
            offer["payload"]["stream"] = {"pull": sender.ctl, "size": len(data)}
            await agent._publish_raw(dest, encode(offer))
            if await _serve_pull(sender, data, timeout):
                agent._metrics.counters["large_results_streamed"] += 1
        finally:
            await sender.close()

    async def _request_large(self, subject: str, message: dict[str, Any], data: bytes, timeout: float) -> Msg:
        """Send a request too large for one message as a small offer, stream the envelope to the agent that pulls it.

        Return the reply to the offer (the handler's result for the whole message).
        """
        agent: NATSAgent = self  # type: ignore[assignment]
        nc = agent._require_nc()
        sender = _Sender(nc, message["id"], None, 8, timeout)
        await sender.open()  # its SUB reaches the server before the offer below: the puller's first message finds it
        offer = {**message, "payload": {"content": None, "stream": {"pull": sender.ctl, "size": len(data)}}}
        serving = asyncio.ensure_future(_serve_pull(sender, data, timeout))
        try:
            msg = await agent._request_mux(nc).request(subject, encode(offer), timeout)
        finally:
            if not serving.done():
                serving.cancel()  # the answer came (an error, say) without a pull, or the request failed
            await asyncio.gather(serving, return_exceptions=True)
            await sender.close()
        if not serving.cancelled() and serving.exception() is None and serving.result():
            agent._metrics.counters["large_requests_streamed"] += 1
        return msg

    async def _pull_request(self, offer: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Pull the whole envelope of a request that came as an offer; it must be the offered message itself."""
        agent: NATSAgent = self  # type: ignore[assignment]
        stream = offer["payload"]["stream"]
        limit = agent.config["agent.max_request_bytes"]
        if not (isinstance(stream, dict) and isinstance(stream.get("size"), int) and isinstance(stream.get("pull"), str)):
            raise StreamError(f"message {offer['id']} carries a malformed stream offer")
        if stream["size"] > limit:
            raise PayloadTooLargeError(stream["size"], limit)
        pull = stream["pull"]
        # The pull is a publish of ours: only to a literal reply inbox, or a forged offer could make us publish anywhere.
        try:
            validate_subject(pull)  # no wildcards, no whitespace, no empty tokens
        except SubjectError:
            pull = ""
        if not any(pull.startswith(prefix) for prefix in agent._inbox_prefixes()):
            raise StreamError(f"message {offer['id']} offers its stream on {stream['pull']!r}, which is not a reply inbox")
        async with agent._pulls:  # a few envelopes being pulled into memory at once, the rest wait
            message = await pull_offer(agent._require_nc(), stream, timeout=timeout, max_bytes=min(stream["size"], limit))
        if message["id"] != offer["id"] or message["source"] != offer["source"]:
            raise StreamError(f"the stream offered as message {offer['id']} carried another message ({message['id']})")
        return message

    async def _pull_large(self, offer: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Pull an offered oversized result and return its envelope."""
        agent: NATSAgent = self  # type: ignore[assignment]
        try:
            return await pull_offer(agent._require_nc(), offer["payload"]["stream"], timeout=timeout)
        except StreamTimeoutError as exc:
            raise RequestTimeoutError(str(exc)) from None
