"""The A2A protocol (a2aproject/A2A, spec 1.0) over NATS: a custom protocol binding for a2a-sdk (extra ``a2a``).

Not agentcore's "A2A negotiation" (FIPA Contract Net, ``register_a2a_handler``/``negotiate_with_agents``): this is
the Agent2Agent protocol of Agent Cards, SendMessage and tasks. The wire format is docs/a2a-binding.md.
``NATSAgent.serve_a2a`` serves an a2a-sdk ``AgentExecutor`` (or a capability) on the agent's connection
(``agentcore.a2a.component``); ``A2ANatsServer`` drives an a2a-sdk ``RequestHandler`` on any NATS connection,
``NatsTransport`` is the client side an a2a-sdk ``ClientFactory`` registers, ``agentcore.a2a.jetstream`` holds task
state and events in JetStream for replicas, ``agentcore.a2a.bridge`` puts a2a-sdk's HTTP apps in front of a NATS
agent, and ``agentcore.a2a.capability`` serves a plain capability handler.

The names below load a2a-sdk when first used, so ``import agentcore`` works without the extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .binding import BINDING_URI, PROTOCOL_VERSION, prefix_from_url, url_for
    from .client import NatsTransport, register
    from .errors import OverloadedError
    from .server import A2ANatsServer

__all__ = ("A2ANatsServer", "BINDING_URI", "NatsTransport", "OverloadedError", "PROTOCOL_VERSION", "prefix_from_url",
           "register", "url_for")

_WHERE = {"BINDING_URI": "binding", "PROTOCOL_VERSION": "binding", "prefix_from_url": "binding", "url_for": "binding",
          "NatsTransport": "client", "register": "client", "OverloadedError": "errors", "A2ANatsServer": "server"}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
