"""The duplicate store, compiled and pure twin alike: ids by (subscription, sender, id), answers kept within bytes."""

from __future__ import annotations

import random
from collections import Counter
from types import ModuleType
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from helpers import FakeClock

SUB = ("agents.t.task.echo.*", "")


def msg(source: Any, message_id: str) -> dict[str, Any]:
    return {"id": message_id, "source": {"id": source}}


def store(module: ModuleType, records: int = 100, max_bytes: int | None = 1 << 20, ttl: float = 10.0,
          replay_max: int | None = None, clock: Any = None, on_kept: Any = None) -> tuple[Any, FakeClock, Counter[str]]:
    clock = clock or FakeClock()
    counters: Counter[str] = Counter()
    return module.DuplicateStore(records, max_bytes, ttl, clock, counters, replay_max, on_kept), clock, counters


def test_an_id_is_new_then_in_flight_then_done_or_replayed(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, _, counters = store(m)
    assert s.seen(SUB, msg("alice", "m1")) is m.MISS
    assert s.seen(SUB, msg("alice", "m1")) is m.IN_FLIGHT and counters["duplicates"] == 1
    s.finish(SUB, msg("alice", "m1"), m.DONE)
    assert s.seen(SUB, msg("alice", "m1")) is m.DONE
    assert s.seen(SUB, msg("alice", "m2")) is m.MISS
    s.finish(SUB, msg("alice", "m2"), {"ok": 1}, "_INBOX.a")  # its size is measured when not given
    assert s.seen(SUB, msg("alice", "m2")) == ("_INBOX.a", {"ok": 1})
    assert s.kept == 1 and s.bytes == 2 * m.RECORD_BYTES + len(b'{"ok":1}') + m.KEPT_BYTES
    assert counters["duplicates"] == 3 and len(s) == 2


def test_an_answer_is_kept_for_where_the_message_asked_for_it(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, _, _ = store(m)
    asked = {"id": "m1", "source": {"id": "a"}, "replyTo": "agents.t.result.a"}
    s.seen(SUB, asked)
    s.finish(SUB, asked, "x", "_INBOX.reply", 1)  # replyTo wins over the NATS reply subject
    assert s.seen(SUB, asked) == ("agents.t.result.a", "x")
    s.seen(SUB, msg("a", "m2"))
    s.finish(SUB, msg("a", "m2"), "y", "", 1)  # asked nowhere: no answer kept (a duplicate of it is dropped)
    assert s.seen(SUB, msg("a", "m2")) is m.DONE and s.kept == 1


def test_an_id_is_the_senders_and_the_subscriptions(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, _, _ = store(m)
    assert s.seen(SUB, msg("alice", "m1")) is m.MISS
    assert s.seen(SUB, msg("mallory", "m1")) is m.MISS  # another sender's id is another message
    assert s.seen(("agents.t.task.other.*", ""), msg("alice", "m1")) is m.MISS  # another subscription's too
    assert s.seen((SUB[0], "workers"), msg("alice", "m1")) is m.MISS
    assert s.seen("alice", msg(SUB, "m1")) is m.MISS  # the parts do not trade places
    assert s.seen(SUB, msg("m1", "alice")) is m.MISS
    assert len(s) == 6


def test_a_failed_id_is_forgotten_and_runs_again(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, _, _ = store(m)
    s.seen(SUB, msg("a", "m"))
    s.finish(SUB, msg("a", "m"), m.MISS)
    assert s.seen(SUB, msg("a", "m")) is m.MISS  # the same record, taken again
    s.finish(SUB, msg("a", "m"), "answer", "_INBOX.a", 10)
    assert s.seen(SUB, msg("a", "m")) == ("_INBOX.a", "answer")
    s.finish(SUB, msg("a", "m"), m.MISS)  # forgetting drops the kept answer too
    assert s.kept == 0 and s.bytes == m.RECORD_BYTES
    s.finish(SUB, msg("a", "never-seen"), m.MISS)  # forgetting an unknown id records nothing
    assert len(s) == 1


def test_ids_and_answers_expire_after_the_ttl(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, clock, _ = store(m, ttl=10.0)
    s.seen(SUB, msg("a", "m1"))
    s.seen(SUB, msg("a", "m2"))
    clock.advance(5)
    s.finish(SUB, msg("a", "m1"), "x", "_INBOX.a", 1)  # the ttl runs from the answer
    clock.advance(9.5)
    assert s.seen(SUB, msg("a", "m1")) == ("_INBOX.a", "x")
    assert s.seen(SUB, msg("a", "m2")) is m.MISS  # in flight for longer than the ttl: new again
    clock.advance(1)
    assert s.sweep() == 1 and s.kept == 0 and s.expired == 1
    assert s.seen(SUB, msg("a", "m1")) is m.MISS
    assert s.sweep() == 0


def test_a_large_answer_is_kept_as_a_marker(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, _, counters = store(m, replay_max=100)
    s.seen(SUB, msg("a", "big"))
    s.finish(SUB, msg("a", "big"), "x" * 1000, "_INBOX.a", 1000)
    assert s.seen(SUB, msg("a", "big")) == ("_INBOX.a", m.NOT_KEPT)
    assert counters["duplicates_not_kept"] == 1 and s.bytes == m.RECORD_BYTES + m.KEPT_BYTES
    s.seen(SUB, msg("a", "odd"))
    s.finish(SUB, msg("a", "odd"), object(), "_INBOX.a")  # does not encode: counted as too large
    assert s.seen(SUB, msg("a", "odd")) == ("_INBOX.a", m.NOT_KEPT)


def test_an_answer_that_does_not_encode_is_a_marker_with_no_bounds_too(dedup_module: ModuleType) -> None:
    """With no byte bound and no replay bound, an answer that does not encode is still counted as a marker (its
    size, "too large", would overflow the compiled store's byte count)."""
    m = dedup_module
    s, _, counters = store(m, max_bytes=None, replay_max=None)
    for i in range(3):
        s.seen(SUB, msg("a", f"odd{i}"))
        s.finish(SUB, msg("a", f"odd{i}"), object(), "_INBOX.a")
    assert [s.seen(SUB, msg("a", f"odd{i}")) for i in range(3)] == [("_INBOX.a", m.NOT_KEPT)] * 3
    assert s.bytes == 3 * (m.RECORD_BYTES + m.KEPT_BYTES) and counters["duplicates_not_kept"] == 3


def test_kept_answers_stay_within_the_bound_oldest_going_first(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, _, _ = store(m, records=10, max_bytes=10 * 4 * m.RECORD_BYTES)  # records take half, answers the rest
    assert s.capacity == 10
    budget = s.max_bytes - 2 * 10 * m.RECORD_BYTES
    size = budget // 3 - m.KEPT_BYTES  # three answers fit
    for i in range(5):
        s.seen(SUB, msg("a", f"m{i}"))
        s.finish(SUB, msg("a", f"m{i}"), f"answer {i}", "_INBOX.a", size)
        assert s.bytes <= s.max_bytes
    assert s.kept == 3 and s.evictions == 2
    assert [s.seen(SUB, msg("a", f"m{i}")) for i in range(5)] == [m.DONE, m.DONE] + [("_INBOX.a", f"answer {i}") for i in (2, 3, 4)]
    s.seen(SUB, msg("a", "huge"))
    s.finish(SUB, msg("a", "huge"), "h", "_INBOX.a", budget + 1)  # larger than every answer together: done, not kept
    assert s.seen(SUB, msg("a", "huge")) is m.DONE and s.kept == 3


def test_an_answer_kept_late_behind_the_oldest_still_counts_against_the_bound(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, _, _ = store(m, records=10, max_bytes=10 * 4 * m.RECORD_BYTES)
    budget = s.max_bytes - 2 * 10 * m.RECORD_BYTES
    size = budget // 3 - m.KEPT_BYTES
    s.seen(SUB, msg("a", "slow"))  # taken first, answered last
    for i in range(4):
        s.seen(SUB, msg("a", f"m{i}"))
        s.finish(SUB, msg("a", f"m{i}"), i, "_INBOX.a", size)
    s.finish(SUB, msg("a", "slow"), "late", "_INBOX.a", size)
    s.finish(SUB, msg("a", "slow-2"), "late", "_INBOX.a", size)  # never seen: recorded as it finishes
    assert s.bytes <= s.max_bytes and s.kept == 3


def test_an_answer_kept_behind_the_sweep_still_expires(dedup_module: ModuleType) -> None:
    """A slow handler's answer, kept after a sweep went past its record, is swept when its ttl runs out."""
    m = dedup_module
    s, clock, _ = store(m, ttl=10.0)
    s.seen(SUB, msg("a", "slow"))  # taken first, answered last (an LLM call, say)
    s.seen(SUB, msg("a", "fast"))
    s.finish(SUB, msg("a", "fast"), "fast answer", "_INBOX.a", 1)
    clock.advance(1)
    assert s.sweep() == 0  # the sweep steps over the record still in flight
    clock.advance(4)
    s.finish(SUB, msg("a", "slow"), "slow answer", "_INBOX.a", 1)
    clock.advance(11)  # both answers' time ran out (the fast one's may wait behind the slow one's, taken before it)
    assert s.sweep() == 2 and s.kept == 0 and s.bytes == 2 * m.RECORD_BYTES and s.expired == 2


def test_an_answer_kept_in_the_old_generation_behind_the_sweep_still_expires(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, clock, _ = store(m, records=4, max_bytes=None, ttl=10.0)
    s.seen(SUB, msg("a", "slow"))
    for i in range(5):  # the young generation fills and becomes the old one, the slow id in it
        s.seen(SUB, msg("a", f"m{i}"))
        s.finish(SUB, msg("a", f"m{i}"), i, "_INBOX.a", 1)
    clock.advance(11)
    assert s.sweep() == 5 and s.kept == 0  # past the slow record, into the young generation
    s.finish(SUB, msg("a", "slow"), "late", "_INBOX.a", 1)  # kept in the old generation, behind the sweep
    assert s.seen(SUB, msg("a", "slow")) == ("_INBOX.a", "late")
    clock.advance(11)
    assert s.sweep() == 1 and s.kept == 0


def test_generations_hold_the_last_capacity_ids_at_least(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, _, _ = store(m, records=50, max_bytes=None)
    for i in range(175):
        assert s.seen(SUB, msg("a", f"m{i}")) is m.MISS
        s.finish(SUB, msg("a", f"m{i}"), i, "_INBOX.a", 8)
        assert len(s) <= 100 and s.kept <= 100
    assert all(s.seen(SUB, msg("a", f"m{i}")) == ("_INBOX.a", i) for i in range(125, 175))
    assert s.seen(SUB, msg("a", "m0")) is m.MISS  # two generations ago: forgotten
    assert s.evictions >= 100


def test_an_id_finished_after_its_generation_went_is_recorded_again(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, _, _ = store(m, records=5, max_bytes=None)
    s.seen(SUB, msg("a", "slow"))
    for i in range(10):
        s.seen(SUB, msg("a", f"m{i}"))
    s.finish(SUB, msg("a", "slow"), "answer", "_INBOX.a", 6)
    assert s.seen(SUB, msg("a", "slow")) == ("_INBOX.a", "answer")


def test_the_first_kept_answer_calls_on_kept(dedup_module: ModuleType) -> None:
    m = dedup_module
    calls: list[int] = []
    s, _, _ = store(m, on_kept=lambda: calls.append(1))
    s.seen(SUB, msg("a", "m1"))
    s.finish(SUB, msg("a", "m1"), m.DONE)
    assert calls == []
    for i in range(3):
        s.seen(SUB, msg("a", f"k{i}"))
        s.finish(SUB, msg("a", f"k{i}"), i, "_INBOX.a", 1)
    assert calls == [1]


def test_clear_forgets_everything(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, _, _ = store(m, records=4)
    for i in range(7):
        s.seen(SUB, msg("a", f"m{i}"))
        s.finish(SUB, msg("a", f"m{i}"), i, "_INBOX.a", 1)
    s.clear()
    assert len(s) == 0 and s.kept == 0 and s.bytes == 0
    assert all(s.seen(SUB, msg("a", f"m{i}")) is m.MISS for i in range(7))


def test_bad_bounds_are_refused(dedup_module: ModuleType) -> None:
    m = dedup_module
    for args in ((0, None, 1.0), (1, None, 0.0), (1, 0, 1.0)):
        with pytest.raises(ValueError):
            m.DuplicateStore(*args, FakeClock(), Counter())
    assert store(m, records=10**6, max_bytes=1000)[0].capacity == 4  # the bytes bound caps the records


def test_one_id_under_many_senders_spreads_over_the_index(dedup_module: ModuleType) -> None:
    m = dedup_module
    s, _, _ = store(m, records=20_000, max_bytes=None)
    for i in range(20_000):
        s.seen(SUB, msg(f"sender-{i}", "same-id"))
    for i in range(20_000):
        s.seen(SUB, msg("one-sender", f"id-{i}"))
    assert s.probes / 60_000 < 4  # occupied slots stepped over per operation (0 for the pure twin's dict)


_OPS = st.lists(st.tuples(st.sampled_from(["seen", "done", "answer", "big", "fail", "tick", "sweep", "clear"]),
                          st.integers(0, 3), st.integers(0, 25)), max_size=120)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_the_twins_answer_alike(twins: Any, ops: list[tuple[str, int, int]]) -> None:
    """Random operations, the same on both: every answer, count and byte total agree."""
    sides = []
    for core in twins:
        clock = FakeClock()
        s = core.dedup.DuplicateStore(6, 6 * 4 * core.dedup.RECORD_BYTES, 5.0, clock, Counter(), 40)
        sides.append((core.dedup, s, clock))
    for op, sender, n in ops:
        seen = []
        for m, s, clock in sides:
            args = (SUB, msg(f"s{sender}", f"m{n}"))
            if op == "seen":
                out = s.seen(*args)
                seen.append("MISS" if out is m.MISS else "IN_FLIGHT" if out is m.IN_FLIGHT else "DONE" if out is m.DONE
                            else (out[0], "NOT_KEPT" if out[1] is m.NOT_KEPT else out[1]))
            elif op == "done":
                s.finish(*args, m.DONE)
            elif op in ("answer", "big"):
                s.finish(*args, n, f"_INBOX.{sender}", 90 if op == "big" else 1 + n)
            elif op == "fail":
                s.finish(*args, m.MISS)
            elif op == "tick":
                clock.advance(n / 10)
            elif op == "clear":
                s.clear()
            else:
                seen.append(s.sweep())
            seen.append((len(s), s.kept, s.bytes, s.evictions))
        assert seen[: len(seen) // 2] == seen[len(seen) // 2:]
    for m, s, clock in sides:  # once every ttl ran out, one sweep leaves no answer kept, however they came
        clock.advance(5.0)
        s.sweep()
        assert s.kept == 0 and s.bytes == len(s) * m.RECORD_BYTES


def test_random_use_stays_within_the_bound(dedup_module: ModuleType) -> None:
    m = dedup_module
    rng = random.Random(7)
    s, clock, _ = store(m, records=64, max_bytes=64 * 4 * m.RECORD_BYTES + 5000, replay_max=600)
    for i in range(5000):
        sid = f"m{rng.randrange(300)}"
        if s.seen(SUB, msg("a", sid)) is m.MISS and rng.random() < 0.9:
            s.finish(SUB, msg("a", sid), "x", "_INBOX.a", rng.randrange(1, 800))
        if i % 97 == 0:
            clock.advance(1)
            s.sweep()
        assert s.bytes <= s.max_bytes and len(s) <= 128


_EXPIRY_OPS = st.lists(st.tuples(st.sampled_from(["seen", "answer", "done", "fail", "tick", "sweep"]),
                                 st.integers(0, 5)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(ops=_EXPIRY_OPS)
@example(ops=[("seen", 0), ("seen", 1), ("answer", 1), ("tick", 1), ("sweep", 0), ("answer", 0)])  # slow after fast
def test_no_answer_outlives_its_ttl_past_a_sweep(twins: Any, ops: list[tuple[str, int]]) -> None:
    """Answers kept in any order (slow ones after fast ones, across sweeps): once every ttl ran out, a sweep leaves
    none, on both twins alike."""
    results = []
    for core in twins:
        m, clock = core.dedup, FakeClock()
        s = m.DuplicateStore(4, None, 5.0, clock, Counter())
        for op, n in ops:
            if op == "seen":
                s.seen(SUB, msg("a", f"m{n}"))
            elif op == "answer":
                s.finish(SUB, msg("a", f"m{n}"), n, "_INBOX.a", 1 + n)
            elif op == "done":
                s.finish(SUB, msg("a", f"m{n}"), m.DONE)
            elif op == "fail":
                s.finish(SUB, msg("a", f"m{n}"), m.MISS)
            elif op == "tick":
                clock.advance(n)
            else:
                s.sweep()
        clock.advance(5.0)
        s.sweep()
        assert s.kept == 0 and s.bytes == len(s) * m.RECORD_BYTES
        results.append((len(s), s.evictions, s.expired))
    assert results[0] == results[1]
