"""Streaming a handler's answer token by token: ``stream_response``, ``request_stream`` and ``receive_stream``.

The frame format, credit protocol and the receiver live in ``transport.frames``. Two uses:
- ``stream_response(task_id, generator)`` inside a task handler streams to a requester that asked with
  ``request_stream(...)`` (the task carries ``routing.stream = {"window": W}`` and its reply inbox).
- ``receive_stream(task_id)`` receives the stream of a task the consumer sends some other way (``publish``,
  another client): open the receiver first, then send the task with ``replyTo`` (or the NATS reply subject)
  set to ``receiver.reply_to``, its id set to ``receiver.task_id`` and, for backpressure from the first chunk,
  ``routing.stream = {"window": W}`` -- ``receiver.stamp(envelope)`` sets all three.
Results larger than max_payload travel as pulled streams too (``transport.offload``).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ._eager import step_now
from .core.host import Feature, Host
from .envelope import encode, new_id, new_message
from .errors import StreamError, StreamTimeoutError
from .transport.frames import (
    BYTES,
    ERROR,
    HEADER_ROOM,
    FrameSender,
    StreamChunk,
    StreamReceiver,
    encode_item,
    pull_offer,
    split_point,
)
from .transport.offload import publish_request

__all__ = ("Streaming", "StreamReceiver", "StreamChunk", "pull_offer", "assemble", "STREAM_TYPE")

STREAM_TYPE = "stream"  # the task-type token of the result topic a stream for no pending task goes to


_END: Any = object()  # what _next returns once the generator is exhausted
_NONE: Any = object()  # no item produced yet


async def _next(items: AsyncIterator[Any]) -> Any:
    try:
        return await items.__anext__()
    except StopAsyncIteration:
        return _END


class _Items:
    """The generator's items; says whether the next one is ready now, so a chunk goes out when the generator pauses.

    A plain iterator's items are always ready (its pauses block the loop anyway). For an async generator the next
    item is produced eagerly: one that comes without waiting is there at once and joins the chunk (no Task, no
    loop iteration); one that waits (an LLM's next token) is left to a Task, and the chunk goes out now.
    """

    def __init__(self, generator: Any) -> None:
        self._sync = None if hasattr(generator, "__aiter__") else iter(generator)
        self._async: AsyncIterator[Any] | None = generator.__aiter__() if self._sync is None else None
        self._value: Any = _NONE  # the next item, produced at once
        self._error: Exception | None = None  # or the error producing it raised
        self._task: asyncio.Task[Any] | None = None  # or the Task still producing it

    def ready(self) -> bool:
        """Start producing the next item and return whether it is already there."""
        if self._async is None:
            return True
        if self._value is _NONE and self._error is None and self._task is None:
            try:
                done, outcome = step_now(_next(self._async))
            except Exception as exc:  # the generator raised: the caller gets it from next()
                self._error = exc
                return True
            if done:
                self._value = outcome
            else:
                self._task = outcome
        return self._task is None or self._task.done()

    async def wait(self, linger: float) -> bool:
        """Wait up to linger seconds for the next item; return whether it is there."""
        if not self.ready() and linger > 0:
            assert self._task is not None
            await asyncio.wait({self._task}, timeout=linger)
        return self.ready()

    async def next(self) -> Any:
        """Return the next item, or _END."""
        if self._sync is not None:
            return next(self._sync, _END)
        self.ready()
        value, error, task = self._value, self._error, self._task
        self._value, self._error, self._task = _NONE, None, None
        if error is not None:
            raise error
        if task is not None:
            return await task
        return value

    async def abandon(self) -> None:
        """Stop producing: cancel an item in progress (the generator can be closed only after that)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def assemble(host: Host, delivery: Any, generator: Any) -> None:
    """Answer delivery with the generator's items as one result: text joined, bytes concatenated, else a list."""
    items = _Items(generator)
    collected: list[Any] = []
    try:
        while (item := await items.next()) is not _END:
            collected.append(item)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        host.metrics.counters["streams_failed"] += 1
        await host.fail(delivery, "stream_error", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        await items.abandon()
    host.metrics.counters["streams_assembled"] += 1
    if collected and all(isinstance(i, str) for i in collected):
        await host.answer(delivery, "".join(collected))
    elif collected and all(isinstance(i, (bytes, bytearray, memoryview)) for i in collected):
        await host.answer(delivery, {"base64": base64.b64encode(b"".join(bytes(i) for i in collected)).decode()})
    else:
        await host.answer(delivery, collected)


async def _close_generator(generator: Any) -> None:
    close = getattr(generator, "aclose", None) or getattr(generator, "close", None)
    if close is not None:
        result = close()
        if inspect.isawaitable(result):
            await result


class Streaming(Feature):
    """Stream a handler's answer to its requester in ordered chunks; receive such streams."""

    def __init__(self, host: Host) -> None:
        self._host = host

    async def stream_response(
        self, task_id: str, response_generator: Any, chunk_size: int = 1024, *, idle_timeout: float = 30.0,
        linger: float = 0.0,
    ) -> None:
        """Stream a generator's output to the requester of task_id in ordered chunks of at most chunk_size bytes.

        Items may be str, bytes or JSON-able objects. A chunk goes out as soon as the generator pauses (its next
        item is not ready, or not within linger seconds), so tokens arrive live; items that are ready at once
        (of one kind) are coalesced up to chunk_size. A generator that raises ends the stream with an error
        frame (and the exception propagates). The requester's cancel closes the generator and returns early.
        """
        host = self._host
        delivery = host.pending(task_id)
        window = None
        if delivery is None:  # no task of that id here: the stream goes where an unclaimed result would
            dest: str | None = host.topics.result(host.agent_id, STREAM_TYPE)
        else:
            if delivery.answered:
                raise StreamError(f"task {task_id} was already answered", task_id=task_id)
            wanted = ((delivery.message.get("routing") or {}).get("stream"))
            if not isinstance(wanted, dict) and delivery.reply is not None and (wanted is True or not delivery.message.get("replyTo")):
                # A plain request (send_task, request, a raw NATS request) waits for one result: it gets the whole.
                await assemble(host, delivery, response_generator)
                return
            if not host.claim(delivery):  # the stream is the answer: the handler's return value is not sent
                raise StreamError(f"task {task_id} was already answered", task_id=task_id)
            dest = delivery.destination
            if dest is None:
                raise StreamError(f"task {task_id} has no reply destination to stream to", task_id=task_id)
            window = wanted.get("window") if isinstance(wanted, dict) else None
        nc = host.connection.require()
        limit = host.connection.max_payload() - HEADER_ROOM
        chunk_size = max(1, min(chunk_size, limit))
        sender = FrameSender(nc, task_id, dest, window if isinstance(window, int) and window > 0 else None, idle_timeout,
                             host.connection.signer, host.connection.verifier)
        await sender.open()
        counters = host.metrics.counters
        counters["streams_sent"] += 1
        buffer = bytearray()
        kind = BYTES
        items = _Items(response_generator)
        try:
            try:
                while True:
                    if buffer and not await items.wait(linger):  # the generator pauses: what is here goes now
                        if not await sender.send(kind, bytes(buffer)):
                            break
                        buffer.clear()
                    item = await items.next()
                    if item is _END:
                        break
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
                await items.abandon()
                await _close_generator(response_generator)
                return
            await sender.send(kind, bytes(buffer), final=True)
        except StreamTimeoutError:
            await items.abandon()
            await _close_generator(response_generator)
            raise
        except asyncio.CancelledError:
            if delivery is not None and delivery.cancelled:  # by its requester: nothing more is sent
                counters["streams_cancelled"] += 1
                await items.abandon()
                await _close_generator(response_generator)
                raise
            # The agent is stopping (or the caller cancelled us): end the stream now, credit or not, so the
            # consumer raises at once instead of waiting out its idle timeout.
            counters["streams_failed"] += 1
            await sender.abort("cancelled", f"the producer of stream {task_id} was cancelled")
            raise
        finally:
            await items.abandon()  # (a no-op unless the stream ended early: never leave the generator running)
            await sender.close()
            if sender.clamped:  # credit beyond the window granted, or for frames never sent: forged or confused
                counters["credit_clamped"] += sender.clamped

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
        host = self._host
        nc = host.connection.require()
        subject = host.topics.to_subject(topic, wildcards=False)
        message = new_message(
            type, content, source_id=host.agent_id, source_type=host.agent_type, metadata=metadata,
            priority=priority, capabilities=capabilities,
        )
        message["routing"]["stream"] = {"window": window}
        data = encode(message)

        async def start(inbox: str) -> None:
            host.asking(message["id"], inbox)  # agent.cancel(task_id) names the inbox
            # Signed when the agent signs; larger than max_payload: offered, and pulled whole by the serving agent.
            await publish_request(host.connection, subject, message, data, inbox, idle_timeout, host.spawn)

        return StreamReceiver(nc, window=window, idle_timeout=idle_timeout, gap_timeout=gap_timeout, start=start,
                              task_id=message["id"], on_reject=self._rejected, verifier=host.connection.verifier,
                              signer=host.connection.signer, on_limit=self._aborted, on_close=self._closed)

    def receive_stream(
        self,
        task_id: str | None = None,
        *,
        reply_to: str | None = None,
        source: str | None = None,
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
        source="agent-id" (or "*" for any agent) reads instead what that agent streams for a task id it does not
        serve (``stream_response`` outside a handler): its result topic ``agents.{env}.result.{source}.stream``.
        """
        if source is not None and reply_to is None:
            reply_to = self._host.topics.result(source, STREAM_TYPE) if source != "*" else \
                self._host.topics.result_prefix() + "*." + STREAM_TYPE
        return StreamReceiver(
            self._host.connection.require(), window=window, idle_timeout=idle_timeout, gap_timeout=gap_timeout,
            task_id=task_id or new_id(), reply_to=reply_to, on_reject=self._rejected,
            verifier=self._host.connection.verifier, signer=self._host.connection.signer, on_limit=self._aborted,
            on_close=self._closed,
        )

    def _closed(self, task_id: str | None, inbox: str, abandoned: bool) -> None:
        """A receiver ended: left before its end, the agent serving its task is told to cancel it."""
        if task_id is None:
            return
        if abandoned:
            self._host.abandon(task_id, inbox, "the stream was closed")
        else:
            self._host.answered(task_id)

    def _rejected(self) -> None:
        """Count a message on a stream's inbox that is not that stream's (another producer, a forgery)."""
        self._host.metrics.counters["replies_rejected"] += 1

    def _aborted(self) -> None:
        """Count a stream aborted at a bound (a frame beyond the credit or the window, or too many bytes)."""
        self._host.metrics.counters["stream_limit_aborts"] += 1
