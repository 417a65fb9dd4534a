"""The records the core keeps per registration, per delivered request and per queued message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._impl import SlotsMaker
from ..fields import REPLY_TO

__all__ = ("MESSAGE", "TASK", "RAW", "NO_REPLY", "Handler", "Incoming", "Registration", "Delivery", "Queued",
           "SubscriptionKey", "CacheMode", "asked_at", "new_delivery")

Handler = Callable[..., Any]
SubscriptionKey = tuple[str, str]  # (subject pattern, queue group): one wire subscription

#: Returned by a task handler that must not answer (e.g. a discovery query for a capability it lacks).
NO_REPLY: Any = object()

MESSAGE, TASK = 0, 1  # handler kinds: (topic, message) -> bool, or (message) -> result that is sent back
#: A handler kind that takes the raw NATS message inline (not an envelope; the NATS service API): handler(msg) -> None.
RAW = 2

#: How a registration's results are cached: False (never), True (per requester), "shared" (for every requester).
CacheMode = bool | str


class Incoming(Protocol):
    """A message as the dispatcher reads it: a core NATS Msg or a persisted task shaped like one."""

    subject: str
    data: bytes
    reply: str
    headers: dict[str, str] | None


@dataclass(eq=False, slots=True)
class Registration:
    """One handler of one subject pattern (and queue group); several may share a wire subscription."""

    pattern: str
    queue: str
    handler: Handler | None  # None: the agent's own process_message, looked up per message
    kind: int
    is_async: bool
    system: bool = False  # control/discovery/negotiation: never paused, never queued behind tasks
    cache: CacheMode = True  # results may be served from the content-hash cache (tasks only); "shared": across requesters
    fallback: Callable[[dict[str, Any]], str | None] | None = None  # where results go without a reply subject
    threaded: bool = False  # a sync handler seen to block: it runs in the thread pool (core/sync_calls.py)
    key: SubscriptionKey = field(init=False)  # the wire subscription it rides on: (pattern, queue)
    handled: int = 0  # messages its handler finished (the NATS service API's num_requests)
    errors: int = 0  # of which failed
    seconds: float = 0.0  # total time from arrival to the end of handling
    last_error: str = ""
    # An async handler of its own for tasks, not a system one: what the dispatcher's common path runs.
    plain: bool = field(init=False)

    def __post_init__(self) -> None:
        self.key = (self.pattern, self.queue)
        self.plain = self.is_async and self.kind == TASK and not self.system and self.handler is not None


def asked_at(message: dict[str, Any], reply: str) -> str | None:
    """Return where the sender asked for the answer: the message's replyTo, else the NATS reply subject, else None."""
    return message.get(REPLY_TO) or reply or None


@dataclass(eq=False, slots=True)
class Delivery:
    """A request being answered: who asked, where the answer goes, and whether it went."""

    message: dict[str, Any]
    reply: str | None
    subject: str
    fallback: Callable[[dict[str, Any]], str | None] | None
    answered: bool = False
    deferred: bool = False  # the handler returned without answering; publish_result may still come
    timer: asyncio.TimerHandle | None = None  # when a deferred answer is given up on (no_result)
    held: Any = None  # a persisted task whose deferred answer is owed: settled when the answer goes out
    size: int = 0  # bytes of the encoded answer sent (what the cache counts it as)
    envelope: bytes | None = None  # the result envelope written for it (size bytes): what the caches keep of a result
    kept: Any = None  # the keeping of the answer, still under way when it was sent: a persisted task is acked after it
    cancelled: bool = False  # its requester cancelled it: nothing more is sent, a persisted task is terminated
    task: asyncio.Task[Any] | None = None  # the Task running its handler (what a cancel cancels)
    key: str | None = None  # the public key that signed it, when identities are verified (a cancel must match)

    @property
    def destination(self) -> str | None:
        """Return where the answer goes: replyTo, else the reply subject, else the registration's fallback."""
        dest = self.message.get(REPLY_TO) or self.reply
        if dest is None and self.fallback is not None:
            dest = self.fallback(self.message)  # computed only when needed: most requests carry a reply subject
        return dest


#: new_delivery(message, reply, subject, fallback): the Delivery those arguments make, its slots written by the
#: compiled core (one per message; the dataclass's __init__ took about 2,500 of a message's ~50,000 instructions).
new_delivery: Callable[[dict[str, Any], str | None, str, Callable[[dict[str, Any]], str | None] | None], Delivery] = (
    SlotsMaker(Delivery, ("message", "reply", "subject", "fallback")).make)


@dataclass(slots=True)
class Queued:
    """A message admitted but not yet handed to its handler (waiting for a slot, or in a batch)."""

    reg: Registration
    subject: str
    message: dict[str, Any]
    msg: Incoming
    t0: float
    size: int = 0  # bytes it holds while queued (a pulled request's whole envelope, not its small offer)

    def delivery(self) -> Delivery:
        """Return a fresh Delivery for answering this message."""
        return new_delivery(self.message, self.msg.reply or None, self.subject, self.reg.fallback)
