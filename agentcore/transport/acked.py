"""JetStream publishes whose acknowledgements come back to one inbox subscription, none awaited through a request.

``js.publish`` is a request: a reply subscription lookup, a future and a ``wait_for`` per message, then the
PubAck parsed into a dataclass. The writes that no answer waits for (a kept result, a task's status) go out as
plain publishes with a reply subject under one inbox; one callback takes every acknowledgement and tells the
write's callback its stream sequence or the server's error code. At most ``limit`` are in flight; one without
an acknowledgement within ``timeout`` is reported as failed (the caller falls back to the awaited write, which
retries). The inbox is this connection's own, unguessable, as a request's reply subject is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from nats.aio.client import Client as NATSClient

__all__ = ("AckedPublisher", "TIMED_OUT")

TIMED_OUT = -1  # the error code a write gets when no acknowledgement came in time
Done = Callable[[int | None, int | None], None]  # (stream sequence, None) or (None, error code)


class AckedPublisher:
    """Publish to streams without awaiting each PubAck (see the module docstring)."""

    def __init__(self, nc: NATSClient, *, limit: int, timeout: float) -> None:
        self._nc = nc
        self._limit = limit
        self._timeout = timeout
        self._prefix = nc.new_inbox()
        self._waiting: dict[str, tuple[Done, asyncio.TimerHandle]] = {}
        self._count = 0
        self._sub: Any = None

    async def start(self) -> None:
        """Subscribe to the acknowledgements' inbox."""
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._acked)

    @property
    def in_flight(self) -> int:
        """Return how many writes wait for their acknowledgement."""
        return len(self._waiting)

    async def publish(self, subject: str, data: bytes, done: Done, headers: dict[str, str] | None = None) -> bool:
        """Publish data to a stream's subject; done(sequence, None) or done(None, code) later. False: not sent (full)."""
        if self._sub is None or len(self._waiting) >= self._limit or not self._nc.is_connected:
            return False
        self._count += 1
        reply = f"{self._prefix}.{self._count}"
        timer = asyncio.get_running_loop().call_later(self._timeout, self._expire, reply)
        self._waiting[reply] = (done, timer)
        try:
            await self._nc.publish(subject, data, reply=reply, headers=headers)
        except Exception:  # not sent (the connection just closed, say): the caller writes the awaited way
            self._waiting.pop(reply, None)
            timer.cancel()
            return False
        return True

    def _expire(self, reply: str) -> None:
        entry = self._waiting.pop(reply, None)
        if entry is not None:
            entry[0](None, TIMED_OUT)

    async def _acked(self, msg: Any) -> None:
        entry = self._waiting.pop(msg.subject, None)
        if entry is None:
            return  # late (reported timed out already) or not ours
        done, timer = entry
        timer.cancel()
        try:
            ack = orjson.loads(msg.data) if msg.data else None
        except orjson.JSONDecodeError:
            ack = None
        if isinstance(ack, dict) and isinstance(ack.get("seq"), int) and "error" not in ack:
            done(ack["seq"], None)
            return
        error = ack.get("error") if isinstance(ack, dict) else None
        code = error.get("err_code") if isinstance(error, dict) else None
        done(None, code if isinstance(code, int) else TIMED_OUT)  # no responders (503) and the like: try again
