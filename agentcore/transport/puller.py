"""Pull one capability's persisted tasks from its durable JetStream consumer, only as many as the agent has room for.

A push consumer sends up to max_ack_pending tasks ahead to whoever subscribes; when that agent pauses or stops,
the tasks on their way are dropped with its subscription and wait out ack_wait (measured: 371 of 400 stranded
for 30 s by one pause). Pulling keeps one lingering pull request per agent and capability, sized to the room
the agent has, so tasks only come when it can take them, replicas share them, and a pause simply stops asking.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .inline import deliver_inline
from .subscriptions import retire

__all__ = ("ConsumerLimits", "TaskPuller")

log = logging.getLogger("agentcore.persistence")

_ENDED = ("404", "408")  # no messages (no_wait) / the request expired: normal ends of a pull request
_ERROR_PAUSE = 0.5  # seconds before asking again after a pull request failed (consumer deleted, leader change, ...)


class ConsumerLimits:
    """The settings of a capability's consumer that the agent acts on, as the server has them."""

    __slots__ = ("ack_wait", "max_deliver")

    def __init__(self, ack_wait: float, max_deliver: int) -> None:
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver  # -1: unlimited


class TaskPuller:
    """One lingering pull request at a time for one consumer, renewed as its tasks arrive and are settled."""

    def __init__(self, nc: NATSClient, next_subject: str, limits: ConsumerLimits, *, capacity: int, expires: float,
                 deliver: Callable[[Msg, TaskPuller], None], send: Callable[[Coroutine[Any, Any, None]], None],
                 closed: Callable[[TaskPuller], None] = lambda puller: None) -> None:
        self.nc = nc
        self.subject = next_subject  # $JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}
        self.limits = limits
        self.capacity = capacity  # tasks this agent holds from this consumer at most
        self.expires = expires  # each pull request lingers this long at most: how long a pause may wait for it
        self.held = 0  # delivered, not yet settled
        self.owed = 0  # what the outstanding pull request may still deliver
        self.deadline = 0.0  # loop time by which the outstanding request is surely over (one lost in a restart)
        self.active = False
        self._deliver = deliver
        self._send = send
        self._closed = closed
        self._ended = asyncio.Event()
        self._ended.set()
        self._sub: Subscription | None = None
        self._inbox = ""  # each pull request replies to {inbox}.{n}: a status from an earlier one is told apart
        self._requests = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        """Subscribe the reply inbox and send the first pull request."""
        self._inbox = self.nc.new_inbox()

        async def fallback(msg: Msg) -> None:  # used only where inline delivery is unavailable
            self._on_message(msg)

        self._sub = await self.nc.subscribe(self._inbox + ".*", cb=fallback)
        deliver_inline(self._sub, self._on_message)
        self.active = True
        self.pull()

    def pull(self) -> None:
        """Ask for as many tasks as there is room for, unless a request is still out or the agent is fairly full."""
        if not self.active or self.owed > 0 or not self.nc.is_connected:
            return  # (disconnected, a request would wait in nats-py's buffer and join one sent after the reconnect)
        room = self.capacity - self.held
        # Wait until half the room is free: asking for one task at a time under load costs a request per task.
        if room <= 0 or self.held > self.capacity // 2:
            return
        self.owed = room
        self.deadline = self._loop.time() + self.expires + 2.0
        self._ended.clear()
        self._requests += 1
        # A request the server lost (a restart without a reconnect here, say) is given up on at its deadline.
        self._timer = self._loop.call_at(self.deadline, self._overdue, self._requests)
        request = orjson.dumps({"batch": room, "expires": int(self.expires * 1e9)})
        self._send(self.nc.publish(self.subject, request, reply=f"{self._inbox}.{self._requests}"))

    def settled(self) -> None:
        """One of this puller's tasks was acked, handed back or dropped: there is room again."""
        self.held -= 1
        if self.owed == 0:
            self.pull()

    def _overdue(self, request: int) -> None:
        if request == self._requests and self.owed > 0:
            log.debug("pull request %d on %s got no end by its deadline: asking again", request, self.subject)
            self._end()
            self.pull()

    def reset(self) -> None:
        """After a reconnect: ask again, unless a request is still out.

        Tasks carry no trace of the request they answer, so two requests out at once cannot be told apart. One
        still out either survived (a reconnect to the same server: it ends as usual) or was lost with a
        restarted server (its deadline ends it, at most pull_expires + 2 s later).
        """
        self.pull()

    def _end(self) -> None:
        self.owed = 0
        self._ended.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        if headers and not msg.data and "Status" in headers:
            status = headers["Status"]
            if status == "100" or msg.subject != f"{self._inbox}.{self._requests}":
                return  # an idle heartbeat (not asked for), or the end of a request already given up on
            self._end()
            if status in _ENDED:
                self.pull()
            else:  # 409: consumer deleted, leadership change, too many waiting requests, ...
                log.warning("pulling from %s failed: %s %s", self.subject, status, headers.get("Description", ""))
                self._loop.call_later(_ERROR_PAUSE, self.pull)
            return
        self.held += 1
        if self.owed > 0:
            self.owed -= 1
            if self.owed == 0:
                self._end()  # the whole batch came: this request is over
        try:
            self._deliver(msg, self)  # settles the task, now or later, even when handing it on fails
        finally:
            if self.owed == 0:
                self.pull()  # even when delivering failed: a puller that stops asking stops its capability

    async def drain(self) -> None:
        """Stop asking; handle what the outstanding pull request still brings, then drop the inbox."""
        # The server sends a pull request's tasks from the consumer's own send queue, not in step with this
        # connection: an UNSUB confirmed by PING/PONG does not prove they all arrived (tasks were stranded until
        # ack_wait that way under load). The request's end does: its last task, or the 408 status that follows it.
        self.active = False
        self._closed(self)
        if self.owed > 0:  # (messages still come: the request and the inbox outlive the pause until its end)
            try:
                await asyncio.wait_for(self._ended.wait(), max(self.deadline - self._loop.time(), 0.0))
            except asyncio.TimeoutError:
                log.warning("the pull request on %s did not end by its deadline: tasks it still brings wait out ack_wait",
                            self.subject)
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await retire(self.nc, sub)

    async def unsubscribe(self) -> None:
        """Stop asking and drop the inbox at once (disconnected: nothing is on its way)."""
        self.active = False
        self._closed(self)
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()
