"""Where sync user functions run: inline on the event loop until one is seen to block, then in a thread pool.

A sync handler that returns quickly (the guide's ``process_message`` calling ``publish_result``) costs two
thread hand-offs when it runs in a thread pool, more than the whole round trip of a raw nats-py responder.
So with ``agent.sync_handlers`` "auto" (the default) a sync handler runs inline, timed; the first call that
takes longer than ``agent.sync_block_threshold`` moves that registration to the thread pool for good (logged
once, counted in ``sync_handlers_moved``). That first slow call held the loop for as long as it took; every
later call runs in a worker thread, so control, heartbeats and other handlers are not held again. "inline"
never moves a handler (they are known not to block); "thread" runs every sync handler in the pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import AgentConfig
from ..errors import NotConnectedError
from ..metrics import AgentMetrics
from .records import Registration

__all__ = ("SyncCalls", "needs_thread")

log = logging.getLogger("agentcore.agent")

_MAX_MOVED = 1024  # functions (not registrations) remembered as blocking; feature callbacks are few


def needs_thread(exc: BaseException) -> bool:
    """Return whether exc says a function tried to run or wait for an event loop from the loop's own thread."""
    # asyncio.run(), loop.run_until_complete(), asyncio.Runner.run() and NATSAgent.call() all refuse so, before
    # running anything: the function works in a worker thread.
    return isinstance(exc, RuntimeError) and "event loop" in str(exc) and ("running" in str(exc) or "already" in str(exc))


class SyncCalls:
    """Run sync user functions inline or in the agent's thread pool, following agent.sync_handlers."""

    def __init__(self, agent_id: str, config: AgentConfig, metrics: AgentMetrics, stopped: Callable[[], bool]) -> None:
        self.agent_id = agent_id
        self.config = config
        self.mode: str = config["agent.sync_handlers"]
        self.threshold: float = config["agent.sync_block_threshold"]
        self.all_threaded = self.mode == "thread"  # read by the dispatcher with each registration's own flag
        self.counters = metrics.counters
        self.counters["sync_handlers_moved"] = 0  # always reported
        self._stopped = stopped
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._moved: dict[Any, None] = {}  # functions called through call() that were seen to block

    # ------------------------------------------------------------------ registrations (the dispatcher)

    def inline(self, reg: Registration, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """Call a registration's sync handler on the loop; move the registration to the pool if it blocked."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            elapsed = time.perf_counter() - t0
            if elapsed > self.threshold and self.mode == "auto" and not reg.threaded:
                reg.threaded = True
                self._moved_once(f"the handler of {reg.pattern}", elapsed)

    def move(self, reg: Registration, exc: BaseException) -> bool:
        """Move reg to the pool when its handler failed only for running on the loop (auto); True when moved."""
        if self.mode != "auto" or reg.threaded or not needs_thread(exc):
            return False
        reg.threaded = True
        self._moved_once(f"the handler of {reg.pattern}", 0.0, exc)
        return True

    # ------------------------------------------------------------------ any sync function (features' callbacks)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a sync function as agent.sync_handlers says, remembering (per function) one seen to block."""
        if self.all_threaded:
            return await self.threaded(fn, *args)
        try:
            moved = fn in self._moved
        except TypeError:  # unhashable: nothing to remember it by, so never risk the loop
            return await self.threaded(fn, *args)
        if moved:
            return await self.threaded(fn, *args)
        t0 = time.perf_counter()
        try:
            return fn(*args)
        except RuntimeError as exc:
            if self.mode != "auto" or not needs_thread(exc):
                raise
            self._remember(fn, 0.0, exc)
            return await self.threaded(fn, *args)  # it refused before doing anything: run it where it can
        finally:
            elapsed = time.perf_counter() - t0
            if elapsed > self.threshold and self.mode == "auto" and fn not in self._moved:
                self._remember(fn, elapsed)

    def _remember(self, fn: Callable[..., Any], elapsed: float, exc: BaseException | None = None) -> None:
        if len(self._moved) >= _MAX_MOVED:
            self._moved.pop(next(iter(self._moved)))
        self._moved[fn] = None
        self._moved_once(getattr(fn, "__qualname__", repr(fn)), elapsed, exc)

    def _moved_once(self, what: str, elapsed: float, exc: BaseException | None = None) -> None:
        self.counters["sync_handlers_moved"] += 1
        why = (f"it held the event loop {elapsed * 1000:.0f} ms (agent.sync_block_threshold "
               f"{self.threshold * 1000:.0f} ms)") if exc is None else f"it cannot run on the event loop ({exc})"
        log.warning("agent %s runs %s in its thread pool from now on: %s; set agent.sync_handlers to 'thread' for "
                    "handlers that block, or make them async", self.agent_id, what, why)

    # ------------------------------------------------------------------ the thread pool

    async def threaded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call fn in the agent's thread pool and return its result."""
        return await asyncio.get_running_loop().run_in_executor(self._get_executor(), fn, *args)

    def _get_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            if self._stopped():
                raise NotConnectedError(f"agent {self.agent_id} is stopped")
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.config["agent.sync_workers"], thread_name_prefix=f"agentcore-{self.agent_id}"
            )
        return self._executor

    def shutdown(self) -> None:
        """End the thread pool (stopping); a later start makes a new one."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
