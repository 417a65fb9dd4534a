"""Shared benchmark plumbing: a private event loop that times sequential calls and closes what a setup opened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


class LoopBench:
    """Drive one benchmark setup on its own event loop; closers run on close()."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.closers: list[Callable[[], Awaitable[Any]]] = []

    def time_calls(self, call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
        """Await call() n times in sequence and return each one's duration in seconds."""

        async def many() -> list[float]:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                await call()
                times.append(time.perf_counter() - t0)
            return times

        return self.loop.run_until_complete(many())

    def close(self) -> None:
        for close in self.closers:
            self.loop.run_until_complete(close())
        self.loop.close()
