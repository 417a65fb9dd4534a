"""Fixtures the benchmark modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentcore.server import NATSServer


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    """One nats-server for a benchmark module's paths (a module may still define its own)."""
    with NATSServer() as s:
        yield s
