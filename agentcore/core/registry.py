"""The registry: which handlers serve which subjects, and the wire subscriptions kept in step with them."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .._impl import SubjectIndex, validate_token
from ..errors import AgentCoreError, ConfigError
from ..topics import Topics
from ..transport.inline import deliver_inline
from ..transport.puller import TaskPuller
from ..transport.subscriptions import confirm, retire
from .host import PersistedSource
from .records import MESSAGE, RAW, TASK, CacheMode, Handler, Registration, SubscriptionKey

__all__ = ("Registry", "is_async")


def is_async(fn: Callable[..., Any]) -> bool:
    """Return whether calling fn returns an awaitable coroutine (async def, or an object with async __call__)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


class Registry:
    """Hold capabilities and registrations; make one wire subscription per (pattern, queue) that has handlers."""

    def __init__(self, topics: Topics, default: Callable[[], Handler]) -> None:
        self.topics = topics
        self.capabilities: list[str] = []
        self.handlers: dict[str, Handler | None] = {}  # capability -> its handler (None: the default handler)
        self.cache_modes: dict[str, CacheMode] = {}  # capability -> False, True (per requester) or "shared"
        self.index = SubjectIndex()  # subject -> the registrations whose patterns match (compiled)
        self.registrations: dict[SubscriptionKey, list[Registration]] = {}
        self.subs: dict[SubscriptionKey, Subscription | TaskPuller] = {}
        self.lock = asyncio.Lock()  # one change of the wire subscriptions at a time
        self.source: PersistedSource | None = None  # serves some subscriptions from JetStream
        self._default = default  # returns the handler of registrations without one (read at registration)
        self.dispatch: Callable[[Msg, SubscriptionKey], None] = lambda msg, key: None  # set to the dispatcher's

    # ------------------------------------------------------------------ registrations

    def add_capability(self, capability: str, handler: Handler | None, cache: CacheMode) -> None:
        """Declare capability with handler (None: the default handler) and how its results are cached."""
        validate_token(capability)
        if cache is not True and cache is not False and cache != "shared":
            raise ConfigError(f"add_capability({capability!r}, cache=...) takes True (per requester), \"shared\" or False, "
                              f"got {cache!r}")
        if capability not in self.handlers:
            self.capabilities.append(capability)
        self.handlers[capability] = handler
        self.cache_modes[capability] = cache

    def register_capabilities(self) -> None:
        """Register the task topic of every declared capability."""
        for capability, handler in self.handlers.items():
            self.register_capability(capability, handler)

    def register_capability(self, capability: str, handler: Handler | None) -> None:
        """Register capability's task topic in its queue group."""
        self.register(
            self.topics.task_pattern(capability), handler, kind=TASK if handler else MESSAGE, queue=capability,
            fallback=self._result_fallback, cache=self.cache_modes.get(capability, True),
        )

    def capability_queue(self, subject: str) -> str | None:
        """Return the queue group for subject when it is a task topic of one of our capabilities."""
        tokens = subject.split(".")
        if len(tokens) >= 4 and tokens[0] == "agents" and tokens[1] == self.topics.env and tokens[2] == "task":
            if tokens[3] in self.handlers:
                return tokens[3]
        return None

    def register(
        self,
        subject: str,
        handler: Handler | None,
        *,
        kind: int,
        queue: str = "",
        system: bool = False,
        fallback: Callable[[dict[str, Any]], str | None] | None = None,
        cache: CacheMode = False,
    ) -> Registration:
        """Add a registration (the same handler and kind twice is one registration) and return it."""
        fn = handler if handler is not None else self._default()
        reg = Registration(subject, queue, handler, kind, is_async(fn), system=system, cache=cache, fallback=fallback)
        regs = self.registrations.setdefault(reg.key, [])
        for old in regs:
            if old.handler == handler and old.kind == kind:
                old.cache = cache
                return old  # subscribing the same thing twice must not double-deliver
        regs.append(reg)
        self.index.insert(subject, reg)
        return reg

    def unregister(self, subject: str, handler: Handler | None = None) -> None:
        """Remove the registrations of subject (only handler's, when given)."""
        for key, regs in list(self.registrations.items()):
            if key[0] != subject:
                continue
            for reg in [r for r in regs if handler is None or r.handler == handler]:
                regs.remove(reg)
                self.index.remove(reg.pattern, reg)
            if not regs:
                del self.registrations[key]

    def _result_fallback(self, message: dict[str, Any]) -> str | None:
        if message.get("type") != "task":
            return None
        capabilities = (message.get("routing") or {}).get("capabilities") or ["result"]
        try:
            return self.topics.result(message["source"]["id"], capabilities[0])
        except AgentCoreError:
            return None

    # ------------------------------------------------------------------ wire subscriptions

    async def sync(self, nc: NATSClient, status: Callable[[], str]) -> None:
        """Make the NATS subscriptions match the registrations (one wire subscription per pattern and queue)."""
        if nc.is_closed or status() in ("stopping", "stopped"):
            return
        async with self.lock:
            if nc.is_closed or status() in ("stopping", "stopped"):
                return  # the stop took the subscriptions while this waited for the lock: never subscribe again
            paused = status() == "paused"
            wanted = {
                key for key, regs in self.registrations.items() if regs and not (paused and not any(r.system for r in regs))
            }
            retired = [self.subs.pop(key) for key in [k for k in self.subs if k not in wanted]]
            if retired:
                await asyncio.gather(*(retire(nc, sub) for sub in retired))
            source = self.source
            for key in wanted:
                if key not in self.subs:
                    sub: Subscription | TaskPuller
                    if source is not None and source.serves(key):
                        sub = await source.subscribe(key)  # the capability's tasks are pulled from its JetStream consumer
                    else:
                        sub = core = await nc.subscribe(key[0], queue=key[1], cb=self._callback(key))
                        raw = self._raw(key)  # no per-message hop through nats-py's task, either way
                        if raw is not None:
                            deliver_inline(core, raw)
                        else:
                            deliver_inline(core, self.dispatch, key)
                    if status() in ("stopping", "stopped"):  # the stop gave up waiting for this sync's lock
                        await retire(nc, sub)
                        return
                    self.subs[key] = sub
            await confirm(nc)

    def _raw(self, key: SubscriptionKey) -> Callable[[Msg], None] | None:
        """Return the handler of a RAW registration on key (delivered the message as it is, never dispatched)."""
        regs = self.registrations.get(key)
        return regs[0].handler if regs and regs[0].kind == RAW else None

    def _callback(self, key: SubscriptionKey) -> Callable[[Msg], Any]:
        deliver = self._inline(key)

        async def on_message(msg: Msg) -> None:  # used only where inline delivery is unavailable
            deliver(msg)

        return on_message

    def _inline(self, key: SubscriptionKey) -> Callable[[Msg], None]:
        raw = self._raw(key)
        if raw is not None:
            return raw
        dispatch = self.dispatch
        return lambda msg: dispatch(msg, key)

    async def retire_all(self, nc: NATSClient, timeout: float) -> bool:
        """End every subscription, letting what is on the wire arrive, within timeout; False when it ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Under the lock, so a pause/resume/subscribe in progress finishes first and none starts after; but only
        # until the deadline: on a stalled server that change may wait out nats-py's 10 s flush timeouts.
        try:
            await asyncio.wait_for(self.lock.acquire(), max(deadline - loop.time(), 0.01))
            held = True
        except asyncio.TimeoutError:
            held = False  # the stuck change sees status "stopping" and retires what it subscribes
        try:
            subs, self.subs = list(self.subs.values()), {}
            await asyncio.wait_for(asyncio.gather(*(retire(nc, sub) for sub in subs)), max(deadline - loop.time(), 0.01))
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            if held:
                self.lock.release()
