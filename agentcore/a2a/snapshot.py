"""Every current value under some keys of a KV bucket, including each write acknowledged before the read (ListTasks).

nats-py's ``KeyValue.watch`` can say "no more current values" (its ``None`` marker) before it has delivered them:
it decides from a consumer info taken after the push consumer started and from the messages the client has
handled, and the server may already have sent every value (``num_pending`` 0) that the client has yet to read. A
listing that stops at the marker then misses tasks, all of them when the marker comes first. This read makes a
pull consumer instead and asks it for values without waiting (``no_wait``) until the server answers that it has no
more: nothing is delivered before it asks, so that answer comes after the last value of every key written before
the consumer was made, and of any key written again since (a key's older value is replaced, never lost).
"""

from __future__ import annotations

import contextlib

import nats.errors
import orjson
from a2a.utils.errors import InternalError
from nats.js import api
from nats.js.kv import KeyValue

__all__ = ("current_values",)

#: Messages asked for per pull: a bucket of many tasks is read in several pulls, each answered as a burst.
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
    values: dict[str, bytes] = {}  # by key: a key written again while this reads has its latest value
    try:
        if info.num_pending:  # 0: no key was written before the consumer was made
            await _pull_all(kv, info.name, values, timeout)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await js.delete_consumer(stream, info.name)
    return list(values.values())


async def _pull_all(kv: KeyValue, consumer: str, values: dict[str, bytes], timeout: float) -> None:
    """Pull the consumer's messages into values until the server says it holds no more for it."""
    js = kv._js  # noqa: SLF001
    nc = js._nc  # noqa: SLF001 - nats-py exposes no public accessor
    nxt = f"{js._prefix}.CONSUMER.MSG.NEXT.{kv._stream}.{consumer}"  # noqa: SLF001 - the API prefix (JS domain)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        while True:
            await nc.publish(nxt, orjson.dumps({"batch": BATCH, "no_wait": True}), reply=inbox)
            for _ in range(BATCH):
                try:
                    msg = await sub.next_msg(timeout)
                except nats.errors.TimeoutError:
                    raise InternalError(message=f"the task bucket sent nothing for {timeout}s while listing") from None
                headers = msg.headers or {}
                status = headers.get(api.Header.STATUS)
                if status in (api.StatusCode.NO_MESSAGES, api.StatusCode.REQUEST_TIMEOUT):
                    return  # nothing more for this consumer: every key's latest value is read
                if status:
                    raise InternalError(message=f"the task bucket refused the listing: {status} "
                                                f"{headers.get(api.Header.DESCRIPTION, '')}".rstrip())
                if msg.data and headers.get("KV-Operation") not in _REMOVED:
                    values[msg.subject] = msg.data
                else:
                    values.pop(msg.subject, None)
    finally:
        await sub.unsubscribe()
