"""The BatchAccumulator: both implementations, time driven by a fake clock."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def test_limits(batch_module: ModuleType) -> None:
    batch = batch_module.BatchAccumulator(3, 0.5)
    assert (batch.batch_size, batch.batch_timeout) == (3, 0.5)
    assert isinstance(batch_module.BatchAccumulator(3, 2).batch_timeout, float)
    for size, timeout in [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -1.0), (1, float("nan"))]:
        with pytest.raises(ValueError):
            batch_module.BatchAccumulator(size, timeout)
    with pytest.raises(TypeError):
        batch_module.BatchAccumulator(2.5, 1.0)


def test_full_batches_in_order(batch_module: ModuleType, make_clock: Any) -> None:
    batch = batch_module.BatchAccumulator(3, 1.0, clock=make_clock())
    assert batch.add("a") is None
    assert batch.add("b") is None
    assert len(batch) == 2
    assert batch.add("c") == ["a", "b", "c"]
    assert len(batch) == 0
    assert batch.deadline is None
    assert batch.add("d") is None
    assert batch.drain() == ["d"]
    assert batch.drain() == []


def test_deadline_and_expiry(batch_module: ModuleType, make_clock: Any) -> None:
    clock = make_clock(100.0)
    batch = batch_module.BatchAccumulator(10, 2.0, clock=clock)
    assert batch.deadline is None
    assert batch.expired() is False
    batch.add(1)
    assert batch.deadline == 102.0
    clock.advance(1.5)
    batch.add(2)  # only the first item of a batch sets the deadline
    assert batch.deadline == 102.0
    assert batch.expired() is False
    assert batch.expired(101.999) is False
    assert batch.expired(102.0) is True
    clock.advance(0.5)
    assert batch.expired() is True
    assert batch.drain() == [1, 2]
    assert batch.deadline is None
    assert batch.expired() is False
    batch.add(3)
    assert batch.deadline == 104.0


def test_clock_read_once_per_batch(batch_module: ModuleType, make_clock: Any) -> None:
    clock = make_clock()
    batch = batch_module.BatchAccumulator(4, 1.0, clock=clock)
    for i in range(12):
        batch.add(i)
    assert clock.reads == 3
    single = batch_module.BatchAccumulator(1, 1.0, clock=clock)
    assert single.add("x") == ["x"]
    assert clock.reads == 3  # a batch that is full at once never needs a deadline


def test_returned_batch_is_not_reused(batch_module: ModuleType) -> None:
    batch = batch_module.BatchAccumulator(2, 1.0)
    first = batch.add(1) or batch.add(2)
    batch.add(3)
    assert first == [1, 2]
    drained = batch.drain()
    batch.add(4)
    assert drained == [3]


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from(["add", "drain", "advance", "expired", "deadline"]), st.floats(0, 2)), max_size=60),
    size=st.integers(1, 5),
    timeout=st.sampled_from([0.5, 1.0, 3.0]),
)
def test_twins_agree_on_random_operations(twins, make_clock, ops, size, timeout) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = twins
    clock = make_clock()
    batches = [compiled.batch.BatchAccumulator(size, timeout, clock), pure.batch.BatchAccumulator(size, timeout, clock)]
    for n, (op, seconds) in enumerate(ops):
        if op == "advance":
            clock.advance(seconds)
            continue
        if op == "add":
            results = [b.add(n) for b in batches]
        elif op == "drain":
            results = [b.drain() for b in batches]
        elif op == "expired":
            results = [b.expired() for b in batches]
        else:
            results = [b.deadline for b in batches]
        assert results[0] == results[1], op
        assert len(batches[0]) == len(batches[1])
