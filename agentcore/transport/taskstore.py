"""The JetStream buckets beside the task stream: kept results, task status, and payloads too large for a message.

* ``{stream}_RESULTS`` (key-value, TTL ``jetstream.result_ttl``, at most ``jetstream.results_max_bytes``):
  sealed results under their locator (``transport.sealing``); a value is ``S`` + the sealed result, or ``O``
  + the claim of an object holding it.
* ``{stream}_STATUS`` (key-value, same TTL): each persisted task's status under its id, moved forward only
  (queued, running, then done / failed / cancelled) with compare-and-set on the entry's revision.
* ``{stream}_OBJECTS`` (object store): claim-checked payloads, named by their SHA-256. A claim is
  ``"{sha256 hex} {size}"``: the reader takes the object only from this bucket, at most its limit, and only
  when its bytes hash to the claimed digest (an object replaced by someone else does not pass).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import orjson
from nats.js import JetStreamContext, api
from nats.js.kv import VALID_KEY_RE, KeyValue
from nats.js.object_store import ObjectStore

from ..errors import PayloadTooLargeError, PersistenceError
from .acked import AckedPublisher

__all__ = ("TaskStore", "STATUSES", "FINAL")

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINAL = frozenset(("done", "failed", "cancelled"))
_RANK = {"queued": 0, "running": 1, "done": 2, "failed": 2, "cancelled": 2}
_INLINE, _OBJECT = b"S", b"O"
_WRONG_LAST = 10071  # JetStream's error code for a compare-and-set that lost (the entry moved on)
T = TypeVar("T")
# What a cluster says while it elects a leader or a node restarts: worth asking again, with the same write.
_PASSING = (nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError,
            nats.errors.NoRespondersError, nats.errors.ConnectionReconnectingError)


class TaskStore:
    """Open (or create) the three buckets and read and write them; every failure is a PersistenceError."""

    def __init__(self, js: JetStreamContext, stream: str, *, ttl: float, results_max_bytes: int, objects_max_bytes: int,
                 objects_ttl: float | None, replicas: int, max_payload: int, retry_for: float = 10.0) -> None:
        self.js = js
        self.retry_for = retry_for  # how long a write waits out a leader election before it fails
        self.names = (f"{stream}_RESULTS", f"{stream}_STATUS", f"{stream}_OBJECTS")
        self._ttl, self._results_max, self._objects_max = ttl, results_max_bytes, objects_max_bytes
        self._objects_ttl, self._replicas = objects_ttl, replicas
        # A kept value is one message: room for the headers JetStream adds to it.
        self.inline_limit = max_payload - 1024
        self.results: KeyValue | None = None
        self.status: KeyValue | None = None
        self.objects: ObjectStore | None = None
        self.acked: AckedPublisher | None = None  # set: writes go out without a request each (see transport.acked)

    async def open(self) -> None:
        """Find or create the buckets."""
        results, status, objects = self.names
        self.results = await self._kv(results, self._results_max)
        self.status = await self._kv(status, self._results_max)
        try:
            self.objects = await self.js.object_store(objects)
        except nats.js.errors.NotFoundError:
            config = api.ObjectStoreConfig(bucket=objects, ttl=self._objects_ttl, max_bytes=self._objects_max,
                                           storage=api.StorageType.FILE, replicas=self._replicas)
            try:
                self.objects = await self.js.create_object_store(objects, config=config)
            except nats.js.errors.BadRequestError:  # another agent created it meanwhile
                self.objects = await self.js.object_store(objects)

    async def _kv(self, bucket: str, max_bytes: int) -> KeyValue:
        try:
            return await self.js.key_value(bucket)
        except nats.js.errors.NotFoundError:
            pass
        config = api.KeyValueConfig(bucket=bucket, ttl=self._ttl, max_bytes=max_bytes, history=1,
                                    storage=api.StorageType.FILE, replicas=self._replicas)
        try:
            return await self.js.create_key_value(config)
        except nats.js.errors.BadRequestError:  # another agent created it meanwhile
            return await self.js.key_value(bucket)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await call(), again while the cluster is between leaders, for at most retry_for seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        delay = 0.05
        while True:
            try:
                return await call()
            except _PASSING as exc:
                if loop.time() + delay >= deadline:
                    raise PersistenceError(f"JetStream did not answer within {self.retry_for}s ({type(exc).__name__})") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _put(self, kv: KeyValue, key: str, value: bytes, last: int | None = None) -> int:
        """Write value under key (compare-and-set on revision last, when given); return the revision written.

        Through the acked publisher when there is room (no request per write), else, or when that write failed
        other than by losing the compare-and-set, the awaited way (which waits out a leader election).
        """
        acked = self.acked
        if acked is not None:
            if not VALID_KEY_RE.match(key) or key[0] == "." or key[-1] == ".":
                raise nats.js.errors.InvalidKeyError(key)  # a stranger's id must not become a subject
            loop = asyncio.get_running_loop()
            outcome: asyncio.Future[tuple[int | None, int | None]] = loop.create_future()
            headers = None if last is None else {"Nats-Expected-Last-Subject-Sequence": str(last)}

            def done(seq: int | None, code: int | None) -> None:
                if not outcome.done():
                    outcome.set_result((seq, code))

            if await acked.publish(f"{kv._pre}{key}", value, done, headers):
                seq, code = await outcome
                if seq is not None:
                    return seq
                if code == _WRONG_LAST:
                    raise nats.js.errors.KeyWrongLastSequenceError(description="wrong last sequence")
        if last is None:
            return await self._retrying(lambda: kv.put(key, value))
        return await self._retrying(lambda: kv.update(key, value, last=last))

    # ------------------------------------------------------------------ claim-checked objects

    async def put_object(self, data: bytes) -> str:
        """Store data in the object bucket and return its claim."""
        assert self.objects is not None
        digest = hashlib.sha256(data).hexdigest()
        try:
            await self._retrying(lambda: self.objects.put(digest, data))  # type: ignore[union-attr]
        except nats.js.errors.APIError as exc:
            raise PersistenceError(f"JetStream refused a {len(data)}-byte object in {self.names[2]}: {exc.description or exc}") from None
        return f"{digest} {len(data)}"

    async def get_object(self, claim: str, limit: int) -> bytes:
        """Return the object claim names, checked against its size and digest; typed errors otherwise."""
        assert self.objects is not None
        digest, size = _parse_claim(claim)
        if size > limit:
            raise PayloadTooLargeError(size, limit)
        try:
            info = await self.objects.get_info(digest)
        except nats.js.errors.NotFoundError:
            raise PersistenceError(f"object {digest} is not in {self.names[2]} (expired or deleted)") from None
        if info.is_link() or (info.size or 0) != size:
            raise PersistenceError(f"object {digest} in {self.names[2]} is not the claimed {size} bytes")
        try:
            data = (await self.objects.get(digest)).data or b""
        except nats.js.errors.Error as exc:  # a digest mismatch of the store's own, a chunk missing
            raise PersistenceError(f"object {digest} could not be read from {self.names[2]}: {exc}") from None
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            raise PersistenceError(f"object {digest} in {self.names[2]} does not match its claim")
        return data

    async def drop_object(self, claim: str) -> None:
        """Delete a claimed object that is no longer needed (already gone: nothing to do)."""
        assert self.objects is not None
        try:
            await self.objects.delete(_parse_claim(claim)[0])
        except (nats.js.errors.NotFoundError, nats.js.errors.ObjectNotFoundError):
            pass

    # ------------------------------------------------------------------ kept results

    async def keep(self, locator: str, sealed: bytes) -> None:
        """Keep a sealed result under locator (through the object bucket when it does not fit in one message)."""
        assert self.results is not None
        value = _INLINE + sealed
        if len(value) > self.inline_limit:
            value = _OBJECT + (await self.put_object(sealed)).encode()
        try:
            await self._put(self.results, locator, value)
        except nats.js.errors.APIError as exc:
            raise PersistenceError(f"JetStream did not keep the result in {self.names[0]}: {exc.description or exc}") from None

    async def fetch(self, locator: str, limit: int, timeout: float = 0.0) -> bytes | None:
        """Return the sealed result kept under locator, waiting up to timeout for it; None when there is none."""
        assert self.results is not None
        try:
            value = (await self._retrying(lambda: self.results.get(locator))).value  # type: ignore[union-attr]
        except nats.js.errors.KeyNotFoundError:
            value = await self._await(locator, timeout) if timeout > 0 else None
        if not value:
            return None
        if value[:1] == _OBJECT:
            return await self.get_object(value[1:].decode(errors="replace"), limit)
        return value[1:] if value[:1] == _INLINE else None

    async def _await(self, locator: str, timeout: float) -> bytes | None:
        assert self.results is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        watcher = await self.results.watch(locator)
        try:
            while (left := deadline - loop.time()) > 0:
                try:
                    entry = await watcher.updates(timeout=left)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    return None
                if entry is not None and entry.value and entry.operation is None:
                    return bytes(entry.value)
            return None
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------ status

    async def set_status(self, task_id: str, status: str, agent: str, *, expect: int | None = None,
                         fresh: bool = False, **details: Any) -> int | None:
        """Move task_id's status forward to status (never back, never off a final one); return the revision written.

        expect: the revision the writer believes current (its own last write): one round trip when it still is.
        fresh: most likely nothing is recorded yet (a task answered at once): created in one round trip then.
        None when the status did not move (it was there already, or further on).
        """
        kv = self.status
        assert kv is not None
        value = orjson.dumps({"status": status, "agent": agent, "at": time.time(), **details})
        try:
            if expect is not None or fresh or status == "queued":  # queued: the first status, so only ever created
                try:
                    return await self._put(kv, task_id, value, expect or 0)
                except nats.js.errors.KeyWrongLastSequenceError:
                    if status == "queued":
                        return None  # something is recorded already: it is queued or further on
            for _ in range(8):  # each round lost to a concurrent writer re-reads what it wrote
                try:
                    try:
                        entry = await self._retrying(lambda: kv.get(task_id))
                    except nats.js.errors.KeyNotFoundError:
                        return await self._put(kv, task_id, value, 0)
                    current = orjson.loads(entry.value or b"{}").get("status")
                    if current in FINAL or _RANK.get(current, -1) >= _RANK[status]:
                        return None
                    revision = entry.revision
                    return await self._put(kv, task_id, value, revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
        except nats.js.errors.InvalidKeyError:
            return None  # an id that is no key (a stranger's): nothing to record
        return None

    async def status_of(self, task_id: str) -> dict[str, Any] | None:
        """Return task_id's stored status record ({"status", "agent", "at", ...}), or None when none is kept."""
        assert self.status is not None
        try:
            entry = await self._retrying(lambda: self.status.get(task_id))  # type: ignore[union-attr]
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
            return None
        record: dict[str, Any] = orjson.loads(entry.value or b"{}")
        return record


def _parse_claim(claim: str) -> tuple[str, int]:
    digest, _, size = claim.partition(" ")
    if len(digest) != 64 or not size.isdigit() or any(c not in "0123456789abcdef" for c in digest):
        raise PersistenceError(f"malformed object claim {claim[:100]!r}")
    return digest, int(size)
