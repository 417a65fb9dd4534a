"""The finished-task ledger, compiled and pure twin alike: found by requester and id, bounded by bytes, rotated."""

from __future__ import annotations

import random
import time
import tracemalloc
from collections import Counter
from types import ModuleType
from typing import Any

import pytest

STATES = ("queued", "running", "done", "failed", "cancelled")


def task(source: str, task_id: str) -> dict[str, Any]:
    return {"id": task_id, "source": {"id": source}}


def test_a_task_is_found_by_its_requester_and_id_the_later_record_winning(ledger_module: ModuleType) -> None:
    ledger = ledger_module.FinishedLedger(64 * 1024, Counter(), STATES)
    assert ledger.find("a", "t1") is None and ledger.find(None, "t1") is None and len(ledger) == 0
    ledger.add(task("a", "t1"), "done", None)
    ledger.add(task("b", "t1"), "failed", None)  # another requester's task with the same id
    assert ledger.find("a", "t1")[0] == "done"
    assert ledger.find("b", "t1")[0] == "failed"
    assert ledger.find("c", "t1") is None  # a stranger naming the id finds nothing of anyone else's
    assert ledger.find(None, "t1")[0] == "failed"  # any requester's: the latest
    ledger.add(task("a", "t1"), "cancelled", None)  # added after the generation was indexed: found too
    assert ledger.find("a", "t1")[0] == "cancelled" and ledger.find(None, "t1")[0] == "cancelled"
    assert ledger.find("b", "t1")[0] == "failed"
    assert len(ledger) == 3 and ledger.bytes == 3 * ledger_module.RECORD_BYTES


def test_states_come_back_as_the_given_objects_and_unknown_ones_are_refused(ledger_module: ModuleType) -> None:
    ledger = ledger_module.FinishedLedger(64 * 1024, Counter(), STATES)
    ledger.add(task("a", "t"), "".join(["do", "ne"]), None)  # equal, not the same object
    assert ledger.find("a", "t")[0] is STATES[2]
    with pytest.raises(ValueError, match="unknown task state"):
        ledger.add(task("a", "u"), "exploded", None)
    assert ledger.find("a", "u") is None and len(ledger) == 1


def test_times_are_wall_clock(ledger_module: ModuleType) -> None:
    ledger = ledger_module.FinishedLedger(64 * 1024, Counter(), STATES)
    before = time.time()
    ledger.add(task("a", "now"), "done", None)
    ledger.add(task("a", "read"), "done", time.perf_counter())
    after = time.time()
    for task_id in ("now", "read"):
        assert before - 0.5 <= ledger.find("a", task_id)[1] <= after + 0.5


@pytest.mark.parametrize("indexed", [False, True])
def test_the_bound_holds_and_the_oldest_generation_goes(ledger_module: ModuleType, indexed: bool) -> None:
    counters: Counter[str] = Counter()
    max_bytes = 4096
    ledger = ledger_module.FinishedLedger(max_bytes, counters, STATES)
    cap = ledger.capacity
    assert cap == max_bytes // 2 // ledger_module.RECORD_BYTES and counters["task_records_evicted"] == 0
    for n in range(3 * cap + 1):
        ledger.add(task("s" * 1000, f"{n:01000d}"), "done", None)  # long ids cost nothing more
        if indexed:
            assert ledger.find("s" * 1000, f"{n:01000d}") is not None
        assert ledger.bytes <= max_bytes
    assert len(ledger) == cap + 1  # the old generation full, the young one holding the last record
    assert counters["task_records_evicted"] == 2 * cap  # rotations after cap (nothing old yet), 2 cap and 3 cap adds
    assert ledger.find("s" * 1000, f"{0:01000d}") is None
    assert ledger.find("s" * 1000, f"{2 * cap - 1:01000d}") is None
    assert ledger.find("s" * 1000, f"{2 * cap:01000d}") is not None
    assert ledger.find(None, f"{3 * cap:01000d}") is not None


def test_a_bound_below_one_record_keeps_nothing(ledger_module: ModuleType) -> None:
    ledger = ledger_module.FinishedLedger(ledger_module.RECORD_BYTES, Counter(), STATES)
    ledger.add(task("a", "t"), "done", None)
    assert ledger.capacity == 0 and len(ledger) == 0 and ledger.bytes == 0 and ledger.find("a", "t") is None


def test_the_twins_agree_on_a_random_history(twins: Any) -> None:
    compiled, pure = twins
    rng = random.Random(7)
    c = compiled.ledger.FinishedLedger(3000, Counter(), STATES)
    p = pure.ledger.FinishedLedger(3000, Counter(), STATES)
    assert c.capacity == p.capacity and compiled.ledger.RECORD_BYTES == pure.ledger.RECORD_BYTES
    for step in range(3000):
        source, task_id = f"s{rng.randrange(4)}", f"t{rng.randrange(60)}"
        if rng.random() < 0.6:
            state = rng.choice(STATES[2:])
            c.add(task(source, task_id), state, 1.0)
            p.add(task(source, task_id), state, 1.0)
        else:
            asked = None if rng.random() < 0.3 else source
            found_c, found_p = c.find(asked, task_id), p.find(asked, task_id)
            assert (found_c and found_c[0]) == (found_p and found_p[0]), step
        assert len(c) == len(p) and c.bytes == p.bytes


def _flood_then_ask(ledger_module: ModuleType, same_id: bool) -> float:
    """Return the occupied slots stepped over per add or lookup while a generation is flooded, indexed and added to."""
    ledger = ledger_module.FinishedLedger(8 * 1024 * 1024, Counter(), STATES)
    half = ledger.capacity // 2
    for n in range(half):  # one id under many requesters' names (source ids are whatever the sender says)
        ledger.add(task(f"s{n}", "x" if same_id else f"x{n}"), "done", None)
    assert ledger.find("victim", "its-task") is None  # the first query indexes the generation
    for n in range(half, 2 * half):  # added to an indexed generation
        ledger.add(task(f"s{n}", "x" if same_id else f"x{n}"), "done", None)
    assert ledger.find("victim", "x") is None and ledger.find("s1", "x" if same_id else "x1") is not None
    assert ledger.find(None, "x" if same_id else f"x{2 * half - 1}") is not None
    return float(ledger.probes) / (3 * half)


def test_one_id_sent_under_many_requesters_names_makes_no_probe_chain(ledger_module: ModuleType) -> None:
    # Indexed by the task id's hash alone, such a flood piled every record into one chain: indexing a generation
    # took seconds of the event loop (quadratic: some 26,000 slots stepped over per add), and so did adding to it.
    # Indexed by (task, requester) it costs what distinct ids cost: a few slots per add at most half full.
    assert _flood_then_ask(ledger_module, same_id=False) < 4
    assert _flood_then_ask(ledger_module, same_id=True) < 4


@pytest.mark.parametrize("max_bytes", [0, 1, 39, 40, 79, 80, 81, 159, 160, 161, 2**40, 2**70])
def test_any_bound_is_held_or_refused_at_once(ledger_module: ModuleType, max_bytes: int) -> None:
    try:
        ledger = ledger_module.FinishedLedger(max_bytes, Counter(), STATES)
    except MemoryError:  # the compiled ledger allocates its generations up front: never at a task's end
        assert ledger_module.__name__.endswith(".ledger") and max_bytes >= 2**40
        return
    cap = ledger.capacity
    assert cap == max(min(max_bytes // 2 // ledger_module.RECORD_BYTES, ledger_module.MAX_RECORDS), 0)
    for n in range(5):
        ledger.add(task("a", f"t{n}"), "done", None)
        assert ledger.bytes <= max_bytes and len(ledger) <= 2 * cap
    assert (ledger.find("a", "t4") is not None) == (cap > 0) == (ledger.find(None, "t4") is not None)


def test_a_second_init_starts_empty(ledger_module: ModuleType) -> None:
    ledger = ledger_module.FinishedLedger(4096, Counter(), STATES)
    for n in range(40):
        ledger.add(task("a", f"t{n}"), "done", None)
    ledger.__init__(100, Counter(), STATES)  # a smaller capacity: no record may be left beyond it
    assert len(ledger) == 0 and ledger.find("a", "t39") is None and ledger.find(None, "t39") is None


@pytest.mark.parametrize("sources,ids", [(200, 5), (3, 200), (40, 40)])
def test_the_twins_agree_with_ids_shared_across_requesters(twins: Any, sources: int, ids: int) -> None:
    compiled, pure = twins
    rng = random.Random(sources * 1000 + ids)
    cc: Counter[str] = Counter()
    pc: Counter[str] = Counter()
    c = compiled.ledger.FinishedLedger(2000, cc, STATES)
    p = pure.ledger.FinishedLedger(2000, pc, STATES)
    for step in range(4000):
        source, task_id = f"s{rng.randrange(sources)}", f"t{rng.randrange(ids)}"
        if rng.random() < 0.5:
            state = "".join(rng.choice(STATES[2:]))  # equal to a state, not always the same object
            c.add(task(source, task_id), state, float(step))
            p.add(task(source, task_id), state, float(step))
        for asked in (source, None):
            found_c, found_p = c.find(asked, task_id), p.find(asked, task_id)
            assert (found_c is None) == (found_p is None), step
            if found_c is not None:  # the same record: its state object and its time (both add the same wall offset)
                assert found_c[0] is found_p[0] and abs(found_c[1] - found_p[1]) < 0.5, step
        assert len(c) == len(p) and c.bytes == p.bytes and cc == pc


def test_the_pure_twin_holds_no_more_memory_than_its_bound(twins: Any) -> None:
    # The compiled records are exactly RECORD_BYTES with their slots; the twin's arrays must stay within it too.
    _compiled, pure = twins
    max_bytes = 1024 * 1024
    messages = [task(f"source-{n % 50}", f"task-{n:032x}") for n in range(2 * max_bytes // 80 + 10)]
    tracemalloc.start()
    try:
        ledger = pure.ledger.FinishedLedger(max_bytes, Counter(), STATES)
        for n, message in enumerate(messages):
            ledger.add(message, "done", 1.0)
            if n % 5000 == 0:
                ledger.find("source-1", "task-1")  # index the generation being filled
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ledger.bytes <= max_bytes and peak <= max_bytes
