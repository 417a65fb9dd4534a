"""Chunked streaming of responses with ordering, gap detection and backpressure: filled in by the streaming issue."""

from __future__ import annotations

from typing import Any

__all__ = ("StreamingMixin",)


class StreamingMixin:
    """Give NATSAgent stream_response and the receiving side of streams."""

    async def stream_response(self, task_id: str, response_generator: Any, chunk_size: int = 1024) -> None:
        """Stream a generator's output to the requester of task_id in ordered chunks."""
        raise NotImplementedError
