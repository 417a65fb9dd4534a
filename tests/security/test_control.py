"""Control is authorised: pause, resume and shutdown only from the agent itself and the ids in control.allow.

The attacker is a plain nats-py client (and an agent not in the list). Each test asserts that the attack fails
and that the honest path (ping and status for anyone, the allowed agent's commands) still works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from agentcore import AgentConfig, ForbiddenError, NATSAgent, NoRespondersError, RemoteError
from agentcore.envelope import decode, raise_for_error
from agentcore.server import NATSServer
from helpers import task_envelope
from nats_fixtures import eventually, subscribed


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


# --------------------------------------------------------------------------- NATS permissions: the real boundary

CONTROL_PERMISSIONS = """
authorization {
  users = [
    {user: worker, password: worker-pw}
    {user: ops, password: ops-pw}
    {user: app, password: app-pw, permissions: {publish: {deny: ["agents.*.control.>"]}}}
  ]
}
"""


async def test_nats_permissions_stop_a_stranger_who_claims_an_allowed_id(tmp_path: Path) -> None:
    # source.id is self-declared: a client may claim "ops". What stops it for real is the server refusing its
    # publish to the control subject (docs/security.md).
    conf = tmp_path / "nats.conf"
    conf.write_text(CONTROL_PERMISSIONS)
    with NATSServer(extra_args=["-c", str(conf)]) as server:
        def config(user: str, **extra: Any) -> AgentConfig:
            return AgentConfig({"nats.servers": [server.url], "nats.environment": "test", "nats.user": user,
                                "nats.password": f"{user}-pw", "agent.heartbeat_interval": 60.0, **extra}, environ={})

        worker = NATSAgent("worker", "worker", config("worker", **{"control.allow": ["ops"]}))
        ops = NATSAgent("ops", "ops", config("ops"))
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)

        async with worker, ops:
            app = await nats.connect(server.url, user="app", password="app-pw", error_cb=on_error)
            try:
                claim = task_envelope("claim-1", {"command": "shutdown"}, source="ops", type="query", capability="control")
                await app.publish(worker.topics.control("worker"), orjson.dumps(claim))
                await subscribed(app)
                await eventually(lambda: any("permissions violation" in str(e).lower() for e in errors),
                                 what="the server to refuse the publish")
                assert worker.status == "running"
                assert await ops.control("worker", "pause") == {"status": "paused"}  # the honest path
                assert await ops.control("worker", "resume") == {"status": "running"}
            finally:
                await app.close()


async def test_a_command_of_any_shape_is_answered_not_crashed_on(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker: NATSAgent = await make_agent("worker")
    for content in ({"command": ["pause"]}, {"command": {"x": 1}}, {"command": None}, 42):
        envelope = task_envelope("odd", content, source="mallory", capability="control")
        answer = decode((await raw_nc.request(worker.topics.control("worker"), orjson.dumps(envelope), timeout=5)).data)
        assert answer["payload"]["error"]["code"] == "unknown_command"
    assert worker.status == "running"
