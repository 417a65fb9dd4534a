"""Cancellation and status of tasks on the wire: the requester's side (cancel, ask) and the serving agent's (answer).

Wire format (docs/cancellation.md):
- cancel: an ``event`` envelope on ``agents.{env}.lifecycle.cancel`` (every agent hears it), correlationId = the
  task id, content ``{"task_id", "reply_to", "reason"}``; reply_to is where the task's answer goes (its reply
  inbox). The agent holding that task of that source.id cancels it only when reply_to matches and, with signed
  identities, the cancel is signed by the key that signed the task. With a NATS reply subject the agent that
  cancelled answers a result ``{"task_id", "state": "cancelled", "agent"}``; anyone else stays silent.
- status: a ``query`` on ``agents.{env}.lifecycle.status``, content ``{"task_id"}``; the agent holding that task
  of the asker's source.id (or any task, for an agent in its control.allow) answers ``{"task_id", "state",
  "agent", "since"}``; the others stay silent.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import nats.errors
from nats.aio.msg import Msg

from ..config import AgentConfig
from ..envelope import decode, encode, new_message
from ..errors import AgentCoreError, EnvelopeError, NotConnectedError, TaskNotFoundError
from ..metrics import AgentMetrics
from ..topics import Topics
from ..transport.connection import Connection
from ..transport.identity import H_SENDER
from ..transport.inline import Accept
from .tasks import CANCELLED, DONE, FAILED, TaskTable

FINAL = (DONE, FAILED, CANCELLED)  # states a task never leaves

__all__ = ("TaskControl", "StatusSource")

log = logging.getLogger("agentcore.agent")


class StatusSource(Protocol):
    """Answers status queries from elsewhere than the serving agents' memory (JetStream, for persisted tasks)."""

    async def status_of(self, task_id: str) -> dict[str, Any] | None:
        """Return the asker's task's status ({"task_id", "state", ...}), or None when this source does not know it."""
        ...


class TaskControl:
    """Send and serve task cancellations and status queries (see the module docstring)."""

    def __init__(self, agent_id: str, agent_type: str, topics: Topics, connection: Connection, config: AgentConfig,
                 metrics: AgentMetrics, table: TaskTable, accept: Callable[[str], Accept],
                 spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.agent_id = agent_id
        self.agent_type = agent_type
        self.topics = topics
        self.connection = connection
        self.allow = frozenset(config["control.allow"])
        self.metrics = metrics
        self.table = table
        self._accept = accept  # request id -> the check a reply to it must pass
        self._spawn = spawn
        self.source: StatusSource | None = None  # asked first by task_status (a persistence component, say)
        self.asked: OrderedDict[str, str] = OrderedDict()  # our open stream tasks: id -> where their answer comes
        metrics.counters["cancels_rejected"] += 0

    # ------------------------------------------------------------------ the requester's side

    def asking(self, task_id: str, reply_to: str) -> None:
        """Remember where our task's answer comes, so cancel(task_id) can name it (the oldest go beyond 4096)."""
        self.asked[task_id] = reply_to
        if len(self.asked) > 4096:
            self.asked.popitem(last=False)

    def answered(self, task_id: str) -> None:
        """Forget an open task of ours."""
        self.asked.pop(task_id, None)

    def abandon(self, task_id: str, reply_to: str | None, reason: str) -> None:
        """Tell whichever agent serves task_id that its requester gave up (fire and forget)."""
        self.asked.pop(task_id, None)
        if reply_to is None or not self.connection.usable:
            return
        self._spawn(self._send_cancel(task_id, reply_to, reason))

    async def _send_cancel(self, task_id: str, reply_to: str, reason: str) -> None:
        try:
            await self.connection.publish(self.topics.task_cancel(), self._cancel_message(task_id, reply_to, reason))
        except AgentCoreError as exc:
            log.debug("agent %s could not send the cancellation of %s: %s", self.agent_id, task_id, exc)

    def _cancel_message(self, task_id: str, reply_to: str, reason: str) -> bytes:
        message = new_message("event", {"task_id": task_id, "reply_to": reply_to, "reason": reason},
                              source_id=self.agent_id, source_type=self.agent_type, correlation_id=task_id)
        data: bytes = encode(message)
        return data

    async def cancel(self, task_id: str, reply_to: str | None, timeout: float) -> dict[str, Any]:
        """Cancel our task task_id (its answer goes to reply_to) and return the serving agent's word on it."""
        reply_to = reply_to or self.asked.pop(task_id, None)
        if reply_to is None:
            raise TaskNotFoundError(f"agent {self.agent_id} has no open stream task {task_id!r}: pass the reply_to its "
                                    "answer goes to", task_id=task_id)
        message = new_message("event", {"task_id": task_id, "reply_to": reply_to, "reason": "cancelled by the requester"},
                              source_id=self.agent_id, source_type=self.agent_type, correlation_id=task_id)
        return await self._ask(self.topics.task_cancel(), message, timeout, task_id, "cancel")

    async def status(self, task_id: str, timeout: float) -> dict[str, Any]:
        """Return our task's status from the agent serving it (or the status source)."""
        known = await self.source.status_of(task_id) if self.source is not None else None
        if known is not None and known["state"] in FINAL:
            return known  # kept (JetStream): it will not change, and it outlives the agent that served it
        message = new_message("query", {"task_id": task_id}, source_id=self.agent_id, source_type=self.agent_type,
                              correlation_id=task_id)
        try:
            return await self._ask(self.topics.task_status(), message, timeout, task_id, "report the status of")
        except TaskNotFoundError:
            if known is not None:  # stored but served by no live agent now: queued in the stream, say
                return known
            raise

    async def _ask(self, subject: str, message: dict[str, Any], timeout: float, task_id: str, what: str) -> dict[str, Any]:
        try:
            reply = await self.connection.request(subject, encode(message), timeout, self._accept(message["id"]))
        except nats.errors.TimeoutError:
            raise TaskNotFoundError(f"no agent would {what} task {task_id!r} of {self.agent_id} within {timeout}s: it "
                                    "never reached one, it ended long ago, or it is not this agent's", task_id=task_id) from None
        except nats.errors.Error as exc:
            raise NotConnectedError(f"agent {self.agent_id} could not ask about task {task_id!r}: {exc or type(exc).__name__}") from exc
        content: dict[str, Any] = reply["payload"]["content"]
        return content

    # ------------------------------------------------------------------ the serving agent's side

    def _asker(self, msg: Msg, message: dict[str, Any]) -> str | None:
        """Return the asker's source.id, when its identity is verified (or identities are off)."""
        source_id = message["source"]["id"]
        verifier = self.connection.verifier
        if verifier is not None:
            reason = verifier.check(msg.subject, msg.reply, msg.headers, msg.data, source_id)
            if reason is not None:
                verifier.refuse(reason, source_id, msg.subject)
                return None
        return str(source_id)

    def _read(self, msg: Msg) -> tuple[dict[str, Any], dict[str, Any], str, str] | None:
        """Return (message, content, task id, asker) of a cancel or status message, None when it names none or its
        asker's identity fails."""
        try:
            message = decode(msg.data)
        except EnvelopeError:
            return None
        content = message["payload"].get("content")
        if not isinstance(content, dict):
            return None
        task_id = content.get("task_id")
        if not isinstance(task_id, str):
            return None
        source_id = self._asker(msg, message)
        return None if source_id is None else (message, content, task_id, source_id)

    def on_cancel(self, msg: Msg) -> None:
        """Cancel the task a cancel message names when it comes from that task's requester (RAW, inline)."""
        read = self._read(msg)
        if read is None:
            return
        message, content, task_id, source_id = read
        live = self.table.live(source_id, task_id)
        if live is None:
            return  # not ours, or over: every agent hears every cancel
        sender = (msg.headers or {}).get(H_SENDER) if self.connection.verifier is not None else None
        if content.get("reply_to") != live.destination or sender != live.key:
            self.metrics.counters["cancels_rejected"] += 1
            log.warning("agent %s ignored a cancellation of task %s claiming to come from %s: not from its requester",
                        self.agent_id, task_id, source_id)
            return
        self.table.cancel(live)
        if msg.reply:
            self._spawn(self._answer(msg.reply, message, task_id, CANCELLED, time.time()))

    def on_status(self, msg: Msg) -> None:
        """Answer a status query about a task of the asker's (or any, for control.allow) (RAW, inline)."""
        read = self._read(msg) if msg.reply else None
        if read is None:
            return
        message, _content, task_id, source_id = read
        known = self.table.status(source_id, task_id)
        if known is None and source_id in self.allow:
            known = self.table.status_any(task_id)
        if known is not None:
            self._spawn(self._answer(msg.reply, message, task_id, *known))

    async def _answer(self, reply: str, request: dict[str, Any], task_id: str, state: str, since: float | None) -> None:
        content = {"task_id": task_id, "state": state, "agent": self.agent_id, "since": since}
        answer = new_message("result", content, source_id=self.agent_id, source_type=self.agent_type,
                             correlation_id=request["id"], target=request["source"]["id"])
        try:
            await self.connection.publish(reply, encode(answer))
        except AgentCoreError as exc:
            log.debug("agent %s could not answer about task %s: %s", self.agent_id, task_id, exc)
