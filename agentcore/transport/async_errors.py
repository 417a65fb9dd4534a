"""What the server and nats-py report only to the error callback, made into typed errors for the code that caused it.

nats-py hands a permission violation (``-ERR 'Permissions Violation for Publish to "x"'``) and its own
slow-consumer drops to ``error_cb`` and returns normally from the publish or subscribe that caused them.
The server answers commands in order, so a violation always arrives before the PONG of a PING sent after
the command: ``Denials`` keeps the recent ones numbered, and a caller that marks the count, sends, and
confirms with a PING sees exactly the violations its window holds.
"""

from __future__ import annotations

import re
from collections import deque
from typing import NamedTuple

from ..errors import PermissionDeniedError

__all__ = ("Denial", "Denials", "parse_denial")

# nats-server's texts (client.go): Publish to "s" | Publish with Reply of "s" | Subscription to "s" [using queue "q"].
# nats-py lowercases the whole -ERR line before it reaches error_cb, so subjects are compared lowercased.
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) (to|with reply of) "([^"]*)"(?: using queue "([^"]*)")?')
_KEEP = 256  # recent violations kept for confirming callers; a window needs only the few of its own round trip


class Denial(NamedTuple):
    """One permission violation the server reported: seq orders it among the others."""

    seq: int
    operation: str  # "publish", "reply" (the reply subject of a publish) or "subscribe"
    subject: str  # lowercased, as nats-py passes the server's text on
    queue: str | None

    def error(self, agent_id: str) -> PermissionDeniedError:
        """Return the typed error for it, naming what was denied."""
        what = {"publish": "publish to", "reply": "publish with the reply subject", "subscribe": "subscribe to"}[self.operation]
        queue = f" in queue group {self.queue!r}" if self.queue else ""
        return PermissionDeniedError(
            f"agent {agent_id}: the NATS server denied it permission to {what} {self.subject!r}{queue} "
            "(Permissions Violation; see the user's permissions in the server's config)",
            operation=self.operation, subject=self.subject, queue=self.queue)


def parse_denial(exc: BaseException) -> tuple[str, str, str | None] | None:
    """Return (operation, subject, queue) when exc is nats-py's report of a permission violation, else None."""
    text = str(exc)
    if "permissions violation" not in text:
        return None
    found = _VIOLATION.search(text)
    if found is None:
        return None
    kind, preposition, subject, queue = found.groups()
    operation = "subscribe" if kind == "subscription" else ("reply" if preposition != "to" else "publish")
    return operation, subject, queue


class Denials:
    """The permission violations reported lately, numbered so a caller can ask which arrived since it sent."""

    def __init__(self) -> None:
        self.count = 0
        self._recent: deque[Denial] = deque(maxlen=_KEEP)

    def record(self, exc: BaseException) -> Denial | None:
        """Remember exc when it reports a permission violation and return it (None: it does not)."""
        parsed = parse_denial(exc)
        if parsed is None:
            return None
        self.count += 1
        denial = Denial(self.count, *parsed)
        self._recent.append(denial)
        return denial

    def since(self, mark: int, operation: str | None = None, subject: str | None = None) -> list[Denial]:
        """Return the violations after mark (a past count), only those of operation and subject when given."""
        if self.count == mark:
            return []  # the common case: nothing was denied
        wanted = subject.lower() if subject is not None else None
        return [d for d in self._recent if d.seq > mark and (operation is None or d.operation == operation)
                and (wanted is None or d.subject == wanted)]
