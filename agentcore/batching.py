"""Batch processing of incoming messages with the compiled accumulator: filled in by the batch issue."""

from __future__ import annotations

__all__ = ("BatchingMixin",)


class BatchingMixin:
    """Give NATSAgent enable_batch_processing and disable_batch_processing."""

    def enable_batch_processing(self, batch_size: int = 10, batch_timeout: float = 2.0) -> None:
        """Accumulate incoming messages and process them in batches."""
        raise NotImplementedError
