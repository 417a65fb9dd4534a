"""The finished-task ledger, compiled and pure twin alike: found by requester and id, bounded by bytes, rotated."""

from __future__ import annotations

import random
import time
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
