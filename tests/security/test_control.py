"""Control is authorised: pause, resume and shutdown only from the agent itself and the ids in control.allow.

The attacker is a plain nats-py client (and an agent not in the list). Each test asserts that the attack fails
and that the honest path (ping and status for anyone, the allowed agent's commands) still works.
"""

from __future__ import annotations

from typing import Any

import nats
import orjson
import pytest

from agentcore import ForbiddenError, NATSAgent, NoRespondersError, RemoteError
from agentcore.envelope import decode, raise_for_error
from helpers import task_envelope


async def test_a_stranger_cannot_pause_resume_or_shut_down(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker: NATSAgent = await make_agent("worker", capabilities={"work": lambda m: "ok"}, control__allow=["ops"])
    stranger: NATSAgent = await make_agent("stranger")
    for command in ("pause", "shutdown", "resume"):
        with pytest.raises(ForbiddenError) as info:
            await stranger.control("worker", command)
        assert info.value.details == {"reason": "control"} and "control.allow" in info.value.remote_message
        # A plain client's command, bare string content, type task: the same.
        envelope = task_envelope(f"raw-{command}", command, source="mallory", capability="control")
        with pytest.raises(ForbiddenError):
            raise_for_error(decode((await raw_nc.request(worker.topics.control("worker"), orjson.dumps(envelope), timeout=5)).data))
    assert worker.status == "running"
    assert await stranger.send_task("work", 1) == "ok"
    assert worker.get_metrics()["control_refused"] == 6
    # ping and status stay open.
    assert (await stranger.control("worker", "ping"))["pong"] is True
    assert (await stranger.control("worker", "status"))["id"] == "worker"


async def test_an_allowed_agent_pauses_resumes_and_shuts_down(make_agent: Any) -> None:
    worker: NATSAgent = await make_agent("worker", capabilities={"work": lambda m: "ok"}, control__allow=["ops"])
    ops: NATSAgent = await make_agent("ops")
    assert await ops.control("worker", "pause") == {"status": "paused"}
    with pytest.raises(NoRespondersError):
        await ops.send_task("work", 1, timeout=2)
    assert await ops.control("worker", "resume") == {"status": "running"}
    assert await ops.send_task("work", 1) == "ok"
    assert await ops.control("worker", "shutdown") == {"status": "stopping"}
    await worker.wait_stopped()
    assert "control_refused" not in worker.get_metrics()


async def test_the_agent_itself_is_always_allowed(make_agent: Any) -> None:
    worker: NATSAgent = await make_agent("worker")  # control.allow empty: only itself
    assert await worker.control("worker", "pause") == {"status": "paused"}
    assert await worker.control("worker", "resume") == {"status": "running"}


async def test_control_open_can_close_ping_and_status_too(make_agent: Any) -> None:
    await make_agent("worker", control__open=[], control__allow=["ops"])
    stranger: NATSAgent = await make_agent("stranger")
    ops: NATSAgent = await make_agent("ops")
    for command in ("ping", "status"):
        with pytest.raises(ForbiddenError):
            await stranger.control("worker", command)
        assert await ops.control("worker", command)
    with pytest.raises(RemoteError) as info:  # an unknown command is unknown to anyone, allowed or not
        await stranger.control("worker", "dance")
    assert info.value.code == "unknown_command"
