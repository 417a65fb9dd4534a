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
import itertools
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ("deliver_inline", "RequestMux")

log = logging.getLogger("agentcore.agent")

_NO_RESPONDERS = "503"


class _InlineQueue(asyncio.Queue):  # type: ignore[type-arg]
    """Stands in for a subscription's pending queue: each message is dispatched as nats-py puts it."""

    def __init__(self, sub: Subscription, dispatch: Callable[[Msg], None]) -> None:
        super().__init__()
        self._sub = sub
        self._dispatch = dispatch

    def put_nowait(self, msg: Msg) -> None:
        # nats-py counted the message as pending for its slow-consumer limit; it is handled right here.
        self._sub._pending_size -= len(msg.data)
        try:
            self._dispatch(msg)
        except Exception:  # never into nats-py's read loop: that would drop the connection
            log.exception("dispatching a message on %s failed", msg.subject)


def deliver_inline(sub: Subscription, dispatch: Callable[[Msg], None]) -> bool:
    """Make sub hand its messages to dispatch as they are read; False when this nats-py cannot."""
    if not isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue) or not hasattr(sub, "_pending_size"):
        return False
    sub._pending_queue = _InlineQueue(sub, dispatch)
    return True


class RequestMux:
    """Requests over one wildcard inbox subscription, with replies resolved inline."""

    def __init__(self, nc: NATSClient) -> None:
        self.nc = nc
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count(1)
        self._sub: Subscription | None = None

    async def _start(self) -> None:
        self._prefix = self.nc.new_inbox() + "."

        async def fallback(msg: Msg) -> None:  # used only where inline delivery is unavailable
            self._resolve(msg)

        sub = await self.nc.subscribe(self._prefix + "*", cb=fallback)
        deliver_inline(sub, self._resolve)
        self._sub = sub

    def _resolve(self, msg: Msg) -> None:
        fut = self._waiting.pop(msg.subject[len(self._prefix):], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def request(self, subject: str, data: bytes, timeout: float) -> Msg:
        """Publish data to subject and return the reply; raise nats' NoRespondersError or TimeoutError."""
        if self._sub is None:
            await self._start()  # SUB goes out before the PUB on the same connection: no flush needed
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = fut
        timer = loop.call_later(timeout, _expire, fut)
        try:
            await self.nc.publish(subject, data, reply=self._prefix + token)
            msg = await fut
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS and not msg.data:
            raise nats.errors.NoRespondersError
        return msg

    async def close(self) -> None:
        """Fail the waiting requests and drop the inbox subscription."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(nats.errors.ConnectionClosedError())
        self._waiting.clear()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                pass
            self._sub = None


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(nats.errors.TimeoutError())
