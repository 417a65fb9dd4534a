"""A2A negotiation over NATS (Contract Net): filled in by the A2A issue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ("NegotiationMixin",)


class NegotiationMixin:
    """Give NATSAgent register_a2a_handler and negotiate_with_agents."""

    def register_a2a_handler(self, negotiation_type: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Answer negotiations of negotiation_type with handler."""
        raise NotImplementedError

    async def negotiate_with_agents(
        self, target_agents: list[str], negotiation_type: str, proposal: dict[str, Any],
        constraints: dict[str, Any] | None = None, timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Negotiate a proposal with target agents and return the outcome."""
        raise NotImplementedError
