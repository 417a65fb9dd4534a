"""Message ids an agent took, in two generations of records found by keyed hashes, with the answers a retry is
replayed (pure-Python twin)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, MutableMapping
from typing import Any

import orjson

from agentcore.fields import ID, REPLY_TO, SOURCE  # the keys decoded envelopes hold: found by a pointer compare

__all__ = ("RECORD_BYTES", "KEPT_BYTES", "MAX_RECORDS", "DuplicateStore", "MISS", "IN_FLIGHT", "DONE", "NOT_KEPT")

#: seen() for an id not taken before (it is now recorded in flight); finish(..., MISS) forgets an id.
MISS: Any = object()
#: seen(): the message is being handled right now.
IN_FLIGHT: Any = object()
#: seen(): the message was handled, but there is no answer to replay (it failed, or its handler answered itself).
DONE: Any = object()
#: seen() -> (destination, NOT_KEPT): the message was answered, but the answer was too large to keep for a replay.
NOT_KEPT: Any = object()

#: What one record costs in the compiled store: three hashes, a time, a size, a state and two table slots.
RECORD_BYTES = 56
#: What a kept answer costs besides its encoded size: its places in the answer lists, and their share of the rest.
KEPT_BYTES = 64
MAX_RECORDS = (2**31 - 2) // 2

_FORGOTTEN, _IN_FLIGHT, _DONE, _KEPT = 0, 1, 2, 3
_UNENCODABLE = 1 << 62  # the size of an answer that does not encode: never kept, whatever the bounds


def _encoded_size(result: Any) -> int:
    try:
        return len(orjson.dumps(result))
    except TypeError:  # it does not encode: counted as too large to keep
        return _UNENCODABLE


class _Record:
    """One id taken: its state, when it stops counting, the bytes of its kept answer, the answer and where."""

    __slots__ = ("state", "expires", "size", "to", "answer", "place")

    def __init__(self, place: int) -> None:
        self.place = place  # its index in its generation's records (arrival order)
        self.state = _IN_FLIGHT
        self.expires = 0.0
        self.size = 0
        self.to: Any = None
        self.answer: Any = None


class _Generation:
    """Records in arrival order, and the index by (subscription, sender, id) hashes the compiled store probes."""

    __slots__ = ("records", "index")

    def __init__(self) -> None:
        self.records: list[_Record] = []
        self.index: dict[tuple[int, int, int], _Record] = {}


class DuplicateStore:
    """Remember (subscription, sender, message id) for ttl seconds: in flight, done, or the answer to replay."""

    def __init__(self, max_records: int, max_bytes: int | None, ttl: float, clock: Callable[[], float],
                 counters: MutableMapping[str, int], replay_max_bytes: int | None = None,
                 on_kept: Callable[[], None] | None = None) -> None:
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        if max_bytes is not None and not max_bytes >= 1:
            raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes}")
        cap = min(max_records, MAX_RECORDS)
        if max_bytes is not None:  # the records take at most half the bound, the kept answers the rest
            cap = max(min(cap, max_bytes // 4 // RECORD_BYTES), 1)
        self._cap = cap
        self._max_bytes = max_bytes
        self._kept_budget = None if max_bytes is None else max(max_bytes - 2 * cap * RECORD_BYTES, 0)
        self._replay_max = replay_max_bytes
        self._ttl = float(ttl)
        self._clock = clock
        self._counters = counters
        self._on_kept = on_kept
        self._young = _Generation()
        self._old = _Generation()
        self._kept_bytes = 0
        self._nkept = 0
        # The oldest record whose answer the byte bound or the sweep may still have to drop: in the old generation
        # (_cursor_old) or the young one, at _cursor. Records are visited in arrival order; no kept answer lies behind
        # the cursor (finish() moves it back to an answer kept late).
        self._cursor_old = True
        self._cursor = 0
        self._evictions = 0
        self._expired = 0

    def __len__(self) -> int:
        return len(self._young.records) + len(self._old.records)

    @property
    def bytes(self) -> int:
        """Return the bytes held: the records and the kept answers (at most max_bytes)."""
        return len(self) * RECORD_BYTES + self._kept_bytes

    @property
    def max_bytes(self) -> int | None:
        """Return the bound on bytes held, or None."""
        return self._max_bytes

    @property
    def capacity(self) -> int:
        """Return how many records one generation holds."""
        return self._cap

    @property
    def kept(self) -> int:
        """Return how many answers are kept for replay."""
        return self._nkept

    @property
    def evictions(self) -> int:
        """Return how many records and kept answers were dropped to stay within the bounds."""
        return self._evictions

    @property
    def expired(self) -> int:
        """Return how many kept answers sweep() dropped because their time-to-live ran out."""
        return self._expired

    @property
    def probes(self) -> int:
        """Return how many occupied slots lookups stepped over in the index (a dict's are not counted: 0)."""
        return 0

    def seen(self, scope: Hashable, message: dict[str, Any], now: float | None = None) -> Any:
        """Return MISS for message's id not taken from its sender on scope (recording it in flight), else IN_FLIGHT,
        DONE or (destination, answer); now: the clock's reading when the caller has one."""
        key = (hash(scope), hash(message[SOURCE][ID]), hash(message[ID]))
        if now is None:
            now = self._clock()
        record = self._young.index.get(key)
        if record is not None:
            if record.state != _FORGOTTEN and now < record.expires:
                return self._known(record)
            self._release(record)  # expired or forgotten: the id is new again, in the same record
        else:
            old = self._old.index.get(key)
            if old is not None and old.state != _FORGOTTEN and now < old.expires:
                return self._known(old)
            record = self._add(key)
        record.state = _IN_FLIGHT
        record.expires = now + self._ttl
        return MISS

    def finish(self, scope: Hashable, message: dict[str, Any], result: Any = DONE, reply: str | None = None,
               size: int | None = None, now: float | None = None) -> None:
        """Record that message was handled: MISS forgets its id (it failed), DONE keeps no answer, else result is kept
        for a retry that asks for it where message did (its replyTo, else reply: the NATS reply subject); size is the
        encoded answer in bytes, measured when not given; now: the clock's reading when the caller has one."""
        key = (hash(scope), hash(message[SOURCE][ID]), hash(message[ID]))
        record = self._young.index.get(key)
        in_old = record is None
        if in_old:
            record = self._old.index.get(key)
        if record is None:
            if result is MISS:
                return
            record = self._add(key)  # dropped with its generation while in flight: recorded again
            in_old = False
        self._release(record)
        if result is MISS:
            record.state = _FORGOTTEN
            return
        record.expires = (self._clock() if now is None else now) + self._ttl
        to = message.get(REPLY_TO) or reply or None
        if result is DONE or to is None:  # (asked nowhere: a duplicate of it is dropped, never answered)
            return  # _release left it done
        nbytes = size if size else _encoded_size(result)
        if (self._replay_max is not None and nbytes > self._replay_max) or nbytes >= _UNENCODABLE:
            self._counters["duplicates_not_kept"] += 1
            result = NOT_KEPT
            nbytes = 0
        nbytes += KEPT_BYTES
        if self._kept_budget is not None and nbytes > self._kept_budget:  # larger than every answer together may be
            return
        if self._nkept == 0 and self._on_kept is not None:
            self._on_kept()
        record.to = to
        record.answer = result
        record.size = nbytes
        record.state = _KEPT
        self._nkept += 1
        self._kept_bytes += nbytes
        # Kept behind the cursor (a sweep went past its record while it was in flight): the cursor goes back to it,
        # so that the sweep reaches it when its time runs out (no kept answer lies behind the cursor).
        if (in_old and not self._cursor_old) or (in_old == self._cursor_old and record.place < self._cursor):
            self._cursor_old = in_old
            self._cursor = record.place
        if self._kept_budget is not None and self._kept_bytes > self._kept_budget:
            self._trim(-1.0)  # the oldest answers go; their ids stay recorded as done

    def sweep(self) -> int:
        """Drop the kept answers whose time-to-live ran out, oldest first; return how many."""
        if self._nkept == 0:
            return 0
        dropped = self._trim(self._clock())
        self._expired += dropped
        return dropped

    def clear(self) -> None:
        """Forget every id and kept answer."""
        self._young = _Generation()
        self._old = _Generation()
        self._kept_bytes = 0
        self._nkept = 0
        self._cursor_old = True
        self._cursor = 0

    def _known(self, record: _Record) -> Any:
        self._counters["duplicates"] += 1
        if record.state == _IN_FLIGHT:
            return IN_FLIGHT
        if record.state == _KEPT:
            return record.to, record.answer
        return DONE  # done, or its answer was dropped for room: handled either way, never run again

    def _release(self, record: _Record) -> None:
        # Drop the answer a record keeps; the record says done.
        if record.state == _KEPT:
            record.to = record.answer = None
            self._kept_bytes -= record.size
            self._nkept -= 1
        record.state = _DONE

    def _trim(self, now: float) -> int:
        # From the cursor on, in arrival order: drop kept answers while over the byte bound (now < 0) or while
        # expired (a later record finished early may wait for the next sweep). Returns how many were dropped.
        dropped = 0
        while self._nkept:
            if now < 0 and self._kept_budget is not None and self._kept_bytes <= self._kept_budget:
                break
            records = (self._old if self._cursor_old else self._young).records
            if self._cursor >= len(records):
                if not self._cursor_old:
                    break  # no kept answer lies behind the cursor: none is left to look at
                self._cursor_old = False
                self._cursor = 0
                continue
            record = records[self._cursor]
            if record.state == _KEPT:
                if now < 0:
                    self._evictions += 1
                elif now < record.expires:
                    break
                self._release(record)
                dropped += 1
            self._cursor += 1
        return dropped

    def _add(self, key: tuple[int, int, int]) -> _Record:
        if len(self._young.records) == self._cap:  # full: it becomes the old generation, whose records (and answers) go
            for old in self._old.records:
                self._release(old)
            self._evictions += len(self._old.records)
            self._old, self._young = self._young, _Generation()
            if self._cursor_old:  # the cursor was in the generation just dropped
                self._cursor = 0
            self._cursor_old = True
        record = _Record(len(self._young.records))
        self._young.records.append(record)
        self._young.index[key] = record
        return record
