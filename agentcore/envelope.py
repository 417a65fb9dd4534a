"""Build agent message envelopes (the guide's AgentMessage) and read the fields the layers above need."""

from __future__ import annotations

import time
from typing import Any

from ._impl import MESSAGE_TYPES, decode, encode, new_id, validate
from .errors import (
    DuplicateMessageError, ForbiddenError, HandlerError, IdentityError, InvalidMessageError, LimitExceededError, MessageExpiredError, OverloadedError, RemoteError, ShuttingDownError,
)
from .fields import ERROR, ID, PAYLOAD, ROUTING, SOURCE, TIMEOUT, TIMESTAMP

__all__ = (
    "MESSAGE_TYPES",
    "decode",
    "encode",
    "validate",
    "new_id",
    "new_message",
    "error_payload",
    "raise_for_error",
    "is_expired",
    "IdGenerator",
)

VERSION = "1.0"


class IdGenerator:
    """Make message ids: each is new_id(), 128 random bits (no sequence to guess from the ids seen before)."""

    __slots__ = ()

    def __call__(self) -> str:
        made: str = new_id()
        return made


def new_message(
    type: str,
    content: Any,
    *,
    source_id: str,
    source_type: str = "agent",
    target: str | None = None,
    reply_to: str | None = None,
    correlation_id: str | None = None,
    conversation_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    priority: int = 5,
    capabilities: list[str] | None = None,
    timeout_ms: float | None = None,
    error: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """Return a new envelope dict with the guide's field names."""
    payload: dict[str, Any] = {"content": content}
    if error is not None:
        payload["error"] = error
    return {
        "id": message_id or new_id(),
        "timestamp": time.time(),
        "version": VERSION,
        "type": type,
        "source": {"id": source_id, "type": source_type},
        "target": target,
        "replyTo": reply_to,
        "correlationId": correlation_id,
        "context": {"conversationId": conversation_id, "metadata": metadata if metadata is not None else {}},
        "payload": payload,
        "routing": {"priority": priority, "capabilities": capabilities or [], "timeout": timeout_ms},
    }


def error_payload(code: str, message: str, **details: Any) -> dict[str, Any]:
    """Return the payload.error object of an error result."""
    return {"code": code, "message": message, **details}


_ERROR_TYPES: dict[str, type[RemoteError]] = {
    "handler_error": HandlerError,
    "expired": MessageExpiredError,
    "invalid_message": InvalidMessageError,
    "duplicate": DuplicateMessageError,
    "forbidden": ForbiddenError,
    "overloaded": OverloadedError,
    "limit_exceeded": LimitExceededError,
    "shutting_down": ShuttingDownError,
    "identity": IdentityError,
}


def raise_for_error(message: dict[str, Any]) -> None:
    """Raise the typed RemoteError that an error result carries; return if it carries none."""
    error = message[PAYLOAD].get(ERROR)
    if error is None:
        return
    code = str(error.get("code", "error"))
    details = {k: v for k, v in error.items() if k not in ("code", "message")} or None
    raise _ERROR_TYPES.get(code, RemoteError)(code, str(error.get("message", "")), source=message[SOURCE][ID], details=details)


def is_expired(message: dict[str, Any], now: float | None = None) -> bool:
    """Return True when the message's routing.timeout (ms after its timestamp) has passed."""
    routing = message.get(ROUTING)
    if not routing:
        return False
    timeout = routing.get(TIMEOUT)
    if timeout is None:
        return False
    deadline: float = message[TIMESTAMP] + timeout / 1000.0
    return (time.time() if now is None else now) > deadline
