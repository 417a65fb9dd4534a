# cython: language_level=3
"""Collect items into batches that are released when full or when their deadline passes (compiled core)."""

cimport cython

import time

__all__ = ("BatchAccumulator",)


@cython.final
cdef class BatchAccumulator:
    """Gather items and hand them out in batches of batch_size, or earlier once batch_timeout has passed."""

    cdef list _items
    cdef Py_ssize_t _batch_size
    cdef double _batch_timeout
    cdef object _clock
    cdef double _deadline

    def __init__(self, Py_ssize_t batch_size, double batch_timeout, clock=time.monotonic):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not batch_timeout > 0:
            raise ValueError(f"batch_timeout must be > 0 seconds, got {batch_timeout}")
        self._items = []
        self._batch_size = batch_size
        self._batch_timeout = batch_timeout
        self._clock = clock
        self._deadline = 0.0

    @property
    def batch_size(self):
        """Return how many items make a full batch."""
        return self._batch_size

    @property
    def batch_timeout(self):
        """Return how many seconds the oldest pending item may wait."""
        return self._batch_timeout

    @property
    def deadline(self):
        """Return when the pending batch is due (clock time), or None when nothing is pending."""
        return self._deadline if self._items else None

    def __len__(self):
        return len(self._items)

    def add(self, item):
        """Add item; return the full batch in arrival order once batch_size is reached, else None."""
        cdef list items = self._items
        cdef Py_ssize_t n = len(items)
        if n + 1 >= self._batch_size:
            items.append(item)
            self._items = []
            return items
        if n == 0:
            # The clock is read once per batch, when its first item arrives.
            self._deadline = <double>self._clock() + self._batch_timeout
        items.append(item)
        return None

    def expired(self, now=None):
        """Return whether a pending batch has reached its deadline at now (default: the clock)."""
        if not self._items:
            return False
        cdef double at = <double>(self._clock() if now is None else now)
        return at >= self._deadline

    def drain(self):
        """Return every pending item in arrival order and start an empty batch."""
        cdef list items = self._items
        self._items = []
        return items
