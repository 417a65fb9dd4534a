"""Agents as NATS services (ADR-32): ``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS`` answered as nats.micro does.

``nats micro ls`` (and every tool that reads the NATS service API) sees each agent as one instance of the
service ``service.name`` (default: the agent type) with the agent id as its instance id; each capability is an
endpoint (subject: its task pattern, queue group: the capability) whose stats are the dispatcher's counters
for that capability. The answers use nats.micro's own format classes. The nine subjects are system
registrations of the RAW kind: answered inline as nats-py reads them, never queued behind tasks, answered
while paused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.micro.service import (
    EndpointInfo, EndpointStats, ServiceInfo, ServicePing, ServiceStats, ServiceVerb, control_subject,
)

from .core.host import Feature, Host
from .core.records import RAW

__all__ = ("Endpoint", "Services", "VERSION", "service_name")

try:
    VERSION: str = version("agentcore")
except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
    VERSION = "0.0.0"

_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]")  # ADR-32: a service name is [A-Za-z0-9_-]+


def service_name(name: str) -> str:
    """Return name as a valid ADR-32 service name (other characters become '_')."""
    return _NOT_NAME.sub("_", name) or "agent"


@dataclass(slots=True)
class Endpoint:
    """An endpoint another component serves (an A2A agent, say): what INFO shows of it and what STATS counts."""

    name: str
    subject: str
    queue_group: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    num_requests: int = 0
    num_errors: int = 0
    processing_time: int = 0  # nanoseconds, all requests together
    last_error: str = ""


class Services(Feature):
    """Answer the NATS service API for one agent (a Component)."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self.enabled: bool = host.config["service.enabled"]
        self.name = service_name(host.config["service.name"] or host.agent_type)
        self.id = host.agent_id
        self.metadata = {"agentcore.agent_id": host.agent_id, "agentcore.agent_type": host.agent_type,
                         "agentcore.environment": host.topics.env}
        self.started = datetime.now(timezone.utc)
        #: capability -> extra endpoint metadata (strings; the capability contracts set it).
        self.endpoint_metadata: Callable[[str], Mapping[str, str]] = lambda _capability: {}
        #: the endpoints other components serve besides the capabilities (the A2A component sets it).
        self.endpoints: Callable[[], Iterable[Endpoint]] = lambda: ()
        self._ping = orjson.dumps(ServicePing(id=self.id, name=self.name, version=VERSION, metadata=self.metadata).to_dict())

    def subjects(self) -> list[str]:
        """Return the nine subjects this agent answers: each verb alone, with its name, with its name and id."""
        return [control_subject(verb, name, id_) for verb in (ServiceVerb.PING, ServiceVerb.INFO, ServiceVerb.STATS)
                for name, id_ in ((None, None), (self.name, None), (self.name, self.id))]

    # ------------------------------------------------------------------ the answers

    def info(self) -> ServiceInfo:
        """Return the INFO answer: identity and one endpoint per capability."""
        topics = self._host.topics
        return ServiceInfo(
            id=self.id, name=self.name, version=VERSION, metadata=self.metadata,
            description=f"agentcore agent {self.id} ({self._host.agent_type})",
            endpoints=[EndpointInfo(name=cap, subject=topics.task_pattern(cap), queue_group=cap,
                                    metadata={"capability": cap, **self.endpoint_metadata(cap)})
                       for cap in self._host.capability_registrations()]
            + [EndpointInfo(name=e.name, subject=e.subject, queue_group=e.queue_group, metadata=dict(e.metadata))
               for e in self.endpoints()],
        )

    def stats(self) -> ServiceStats:
        """Return the STATS answer: requests, errors and processing time per capability."""
        topics = self._host.topics
        endpoints = []
        for cap, regs in self._host.capability_registrations().items():
            handled = sum(r.handled for r in regs)
            total = int(sum(r.seconds for r in regs) * 1e9)
            last = next((r.last_error for r in regs if r.last_error), "")
            endpoints.append(EndpointStats(
                name=cap, subject=topics.task_pattern(cap), queue_group=cap, num_requests=handled,
                num_errors=sum(r.errors for r in regs), processing_time=total,
                average_processing_time=total // handled if handled else 0, last_error=last, data={}))
        for e in self.endpoints():
            endpoints.append(EndpointStats(
                name=e.name, subject=e.subject, queue_group=e.queue_group, num_requests=e.num_requests,
                num_errors=e.num_errors, processing_time=e.processing_time,
                average_processing_time=e.processing_time // e.num_requests if e.num_requests else 0,
                last_error=e.last_error, data={}))
        return ServiceStats(id=self.id, name=self.name, version=VERSION, started=self.started, endpoints=endpoints,
                            metadata=self.metadata)

    def _on_ping(self, msg: Msg) -> None:
        self._reply(msg, self._ping)

    def _on_info(self, msg: Msg) -> None:
        self._reply(msg, orjson.dumps(self.info().to_dict()))

    def _on_stats(self, msg: Msg) -> None:
        self._reply(msg, orjson.dumps(self.stats().to_dict()))

    def _reply(self, msg: Msg, data: bytes) -> None:
        if msg.reply and self._host.connection.usable:
            # Started eagerly: queued for the flusher at once; signed when the agent signs.
            self._host.spawn(self._host.try_send(self._host.connection.publish(msg.reply, data)))

    # ------------------------------------------------------------------ the Component protocol

    async def start(self) -> None:
        """Register the service API's subjects (system, RAW) before the agent subscribes."""
        if not self.enabled:
            return
        self.started = datetime.now(timezone.utc)
        handlers = {ServiceVerb.PING: self._on_ping, ServiceVerb.INFO: self._on_info, ServiceVerb.STATS: self._on_stats}
        for verb, handler in handlers.items():
            for name, id_ in ((None, None), (self.name, None), (self.name, self.id)):
                self._host.register(control_subject(verb, name, id_), handler, kind=RAW, system=True)
