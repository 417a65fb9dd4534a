"""JetStream settlement of persisted tasks in one place: ack once answered, nak to hand back, term when hopeless.

A persisted task reaches the dispatcher as a ``PersistedMsg`` (shaped like a core message with no reply
subject). Every path that ends a message calls ``release`` (acked, or handed back with ``redeliver``),
``forget`` (a redelivered copy of a task still running) or ``reject`` (malformed: never valid); each is a
no-op for a core message. While a task is held, a keeper reports it in progress so JetStream does not
redeliver a long-running one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from nats.aio.msg import Msg

from .puller import TaskPuller

__all__ = ("PersistedMsg", "Settlement", "pub_ack_stream")

log = logging.getLogger("agentcore.persistence")

_NAK_DELAY = 0.1  # seconds before a task handed back is offered again, doubled per delivery (an overloaded agent
_NAK_DELAY_MAX = 5.0  # is not hammered), at most this


class PersistedMsg:
    """A task delivered by JetStream, shaped like a core message without a reply subject; settled exactly once."""

    __slots__ = ("subject", "data", "headers", "reply", "js", "since", "settled", "puller", "delivered", "seq")

    def __init__(self, js: Msg, now: float, puller: TaskPuller) -> None:
        self.subject = js.subject
        self.data = js.data
        self.headers = js.headers
        self.reply = ""  # answers go to the envelope's replyTo: the JetStream reply subject is the ack subject
        self.js = js
        self.since = now  # when it arrived or was last reported in progress
        self.settled = False
        self.puller = puller  # told when it is settled, so it can ask for more; holds its consumer's limits
        metadata = js.metadata
        self.delivered: int = metadata.num_delivered
        self.seq: int = metadata.sequence.stream  # which stored task this is: redeliveries share it


def pub_ack_stream(data: bytes) -> str | None:
    """Return the stream named by a JetStream publish acknowledgement, or None when data is not one."""
    try:
        ack = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if isinstance(ack, dict) and isinstance(ack.get("stream"), str) and "seq" in ack and "id" not in ack:
        return str(ack["stream"])
    return None


class Settlement:
    """Hold the persisted tasks delivered to this agent and settle each exactly once."""

    def __init__(self, counters: Counter[str], send: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.held: dict[PersistedMsg, None] = {}
        self._counters = counters
        self._send = send  # sends one ack/nak/term in the background, logging a failure
        self._keeper: asyncio.Task[None] | None = None
        self._tick = 5.0

    def receive(self, js_msg: Msg, puller: TaskPuller, dispatch: Callable[[PersistedMsg], None]) -> None:
        """Wrap a JetStream delivery, hold it, and hand it to dispatch (handed back if dispatching fails)."""
        try:
            msg = PersistedMsg(js_msg, asyncio.get_running_loop().time(), puller)
        except Exception:  # not a JetStream delivery after all (no ack subject to parse): nothing to settle
            puller.settled()
            log.exception("got a message without JetStream metadata on %s", js_msg.subject)
            return
        self.held[msg] = None
        if msg.delivered > 1:
            self._counters["persisted_redelivered"] += 1
        try:
            dispatch(msg)
        except Exception:  # a bug on our side: hand the task back rather than hold it forever
            log.exception("could not dispatch task %s", js_msg.subject)
            self.release(msg, redeliver=True)

    def adopt(self, puller: TaskPuller) -> None:
        """Count the tasks still running from an earlier puller of the same consumer against puller's room."""
        for msg in self.held:
            if msg.puller.subject == puller.subject:
                msg.puller = puller
                puller.held += 1

    def release(self, msg: Any, *, redeliver: bool = False, after: asyncio.Future[Any] | None = None) -> bool:
        """Acknowledge a persisted task, or hand it back for redelivery; return whether JetStream now has it in hand.

        after: work the acknowledgement waits for (the answer's result being kept): until it is done JetStream
        still holds the task, so an agent that dies meanwhile has it redelivered. False means msg is no persisted
        task, or (with redeliver) that this was its last delivery: it is taken off the stream instead and the
        caller answers the requester as it would without persistence.
        """
        if msg.__class__ is not PersistedMsg:
            return False
        if msg.settled:
            return True
        self._let_go(msg)
        if not redeliver:
            self._counters["persisted_acked"] += 1
            if after is not None and not after.done():
                after.add_done_callback(lambda _: self._send(msg.js.ack()))
            else:
                self._send(msg.js.ack())
            return True
        if 0 < msg.puller.limits.max_deliver <= msg.delivered:
            self._counters["persisted_terminated"] += 1
            self._send(msg.js.term())
            return False
        self._counters["persisted_nakked"] += 1
        self._send(msg.js.nak(min(_NAK_DELAY * 2 ** (msg.delivered - 1), _NAK_DELAY_MAX)))
        return True

    def forget(self, msg: Any) -> bool:
        """Drop a persisted delivery without acking it (another delivery of that task will); return whether it was one."""
        if msg.__class__ is not PersistedMsg:
            return False
        self._let_go(msg)
        for running in self.held:  # the copy still running has used this delivery too: count it there
            if running.seq == msg.seq:
                running.delivered = max(running.delivered, msg.delivered)
        return True

    def reject(self, msg: Any) -> None:
        """Take a malformed persisted task off the stream for good: redelivering it cannot make it valid."""
        if msg.__class__ is PersistedMsg and not msg.settled:
            self._let_go(msg)
            self._counters["persisted_terminated"] += 1
            self._send(msg.js.term())

    def _let_go(self, msg: PersistedMsg) -> None:
        """Mark msg settled: no longer held or kept in progress, and room again for its puller."""
        msg.settled = True
        self.held.pop(msg, None)
        msg.puller.settled()

    # ------------------------------------------------------------------ in-progress reports

    def keep_alive(self, ack_wait: float) -> None:
        """Report held tasks in progress at least every ack_wait/3 (the keeper looks every ack_wait/6)."""
        tick = ack_wait / 6
        if self._keeper is not None and tick >= self._tick:
            return
        # A sixth of the shortest ack_wait: a task due for a report (a third of its ack_wait old) gets it at most
        # half its ack_wait after the last, even on a busy loop.
        self._tick = tick
        self.stop()
        self._keeper = asyncio.get_running_loop().create_task(self._keep_held_alive())

    async def _keep_held_alive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._tick)
            now = loop.time()
            for msg in [m for m in self.held if now - m.since >= m.puller.limits.ack_wait / 3]:
                msg.since = now
                if not msg.settled:
                    self._send(msg.js.in_progress())

    def stop(self) -> None:
        """Stop reporting progress (the agent stopped: JetStream redelivers what it still held after ack_wait)."""
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
