"""The locked-down deployment of docs/security.md, run: per-agent NATS users and permissions (allow lists,
allow_responses, a private inbox prefix each), signed identities required, and the control allow-list.

A worker answers tasks, a coordinator (in control.allow, signed) may pause and resume it; a stranger with a
NATS login is denied by the server where its permissions stop it and by the worker where they do not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nats
import nkeys
import orjson
import pytest

from agentcore import AgentConfig, IdentityError, NATSAgent, NoRespondersError
from agentcore.envelope import decode, raise_for_error
from agentcore.server import NATSServer
from agentcore.transport.identity import Signer
from helpers import task_envelope
from nats_fixtures import eventually, subscribed

# The server side of docs/security.md's locked-down deployment (environment "prod" there, "test" here).
LOCKED_DOWN = """
authorization {
  users = [
    {user: worker, password: worker-pw, permissions: {
      publish: {allow: ["agents.test.status.worker", "agents.test.event.>"]}
      subscribe: {allow: ["agents.test.task.work.*", "agents.test.control.worker", "agents.test.discovery.requests",
                          "agents.test.lifecycle.*", "agents.test.a2a.negotiate.worker", "$SRV.>", "_INBOX_worker.>"]}
      allow_responses: true
    }}
    {user: coordinator, password: coordinator-pw, permissions: {
      publish: {allow: ["agents.test.task.work.*", "agents.test.control.worker", "agents.test.discovery.requests",
                        "agents.test.lifecycle.*", "agents.test.status.coordinator"]}
      subscribe: {allow: ["agents.test.control.coordinator", "agents.test.discovery.requests", "agents.test.lifecycle.*",
                          "agents.test.a2a.negotiate.coordinator", "$SRV.>", "_INBOX_coordinator.>"]}
      allow_responses: true
    }}
    {user: stranger, password: stranger-pw, permissions: {
      publish: {allow: ["agents.test.task.work.*"]}
      subscribe: {allow: ["_INBOX_stranger.>"]}
    }}
  ]
}
"""


def new_seed() -> str:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


async def test_the_locked_down_deployment_runs_the_demo_flow(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(LOCKED_DOWN)
    worker_seed, coordinator_seed = new_seed(), new_seed()
    (tmp_path / "worker.nk").write_text(worker_seed + "\n")  # a seed file, as a deployment would mount it
    trusted = {"worker": Signer(worker_seed.encode()).public_key, "coordinator": Signer(coordinator_seed.encode()).public_key}
    with NATSServer(extra_args=["-c", str(conf)]) as server:
        def config(user: str, seed: str, **extra: Any) -> AgentConfig:
            return AgentConfig({"nats.servers": [server.url], "nats.environment": "test", "nats.user": user,
                                "nats.password": f"{user}-pw", "nats.options": {"inbox_prefix": f"_INBOX_{user}"},
                                "agent.heartbeat_interval": 60.0, "service.enabled": True,
                                "identity.seed": seed, "identity.trusted": trusted, "identity.require": True,
                                **extra}, environ={})

        worker = NATSAgent("worker", "worker", config("worker", str(tmp_path / "worker.nk"),
                                                      **{"control.allow": ["coordinator"]}))
        worker.add_capability("work", lambda m: f"done {m['payload']['content']}")
        coordinator = NATSAgent("coordinator", "coordinator", config("coordinator", coordinator_seed))
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)

        async with worker, coordinator:
            assert await coordinator.send_task("work", 1) == "done 1"  # the worker answers, signed both ways
            assert await coordinator.control("worker", "pause") == {"status": "paused"}
            with pytest.raises(NoRespondersError):
                await coordinator.send_task("work", 2, timeout=2)
            assert await coordinator.control("worker", "resume") == {"status": "running"}
            assert await coordinator.send_task("work", 3) == "done 3"

            stranger = await nats.connect(server.url, user="stranger", password="stranger-pw",
                                          inbox_prefix="_INBOX_stranger", error_cb=on_error)
            try:
                # The server stops it at the control subject, whatever source.id it claims.
                claim = task_envelope("s-1", {"command": "shutdown"}, source="coordinator", type="query", capability="control")
                await stranger.publish(worker.topics.control("worker"), orjson.dumps(claim))
                await subscribed(stranger)
                await eventually(lambda: any("permissions violation" in str(e).lower() for e in errors),
                                 what="the server to refuse the stranger's control publish")
                # Where its permissions let it publish (tasks), the worker refuses it unsigned, even claiming an id.
                ask = task_envelope("s-2", 4, source="coordinator")
                answer = decode((await stranger.request(worker.topics.task("work"), orjson.dumps(ask), timeout=5)).data)
                with pytest.raises(IdentityError) as info:
                    raise_for_error(answer)
                assert info.value.details == {"reason": "unsigned"}
            finally:
                await stranger.close()
            assert worker.status == "running"
            assert worker.get_metrics()["identity_unsigned"] == 1
            assert await coordinator.send_task("work", 5) == "done 5"
