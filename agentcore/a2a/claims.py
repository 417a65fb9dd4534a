"""Task values and events too large for one JetStream message, kept in an object store (binding §10.2).

A KV value or event message must fit the server's ``max_payload``; a task with large artifacts does not. ``Claims``
puts such a body in a JetStream object store of the replicas and leaves a small claim in its place
(``{"object": name, "size": n, "sha256": hex}``); a reader checks the size against its bound before fetching and
the digest after. Only replicas read and write these buckets (NATS permissions on ``$O.>``), like the KV and
the event stream.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import nats.js.errors
from a2a.utils.errors import InternalError
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

__all__ = ("Claims",)


class Claims:
    """Put bodies beyond a size into an object store, and take them back within a byte bound."""

    def __init__(self, objects: ObjectStore, limit: int, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.objects = objects
        self.limit = limit  # bodies up to this size stay inline
        self.max_bytes = max_bytes  # a claim naming more is refused (a corrupt or foreign claim cannot fill memory)

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, limit: int, *, ttl: float | None = None,
                   max_bytes: int = 64 * 1024 * 1024, bucket_bytes: int = 0) -> Claims:
        """Create (or bind to) the object store bucket, holding at most bucket_bytes (0: unbounded; a put beyond it
        is refused by JetStream, which discards new data, not old)."""
        return cls(await js.create_object_store(bucket=bucket, ttl=ttl, max_bytes=bucket_bytes), limit, max_bytes)

    def fits(self, data: bytes) -> bool:
        """Whether data may stay inline."""
        return len(data) <= self.limit

    async def put(self, prefix: str, data: bytes) -> dict[str, Any]:
        """Store data under a fresh name starting with prefix; return the claim that names it."""
        name = f"{prefix}.{secrets.token_hex(8)}"
        await self.objects.put(name, data)
        return {"object": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    async def get(self, claim: dict[str, Any]) -> bytes:
        """Return the body a claim names, checked against its size, the bound and its digest."""
        name, size = claim.get("object"), claim.get("size")
        if not isinstance(name, str) or not isinstance(size, int) or size > self.max_bytes:
            raise InternalError(message=f"a stored task claim is malformed or larger than {self.max_bytes} bytes")
        try:
            data = (await self.objects.get(name)).data or b""
        except nats.js.errors.NotFoundError:
            raise InternalError(message=f"the stored object {name} is gone") from None
        if len(data) != size or hashlib.sha256(data).hexdigest() != claim.get("sha256"):
            raise InternalError(message=f"the stored object {name} does not match its claim")
        return data

    async def drop(self, claim: dict[str, Any] | None) -> None:
        """Delete the object a claim names (best effort: the bucket's ttl removes what is left)."""
        if claim and isinstance(claim.get("object"), str):
            try:
                await self.objects.delete(claim["object"])
            except nats.js.errors.Error:
                pass
