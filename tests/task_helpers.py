"""A handler that blocks until cancelled, and a server/client pair serving it: for the task lifecycle tests."""

from __future__ import annotations

import asyncio
from typing import Any

from agentcore import NATSAgent


class Blocking:
    """A handler that blocks until cancelled and records that it saw CancelledError."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.ids: list[str] = []

    async def __call__(self, message: dict[str, Any]) -> Any:
        self.ids.append(message["id"])
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "finished"


async def server_and_client(make_agent: Any, handler: Any, **config: Any) -> tuple[NATSAgent, NATSAgent]:
    server = await make_agent("server", capabilities={"slow": handler}, cache__enabled=False, **config)
    client = await make_agent("client", **config)
    return server, client
