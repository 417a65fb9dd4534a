"""Every current value under some keys of a KV bucket, including each write acknowledged before the read (ListTasks).

nats-py's ``KeyValue.watch`` can say "no more current values" (its ``None`` marker) before it has delivered them:
it decides from a consumer info taken after the push consumer started and from the messages the client has
handled, and the server may already have sent every value (``num_pending`` 0) that the client has yet to read. A
listing that stops at the marker then misses tasks, all of them when the marker comes first. This read makes a
pull consumer instead: nothing is delivered before it asks, so the consumer's pending count at creation is every
key written so far, and it reads until it has that many messages or the server says it has no more.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from a2a.utils.errors import InternalError
from nats.js import api
from nats.js.kv import KeyValue

__all__ = ("current_values",)

#: Messages asked for per pull: a page of tasks at a time, not the whole bucket in the client's pending queue.
BATCH = 256
#: How long an idle listing consumer outlives a listing that could not delete it (the connection lost, say).
IDLE = 60.0
_REMOVED = frozenset(("DEL", "PURGE"))  # KV-Operation of a deleted key's tombstone


async def current_values(kv: KeyValue, keys: str, timeout: float = 5.0) -> list[bytes]:
    """The current value of each key matching keys (a subject filter below the bucket), deleted keys left out."""
    js, stream = kv._js, kv._stream  # noqa: SLF001 - nats-py exposes no public accessor for the bucket's stream
    config = api.ConsumerConfig(
        filter_subject=f"{kv._pre}{keys}",  # noqa: SLF001 - the bucket's subject prefix ($KV.{bucket}.)
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT, ack_policy=api.AckPolicy.NONE,
        mem_storage=True, num_replicas=1, inactive_threshold=IDLE)
    info = await js.add_consumer(stream, config=config)
    values: list[bytes] = []
    try:
        left = info.num_pending or 0  # the last message of every key written before the consumer was made
        if left == 0:
            return values
        pull = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
        try:
            while left > 0:
                asked = min(left, BATCH)
                try:
                    msgs = await pull.fetch(asked, timeout=timeout)
                except asyncio.TimeoutError:  # nats-py's included: nothing came, or the server had nothing
                    msgs = []
                values.extend(msg.data for msg in msgs
                              if msg.data and (msg.headers or {}).get("KV-Operation") not in _REMOVED)
                left -= len(msgs)
                if len(msgs) == asked:
                    continue
                # A short pull: the server has no more (keys removed as their age passed since the consumer was
                # made), or was slow. Its own count says which; a slow server is asked again, a silent one is an error.
                if msgs:
                    pending = msgs[-1].metadata.num_pending
                else:
                    pending = (await js.consumer_info(stream, info.name)).num_pending
                    if pending:
                        raise InternalError(message=f"the task bucket delivered none of its {pending} remaining "
                                                    f"values within {timeout}s")
                if not pending:
                    break
        finally:
            await pull.unsubscribe()
    finally:
        with contextlib.suppress(nats.errors.Error):
            await js.delete_consumer(stream, info.name)
    return values
