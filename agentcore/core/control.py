"""Control and discovery: the commands an agent answers on its control subject, discovery, heartbeats."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import nats.errors
from nats.aio.msg import Msg

from .._impl import validate_token
from ..config import CONTROL_COMMANDS, AgentConfig
from ..envelope import decode, encode, new_message
from ..errors import AgentCoreError, EnvelopeError, ForbiddenError, RemoteError
from ..metrics import AgentMetrics
from ..topics import Topics
from ..transport.connection import Connection
from .records import NO_REPLY

__all__ = ("Control",)

log = logging.getLogger("agentcore.agent")

COMMANDS = CONTROL_COMMANDS


class Face(Protocol):
    """The agent's overridable methods that control, discovery and status use (a subclass may override them)."""

    def describe(self) -> dict[str, Any]:
        """Return what discovery and heartbeats say about this agent."""
        ...

    async def pause(self) -> None:
        """Stop taking new work."""
        ...

    async def resume(self) -> None:
        """Take work again."""
        ...

    async def publish(self, topic: str, content: Any, *, type: str = "event", **fields: Any) -> str:
        """Publish a message; return its id."""
        ...


class Control:
    """Answer control commands and discovery queries; publish status on changes and as heartbeats.

    Commands not in ``control.open`` (by default pause, resume and shutdown) are taken only from the agent
    itself and the source ids in ``control.allow``; anyone else is refused with ``forbidden``. A source id is
    what the sender says it is unless identities are signed (identity.seed and identity.trusted, docs/security.md): NATS permissions on the control subject are what
    keeps strangers out for real (docs/security.md).
    """

    def __init__(self, agent_id: str, agent_type: str, topics: Topics, connection: Connection, *,
                 config: AgentConfig, metrics: AgentMetrics,
                 status: Callable[[], str], describe: Callable[[], dict[str, Any]], capabilities: list[str],
                 pause: Callable[[], Awaitable[None]], resume: Callable[[], Awaitable[None]],
                 shutdown: Callable[[], None], publish: Callable[..., Awaitable[str]]) -> None:
        self.agent_id = agent_id
        self.agent_type = agent_type
        self.topics = topics
        self.connection = connection
        self.allowed = frozenset((agent_id, *config["control.allow"]))  # who may send every command
        self.open = frozenset(config["control.open"])  # the commands anyone may send
        self._counters = metrics.counters
        self._status = status
        self._describe = describe
        self._capabilities = capabilities
        self._pause = pause
        self._resume = resume
        self._shutdown = shutdown
        self._publish = publish

    async def on_control(self, message: dict[str, Any]) -> Any:
        """Run one control command and return its answer."""
        if message["type"] not in ("query", "task"):
            # A result or event reflected onto our control subject (e.g. via a forged replyTo) is no command.
            log.warning("agent %s ignored a %s message on its control subject", self.agent_id, message["type"])
            return NO_REPLY
        content = message["payload"]["content"]
        command = content.get("command") if isinstance(content, dict) else content
        if command in COMMANDS and command not in self.open and message["source"]["id"] not in self.allowed:
            self._refuse(command, message["source"]["id"])
        if command == "ping":
            return {"pong": True, "agent_id": self.agent_id, "status": self._status()}
        if command == "status":
            return self._describe()
        if command == "pause":
            await self._pause()
            return {"status": self._status()}
        if command == "resume":
            await self._resume()
            return {"status": self._status()}
        if command == "shutdown":
            self._shutdown()  # answered first; stopping from inside our own handler would wait on ourselves
            return {"status": "stopping"}
        raise RemoteError("unknown_command", f"unknown control command {command!r}; use ping, status, pause, resume or shutdown")

    def _refuse(self, command: str, sender: str) -> None:
        self._counters["control_refused"] += 1
        if self._counters["control_refused"] % 100 == 1:  # not every one: a flood must not flood the log too
            log.warning("agent %s refused control command %r from %r (not in control.allow)", self.agent_id, command, sender)
        raise ForbiddenError("forbidden", f"agent {self.agent_id} does not take {command!r} from {sender!r}: "
                                          "the sender is not in its control.allow", details={"reason": "control"})

    async def on_discovery(self, message: dict[str, Any]) -> Any:
        """Answer a discovery query unless it asks for a capability this agent lacks."""
        content = message["payload"]["content"]
        wanted = content.get("capability") if isinstance(content, dict) else None
        if wanted and wanted not in self._capabilities:
            return NO_REPLY
        return self._describe()

    async def discover(self, capability: str | None, timeout: float, expected: int | None, include_self: bool) -> list[dict[str, Any]]:
        """Return the live agents (optionally only those with capability) that answer within timeout."""
        nc = self.connection.require()
        if capability is not None:
            validate_token(capability)
        found: dict[tuple[str, str], dict[str, Any]] = {}  # replicas sharing an id differ by instance
        enough = asyncio.Event()

        async def collect(msg: Msg) -> None:
            if not msg.data and msg.headers and msg.headers.get("Status") == "503":
                enough.set()  # no responders: nobody subscribes discovery, so no answer will come (not a malformed one)
                return
            try:
                reply = decode(msg.data)
            except EnvelopeError as exc:
                log.warning("agent %s ignored a malformed discovery answer: %s", self.agent_id, exc)
                return
            info = reply["payload"]["content"]
            if isinstance(info, dict) and isinstance(info.get("id"), str) and (include_self or info["id"] != self.agent_id):
                found[info["id"], str(info.get("instance", ""))] = info
                if expected is not None and len(found) >= expected:
                    enough.set()

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=collect)
        try:
            query = new_message("query", {"capability": capability}, source_id=self.agent_id, source_type=self.agent_type)
            await self.connection.publish(self.topics.discovery_requests(), encode(query), reply=inbox)
            try:
                await asyncio.wait_for(enough.wait(), timeout)
            except asyncio.TimeoutError:
                pass  # the collection window is over; what arrived is the answer
        finally:
            await sub.unsubscribe()
        return [found[key] for key in sorted(found)]

    async def publish_status(self) -> None:
        """Publish describe() on the agent's status subject (best effort)."""
        nc = self.connection.nc
        if nc is None or not nc.is_connected:
            return
        try:
            await self._publish(self.topics.status(self.agent_id), self._describe())
        except (AgentCoreError, nats.errors.Error) as exc:
            log.debug("agent %s could not publish status: %s", self.agent_id, exc)

    async def heartbeats(self, interval: float) -> None:
        """Publish status every interval seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.publish_status()
