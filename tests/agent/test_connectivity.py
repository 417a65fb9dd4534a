"""Connection options through AgentConfig against real servers: auth, TLS, clusters and failover."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from agentcore import AgentConfig, NATSAgent, NoRespondersError, NotConnectedError, RequestTimeoutError
from agentcore.server import NATSServer
from nats_fixtures import eventually


def config(servers: list[str], **values: Any) -> AgentConfig:
    return AgentConfig({"nats.servers": servers, "nats.environment": "conn", "agent.heartbeat_interval": 60.0,
                        "nats.connect_timeout": 1.0, "nats.reconnect_time_wait": 0.05, **values}, environ={})


async def until_served(client: NATSAgent, capability: str, timeout: float = 10.0) -> Any:
    """Send a task until the interest has crossed the cluster routes (route propagation is asynchronous).

    Right after a server dies its peer may still route a request to the dead route until it notices: that
    request is lost and times out, so a timeout is retried too.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await client.send_task(capability, "ping", timeout=1)
        except (NoRespondersError, RequestTimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def test_user_password_auth() -> None:
    with NATSServer(user="agent", password="s3cret") as server:
        worker = NATSAgent("w", config=config([server.url], **{"nats.user": "agent", "nats.password": "s3cret"}))
        worker.add_capability("echo", lambda m: m["payload"]["content"])
        await worker.astart()
        try:
            assert await worker.send_task("echo", "hi") == "hi"
            intruder = NATSAgent("x", config=config([server.url], **{"nats.user": "agent", "nats.password": "wrong",
                                                                     "nats.max_reconnect_attempts": 0}))
            with pytest.raises(NotConnectedError):
                await intruder.astart()
        finally:
            await worker.astop()


async def test_token_auth() -> None:
    with NATSServer(token="t0ken") as server:
        agent = NATSAgent("w", config=config([server.url], **{"nats.token": "t0ken"}))
        agent.add_capability("echo", lambda m: 1)
        async with agent:
            assert await agent.send_task("echo", None) == 1


async def test_nkey_auth_and_nats_connect_options_pass_through(tmp_path: Path) -> None:
    """An nkey seed file (nats.nkeys_seed), or any nats.connect() option through nats.options (here nkeys_seed_str)."""
    import os

    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    (tmp_path / "user.nk").write_bytes(seed)
    (tmp_path / "server.conf").write_text(f"authorization {{ users = [ {{ nkey: {public} }} ] }}\n")
    closed: list[bool] = []
    with NATSServer(extra_args=["-c", str(tmp_path / "server.conf")]) as server:
        worker = NATSAgent("w", config=config([server.url], **{"nats.nkeys_seed": str(tmp_path / "user.nk")}))
        worker.add_capability("echo", lambda m: m["payload"]["content"])
        client = NATSAgent("c", config=config([server.url], **{"nats.options": {
            "nkeys_seed_str": seed.decode(), "closed_cb": lambda: closed.append(True)}}))
        async with worker, client:
            assert await client.send_task("echo", "signed") == "signed"
        assert closed == [True]  # a callback of yours runs (the agent's own ones are chained, not replaced)
        stranger = NATSAgent("x", config=config([server.url], **{"nats.max_reconnect_attempts": 0}))
        with pytest.raises(NotConnectedError):
            await stranger.astart()


def test_nats_options_are_checked_against_nats_connect() -> None:
    from agentcore import ConfigError

    with pytest.raises(ConfigError, match="dont_randomise"):
        AgentConfig({"nats.options": {"dont_randomise": True}})
    with pytest.raises(ConfigError, match="use nats.servers"):
        AgentConfig({"nats.options": {"servers": ["nats://x:4222"]}})
    cfg = AgentConfig({"nats.options": {"dont_randomize": True, "nkeys_seed_str": "SUSECRET"}})
    assert cfg["nats.options"]["dont_randomize"] is True and "SUSECRET" not in repr(cfg)


async def test_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    ca.cert_pem.write_to_path(ca_path)
    with NATSServer(tls_cert=str(cert_path), tls_key=str(key_path)) as server:
        assert server.url.startswith("tls://")
        agent = NATSAgent("w", config=config([server.url], **{"nats.tls_ca": str(ca_path)}))
        agent.add_capability("echo", lambda m: "secure")
        async with agent:
            assert agent.nc.connected_url.scheme == "tls"
            assert await agent.send_task("echo", None) == "secure"


async def test_cluster_routes_tasks_between_servers_and_fails_over() -> None:
    with NATSServer(cluster_name="agents", server_name="a") as a:
        with NATSServer(cluster_name="agents", server_name="b", routes=[a.cluster_url]) as b:
            # The worker knows only a; it learns b from the cluster's INFO gossip and fails over to it.
            worker = NATSAgent("w", config=config([a.url]))
            worker.add_capability("work", lambda m: "done")
            client = NATSAgent("c", config=config([b.url]))
            await worker.astart()
            await client.astart()
            try:
                assert worker.nc.connected_url.port == a.port
                assert await until_served(client, "work") == "done"
                await eventually(lambda: len(worker.nc.servers) >= 2, what="b learned through gossip")
                await asyncio.to_thread(a.kill)  # the worker's server dies; it must fail over to b
                assert await until_served(client, "work") == "done"
                assert worker.nc.connected_url.port == b.port
                assert worker.get_metrics()["reconnects"] >= 1
            finally:
                await client.astop()
                await worker.astop()


async def test_nats_options_callbacks_returning_values_pass_as_they_are_and_raising_ones_are_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def jwt() -> bytes:  # nats-py calls it and uses what it returns: it must not be wrapped
        return b"eyJ..."

    def closed() -> None:
        raise RuntimeError("the application's closed_cb failed")

    with NATSServer() as server:
        agent = NATSAgent("w", config=config([server.url], **{"nats.options": {"closed_cb": closed}}))
        # This server asks for no JWT, so nats-py keeps the callback without calling it: the one it holds is ours.
        async with NATSAgent("j", config=config([server.url], **{"nats.options": {"user_jwt_cb": jwt}})) as j:
            assert j.nc._user_jwt_cb is jwt
        await agent.astart()
        await agent.astop()  # the raising callback is logged, the stop completes
    assert agent.status == "stopped"
    assert any("closed_cb given in nats.options raised" in r.getMessage() for r in caplog.records)
