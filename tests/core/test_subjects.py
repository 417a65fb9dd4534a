"""NATS subject validation and matching: both implementations, pinned to nats-server's sublist semantics."""

from __future__ import annotations

from collections import Counter
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcore.errors import SubjectError

# (pattern, subject, matches) as nats-server decides it.
MATCH_CASES = [
    ("a", "a", True),
    ("a", "b", False),
    ("a.b", "a.b", True),
    ("a.b", "a", False),
    ("a", "a.b", False),
    ("a.*", "a.b", True),
    ("a.*", "a", False),
    ("a.*", "a.b.c", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.*", "a", False),
    ("*.*", "a.b", True),
    ("*.b", "a.b", True),
    ("*.b", "a.c", False),
    ("a.>", "a", False),
    ("a.>", "a.b", True),
    ("a.>", "a.b.c.d", True),
    ("a.>", "b.c", False),
    (">", "a", True),
    (">", "a.b.c", True),
    ("*.>", "a", False),
    ("*.>", "a.b", True),
    ("a.*.c.>", "a.b.c.d", True),
    ("a.*.c.>", "a.b.c", False),
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b.cd", False),
    ("ab.c", "a.bc", False),
    ("é.ü", "é.ü", True),
    ("日本.*", "日本.語", True),
    # Subjects with an empty token, and the empty subject, match nothing.
    (">", "", False),
    (">", "a..b", False),
    ("*", "", False),
    ("a.*", "a.", False),
    ("*.a", ".a", False),
    ("a.>", "a.b.", False),
]


@pytest.mark.parametrize(("pattern", "subject", "expected"), MATCH_CASES)
def test_subject_matches(subjects_module: ModuleType, pattern: str, subject: str, expected: bool) -> None:
    assert subjects_module.subject_matches(pattern, subject) is expected


@pytest.mark.parametrize(("pattern", "subject", "expected"), MATCH_CASES)
@pytest.mark.parametrize("cache_size", [0, 16])
def test_index_matches_like_subject_matches(
    subjects_module: ModuleType, pattern: str, subject: str, expected: bool, cache_size: int
) -> None:
    index = subjects_module.SubjectIndex(cache_size=cache_size)
    index.insert(pattern, "value")
    assert index.match(subject) == (("value",) if expected else ())
    assert index.match(subject) == (("value",) if expected else ())


@pytest.mark.parametrize(
    "subject",
    ["a", "a.b", "agents.worker-1.tasks", "_INBOX.abc123", "a-b_c.d~e", "é.日本", "$SYS.x"],
)
def test_validate_subject_accepts(subjects_module: ModuleType, subject: str) -> None:
    assert subjects_module.validate_subject(subject) == subject
    assert subjects_module.validate_subject(subject, wildcards=True) == subject


@pytest.mark.parametrize("pattern", ["*", ">", "a.*", "a.>", "*.b.>", "*.*.*"])
def test_validate_subject_wildcards(subjects_module: ModuleType, pattern: str) -> None:
    assert subjects_module.validate_subject(pattern, wildcards=True) == pattern
    with pytest.raises(SubjectError, match="not allowed"):
        subjects_module.validate_subject(pattern)


@pytest.mark.parametrize(
    ("subject", "problem"),
    [
        ("", "must not be empty"),
        (".", "empty token"),
        ("a.", "empty token"),
        (".a", "empty token"),
        ("a..b", "empty token"),
        ("a b", "forbidden character ' '"),
        ("a\tb", "forbidden character"),
        ("a\nb", "forbidden character"),
        ("a\x00b", "forbidden character"),
        ("a\u3000b", "forbidden character"),
        ("a*b", "wildcard inside token 'a\\*b'"),
        ("a.b>", "wildcard inside token 'b>'"),
        ("a.>>", "wildcard inside token '>>'"),
        ("a.>.b", "'>' must be the last token"),
        (">.a", "'>' must be the last token"),
        ("a.\ud800", "lone surrogate"),
    ],
)
def test_validate_subject_rejects(subjects_module: ModuleType, subject: str, problem: str) -> None:
    with pytest.raises(SubjectError, match=problem) as info:
        subjects_module.validate_subject(subject, wildcards=True)
    assert repr(subject) in str(info.value)
    with pytest.raises(SubjectError):
        subjects_module.validate_subject(subject)


def test_validate_subject_rejects_non_str(subjects_module: ModuleType) -> None:
    with pytest.raises(SubjectError, match="must be a str, got bytes"):
        subjects_module.validate_subject(b"a.b")


@pytest.mark.parametrize("token", ["a", "worker-1", "abc_DEF", "é", "123"])
def test_validate_token_accepts(subjects_module: ModuleType, token: str) -> None:
    assert subjects_module.validate_token(token) == token


@pytest.mark.parametrize("token", ["", "a.b", "*", ">", "a*", "a>b", "a b", "a\x00", "\t", "\ud800", 5])
def test_validate_token_rejects(subjects_module: ModuleType, token: object) -> None:
    with pytest.raises(SubjectError, match="subject token"):
        subjects_module.validate_token(token)


def test_insert_validates(subjects_module: ModuleType) -> None:
    index = subjects_module.SubjectIndex()
    for bad in ["", "a..b", "a.>.b", "a*", "a b"]:
        with pytest.raises(SubjectError):
            index.insert(bad, 1)
    assert len(index) == 0


def test_duplicates_and_remove_one_of_two(subjects_module: ModuleType) -> None:
    index = subjects_module.SubjectIndex()
    index.insert("a.b", "x")
    index.insert("a.b", "x")
    index.insert("a.*", "y")
    assert len(index) == 3
    assert Counter(index.match("a.b")) == Counter({"x": 2, "y": 1})
    assert index.remove("a.b", "x") is True
    assert Counter(index.match("a.b")) == Counter({"x": 1, "y": 1})
    assert index.remove("a.b", "x") is True
    assert index.remove("a.b", "x") is False
    assert index.match("a.b") == ("y",)
    assert sorted(index.patterns()) == ["a.*"]
    assert len(index) == 1


def test_remove_compares_with_eq(subjects_module: ModuleType) -> None:
    index = subjects_module.SubjectIndex()
    index.insert("a", [1, 2])
    assert index.remove("a", [1, 2]) is True
    assert index.match("a") == ()


def test_remove_absent(subjects_module: ModuleType) -> None:
    index = subjects_module.SubjectIndex()
    index.insert("a.b.c", 1)
    assert index.remove("a.b", 1) is False
    assert index.remove("a.b.c.d", 1) is False
    assert index.remove("a.b.c", 2) is False
    assert index.remove("a.*.c", 1) is False
    assert index.remove("a.>", 1) is False
    with pytest.raises(SubjectError):
        index.remove("a..b", 1)
    assert index.match("a.b.c") == (1,)


def test_remove_prunes_and_keeps_siblings(subjects_module: ModuleType) -> None:
    index = subjects_module.SubjectIndex()
    patterns = [f"p.{i}.x" for i in range(200)] + ["p.*.x", "p.>", ">"]
    for pattern in patterns:
        index.insert(pattern, pattern)
    for pattern in patterns[::2]:
        assert index.remove(pattern, pattern)
    for pattern in patterns[1::2]:
        assert pattern in index.match(pattern.replace("*", "7").replace(">", "q"))
    assert sorted(index.patterns()) == sorted(patterns[1::2])
    for pattern in patterns[1::2]:
        assert index.remove(pattern, pattern)
    assert len(index) == 0
    assert index.patterns() == []
    assert index.match("p.1.x") == ()


def test_match_values_and_patterns(subjects_module: ModuleType) -> None:
    index = subjects_module.SubjectIndex()
    entries = {"a.b.c": 1, "a.*.c": 2, "a.>": 3, ">": 4, "*.*": 5, "a.b": 6, "*.b.*": 7}
    for pattern, value in entries.items():
        index.insert(pattern, value)
    assert sorted(index.match("a.b.c")) == [1, 2, 3, 4, 7]
    assert sorted(index.match("a.b")) == [3, 4, 5, 6]
    assert sorted(index.match("a")) == [4]
    assert sorted(index.match("x.y.z")) == [4]
    assert index.match("a..c") == ()
    assert index.match("") == ()
    assert sorted(index.patterns()) == sorted(entries)


def test_deep_subjects(subjects_module: ModuleType) -> None:
    index = subjects_module.SubjectIndex()
    deep = ".".join(f"t{i}" for i in range(100))
    index.insert(deep, "deep")
    index.insert(".".join(["*"] * 100), "stars")
    index.insert("t0.t1.>", "tail")
    assert sorted(index.match(deep)) == ["deep", "stars", "tail"]
    assert sorted(index.match(deep + ".x")) == ["tail"]
    assert index.match(deep + ".") == ()
    assert subjects_module.subject_matches(deep, deep)
    assert subjects_module.subject_matches("t0.>", deep)
    assert not subjects_module.subject_matches(deep, deep + ".x")
    assert not subjects_module.subject_matches(">", deep + ".")
    assert not subjects_module.subject_matches(">", "." + deep)
    assert index.remove(deep, "deep")
    assert sorted(index.match(deep)) == ["stars", "tail"]


def test_match_does_not_validate(subjects_module: ModuleType) -> None:
    index = subjects_module.SubjectIndex()
    index.insert("a.*", "star")
    index.insert(">", "all")
    # Subjects with odd characters are not rejected: they simply match what their tokens match.
    assert sorted(index.match("a.b c")) == ["all", "star"]
    assert sorted(index.match("a.\ud800")) == ["all", "star"]
    assert sorted(index.match("a.*")) == ["all", "star"]
    with pytest.raises(TypeError):
        index.match(b"a.b")


def test_cache_counts_and_invalidation(subjects_module: ModuleType) -> None:
    index = subjects_module.SubjectIndex(cache_size=8)
    index.insert("a.b", 1)
    assert index.match("a.b") == (1,)
    assert index.match("a.b") == (1,)
    assert (index.cache_hits, index.cache_misses) == (1, 1)
    assert index.match("x.y") == ()
    index.insert("x.*", 2)  # a cached miss must not hide a later insert
    assert index.match("x.y") == (2,)
    index.insert("a.>", 3)
    assert sorted(index.match("a.b")) == [1, 3]
    assert index.remove("a.b", 1)
    assert index.match("a.b") == (3,)
    index.clear()
    assert index.match("a.b") == ()
    assert len(index) == 0


def test_cache_is_bounded_and_evicts_oldest(subjects_module: ModuleType) -> None:
    index = subjects_module.SubjectIndex(cache_size=2)
    index.insert(">", 1)
    for subject in ["a", "b", "c"]:
        index.match(subject)
    assert index.cache_misses == 3
    index.match("c")
    index.match("b")
    assert index.cache_hits == 2
    index.match("a")  # evicted first: a miss
    assert index.cache_misses == 4


def test_cache_disabled(subjects_module: ModuleType) -> None:
    index = subjects_module.SubjectIndex(cache_size=0)
    index.insert("a", 1)
    for _ in range(3):
        assert index.match("a") == (1,)
    assert (index.cache_hits, index.cache_misses) == (0, 0)
    with pytest.raises(ValueError):
        subjects_module.SubjectIndex(cache_size=-1)


def test_many_patterns(subjects_module: ModuleType) -> None:
    index = subjects_module.SubjectIndex(cache_size=0)
    for i in range(5000):
        index.insert(f"agents.{i}.tasks", i)
        index.insert(f"agents.{i}.*", -i)
    index.insert("agents.*.tasks", "any")
    assert sorted(index.match("agents.4321.tasks"), key=str) == sorted([4321, -4321, "any"], key=str)
    assert index.match("agents.5000.tasks") == ("any",)
    assert len(index) == 10001


# ------------------------------------------------------------------------------------------- property tests

_TOKENS = st.sampled_from(["a", "b", "c", "dd", "é", "*", ">", ""])
_SUBJECT_TOKENS = st.sampled_from(["a", "b", "c", "dd", "é", ""])
_patterns = st.lists(_TOKENS, min_size=1, max_size=5).map(".".join)
_subjects = st.lists(_SUBJECT_TOKENS, min_size=1, max_size=6).map(".".join)


def _outcome(func, *args, **kwargs):  # type: ignore[no-untyped-def]
    try:
        return ("ok", func(*args, **kwargs))
    except SubjectError as exc:
        return ("error", str(exc))


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab.*> \t\x00é\u3000\ud800"), max_size=8), wildcards=st.booleans())
def test_twins_validate_alike(twins, text: str, wildcards: bool) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = twins
    assert _outcome(compiled.subjects.validate_subject, text, wildcards=wildcards) == _outcome(
        pure.subjects.validate_subject, text, wildcards=wildcards
    )
    assert _outcome(compiled.subjects.validate_token, text) == _outcome(pure.subjects.validate_token, text)


@settings(max_examples=150, deadline=None)
@given(
    patterns=st.lists(_patterns, max_size=25),
    subjects=st.lists(_subjects, min_size=1, max_size=10),
    removals=st.lists(st.integers(0, 30), max_size=10),
    cache_size=st.sampled_from([0, 1, 3, 64]),
)
def test_twins_index_agree_with_brute_force(twins, patterns, subjects, removals, cache_size) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = twins
    indexes = [compiled.subjects.SubjectIndex(cache_size), pure.subjects.SubjectIndex(cache_size)]
    valid = []
    for n, pattern in enumerate(patterns):
        outcomes = [_outcome(index.insert, pattern, n % 7) for index in indexes]
        assert outcomes[0] == outcomes[1]
        if outcomes[0][0] == "ok":
            valid.append((pattern, n % 7))
        for subject in subjects:  # interleave matching so that the cache sees every change
            expected = Counter(v for p, v in valid if pure.subjects.subject_matches(p, subject))
            for index in indexes:
                assert Counter(index.match(subject)) == expected
    for r in removals:
        if not valid:
            break
        pattern, value = valid.pop(r % len(valid))
        assert [index.remove(pattern, value) for index in indexes] == [True, True]
        for subject in subjects:
            expected = Counter(v for p, v in valid if pure.subjects.subject_matches(p, subject))
            for index in indexes:
                assert Counter(index.match(subject)) == expected
    for index in indexes:
        assert len(index) == len(valid)
        assert sorted(index.patterns()) == sorted({p for p, _ in valid})
    assert indexes[0].cache_hits == indexes[1].cache_hits
    assert indexes[0].cache_misses == indexes[1].cache_misses


@settings(max_examples=300, deadline=None)
@given(pattern=_patterns, subject=_subjects)
def test_twins_subject_matches_alike(twins, pattern: str, subject: str) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = twins
    assert _outcome(compiled.subjects.subject_matches, pattern, subject) == _outcome(
        pure.subjects.subject_matches, pattern, subject
    )
