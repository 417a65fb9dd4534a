"""Starting up: a start that fails does so at once, with its reason; the guide's logger name."""

from __future__ import annotations

import logging
import time

import pytest

from agentcore import AgentConfig, NATSAgent, NotConnectedError
from agentcore.server import NATSServer, free_port
from nats_fixtures import within



async def test_a_start_without_a_server_fails_at_once_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    agent = NATSAgent("lonely", config=AgentConfig({"nats.servers": [url]}, environ={}))
    t0 = time.perf_counter()
    with caplog.at_level(logging.DEBUG, logger="agentcore"), pytest.raises(NotConnectedError) as info:
        await agent.astart()
    assert time.perf_counter() - t0 < 0.5  # nats-py alone retries for the whole connect bound (3 s)
    assert str(info.value) == f"agent lonely cannot connect to {url}: connection refused (no nats-server listens there)"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []  # one error, not a warning per retry


async def test_a_refused_password_fails_at_once_with_its_reason() -> None:
    with NATSServer(user="agent", password="s3cret") as server:
        intruder = NATSAgent("x", config=AgentConfig({"nats.servers": [server.url], "nats.user": "agent",
                                                      "nats.password": "wrong"}, environ={}))
        t0 = time.perf_counter()
        with pytest.raises(NotConnectedError, match="Authorization Violation"):
            await within(intruder.astart(), "the refused start")
        assert time.perf_counter() - t0 < 1.0


def test_the_guides_logger_name_reaches_agentcores_loggers() -> None:
    guide = logging.getLogger("AgentFramework.Messaging.NATSProvider")
    ours = logging.getLogger("agentcore.agent")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    assert not ours.isEnabledFor(logging.DEBUG)
    guide.setLevel(logging.DEBUG)  # the guide's troubleshooting line
    guide.addHandler(handler)
    try:
        assert ours.isEnabledFor(logging.DEBUG)
        ours.debug("connection details")
        assert [r.getMessage() for r in records] == ["connection details"]
    finally:
        guide.removeHandler(handler)
        guide.setLevel(logging.NOTSET)
    assert not ours.isEnabledFor(logging.DEBUG)
