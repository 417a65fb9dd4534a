"""The A2A-over-NATS binding's wire constants: its URI, subjects, headers, and the error body (docs/a2a-binding.md).

Bodies are ProtoJSON (protobuf's JSON mapping: camelCase fields, enum names, RFC 3339 UTC timestamps); errors are a
``google.rpc.Status`` as the spec's HTTP+JSON binding writes it, with a ``google.rpc.ErrorInfo`` whose ``reason``
names the A2A error, so every A2A error reaches an a2a-sdk client as the SDK's own exception class.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson
from a2a.server.events.event_queue import Event
from a2a.types.a2a_pb2 import StreamResponse
from a2a.utils.errors import A2A_ERROR_MAPPING, A2A_REASON_TO_ERROR, A2AError, ErrorMapping, InternalError

from .errors import OverloadedError  # importing it adds agentcore's OVERLOADED to the SDK's error tables

__all__ = (
    "BINDING_URI", "PROTOCOL_VERSION", "OPERATIONS", "H_VERSION", "H_EXTENSIONS", "H_REQUEST", "H_ERROR",
    "H_DIGEST", "H_ERROR_CODE", "H_ON_BEHALF_OF", "H_PULL", "H_SIZE", "CARD", "A2APermissionError", "A2APayloadTooLargeError",
    "A2AReplicaGoneError", "A2AOverloadedError", "error_body", "error_class", "error_frame", "error_from_body", "event_of", "prefix_from_url", "url_for",
)

#: The binding's identifier in an Agent Card's supportedInterfaces[].protocolBinding (spec §5.8); v1 of the wire format.
BINDING_URI = "urn:agentcore:a2a:binding:nats:v1"
#: The A2A protocol version (Major.Minor) this binding serves.
PROTOCOL_VERSION = "1.0"

#: Operation name (last subject token) -> whether the answer is a stream of frames.
OPERATIONS: dict[str, bool] = {
    "SendMessage": False, "SendStreamingMessage": True, "GetTask": False, "ListTasks": False, "CancelTask": False,
    "SubscribeToTask": True, "CreateTaskPushNotificationConfig": False, "GetTaskPushNotificationConfig": False,
    "ListTaskPushNotificationConfigs": False, "DeleteTaskPushNotificationConfig": False,
    "GetExtendedAgentCard": False,
}
#: The last token of the subject answering the public Agent Card (empty request body).
CARD = "AgentCard"

H_VERSION = "A2A-Version"  # service parameter, always sent by the client (spec §3.6.1)
H_EXTENSIONS = "A2A-Extensions"  # service parameter, comma-separated extension URIs
H_REQUEST = "Agent-Request"  # the request's id, chosen by the client, echoed on the answer (frames: Agent-Stream)
H_ERROR = "Nats-Service-Error"  # ADR-32 (NATS services): the error's message, so NATS tooling shows it
H_ERROR_CODE = "Nats-Service-Error-Code"  # ADR-32: the HTTP status of the error (spec §5.4)
H_ON_BEHALF_OF = "Agent-On-Behalf-Of"  # the user a trusted signer (a gateway, a forwarding replica) acts for
H_PULL = "Agent-Pull"  # a message too large for max_payload: the inbox its body is pulled from as frames (§10.1)
H_SIZE = "Agent-Size"  # ... and the body's size in bytes, checked against the receiver's bound before pulling
H_DIGEST = "Agent-Digest"  # ... and its SHA-256 (base64), so a signed offer binds the body pulled after it


class A2APermissionError(A2AError):
    """The request's signed identity is refused (unsigned, untrusted, stale, replayed...) or it may not act for the
    user it names: PERMISSION_DENIED (403), binding-specific (the spec has no A2A error type for it)."""

    message = "Permission denied"


class A2APayloadTooLargeError(A2AError):
    """A request, answer or stream event is larger than the receiver's byte bound: PAYLOAD_TOO_LARGE (413),
    binding-specific (the spec has no A2A error type for it)."""

    message = "Payload too large"


class A2AReplicaGoneError(A2AError):
    """The replica running a task is gone while a remote stream follows it: REPLICA_GONE (503), binding-specific."""

    message = "The replica running the task is gone"


#: One class for every OVERLOADED refusal (an a2a.* bound, pulled bodies in all or from one requester).
A2AOverloadedError = OverloadedError


DOMAIN = "agentcore"  # the ErrorInfo domain of the binding-specific errors (the spec's are "a2a-protocol.org")
_BINDING_ERRORS: dict[type[A2AError], ErrorMapping] = {
    A2APermissionError: ErrorMapping(403, "PERMISSION_DENIED", "PERMISSION_DENIED"),
    A2APayloadTooLargeError: ErrorMapping(413, "RESOURCE_EXHAUSTED", "PAYLOAD_TOO_LARGE"),
    A2AReplicaGoneError: ErrorMapping(503, "UNAVAILABLE", "REPLICA_GONE"),
    OverloadedError: ErrorMapping(503, "UNAVAILABLE", "OVERLOADED"),
}
_BINDING_REASONS = {mapping.reason: cls for cls, mapping in _BINDING_ERRORS.items()}

_SCHEMES = {"nats", "tls", "ws", "wss"}


def url_for(server: str, prefix: str) -> str:
    """Return the interface URL for the agent answering under subject prefix on server (e.g. nats://host:4222)."""
    parts = urlsplit(server)
    return f"{parts.scheme or 'nats'}://{parts.netloc or parts.path}/{prefix}"


def prefix_from_url(url: str) -> str:
    """Return the subject prefix an interface URL names (its path), refusing URLs of other schemes."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"not a NATS interface URL: {url!r}")
    prefix = parts.path.lstrip("/")
    if not prefix or any(c in prefix for c in "*> \t") or "" in prefix.split("."):
        raise ValueError(f"the interface URL {url!r} names no subject prefix")
    return prefix


def _status(error: Exception) -> tuple[dict[str, Any], ErrorMapping, str]:
    if not isinstance(error, A2AError):
        error = InternalError(message=f"{type(error).__name__}: {error}")
    own = _BINDING_ERRORS.get(type(error))
    mapping = own or A2A_ERROR_MAPPING.get(type(error), ErrorMapping(500, "INTERNAL", "INTERNAL_ERROR"))
    message = str(error.message)
    info: dict[str, Any] = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": mapping.reason,
                            "domain": DOMAIN if own else "a2a-protocol.org", "metadata": error.data if isinstance(error.data, dict) else {}}
    return {"code": mapping.http_code, "status": mapping.grpc_status, "message": message, "details": [info]}, mapping, message


def error_body(error: Exception) -> tuple[bytes, dict[str, str]]:
    """Return the body and headers answering error: a google.rpc.Status (ProtoJSON) with an a2a-protocol.org ErrorInfo."""
    status, mapping, message = _status(error)
    body = {"error": status}
    # Header values are one line: the message's line breaks would end the header block.
    return orjson.dumps(body), {H_ERROR: " ".join(message.split()), H_ERROR_CODE: str(mapping.http_code)}


def error_frame(error: Exception) -> bytes:
    """Return the body of the error frame ending a stream: agentcore's {code, message} (code: the ErrorInfo reason) and
    the same google.rpc.Status as a unary answer under "error"."""
    status, mapping, message = _status(error)
    return orjson.dumps({"code": mapping.reason, "message": message, "error": status})


def error_from_body(data: bytes) -> A2AError | None:
    """Return the A2A error an answer carries (the SDK's own class for its ErrorInfo reason), None if it is no error."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    message = str(error.get("message") or "A2A error")
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and detail.get("@type") == "type.googleapis.com/google.rpc.ErrorInfo":
            reason = str(detail.get("reason"))
            own = _BINDING_REASONS.get(reason) if detail.get("domain") == DOMAIN else None
            cls = own or A2A_REASON_TO_ERROR.get(reason)
            if cls is not None:
                metadata = detail.get("metadata")
                return cls(message, data=metadata if isinstance(metadata, dict) and metadata else None)
    return InternalError(message=message)


def error_class(reason: str) -> type[A2AError] | None:
    """The exception class an error frame's code (an ErrorInfo reason) names: the spec's, else this binding's."""
    return A2A_REASON_TO_ERROR.get(reason) or _BINDING_REASONS.get(reason)


def event_of(response: StreamResponse) -> Event:
    """The event a StreamResponse carries (Task, Message, status or artifact update)."""
    which = response.WhichOneof("payload")
    if which is None:
        raise InternalError(message="a stream event with no payload")
    event: Event = getattr(response, which)
    return event
