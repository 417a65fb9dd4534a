"""Encode, decode and validate the agent message envelope with orjson (pure-Python twin)."""

from __future__ import annotations

import itertools
import math
import os
import time
from typing import Any

import orjson

from agentcore.errors import EnvelopeError

__all__ = ("MAX_DEPTH", "MESSAGE_TYPES", "decode", "encode", "encode_result", "new_id", "validate")

MESSAGE_TYPES = frozenset({"task", "result", "event", "query"})
# Deepest container nesting allowed, counting the envelope's own objects (payload, context, ...) as level 1.
MAX_DEPTH = 100
# Reject what orjson would otherwise turn into strings silently: the wire carries JSON values only.
_DUMPS_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
_MISSING: Any = object()
_TYPES_TEXT = ", ".join(sorted(MESSAGE_TYPES))


def _name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _wrong(field: str, expected: str, value: object) -> EnvelopeError:
    return EnvelopeError(f"envelope field {field!r} must be {expected}, got {_name(value)}", field=field)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: float) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _optional_str(obj: dict[str, Any], key: str, field: str) -> None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise _wrong(field, "a string or null", value)


def _check_tree(value: object, field: str, depth: int) -> None:
    """Reject non-finite floats, non-str keys and nesting deeper than MAX_DEPTH anywhere in value."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EnvelopeError(f"envelope field {field!r} must be a finite number, got {value!r}", field=field)
    elif isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise EnvelopeError(f"envelope field {field!r} nests deeper than {MAX_DEPTH} levels", field=field)
        for key, item in value.items():
            if type(key) is not str:  # orjson writes exact str keys only
                where = f"envelope field {field!r}" if field else "envelope"
                raise EnvelopeError(f"{where} has a non-str key {key!r} ({_name(key)})", field=field or None)
            _check_tree(item, f"{field}.{key}" if field else key, depth + 1)
    elif isinstance(value, (list, tuple)):
        if depth > MAX_DEPTH:
            raise EnvelopeError(f"envelope field {field!r} nests deeper than {MAX_DEPTH} levels", field=field)
        for i, item in enumerate(value):
            _check_tree(item, f"{field}[{i}]", depth + 1)


def validate(message: object) -> None:
    """Raise EnvelopeError naming the field unless message is a valid envelope."""
    if not isinstance(message, dict):
        raise EnvelopeError(f"envelope must be a JSON object, got {_name(message)}")
    value = message.get("id", _MISSING)
    if value is _MISSING:
        raise EnvelopeError("envelope field 'id' is required", field="id")
    if not isinstance(value, str) or not value:
        raise _wrong("id", "a non-empty string", value)
    value = message.get("timestamp", _MISSING)
    if value is _MISSING:
        raise EnvelopeError("envelope field 'timestamp' is required", field="timestamp")
    if not _is_number(value) or not _finite(value):
        raise _wrong("timestamp", "a finite number", value)
    value = message.get("version", _MISSING)
    if value is _MISSING:
        raise EnvelopeError("envelope field 'version' is required", field="version")
    if not isinstance(value, str):
        raise _wrong("version", "a string", value)
    value = message.get("type", _MISSING)
    if value is _MISSING:
        raise EnvelopeError("envelope field 'type' is required", field="type")
    if not isinstance(value, str):
        raise _wrong("type", "a string", value)
    if value not in MESSAGE_TYPES:
        raise EnvelopeError(f"envelope field 'type' must be one of {_TYPES_TEXT}, got {value!r}", field="type")
    source = message.get("source", _MISSING)
    if source is _MISSING:
        raise EnvelopeError("envelope field 'source' is required", field="source")
    if not isinstance(source, dict):
        raise _wrong("source", "an object", source)
    value = source.get("id", _MISSING)
    if value is _MISSING:
        raise EnvelopeError("envelope field 'source.id' is required", field="source.id")
    if not isinstance(value, str) or not value:
        raise _wrong("source.id", "a non-empty string", value)
    value = source.get("type", _MISSING)
    if value is _MISSING:
        raise EnvelopeError("envelope field 'source.type' is required", field="source.type")
    if not isinstance(value, str):
        raise _wrong("source.type", "a string", value)
    payload = message.get("payload", _MISSING)
    if payload is _MISSING:
        raise EnvelopeError("envelope field 'payload' is required", field="payload")
    if not isinstance(payload, dict):
        raise _wrong("payload", "an object", payload)
    if "content" not in payload:
        raise EnvelopeError("envelope field 'payload.content' is required", field="payload.content")
    error = payload.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise _wrong("payload.error", "an object or null", error)
        for key in ("code", "message"):
            value = error.get(key, _MISSING)
            if value is _MISSING:
                raise EnvelopeError(f"envelope field 'payload.error.{key}' is required", field=f"payload.error.{key}")
            if not isinstance(value, str):
                raise _wrong(f"payload.error.{key}", "a string", value)
    _optional_str(message, "target", "target")
    _optional_str(message, "replyTo", "replyTo")
    _optional_str(message, "correlationId", "correlationId")
    context = message.get("context")
    if context is not None:
        if not isinstance(context, dict):
            raise _wrong("context", "an object or null", context)
        _optional_str(context, "conversationId", "context.conversationId")
        value = context.get("metadata")
        if value is not None and not isinstance(value, dict):
            raise _wrong("context.metadata", "an object or null", value)
    routing = message.get("routing")
    if routing is not None:
        if not isinstance(routing, dict):
            raise _wrong("routing", "an object or null", routing)
        value = routing.get("priority")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise _wrong("routing.priority", "an integer or null", value)
        value = routing.get("capabilities")
        if value is not None:
            if not isinstance(value, list):
                raise _wrong("routing.capabilities", "a list of strings or null", value)
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise _wrong(f"routing.capabilities[{i}]", "a string", item)
        value = routing.get("timeout")
        if value is not None and (
            not _is_number(value) or not _finite(value) or value < 0
        ):
            raise EnvelopeError(
                f"envelope field 'routing.timeout' must be a finite number of milliseconds >= 0 or null, got {value!r}",
                field="routing.timeout",
            )
    _check_tree(message, "", 0)


def decode(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """Parse and validate one envelope; return the decoded dict unchanged."""
    if not isinstance(data, (bytes, bytearray, memoryview, str)):
        raise EnvelopeError(f"envelope data must be bytes, bytearray, memoryview or str, got {_name(data)}")
    try:
        message = orjson.loads(data)
    except (ValueError, TypeError) as exc:
        raise EnvelopeError(f"envelope is not valid JSON: {exc}") from None
    validate(message)
    return message  # type: ignore[no-any-return]


def encode(message: dict[str, Any]) -> bytes:
    """Validate message and serialize it to JSON bytes."""
    validate(message)
    try:
        return orjson.dumps(message, option=_DUMPS_OPTIONS)
    except TypeError as exc:
        raise EnvelopeError(f"envelope cannot be serialized: {exc}") from None


def encode_result(source: dict[str, Any], target: str | None, correlation_id: str | None, conversation_id: str | None,
                  content: Any, error: dict[str, Any] | None = None) -> bytes:
    """Return encode() of a new result envelope from source (validated) answering correlation_id, id and time new."""
    payload: dict[str, Any] = {"content": content} if error is None else {"content": content, "error": error}
    return encode({
        "id": new_id(),
        "timestamp": time.time(),
        "version": "1.0",
        "type": "result",
        "source": source,
        "target": target,
        "replyTo": None,
        "correlationId": correlation_id,
        "context": {"conversationId": conversation_id, "metadata": {}},
        "payload": payload,
        "routing": None,
    })


# Message ids: 128 bits of the operating system's CSPRNG each, as 32 lowercase hex digits. Randomness is drawn
# 2 KB (128 ids) at a time. Each call claims a unique number from an atomic counter; its block selects a draw
# and its slot a distinct 32-digit slice of it, so threads need no lock: a claim only ever reads a draw made for
# its own block, and two claims never share a slot of the same draw. A forked child forgets the draw it
# inherited (its parent keeps using it).
_claim = itertools.count().__next__
_draw: tuple[int, str] = (-1, "")


def _forget_draw() -> None:
    global _draw
    _draw = (-1, "")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_draw)


def _redraw(block: int) -> tuple[int, str]:
    global _draw
    draw = _draw = (block, os.urandom(2048).hex())
    return draw


def new_id() -> str:
    """Return a new message id: 128 random bits from the operating system as 32 hex digits."""
    n = _claim()
    draw = _draw
    if draw[0] != n >> 7:
        draw = _redraw(n >> 7)
    start = (n & 127) << 5
    return draw[1][start : start + 32]
