"""Collect items into batches that are released when full or when their deadline passes (pure-Python twin)."""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from typing import Any

__all__ = ("BatchAccumulator",)


class BatchAccumulator:
    """Gather items and hand them out in batches of batch_size, or earlier once batch_timeout has passed."""

    __slots__ = ("_items", "_batch_size", "_batch_timeout", "_clock", "_deadline")

    def __init__(
        self,
        batch_size: int,
        batch_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        batch_size = operator.index(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        batch_timeout = float(batch_timeout)
        if not batch_timeout > 0:
            raise ValueError(f"batch_timeout must be > 0 seconds, got {batch_timeout}")
        self._items: list[Any] = []
        self._batch_size = batch_size
        self._batch_timeout = batch_timeout
        self._clock = clock
        self._deadline = 0.0

    @property
    def batch_size(self) -> int:
        """Return how many items make a full batch."""
        return self._batch_size

    @property
    def batch_timeout(self) -> float:
        """Return how many seconds the oldest pending item may wait."""
        return self._batch_timeout

    @property
    def deadline(self) -> float | None:
        """Return when the pending batch is due (clock time), or None when nothing is pending."""
        return self._deadline if self._items else None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Any) -> list[Any] | None:
        """Add item; return the full batch in arrival order once batch_size is reached, else None."""
        items = self._items
        if len(items) + 1 >= self._batch_size:
            items.append(item)
            self._items = []
            return items
        if not items:
            # The clock is read once per batch, when its first item arrives.
            self._deadline = float(self._clock()) + self._batch_timeout
        items.append(item)
        return None

    def expired(self, now: float | None = None) -> bool:
        """Return whether a pending batch has reached its deadline at now (default: the clock)."""
        if not self._items:
            return False
        if now is None:
            now = float(self._clock())
        return now >= self._deadline

    def drain(self) -> list[Any]:
        """Return every pending item in arrival order and start an empty batch."""
        items = self._items
        self._items = []
        return items
