"""The compiled core against its pure-Python twins and the obvious alternatives (regex matching, json, bare orjson).

Benchmarks named ``*_x1000`` make 1,000 calls per timed round, so pytest-benchmark's own per-call overhead does
not swamp operations that take tens of nanoseconds: divide their times by 1,000 (the Python ``for`` loop that
drives the calls stays included). The other benchmarks time one call per round.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

import orjson
import pytest

IMPLEMENTATIONS = [pytest.param("", id="c-extension"), pytest.param("_py", id="pure-python")]
PATTERN_COUNTS = [1_000, 10_000]
INNER = 1_000


def _module(name: str, suffix: str) -> ModuleType:
    return importlib.import_module(f"agentcore._ext.{name}{suffix}")


# ------------------------------------------------------------------------------------------------- subjects


def make_patterns(count: int) -> list[str]:
    """Return count agent-style patterns: literals, '*' in the middle, '>' at the end."""
    shapes = ("agents.a{i}.tasks", "agents.a{i}.events.*", "svc.s{i}.>", "agents.*.results.r{i}")
    return [shapes[i % 4].format(i=i) for i in range(count)]


def make_subjects(count: int, n: int = INNER) -> list[str]:
    """Return n distinct subjects, most of which match one or more of make_patterns(count)."""
    out = []
    for k in range(n):
        i = (k * 7919) % count
        kind = k % 4
        if kind == 0:
            out.append(f"agents.a{i - i % 4}.tasks")
        elif kind == 1:
            out.append(f"agents.a{i - i % 4 + 1}.events.started")
        elif kind == 2:
            out.append(f"svc.s{i - i % 4 + 2}.health.ping")
        else:
            out.append(f"agents.a{i}.results.r{i - i % 4 + 3}")
    return out


SUBJECT = "agents.a500.tasks"


def _index(suffix: str, count: int, cache_size: int) -> Any:
    index = _module("subjects", suffix).SubjectIndex(cache_size=cache_size)
    for pattern in make_patterns(count):
        index.insert(pattern, pattern)
    return index


def _regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for token in pattern.split("."):
        parts.append("[^.]+" if token == "*" else ".+" if token == ">" else re.escape(token))
    return re.compile(r"\.".join(parts) + r"\Z")


@pytest.mark.benchmark(group="subject-match-uncached")
@pytest.mark.parametrize("count", PATTERN_COUNTS)
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_subject_match_uncached(benchmark: Any, suffix: str, count: int) -> None:
    index = _index(suffix, count, cache_size=0)
    assert benchmark(index.match, SUBJECT)


@pytest.mark.benchmark(group="subject-match-uncached")
@pytest.mark.parametrize("count", PATTERN_COUNTS)
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_subject_match_uncached_x1000(benchmark: Any, suffix: str, count: int) -> None:
    match = _index(suffix, count, cache_size=0).match
    subjects = make_subjects(count)

    def run() -> None:
        for subject in subjects:
            match(subject)

    benchmark(run)


@pytest.mark.benchmark(group="subject-match-uncached")
@pytest.mark.parametrize("count", PATTERN_COUNTS)
def test_subject_match_regex_scan(benchmark: Any, count: int) -> None:
    """Baseline: one compiled regex per pattern (fnmatch-style), scanned in order."""
    compiled = [(_regex(p), p) for p in make_patterns(count)]

    def match(subject: str) -> tuple[str, ...]:
        return tuple(value for regex, value in compiled if regex.match(subject))

    assert benchmark(match, SUBJECT) == ("agents.a500.tasks",)


@pytest.mark.benchmark(group="subject-match-cached")
@pytest.mark.parametrize("count", PATTERN_COUNTS)
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_subject_match_cached_hit(benchmark: Any, suffix: str, count: int) -> None:
    index = _index(suffix, count, cache_size=1024)
    index.match(SUBJECT)
    assert benchmark(index.match, SUBJECT)


@pytest.mark.benchmark(group="subject-match-cached")
@pytest.mark.parametrize("count", PATTERN_COUNTS)
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_subject_match_cached_hit_x1000(benchmark: Any, suffix: str, count: int) -> None:
    index = _index(suffix, count, cache_size=1024)
    subjects = make_subjects(count)
    for subject in subjects:
        index.match(subject)
    match = index.match

    def run() -> None:
        for subject in subjects:
            match(subject)

    benchmark(run)
    assert index.cache_misses == len(set(subjects))


# ------------------------------------------------------------------------------------------------- envelope

# Keys in agentcore.envelope.new_message's order and shape, which the compiled core checks in one ordered pass.
MESSAGE: dict[str, Any] = {
    "id": "6f1c2a9e3b7d4c05-42",
    "timestamp": 1732560000.123,
    "version": "1.0",
    "type": "task",
    "source": {"id": "agent-planner", "type": "agent"},
    "target": "agents.worker.tasks",
    "replyTo": "_INBOX.k2Jd8sLq0aZ",
    "correlationId": "6f1c2a9e3b7d4c05-41",
    "context": {"conversationId": "conv-42", "metadata": {"user": "alice", "trace": "4bf92f3577b34da6"}},
    "payload": {
        "content": {
            "task": "summarize",
            "text": "The quick brown fox jumps over the lazy dog.",
            "max_tokens": 256,
            "temperature": 0.2,
            "tags": ["a", "b", "c"],
        }
    },
    "routing": {"priority": 5, "capabilities": ["summarize", "text"], "timeout": 30000},
}


def test_message_size() -> None:
    assert 450 <= len(orjson.dumps(MESSAGE)) <= 600


def _roundtrip(dumps: Callable[[Any], Any], loads: Callable[[Any], Any]) -> Callable[[], Any]:
    def run() -> Any:
        return loads(dumps(MESSAGE))

    return run


@pytest.mark.benchmark(group="envelope-roundtrip")
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_envelope_encode_decode(benchmark: Any, suffix: str) -> None:
    envelope = _module("envelope", suffix)
    assert benchmark(_roundtrip(envelope.encode, envelope.decode)) == MESSAGE


@pytest.mark.benchmark(group="envelope-roundtrip")
def test_envelope_orjson_bare(benchmark: Any) -> None:
    """Baseline: orjson dumps + loads with no validation at all."""
    assert benchmark(_roundtrip(orjson.dumps, orjson.loads)) == MESSAGE


@pytest.mark.benchmark(group="envelope-roundtrip")
def test_envelope_json_stdlib(benchmark: Any) -> None:
    """Baseline: stdlib json dumps + loads with no validation at all."""
    assert benchmark(_roundtrip(json.dumps, json.loads)) == MESSAGE


@pytest.mark.benchmark(group="envelope-validate")
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_envelope_validate(benchmark: Any, suffix: str) -> None:
    benchmark(_module("envelope", suffix).validate, MESSAGE)


# ------------------------------------------------------------------------------------------------- message ids


def _x1000(make: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(INNER):
            make()

    return run


@pytest.mark.benchmark(group="message-id")
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_new_id_x1000(benchmark: Any, suffix: str) -> None:
    """128 random bits from the OS's CSPRNG per id (drawn in blocks), as 32 hex digits."""
    new_id = _module("envelope", suffix).new_id
    assert len(new_id()) == 32
    benchmark(_x1000(new_id))


@pytest.mark.benchmark(group="message-id")
def test_counter_id_x1000(benchmark: Any) -> None:
    """Reference: the ids before (a random per-process prefix and a counter: unique, but predictable)."""
    import itertools
    import os

    prefix, counter = os.urandom(8).hex(), itertools.count(1).__next__
    benchmark(_x1000(lambda: f"{prefix}-{counter()}"))


@pytest.mark.benchmark(group="message-id")
def test_urandom_hex_id_x1000(benchmark: Any) -> None:
    """Reference: one os.urandom(16) call per id (a system call each)."""
    import os

    benchmark(_x1000(lambda: os.urandom(16).hex()))


# ------------------------------------------------------------------------------------------------- cache


def _cache(suffix: str, ttl: float | None) -> Any:
    cache = _module("cache", suffix).ContentCache(max_entries=1024, ttl=ttl)
    for key in range(1024):
        cache.put(key, key)
    return cache


@pytest.mark.benchmark(group="cache")
@pytest.mark.parametrize("ttl", [60.0, None], ids=["ttl", "no-ttl"])
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_cache_get_hit(benchmark: Any, suffix: str, ttl: float | None) -> None:
    assert benchmark(_cache(suffix, ttl).get, 512) == 512


@pytest.mark.benchmark(group="cache")
@pytest.mark.parametrize("ttl", [60.0, None], ids=["ttl", "no-ttl"])
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_cache_get_hit_x1000(benchmark: Any, suffix: str, ttl: float | None) -> None:
    get = _cache(suffix, ttl).get
    keys = list(range(0, 1024, 1024 // INNER or 1))[:INNER]

    def run() -> None:
        for key in keys:
            get(key)

    benchmark(run)


@pytest.mark.benchmark(group="cache")
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_cache_put_evict_x1000(benchmark: Any, suffix: str) -> None:
    """Put new keys into a full cache: every put also evicts the least recently used entry."""
    put = _cache(suffix, 60.0).put
    counter = iter(range(10**12))

    def run() -> None:
        base = next(counter) * INNER + 10_000
        for key in range(base, base + INNER):
            put(key, key)

    benchmark(run)


@pytest.mark.benchmark(group="cache")
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_content_hash(benchmark: Any, suffix: str) -> None:
    data = orjson.dumps(MESSAGE)
    benchmark(_module("cache", suffix).content_hash, data)


@pytest.mark.benchmark(group="cache")
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_content_hash_x1000(benchmark: Any, suffix: str) -> None:
    content_hash = _module("cache", suffix).content_hash
    data = [orjson.dumps(dict(MESSAGE, id=str(i))) for i in range(INNER)]

    def run() -> None:
        for item in data:
            content_hash(item)

    benchmark(run)


# ------------------------------------------------------------------------------------------------- batch


@pytest.mark.benchmark(group="batch")
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_batch_add(benchmark: Any, suffix: str) -> None:
    batch = _module("batch", suffix).BatchAccumulator(100, 1.0)
    benchmark(batch.add, "item")


@pytest.mark.benchmark(group="batch")
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_batch_add_x1000(benchmark: Any, suffix: str) -> None:
    """1,000 adds with batch_size 100: ten full batches handed out, ten clock reads."""
    add = _module("batch", suffix).BatchAccumulator(100, 1.0).add
    items = list(range(INNER))

    def run() -> None:
        for item in items:
            add(item)

    benchmark(run)


# ------------------------------------------------------------------------------------------------- slots


@pytest.mark.benchmark(group="delivery")
@pytest.mark.parametrize("suffix", IMPLEMENTATIONS)
def test_delivery_made_by_slots_maker_x1000(benchmark: Any, suffix: str) -> None:
    """1,000 Deliveries made by SlotsMaker (the twin calls the dataclass): what the dispatcher does per message."""
    from agentcore.core.records import Delivery

    make = _module("slots", suffix).SlotsMaker(Delivery, ("message", "reply", "subject", "fallback")).make
    message = {"id": "m"}

    def run() -> None:
        for _ in range(INNER):
            make(message, "_INBOX.x", "agents.e.task.c.default", None)

    benchmark(run)


@pytest.mark.benchmark(group="delivery")
def test_delivery_made_by_its_init_x1000(benchmark: Any) -> None:
    """The obvious alternative: 1,000 Deliveries made by calling the dataclass (its generated __init__)."""
    from agentcore.core.records import Delivery

    message = {"id": "m"}

    def run() -> None:
        for _ in range(INNER):
            Delivery(message, "_INBOX.x", "agents.e.task.c.default", None)

    benchmark(run)


# ------------------------------------------------------------------------------------------------- reference


@pytest.mark.benchmark(group="reference")
def test_python_loop_x1000(benchmark: Any) -> None:
    """The cost of the x1000 driver loop itself, calling a trivial builtin (id) 1,000 times."""
    items = list(range(INNER))

    def run() -> None:
        for item in items:
            id(item)

    benchmark(run)
