"""Fixtures the benchmark modules share, and the history every session saves (agentcore.bench.history)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentcore.bench import history
from agentcore.server import NATSServer

HISTORY = Path(__file__).parent / "results" / "history"


def pytest_addoption(parser: Any) -> None:
    history.add_option(parser, HISTORY)


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """Save what the session measured as a bench run (`agentcore bench --json`'s format) in the history folder."""
    history.save(session, exitstatus)


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    """One nats-server for a benchmark module's paths (a module may still define its own)."""
    with NATSServer() as s:
        yield s
