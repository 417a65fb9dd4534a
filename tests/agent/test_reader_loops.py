"""The agent's own frames are read straight from nats-py's buffer on uvloop as on asyncio (transport/reader.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentcore import AgentConfig, NATSAgent, loops

uvloop = pytest.importorskip("uvloop")  # in the test extra (through "fast"): CI covers it


async def _reader_state(agent: NATSAgent) -> tuple[str, str, int]:
    from agentcore.transport.reader import _Reader  # INTERNAL by design: this test checks the takeover itself

    nc: Any = agent.nc
    parser = nc._ps
    targets = parser.targets if isinstance(parser, _Reader) else {}
    return loops.loop_name(asyncio.get_running_loop()), type(parser).__name__, len(targets)


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_the_frame_reader_takes_over_on_either_loop(nats_url: str, monkeypatch: pytest.MonkeyPatch,
                                                     use_uvloop: bool) -> None:
    if use_uvloop:
        monkeypatch.delenv("AGENTCORE_NO_UVLOOP", raising=False)
    else:
        monkeypatch.setenv("AGENTCORE_NO_UVLOOP", "1")
    got: list[int] = []

    async def add(message: dict[str, Any]) -> int:
        got.append(message["payload"]["content"]["n"])
        return int(message["payload"]["content"]["n"]) + 1

    config = AgentConfig({"nats.servers": [nats_url], "agent.heartbeat_interval": 60.0,
                          "agent.duplicate_id": "allow"}, environ={})
    agent = NATSAgent("reader-loops", config=config)
    agent.add_capability("add", add)
    assert agent.start()
    try:
        name, parser, targets = agent.call(_reader_state(agent), timeout=10)
        assert name == ("uvloop" if use_uvloop else "asyncio")
        assert parser == "_Reader" and targets > 0  # the agent's inline subscriptions are read from the buffer
        assert agent.call(agent.send_task("add", {"n": 41}, timeout=10), timeout=15) == 42
        assert got == [41]
    finally:
        agent.stop()
