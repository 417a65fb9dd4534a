"""Content hashing and the LRU+TTL ContentCache: both implementations, time driven by a fake clock."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import orjson
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st


def test_content_hash(cache_module: ModuleType) -> None:
    assert cache_module.content_hash(b"hello") == xxhash.xxh3_64_intdigest(b"hello")
    assert cache_module.content_hash("héllo") == xxhash.xxh3_64_intdigest("héllo".encode())
    assert cache_module.content_hash(b"") == xxhash.xxh3_64_intdigest(b"")
    assert 0 <= cache_module.content_hash(b"x") < 2**64
    with pytest.raises(UnicodeEncodeError):
        cache_module.content_hash("\ud800")


def test_canonical_hash(cache_module: ModuleType) -> None:
    a = {"b": 1, "a": [1, {"y": 2, "x": 3}]}
    b = {"a": [1, {"x": 3, "y": 2}], "b": 1}
    assert cache_module.canonical_hash(a) == cache_module.canonical_hash(b)
    assert cache_module.canonical_hash(a) == xxhash.xxh3_64_intdigest(orjson.dumps(a, option=orjson.OPT_SORT_KEYS))
    assert cache_module.canonical_hash([1, 2]) != cache_module.canonical_hash([2, 1])
    with pytest.raises(TypeError):
        cache_module.canonical_hash({1, 2})


def test_canonical_hash_with_a_seed(cache_module: ModuleType) -> None:
    obj = {"b": 1, "a": 2}
    assert cache_module.canonical_hash(obj, 7) == xxhash.xxh3_64_intdigest(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS), 7)
    assert cache_module.canonical_hash(obj, 7) != cache_module.canonical_hash(obj, 8) != cache_module.canonical_hash(obj)


def _task(content: Any = None, source: str = "alice", **fields: Any) -> dict[str, Any]:
    return {"id": "m1", "source": {"id": source, "type": "agent"}, "payload": {"content": content}, **fields}


def test_task_key(cache_module: ModuleType) -> None:
    key = cache_module.task_key
    content = {"q": "why", "n": [1, 2]}
    expected = xxhash.xxh3_64_intdigest(orjson.dumps(("p", "alice", None, content), option=orjson.OPT_SORT_KEYS), 9)
    assert key(9, "p", _task(content)) == expected
    assert key(9, "p", _task({"n": [1, 2], "q": "why"})) == expected  # key order does not matter
    assert key(10, "p", _task(content)) != expected  # the seed is part of the key
    assert key(9, "q", _task(content)) != expected  # another capability
    assert key(9, "p", _task(content, "bob")) != expected  # another requester
    tenant = {"context": {"conversationId": None, "metadata": {"tenant": "t1"}}}
    assert key(9, "p", _task(content, **tenant)) not in (expected, key(9, "p", _task(content, context={"metadata": {"tenant": "t2"}})))
    shared = key(9, "p", _task(content), True)
    assert shared == key(9, "p", _task(content, "bob", **tenant), True)  # shared: who asked is not part of it
    assert shared == xxhash.xxh3_64_intdigest(orjson.dumps(("p", content), option=orjson.OPT_SORT_KEYS), 9)
    # opting out, and content that is not JSON (or none at all): no key
    assert key(9, "p", _task(content, context={"metadata": {"cache": False}})) is None
    assert key(9, "p", _task(content, routing={"cache": False})) is None
    assert key(9, "p", _task({1, 2})) is None
    assert key(9, "p", {"id": "m1", "source": {"id": "a"}, "payload": {}}) is None
    # empty or absent context, metadata and routing change nothing
    assert key(9, "p", _task(content, context=None, routing=None)) == expected
    assert key(9, "p", _task(content, context={"metadata": {}}, routing={"cache": True})) == expected


def test_limits(cache_module: ModuleType) -> None:
    cache = cache_module.ContentCache()
    assert (cache.max_entries, cache.ttl) == (1024, 60.0)
    assert cache_module.ContentCache(5, None).ttl is None
    for max_entries, ttl in [(0, 1.0), (-1, 1.0), (1, 0), (1, -1.0), (1, float("nan"))]:
        with pytest.raises(ValueError):
            cache_module.ContentCache(max_entries, ttl)
    assert cache.max_bytes is None and cache_module.ContentCache(max_bytes=10).max_bytes == 10
    for max_bytes in (0, -1):
        with pytest.raises(ValueError):
            cache_module.ContentCache(max_bytes=max_bytes)
    with pytest.raises(ValueError):
        cache.put(1, "x", -1)


def test_bytes_bound_evicts_least_recently_used(cache_module: ModuleType, make_clock: Any) -> None:
    cache = cache_module.ContentCache(max_entries=100, ttl=10.0, clock=make_clock(), max_bytes=1000)
    for key in range(4):
        assert cache.put(key, f"v{key}", 300) is True
    assert cache.bytes == 900 and len(cache) == 3 and 0 not in cache  # the fourth pushed the oldest out
    assert cache.get(1) == "v1"  # 1 is now the most recent: 2 goes next
    assert cache.put(9, "big", 500)
    assert 2 not in cache and 3 not in cache and cache.bytes == 800  # two went to make room for 500 bytes
    assert cache.put(1, "v1'", 100) and cache.bytes == 600  # a refresh counts the new size, not both
    assert cache.evictions == 3


def test_a_value_larger_than_max_bytes_is_refused(cache_module: ModuleType) -> None:
    cache = cache_module.ContentCache(max_entries=10, ttl=None, max_bytes=100)
    assert cache.put(1, "small", 60)
    assert cache.put(2, "huge", 101) is False
    assert 2 not in cache and cache.get(1) == "small"  # refusing it cost nothing already held
    assert cache.put(1, "now huge", 500) is False  # the old value under that key is stale: it goes too
    assert 1 not in cache and cache.bytes == 0
    assert (cache.rejected, cache.evictions) == (2, 0)


def test_sweep_drops_the_expired_without_reading_them(cache_module: ModuleType, make_clock: Any) -> None:
    clock = make_clock()
    cache = cache_module.ContentCache(max_entries=2000, ttl=60.0, clock=clock, max_bytes=10**9)
    for key in range(1000):
        cache.put(key, b"x", 900_000)
    clock.advance(30)
    cache.put("late", b"y", 10)
    assert cache.get(0) == b"x"  # a read does not extend the life: 0 still expires with the first thousand
    clock.advance(30)
    assert cache.sweep() == 1000
    assert len(cache) == 1 and cache.bytes == 10 and cache.expired == 1000
    assert cache.sweep() == 0
    clock.advance(30)
    assert cache.sweep() == 1 and cache.bytes == 0
    assert cache_module.ContentCache(ttl=None).sweep() == 0


def test_a_refreshed_entry_expires_at_its_new_time(cache_module: ModuleType, make_clock: Any) -> None:
    clock = make_clock()
    cache = cache_module.ContentCache(max_entries=10, ttl=10.0, clock=clock)
    cache.put(1, "a", 1)
    cache.put(2, "b", 1)
    clock.advance(5)
    cache.put(1, "a2", 1)
    clock.advance(5)
    assert cache.sweep() == 1 and 1 in cache and 2 not in cache
    clock.advance(5)
    assert cache.sweep() == 1 and len(cache) == 0


def test_hits_misses_and_lru(cache_module: ModuleType, make_clock: Any) -> None:
    cache = cache_module.ContentCache(max_entries=2, ttl=10.0, clock=make_clock())
    assert cache.get(1) is None
    assert cache.get(1, "d") == "d"
    cache.put(1, "one")
    cache.put(2, "two")
    assert cache.get(1) == "one"  # 1 is now the most recent
    cache.put(3, "three")  # evicts 2
    assert 2 not in cache
    assert cache.get(2) is None
    assert (cache.get(1), cache.get(3)) == ("one", "three")
    assert (cache.hits, cache.misses, cache.evictions) == (3, 3, 1)
    assert len(cache) == 2
    assert cache.stats() == {"hits": 3, "misses": 3, "evictions": 1, "expired": 0, "rejected": 0, "size": 2, "bytes": 0,
                             "max_entries": 2, "max_bytes": None, "ttl": 10.0}


def test_put_existing_refreshes(cache_module: ModuleType, make_clock: Any) -> None:
    clock = make_clock()
    cache = cache_module.ContentCache(max_entries=2, ttl=10.0, clock=clock)
    cache.put(1, "a")
    cache.put(2, "b")
    clock.advance(8)
    cache.put(1, "a2")  # new value, new expiry, most recent
    cache.put(3, "c")  # evicts 2, not 1
    assert cache.get(2) is None
    clock.advance(5)  # 1 was refreshed at 8 and lives until 18
    assert cache.get(1) == "a2"
    assert cache.evictions == 1


def test_ttl(cache_module: ModuleType, make_clock: Any) -> None:
    clock = make_clock()
    cache = cache_module.ContentCache(max_entries=10, ttl=5.0, clock=clock)
    cache.put(1, "a")
    clock.advance(4.999)
    assert 1 in cache
    assert cache.get(1) == "a"  # a hit does not extend the life
    clock.advance(0.001)
    assert 1 not in cache  # expired exactly at put time + ttl
    assert len(cache) == 1  # __contains__ neither counts nor drops
    assert (cache.hits, cache.misses) == (1, 0)
    assert cache.get(1, "gone") == "gone"
    assert len(cache) == 0
    assert (cache.hits, cache.misses) == (1, 1)


def test_pop_and_clear(cache_module: ModuleType, make_clock: Any) -> None:
    clock = make_clock()
    cache = cache_module.ContentCache(max_entries=10, ttl=5.0, clock=clock)
    cache.put(1, "a")
    cache.put(2, "b")
    assert cache.pop(1) == "a"
    assert cache.pop(1, "none") == "none"
    clock.advance(6)
    assert cache.pop(2, "expired") == "expired"
    assert len(cache) == 0
    cache.put(3, "c")
    cache.clear()
    assert len(cache) == 0
    assert cache.get(3) is None
    cache.put(4, "d")
    assert cache.get(4) == "d"
    assert (cache.hits, cache.misses, cache.evictions) == (1, 1, 0)


def test_no_ttl_never_reads_the_clock(cache_module: ModuleType) -> None:
    def clock() -> float:
        raise AssertionError("the clock was read")

    cache = cache_module.ContentCache(max_entries=3, ttl=None, clock=clock)
    for key in range(5):
        cache.put(key, key)
    assert cache.get(4) == 4
    assert 3 in cache
    assert cache.pop(2) == 2
    assert cache.evictions == 2


def test_none_values_are_hits(cache_module: ModuleType) -> None:
    cache = cache_module.ContentCache(ttl=None)
    cache.put(1, None)
    assert 1 in cache
    assert cache.get(1, "default") is None
    assert cache.hits == 1


def test_many_entries(cache_module: ModuleType) -> None:
    cache = cache_module.ContentCache(max_entries=100, ttl=None)
    for key in range(1000):
        cache.put(key, key)
    assert len(cache) == 100
    assert cache.evictions == 900
    assert sorted(k for k in range(1000) if k in cache) == list(range(900, 1000))


_ops = st.lists(
    st.tuples(
        st.sampled_from(["get", "put", "pop", "contains", "advance", "clear", "len", "sweep"]),
        st.integers(0, 6),
        st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=_ops, max_entries=st.integers(1, 5), ttl=st.sampled_from([None, 1.0, 2.5]), max_bytes=st.sampled_from([None, 5, 12]))
def test_twins_agree_on_random_operations(twins, make_clock, ops, max_entries, ttl, max_bytes) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = twins
    clock = make_clock()
    caches = [compiled.cache.ContentCache(max_entries, ttl, clock, max_bytes),
              pure.cache.ContentCache(max_entries, ttl, clock, max_bytes)]
    for n, (op, key, seconds) in enumerate(ops):
        if op == "advance":
            clock.advance(seconds)
            continue
        results = []
        for cache in caches:
            if op == "get":
                results.append(cache.get(key, "default"))
            elif op == "put":
                results.append(cache.put(key, n, (n * 7) % 8))
            elif op == "sweep":
                results.append(cache.sweep())
            elif op == "pop":
                results.append(cache.pop(key, "default"))
            elif op == "contains":
                results.append(key in cache)
            elif op == "clear":
                results.append(cache.clear())
            else:
                results.append(len(cache))
        assert results[0] == results[1], (op, key)
        assert caches[0].stats() == caches[1].stats()


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=64) | st.text(max_size=32))
def test_twins_hash_alike(twins, data) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = twins
    assert compiled.cache.content_hash(data) == pure.cache.content_hash(data)
    assert compiled.cache.canonical_hash({"d": data if isinstance(data, str) else list(data)}) == pure.cache.canonical_hash(
        {"d": data if isinstance(data, str) else list(data)}
    )


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), content=_JSON | st.sets(st.integers(), max_size=2), shared=st.booleans(),
       metadata=st.none() | st.dictionaries(st.sampled_from(["tenant", "cache", "x"]), _JSON, max_size=2),
       routing=st.none() | st.dictionaries(st.sampled_from(["cache", "priority"]), _JSON, max_size=2))
def test_twins_key_tasks_alike(twins, seed, content, shared, metadata, routing) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = twins
    message = _task(content, context={"metadata": metadata}, routing=routing)
    assert compiled.cache.task_key(seed, "p", message, shared) == pure.cache.task_key(seed, "p", message, shared)
