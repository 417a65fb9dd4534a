"""Bodies larger than the server's max_payload (binding §10.1): offered small, pulled as a credit-based stream.

A request or unary answer that does not fit one NATS message is sent with an empty body and the headers
``Agent-Pull: {inbox}`` (the offering side's control inbox), ``Agent-Size: {bytes}`` and ``Agent-Digest:
SHA-256={base64}`` (so a signed offer binds the body pulled after it). The receiver checks the size
against its bound first (``A2APayloadTooLargeError`` when beyond), then pulls the body from that inbox as agentcore
frames with credit (transport/frames.py: the same machinery as agentcore's pulled results), which works with or
without JetStream. A replica pulls at most ``max_pulls`` bodies at once, ``pulls_per_sender`` from one user
(``A2AOverloadedError`` beyond), and only from a reply inbox, so a forged offer cannot make it publish elsewhere.
Stream events need none of this: an event larger than a frame spans several frames (server.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections import Counter
from collections.abc import Mapping

from a2a.utils.errors import InvalidRequestError
from nats.aio.client import Client as NATSClient

from ..errors import OverloadedError, RequestTimeoutError, StreamError
from ..transport.frames import FrameSender, offer_receiver, serve_pull
from ..transport.identity import Signer, Verifier
from ..transport.offload import PULL_WINDOW, PullGate
from .binding import H_DIGEST, H_PULL, H_SIZE, A2AOverloadedError, A2APayloadTooLargeError

__all__ = ("Offer", "Pulls", "fits", "pull_body")

_INBOXES = ("_INBOX.",)


def fits(nc: NATSClient, data: bytes, headers: Mapping[str, str]) -> bool:
    """Whether data with headers fits one message on nc's server (the server counts headers, nats-py only the body)."""
    size = len(data) + sum(len(name) + len(value) + 4 for name, value in headers.items()) + 64
    return size <= (nc.max_payload or 1024 * 1024)


def _digest(data: bytes) -> str:
    return "SHA-256=" + base64.b64encode(hashlib.sha256(data).digest()).decode()


def _size(headers: Mapping[str, str]) -> int:
    text = headers.get(H_SIZE, "")
    if not text.isdigit():
        raise InvalidRequestError(message=f"{H_PULL} without a valid {H_SIZE}", data={"reason": "bad_offer"})
    return int(text)


async def pull_body(nc: NATSClient, headers: Mapping[str, str], stream_id: str, *, max_bytes: int, timeout: float,
                    signer: Signer | None = None, verifier: Verifier | None = None, source_id: str | None = None,
                    inboxes: tuple[str, ...] = _INBOXES) -> bytes:
    """Pull the body offered in headers (Agent-Pull, Agent-Size), at most max_bytes; typed A2A errors when it cannot."""
    pull = headers.get(H_PULL, "")
    size = _size(headers)
    if size > max_bytes:
        raise A2APayloadTooLargeError(message=f"the body offered is {size} bytes, more than the {max_bytes} allowed",
                                      data={"size": str(size), "limit": str(max_bytes)})
    if not pull.startswith(inboxes):  # the pull is a publish of ours: only to a reply inbox
        raise InvalidRequestError(message=f"{H_PULL} must name a reply inbox, not {pull!r}", data={"reason": "bad_offer"})
    receiver = offer_receiver(nc, {"pull": pull}, window=PULL_WINDOW, timeout=timeout, max_bytes=size,
                              stream_id=stream_id, verifier=verifier, signer=signer, source_id=source_id)
    digest = headers.get(H_DIGEST)
    if digest is None:
        raise InvalidRequestError(message=f"{H_PULL} without {H_DIGEST}", data={"reason": "bad_offer"})
    try:
        body = await receiver.read_all(size)
    except (StreamError, RequestTimeoutError) as exc:
        raise InvalidRequestError(message=f"the offered body could not be pulled: {exc}",
                                  data={"reason": "pull_failed"}) from None
    if len(body) != size or _digest(body) != digest:  # not the body the (signed) offer named
        raise InvalidRequestError(message="the pulled body does not match the offer's size and digest",
                                  data={"reason": "digest_mismatch"})
    return body


class Offer:
    """Offer a body too large for one message on a control inbox, and stream it to whoever pulls it (once)."""

    def __init__(self, nc: NATSClient, stream_id: str, data: bytes, timeout: float, signer: Signer | None = None,
                 verifier: Verifier | None = None) -> None:
        self.data = data
        self.timeout = timeout
        self.sender = FrameSender(nc, stream_id, None, None, timeout, signer, verifier)
        self._task: asyncio.Task[bool] | None = None

    async def open(self, headers: dict[str, str]) -> dict[str, str]:
        """Subscribe the control inbox; return headers with the offer added (the message's body is then empty)."""
        await self.sender.open()
        return {**headers, H_PULL: self.sender.ctl, H_SIZE: str(len(self.data)), H_DIGEST: _digest(self.data)}

    async def serve(self) -> bool:
        """Wait for the pull and send the body (False when the puller cancelled); the control inbox is closed after."""
        try:
            return await serve_pull(self.sender, self.data, self.timeout)
        finally:
            await self.sender.close()

    def start(self) -> None:
        """Serve in the background (the offering side waits for its answer meanwhile)."""
        self._task = asyncio.get_running_loop().create_task(self.serve())

    async def close(self) -> None:
        """Stop serving (the answer came, or the request failed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        else:
            await self.sender.close()


class Pulls:
    """A replica's bound on bodies being pulled: in number, per user, in bytes; counted for metrics."""

    def __init__(self, max_bytes: int, max_pulls: int, per_sender: int) -> None:
        self.max_bytes = max_bytes
        self.gate = PullGate(max_pulls, per_sender)
        self.counters: Counter[str] = Counter()

    async def body(self, nc: NATSClient, headers: Mapping[str, str], stream_id: str, user: str, *, timeout: float,
                   signer: Signer | None, verifier: Verifier | None, source_id: str | None) -> bytes:
        """Pull the offered request body within the bounds."""
        size = _size(headers)
        if size > self.max_bytes:
            self.counters["a2a_too_large"] += 1
            raise A2APayloadTooLargeError(message=f"the request is {size} bytes, more than the {self.max_bytes} allowed",
                                          data={"size": str(size), "limit": str(self.max_bytes)})
        try:
            self.gate.enter(user, size)
        except OverloadedError as exc:
            self.counters["a2a_pulls_refused"] += 1
            reason = str((exc.details or {}).get("reason"))  # max_pulls / pulls_per_sender: an a2a.* key when served
            raise A2AOverloadedError(message=str(exc), data={"reason": reason, "bound": f"a2a.{reason}"}) from None
        try:
            body = await pull_body(nc, headers, stream_id, max_bytes=self.max_bytes, timeout=timeout, signer=signer,
                                   verifier=verifier, source_id=source_id)
            self.counters["a2a_pulled"] += 1
            return body
        finally:
            self.gate.leave(user, size)
