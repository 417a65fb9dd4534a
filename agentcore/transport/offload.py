"""Messages larger than the server's max_payload travel as pulled streams: offered small, pulled whole.

A result or request that does not fit in one message is replaced by a small envelope whose
``payload.stream = {"pull": subject, "size": n}``; whoever can take it publishes a pull to that subject
(with its inbox as reply) and receives the encoded envelope as ENVELOPE frames with credit. A requester
says it can pull an oversized result by sending ``routing.stream``. A pulled request must be the offered
message itself, within ``agent.max_request_bytes``, and its pull subject a reply inbox: a forged offer
cannot make the agent publish anywhere else.

Offers anyone may send cannot hold the agent's memory or starve honest ones (``PullGate``): at most
``agent.max_pulls`` are pulled at once, ``agent.pulls_per_sender`` of them from one ``source.id``; a pull asks for
one frame first and takes one of the few reassembly slots only once that frame is here (an offer whose producer
never answers holds none), and a producer that sends nothing for ``agent.pull_idle_timeout`` is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from .._impl import validate_subject
from ..envelope import encode, new_message
from ..errors import (
    LimitExceededError, OverloadedError, PayloadTooLargeError, RequestTimeoutError, StreamError, StreamLimitError,
    StreamTimeoutError, SubjectError,
)
from .connection import Connection
from .frames import FrameSender, decode_pulled, offer_receiver, pull_answer, serve_pull
from .inline import MAX_NAMED_SUBJECT, Accept

__all__ = ("offer_result", "request_large", "publish_request", "pull_request", "pull_result", "PullGate")

PULL_WINDOW = 8  # frames in flight while reassembling a pulled request


class PullGate:
    """Count the offered requests being pulled, in all and per sender, and the bytes they declared."""

    def __init__(self, max_pulls: int, per_sender: int) -> None:
        self.max_pulls = max_pulls
        self.per_sender = per_sender
        self.by_sender: dict[str, int] = {}
        self.active = 0
        self.bytes = 0  # declared sizes of the pulls in progress: what they may come to hold
        self.refused = 0

    def enter(self, sender: str, size: int) -> None:
        """Admit one pull from sender, or raise OverloadedError (reason max_pulls or pulls_per_sender)."""
        held = self.by_sender.get(sender, 0)
        if self.active >= self.max_pulls or held >= self.per_sender:
            self.refused += 1
            reason = "pulls_per_sender" if held >= self.per_sender else "max_pulls"
            raise OverloadedError("overloaded", f"{self.active} offered requests are being pulled ({held} from {sender!r}); "
                                  f"agent.{reason} is reached, try again later", details={"reason": reason})
        self.by_sender[sender] = held + 1
        self.active += 1
        self.bytes += size

    def leave(self, sender: str, size: int) -> None:
        """Count one pull from sender as over."""
        held = self.by_sender[sender] - 1
        if held:
            self.by_sender[sender] = held
        else:
            del self.by_sender[sender]
        self.active -= 1
        self.bytes -= size

    def gauges(self) -> dict[str, int]:
        """Return what get_metrics() reports of the pulls."""
        return {"pulls_active": self.active, "pull_bytes": self.bytes, "pulls_refused": self.refused}


async def offer_result(connection: Connection, source: dict[str, str], request: dict[str, Any], dest: str, data: bytes,
                       *, window: int = 8, timeout: float = 30.0) -> None:
    """Offer an encoded result too large for one message at dest, then stream it to whoever pulls it."""
    nc = connection.require()
    sender = FrameSender(nc, request["id"], None, window, timeout, connection.signer, connection.verifier)
    await sender.open()
    try:
        offer = new_message("result", None, source_id=source["id"], source_type=source["type"],
                            target=request["source"]["id"], correlation_id=request["id"])
        offer["payload"]["stream"] = {"pull": sender.ctl, "size": len(data)}
        await connection.publish(dest, encode(offer))
        if await serve_pull(sender, data, timeout):
            connection.metrics.counters["large_results_streamed"] += 1
    finally:
        await sender.close()


async def request_large(connection: Connection, subject: str, message: dict[str, Any], data: bytes, timeout: float,
                        accept: Accept | None = None) -> Any:
    """Send a request too large for one message as a small offer, stream the envelope to the agent that pulls it.

    Return the reply to the offer (the handler's result for the whole message; what accept made of it, when given).
    """
    nc = connection.require()
    sender = FrameSender(nc, message["id"], None, 8, timeout, connection.signer, connection.verifier)
    await sender.open()  # its SUB reaches the server before the offer below: the puller's first message finds it
    offer = {**message, "payload": {"content": None, "stream": {"pull": sender.ctl, "size": len(data)}}}
    serving = asyncio.ensure_future(serve_pull(sender, data, timeout))
    try:
        msg = await connection.request(subject, encode(offer), timeout, accept)
    finally:
        if not serving.done():
            serving.cancel()  # the answer came (an error, say) without a pull, or the request failed
        await asyncio.gather(serving, return_exceptions=True)
        await sender.close()
    if not serving.cancelled() and serving.exception() is None and serving.result():
        connection.metrics.counters["large_requests_streamed"] += 1
    return msg


async def publish_request(connection: Connection, subject: str, message: dict[str, Any], data: bytes, reply: str,
                          timeout: float, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    """Publish an encoded request whose answers come to reply; one too large for a message goes as an offer.

    The offer is published like the request (same reply subject); its pull is served in the background (spawn) for
    up to timeout. For the paths that read their answers elsewhere than a request inbox: streams, MCP, negotiation.
    """
    if connection.fits(data):  # with the headers it carries (trace context, signature)
        await connection.publish(subject, data, reply)
        return
    sender = FrameSender(connection.require(), message["id"], None, 8, timeout, connection.signer, connection.verifier)
    await sender.open()  # its SUB reaches the server before the offer: the puller's first message finds it
    try:
        offer = {**message, "payload": {"content": None, "stream": {"pull": sender.ctl, "size": len(data)}}}
        await connection.publish(subject, encode(offer), reply)
    except BaseException:
        await sender.close()
        raise

    async def serve() -> None:
        try:
            if await serve_pull(sender, data, timeout):
                connection.metrics.counters["large_requests_streamed"] += 1
        finally:
            await sender.close()

    spawn(serve())


async def pull_request(connection: Connection, offer: dict[str, Any], timeout: float, limit: int,
                       slots: asyncio.Semaphore, gate: PullGate | None = None, idle_timeout: float | None = None) -> dict[str, Any]:
    """Pull the whole envelope of a request that came as an offer; it must be the offered message itself.

    A bound that is hit raises a RemoteError to send the requester: OverloadedError (the gate is full),
    LimitExceededError (its producer idled, or sent frames outside the size and window it was granted).
    """
    stream = offer["payload"]["stream"]
    size = stream.get("size") if isinstance(stream, dict) else None
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 1 and isinstance(stream.get("pull"), str)):
        raise StreamError(f"message {offer['id']} carries a malformed stream offer (size must be an integer >= 1)")
    if size > limit:
        raise PayloadTooLargeError(size, limit)
    pull = stream["pull"]
    # The pull is a publish of ours: only to a literal reply inbox, or a forged offer could make us publish anywhere.
    try:
        validate_subject(pull)  # no wildcards, no whitespace, no empty tokens
    except SubjectError:
        pull = ""
    if len(pull) > MAX_NAMED_SUBJECT:
        raise StreamError(f"message {offer['id']} offers its stream on a subject of {len(pull)} characters (at most {MAX_NAMED_SUBJECT})")
    if not any(pull.startswith(prefix) for prefix in connection.inbox_prefixes()):
        raise StreamError(f"message {offer['id']} offers its stream on {stream['pull']!r}, which is not a reply inbox")
    sender = str(offer["source"]["id"])
    idle = min(timeout, idle_timeout) if idle_timeout is not None else timeout
    counters = connection.metrics.counters

    def aborted() -> None:
        counters["pull_limit_aborts"] += 1

    if gate is not None:
        gate.enter(sender, max(size, 0))
    try:
        # One frame first: an offer whose producer never answers waits without a reassembly slot.
        receiver = offer_receiver(connection.require(), stream, window=1, timeout=idle, max_bytes=max(size, 0),
                                  stream_id=offer["id"], verifier=connection.verifier, signer=connection.signer,
                                  source_id=offer["source"]["id"], on_limit=aborted)
        async with receiver:
            await receiver.arrived()
            async with slots:  # a few envelopes being pulled into memory at once, the rest wait
                receiver.widen(PULL_WINDOW)
                data = await receiver.read_all()
    except StreamLimitError as exc:
        raise LimitExceededError("limit_exceeded", str(exc), details={"reason": "pull_frames"}) from None
    except StreamTimeoutError:
        counters["pull_idle_aborts"] += 1
        raise LimitExceededError("limit_exceeded", f"the producer of message {offer['id']} sent nothing for {idle}s "
                                 "(agent.pull_idle_timeout): the pull was dropped", details={"reason": "pull_idle"}) from None
    finally:
        if gate is not None:
            gate.leave(sender, max(size, 0))
    message = decode_pulled(data)
    if message["id"] != offer["id"] or message["source"] != offer["source"]:
        raise StreamError(f"the stream offered as message {offer['id']} carried another message ({message['id']})")
    return message


async def pull_result(connection: Connection, offer: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Pull an offered oversized result (an offer already verified as the answer) and return its envelope."""
    counters = connection.metrics.counters

    def rejected() -> None:
        counters["replies_rejected"] += 1

    try:
        return await pull_answer(connection.require(), offer, timeout=timeout, on_reject=rejected,
                                 verifier=connection.verifier, signer=connection.signer,
                                 limit=connection.config["agent.max_request_bytes"])  # what it pulls into memory, at most
    except StreamTimeoutError as exc:
        raise RequestTimeoutError(str(exc)) from None
