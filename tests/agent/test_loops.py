"""agentcore's own loops are uvloop's when it is installed (extra "fast"), unless turned off."""

from __future__ import annotations

import asyncio

import pytest

from agentcore import AgentConfig, NATSAgent, loops

uvloop = pytest.importorskip("uvloop")  # in the test extra (through "fast"): CI covers it


async def _loop_name() -> str:
    return loops.loop_name(asyncio.get_running_loop())


def _started(nats_url: str, **config: object) -> NATSAgent:
    agent = NATSAgent("looped", config=AgentConfig({"nats.servers": [nats_url], "agent.heartbeat_interval": 60.0,
                                                    "agent.duplicate_id": "allow", **config}, environ={}))
    assert agent.start()
    return agent


def test_start_runs_the_agent_on_uvloop_when_installed(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTCORE_NO_UVLOOP", raising=False)
    agent = _started(nats_url)
    try:
        assert agent.call(_loop_name(), timeout=10) == "uvloop"
        assert agent.call(agent.discover(include_self=True, expected=1), timeout=10)[0]["id"] == "looped"
    finally:
        agent.stop()


def test_the_environment_turns_uvloop_off(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTCORE_NO_UVLOOP", "1")
    agent = _started(nats_url)
    try:
        assert agent.call(_loop_name(), timeout=10) == "asyncio"
    finally:
        agent.stop()


def test_the_config_key_turns_uvloop_off(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTCORE_NO_UVLOOP", raising=False)
    agent = _started(nats_url, **{"agent.uvloop": False})
    try:
        assert agent.call(_loop_name(), timeout=10) == "asyncio"
    finally:
        agent.stop()


def test_loops_run_uses_uvloop_and_asyncio_users_keep_their_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTCORE_NO_UVLOOP", raising=False)
    assert loops.run(_loop_name()) == "uvloop"  # what the command line and the demo run on
    assert asyncio.run(_loop_name()) == "asyncio"  # asyncio.run is the user's choice: untouched
    monkeypatch.setenv("AGENTCORE_NO_UVLOOP", "1")
    assert loops.run(_loop_name()) == "asyncio"
