"""The A2A protocol (a2aproject/A2A, spec 1.0) over NATS: a custom protocol binding for a2a-sdk (extra ``a2a``).

Not agentcore's "A2A negotiation" (FIPA Contract Net, ``register_a2a_handler``/``negotiate_with_agents``): this is
the Agent2Agent protocol of Agent Cards, SendMessage and tasks. The wire format is docs/a2a-binding.md; this
package is a prototype of it (not wired into NATSAgent yet): ``A2ANatsServer`` drives an a2a-sdk
``RequestHandler`` on a NATS connection, ``NatsTransport`` is the client side an a2a-sdk ``ClientFactory`` registers,
``agentcore.a2a.jetstream`` holds task state and events in JetStream for replicas, ``agentcore.a2a.bridge`` puts
a2a-sdk's HTTP apps in front of a NATS agent, and ``agentcore.a2a.capability`` serves a plain capability handler.
"""

from __future__ import annotations

from .binding import BINDING_URI, PROTOCOL_VERSION, prefix_from_url, url_for
from .client import NatsTransport, register
from .server import A2ANatsServer

__all__ = ("A2ANatsServer", "BINDING_URI", "NatsTransport", "PROTOCOL_VERSION", "prefix_from_url", "register", "url_for")
