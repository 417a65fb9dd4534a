"""Messages larger than the server's max_payload travel as pulled streams: offered small, pulled whole.

A result or request that does not fit in one message is replaced by a small envelope whose
``payload.stream = {"pull": subject, "size": n}``; whoever can take it publishes a pull to that subject
(with its inbox as reply) and receives the encoded envelope as ENVELOPE frames with credit. A requester
says it can pull an oversized result by sending ``routing.stream``. A pulled request must be the offered
message itself, within ``agent.max_request_bytes``, and its pull subject a reply inbox: a forged offer
cannot make the agent publish anywhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from .._impl import validate_subject
from ..envelope import encode, new_message
from ..errors import PayloadTooLargeError, RequestTimeoutError, StreamError, StreamTimeoutError, SubjectError
from .connection import Connection
from .frames import FrameSender, pull_answer, pull_offer, serve_pull
from .inline import MAX_NAMED_SUBJECT, Accept

__all__ = ("offer_result", "request_large", "publish_request", "pull_request", "pull_result")


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
    if len(data) <= connection.max_payload():
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
                       slots: asyncio.Semaphore) -> dict[str, Any]:
    """Pull the whole envelope of a request that came as an offer; it must be the offered message itself."""
    stream = offer["payload"]["stream"]
    size = stream.get("size") if isinstance(stream, dict) else None
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 1 and isinstance(stream.get("pull"), str)):
        raise StreamError(f"message {offer['id']} carries a malformed stream offer (size must be an integer >= 1)")
    if stream["size"] > limit:
        raise PayloadTooLargeError(stream["size"], limit)
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
    async with slots:  # a few envelopes being pulled into memory at once, the rest wait
        message = await pull_offer(connection.require(), stream, timeout=timeout, max_bytes=min(stream["size"], limit),
                                   stream_id=offer["id"], verifier=connection.verifier, signer=connection.signer,
                                   source_id=offer["source"]["id"])
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
                                 verifier=connection.verifier, signer=connection.signer)
    except StreamTimeoutError as exc:
        raise RequestTimeoutError(str(exc)) from None
