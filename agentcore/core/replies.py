"""Answering requests: one answer per delivery, errors as typed error results, deferred answers with a deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from nats.aio.client import Client as NATSClient

from ..config import AgentConfig
from .._impl import encode_result
from ..envelope import encode, error_payload, new_message
from ..errors import AgentCoreError, EnvelopeError, PayloadTooLargeError
from ..fields import CONTEXT, CONVERSATION_ID, ID, REPLY_TO, ROUTING, SOURCE
from ..metrics import AgentMetrics
from ..transport.connection import Connection
from ..transport.inline import queue_now, send_now
from ..transport.offload import offer_result
from ..transport.settlement import Settlement
from ..transport.tracecontext import CURRENT
from .records import Delivery

__all__ = ("Replies", "Keeper")

log = logging.getLogger("agentcore.agent")


class Keeper(Protocol):
    """Keeps some answers before they are sent (persistence keeps persisted tasks' results for their requesters)."""

    def wants(self, delivery: Delivery) -> bool:
        """Return whether delivery's answer is kept."""
        ...

    async def keep(self, delivery: Delivery, data: bytes, error: dict[str, Any] | None) -> bytes:
        """Keep the encoded answer data (error: its payload.error); return what to send (a notice when too large)."""
        ...


class Replies:
    """Hold the requests being answered and send their answers (results, errors, oversized results as streams)."""

    def __init__(self, source: dict[str, str], config: AgentConfig, metrics: AgentMetrics, connection: Connection,
                 settlement: Settlement, spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.source = source  # shared by every envelope this agent sends
        self.config = config
        self.metrics = metrics
        self.connection = connection
        self.settlement = settlement
        self.spawn = spawn
        self.pending: dict[str, Delivery] = {}  # message id -> the request publish_result() would answer
        self.owed: set[Delivery] = set()  # deferred deliveries still waiting for publish_result()
        self.keeper: Keeper | None = None  # None: answers are only sent (one `is None` test per answer)

    def lookup(self, message_id: str) -> Delivery:
        """Return the unanswered request with message_id; AgentCoreError when there is none."""
        delivery = self.pending.get(message_id)
        if delivery is None or delivery.answered:
            raise AgentCoreError(f"agent {self.source['id']} has no pending message {message_id!r} (never received, "
                                 "already answered, or its time ran out)")
        return delivery

    def result_message(self, delivery: Delivery, content: Any, error: dict[str, Any] | None = None) -> bytes:
        """Return the encoded result envelope answering delivery."""
        request = delivery.message
        context = request.get(CONTEXT)
        # The envelope new_message() would make, written by the compiled core in one call (once per answered task).
        data: bytes = encode_result(self.source, request[SOURCE][ID], request[ID],
                                    context.get(CONVERSATION_ID) if context else None, content, error)
        return data

    def answer_now(self, delivery: Delivery, content: Any) -> bool:
        """Send content as delivery's result right now when nothing else is involved; False when answer() must.

        Taken in the plain case only: not answered or deferred, an answer subject, no keeper, no signer or tracer,
        no trace headers to pass on, a result that encodes and fits one message, and nats-py's pending buffer
        taking it in order (inline.send_now or queue_now). It does what answer() does there, without a coroutine.
        """
        if delivery.answered or delivery.deferred or self.keeper is not None or not self.connection.bare:
            return False
        dest = delivery.message.get(REPLY_TO) or delivery.reply
        if not dest or CURRENT.get() is not None:
            return False
        nc = self.connection.nc
        try:
            data = self.result_message(delivery, content)
        except EnvelopeError:
            return False  # answer() says result_invalid
        # send_now and queue_now decline what exceeds the server's max_payload: answer() raises its typed error
        if nc is None:
            return False
        if not send_now(nc, dest, data) and not queue_now(nc, dest, data):
            return False
        delivery.size = len(data)
        delivery.envelope = data
        delivery.answered = True
        self.metrics.published += 1
        return True

    def settle(self, delivery: Delivery) -> bool:
        """Return False when delivery was answered already; else forget it as pending (its answer is being sent)."""
        if delivery.answered:
            return False  # publish_result() racing the handler's own return, say: one answer only
        if delivery.deferred:
            if delivery.held is not None:
                self.settlement.release(delivery.held)
            self.owed.discard(delivery)
            if delivery.timer is not None:
                delivery.timer.cancel()
                delivery.timer = None
            self.forget(delivery)
        return True

    def forget(self, delivery: Delivery) -> None:
        """Stop offering delivery by its id (another delivery may hold that id by now)."""
        mid = delivery.message[ID]
        if self.pending.get(mid) is delivery:
            del self.pending[mid]

    def claim(self, delivery: Delivery) -> bool:
        """Take over answering delivery (a stream is its answer); False when it was answered already."""
        if not self.settle(delivery):
            return False
        delivery.answered = True
        return True

    async def answer(self, delivery: Delivery, content: Any) -> None:
        """Send content as delivery's result: at once when nothing is pending, as a pulled stream when too large."""
        if not self.settle(delivery):
            return
        dest = delivery.destination
        if dest is None:
            delivery.answered = True
            return
        bare = self.connection.bare
        trace = CURRENT.get() if bare else None  # the task's trace headers, passed on (None: none came)
        try:
            data = self.result_message(delivery, content)
            delivery.size = len(data)
            delivery.envelope = data
            keeper = self.keeper
            if keeper is not None and keeper.wants(delivery):
                delivery.answered = True  # one answer: a racing publish_result must not pass settle() meanwhile
                data = await keeper.keep(delivery, data, None)  # a kept result too large to send is sent as a notice
            self.connection.check_size(data, trace)  # the headers count: the server closes a connection over the limit
            delivery.answered = True
            if not bare:  # signed or traced by a tracer: through publish, which adds the headers (and counts them)
                await self.connection.publish(dest, data)
                return
        except PayloadTooLargeError as exc:
            if (delivery.message.get(ROUTING) or {}).get("stream"):
                delivery.answered = True  # the requester said it can pull a stream: it reassembles it
                await offer_result(self.connection, self.source, delivery.message, dest, data)
            else:
                delivery.answered = False  # a kept answer that could not be kept: its error still goes out
                await self.fail(delivery, "payload_too_large", str(exc))
            return
        except EnvelopeError as exc:
            await self.fail(delivery, "result_invalid", str(exc))
            return
        nc: NATSClient = self.connection.nc  # type: ignore[assignment]  # connected: the request came over it
        # At once when nothing is pending, else behind what is (inline either way: no extra coroutine).
        if not send_now(nc, dest, data, headers=trace) and not queue_now(nc, dest, data, headers=trace):
            await nc.publish(dest, data, headers=trace)
        self.metrics.published += 1

    async def fail(self, delivery: Delivery, code: str, text: str, **details: Any) -> None:
        """Send an error result (payload.error = {code, message, **details}) for delivery."""
        if not self.settle(delivery):
            return
        dest = delivery.destination
        delivery.answered = True
        error = error_payload(code, text, **details)
        data = self.result_message(delivery, None, error)
        keeper = self.keeper
        if keeper is not None and keeper.wants(delivery):
            data = await keeper.keep(delivery, data, error)
        if dest is not None:
            await self.connection.publish(dest, data)

    async def send_error(self, reply: str, request_id: str | None, code: str, text: str, **details: Any) -> None:
        """Send an error result to reply for a message that never became a delivery (malformed, refused)."""
        message = new_message("result", None, source_id=self.source["id"], source_type=self.source["type"],
                              correlation_id=request_id, error=error_payload(code, text, **details))
        await self.connection.publish(reply, encode(message))

    def defer(self, delivery: Delivery) -> None:
        """Keep an unanswered request open for a later publish_result, then answer no_result when its time is up."""
        delivery.deferred = True
        self.owed.add(delivery)
        message = delivery.message
        routing = message.get(ROUTING) or {}
        if routing.get("timeout") is not None:
            wait = message["timestamp"] + routing["timeout"] / 1000.0 - time.time()
        else:
            wait = self.config["agent.request_timeout"]
        # Say no_result before the requester gives up (its timeout is routing.timeout), early enough that it hears
        # it on a loaded machine: 10% of the wait, at least 250 ms (at most half the wait), at most 1 s.
        wait -= min(max(wait * 0.1, 0.25), wait / 2, 1.0)
        delivery.timer = asyncio.get_running_loop().call_later(max(wait, 0.0), self._expire_deferred, delivery)

    def _expire_deferred(self, delivery: Delivery) -> None:
        delivery.timer = None
        self.owed.discard(delivery)
        self.forget(delivery)
        mid = delivery.message[ID]
        if not delivery.answered and self.connection.usable:
            log.warning("agent %s handled message %s but published no result for it", self.source["id"], mid)
            self.spawn(self.fail(delivery, "no_result", f"agent {self.source['id']} handled message {mid} but published no result"))
