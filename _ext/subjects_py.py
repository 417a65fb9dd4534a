"""Match NATS subjects against wildcard patterns exactly as nats-server's sublist does (pure-Python twin)."""

from __future__ import annotations

from typing import Any

from agentcore.errors import SubjectError

__all__ = ("SubjectIndex", "subject_matches", "validate_subject", "validate_token")


def _problem(subject: str, wildcards: bool) -> str | None:
    """Return what is wrong with subject, or None when it is valid."""
    if not subject:
        return "subject must not be empty"
    tokens = subject.split(".")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if not token:
            return "empty token (leading, trailing or double '.')"
        for ch in token:
            if ch == "\x00" or ch.isspace():
                return f"forbidden character {ch!r}"
            if "\ud800" <= ch <= "\udfff":
                return f"lone surrogate {ch!r}"
        if len(token) > 1 and ("*" in token or ">" in token):
            return f"wildcard inside token {token!r}"
        if token == "*" or token == ">":
            if not wildcards:
                return f"wildcard {token!r} not allowed here"
            if token == ">" and i != last:
                return "'>' must be the last token"
    return None


def validate_subject(subject: str, *, wildcards: bool = False) -> str:
    """Return subject if it is a valid NATS subject (or pattern, with wildcards=True), else raise SubjectError."""
    if not isinstance(subject, str):
        raise SubjectError(f"subject must be a str, got {type(subject).__name__}")
    problem = _problem(subject, wildcards)
    if problem is not None:
        raise SubjectError(f"invalid subject {subject!r}: {problem}")
    return subject


def validate_token(token: str) -> str:
    """Return token if it can be used as one subject token, else raise SubjectError."""
    if not isinstance(token, str):
        raise SubjectError(f"subject token must be a str, got {type(token).__name__}")
    if not token:
        raise SubjectError("invalid subject token '': token must not be empty")
    for ch in token:
        if ch == "." or ch == "*" or ch == ">":
            raise SubjectError(f"invalid subject token {token!r}: forbidden character {ch!r}")
        if ch == "\x00" or ch.isspace():
            raise SubjectError(f"invalid subject token {token!r}: forbidden character {ch!r}")
        if "\ud800" <= ch <= "\udfff":
            raise SubjectError(f"invalid subject token {token!r}: lone surrogate {ch!r}")
    return token


def subject_matches(pattern: str, subject: str) -> bool:
    """Return whether subject matches pattern (a subject with empty tokens matches nothing)."""
    validate_subject(pattern, wildcards=True)
    if not isinstance(subject, str):
        raise TypeError(f"subject must be a str, got {type(subject).__name__}")
    if not subject:
        return False
    ptoks = pattern.split(".")
    stoks = subject.split(".")
    if "" in stoks:
        return False
    n = len(stoks)
    for i, ptok in enumerate(ptoks):
        if ptok == ">":
            return i < n
        if i >= n:
            return False
        if ptok != "*" and ptok != stoks[i]:
            return False
    return len(ptoks) == n


class _Node:
    __slots__ = ("literal", "star", "full", "values")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.full: _Node | None = None
        self.values: list[Any] = []

    def is_empty(self) -> bool:
        return not self.values and not self.literal and self.star is None and self.full is None


def _collect(node: _Node, tokens: list[str], i: int, out: list[Any]) -> None:
    n = len(tokens)
    while i < n:
        if node.full is not None:
            out.extend(node.full.values)
        child = node.literal.get(tokens[i])
        star = node.star
        i += 1
        if star is not None:
            if child is not None:
                _collect(child, tokens, i, out)
            node = star
        elif child is not None:
            node = child
        else:
            return
    out.extend(node.values)


class SubjectIndex:
    """Map NATS subject patterns to values and return the values whose pattern matches a subject."""

    __slots__ = ("_root", "_patterns", "_len", "_cache", "_cache_size", "_hits", "_misses")

    def __init__(self, cache_size: int = 1024) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._root = _Node()
        self._patterns: dict[str, int] = {}
        self._len = 0
        self._cache: dict[str, tuple[Any, ...]] = {}
        self._cache_size: int = cache_size
        self._hits = 0
        self._misses = 0

    @property
    def cache_hits(self) -> int:
        """Return how many match() calls were answered from the result cache."""
        return self._hits

    @property
    def cache_misses(self) -> int:
        """Return how many match() calls missed the result cache."""
        return self._misses

    def __len__(self) -> int:
        return self._len

    def insert(self, pattern: str, value: Any) -> None:
        """Add value under pattern (wildcards allowed); the same pair may be added more than once."""
        validate_subject(pattern, wildcards=True)
        node = self._root
        for token in pattern.split("."):
            if token == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            elif token == ">":
                if node.full is None:
                    node.full = _Node()
                node = node.full
            else:
                child = node.literal.get(token)
                if child is None:
                    child = node.literal[token] = _Node()
                node = child
        node.values.append(value)
        self._patterns[pattern] = self._patterns.get(pattern, 0) + 1
        self._len += 1
        self._cache.clear()

    def remove(self, pattern: str, value: Any) -> bool:
        """Remove one entry of pattern whose value equals value; return False when there is none."""
        validate_subject(pattern, wildcards=True)
        path: list[tuple[_Node, str]] = []
        node: _Node | None = self._root
        for token in pattern.split("."):
            assert node is not None
            path.append((node, token))
            if token == "*":
                node = node.star
            elif token == ">":
                node = node.full
            else:
                node = node.literal.get(token)
            if node is None:
                return False
        assert node is not None
        values = node.values
        for i, item in enumerate(values):
            if item is value or item == value:
                break
        else:
            return False
        # The index may have changed while == ran arbitrary code: look the entry up again.
        if i >= len(values) or values[i] is not item:
            return False
        del values[i]
        count = self._patterns[pattern] - 1
        if count:
            self._patterns[pattern] = count
        else:
            del self._patterns[pattern]
        self._len -= 1
        self._cache.clear()
        for parent, token in reversed(path):
            if not node.is_empty():
                break
            if token == "*":
                parent.star = None
            elif token == ">":
                parent.full = None
            else:
                del parent.literal[token]
            node = parent
        return True

    def match(self, subject: str) -> tuple[Any, ...]:
        """Return the values of every pattern that matches subject."""
        if not isinstance(subject, str):
            raise TypeError(f"subject must be a str, got {type(subject).__name__}")
        cache_size = self._cache_size
        if cache_size:
            cached = self._cache.get(subject)
            if cached is not None:
                self._hits += 1
                return cached
            self._misses += 1
        result: tuple[Any, ...] = ()
        if subject:
            tokens = subject.split(".")
            if "" not in tokens:
                out: list[Any] = []
                _collect(self._root, tokens, 0, out)
                result = tuple(out)
        if cache_size:
            cache = self._cache
            if len(cache) >= cache_size:
                del cache[next(iter(cache))]
            cache[subject] = result
        return result

    def clear(self) -> None:
        """Remove every entry and empty the result cache."""
        self._root = _Node()
        self._patterns.clear()
        self._len = 0
        self._cache.clear()

    def patterns(self) -> list[str]:
        """Return the distinct patterns that have at least one entry."""
        return list(self._patterns)
