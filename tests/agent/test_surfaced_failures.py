"""Failures the server or nats-py report only asynchronously reach the caller, typed, with their reason.

Permissions come from a real server config file, TLS from trustme certificates, a slow consumer is provoked
with a small max_pending on the server, and the loop watchdog catches an async handler that calls time.sleep.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import nats
import pytest
import trustme

from agentcore import (
    AgentConfig, ConfigError, NATSAgent, NotConnectedError, PermissionDeniedError, SlowConsumerError,
)
from agentcore.envelope import encode, new_message
from agentcore.server import NATSServer, free_port
from nats_fixtures import eventually, subscribed, within

PERMISSIONS = """
authorization { users = [
  {user: client, password: pw, permissions: {publish: {deny: ["agents.test.task.secret.>", "agents.test.event.secret"]}}}
  {user: worker, password: pw, permissions: {subscribe: {deny: ["agents.test.task.forbidden.>"]}}}
  {user: noinbox, password: pw, permissions: {subscribe: {deny: ["_INBOX.>"]}}}
]}
"""


def config(url: str, user: str | None = None, **values: Any) -> AgentConfig:
    base: dict[str, Any] = {"nats.servers": [url], "nats.environment": "test", "agent.heartbeat_interval": 60.0,
                            "nats.connect_timeout": 2.0, "nats.reconnect_time_wait": 0.05}
    if user:
        base.update({"nats.user": user, "nats.password": "pw"})
    return AgentConfig({**base, **values}, environ={})


@pytest.fixture
def permissions_server(tmp_path: Path) -> Any:
    conf = tmp_path / "nats.conf"
    conf.write_text(PERMISSIONS)
    with NATSServer(extra_args=["-c", str(conf)]) as server:
        yield server


# ---------------------------------------------------------------------------------------------------------------
# Permission violations

async def test_a_request_to_a_denied_subject_fails_at_once_not_at_its_timeout(permissions_server: NATSServer) -> None:
    worker = NATSAgent("w", config=config(permissions_server.url, "worker"))
    worker.add_capability("secret", lambda m: "never")
    worker.add_capability("open", lambda m: "fine")
    client = NATSAgent("c", config=config(permissions_server.url, "client"))
    async with worker, client:
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError) as caught:
            await within(client.send_task("secret", 1, timeout=60), "the denied request", timeout=20)
        assert time.monotonic() - started < 20  # far from its 60 s timeout: the -ERR came within a round trip
        assert caught.value.operation == "publish"
        assert caught.value.subject == "agents.test.task.secret.default"
        assert caught.value.details == {"operation": "publish", "subject": "agents.test.task.secret.default", "queue": None}
        assert "Permissions Violation" in str(caught.value)
        assert client.get_metrics()["permission_denied"] == 1
        assert await client.send_task("open", 1) == "fine"  # the connection stays up and serves what is allowed


async def test_a_publish_to_a_denied_subject_raises_every_time(permissions_server: NATSServer) -> None:
    client = NATSAgent("c", config=config(permissions_server.url, "client"))
    async with client:
        for _ in range(2):  # the first is confirmed by a round trip; a denied subject stays confirmed each time
            with pytest.raises(PermissionDeniedError, match="agents.test.event.secret"):
                await client.publish("agents.test.event.secret", {"x": 1})
        await client.publish("agents.test.event.fine", {"x": 1})  # allowed ones return normally


async def test_a_denied_subscription_fails_start_naming_the_subject(permissions_server: NATSServer) -> None:
    worker = NATSAgent("w", config=config(permissions_server.url, "worker"))
    worker.add_capability("forbidden", lambda m: 1)
    with pytest.raises(PermissionDeniedError) as caught:
        await within(worker.astart(), "the start", timeout=20)
    assert caught.value.operation == "subscribe"
    assert caught.value.subject == "agents.test.task.forbidden.*"
    assert "agents.test.task.forbidden.*" in str(caught.value)
    assert worker.status == "stopped"
    with pytest.raises(NotConnectedError):  # the connection it opened is closed
        worker.nc


async def test_a_persisted_task_to_a_denied_subject_fails_after_one_attempt_not_its_timeout(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(PERMISSIONS)
    with NATSServer(jetstream=True, extra_args=["-c", str(conf)]) as server:
        persisted = {"jetstream.enabled": True, "jetstream.pull_expires": 0.3}
        worker = NATSAgent("w", config=config(server.url, "worker", **persisted))
        worker.add_capability("secret", lambda m: "never")
        client = NATSAgent("c", config=config(server.url, "client", **persisted))
        async with worker, client:
            started = time.monotonic()
            with pytest.raises(PermissionDeniedError, match="agents.test.task.secret.default"):
                await within(client.send_task("secret", 1, timeout=60), "the denied persisted task", timeout=30)
            assert time.monotonic() - started < 30  # one JetStream publish attempt (at most 2 s), not the 60 s timeout


async def test_a_denied_reply_inbox_fails_the_request_at_once(permissions_server: NATSServer) -> None:
    worker = NATSAgent("w", config=config(permissions_server.url, "worker"))
    worker.add_capability("work", lambda m: "done")
    client = NATSAgent("c", config=config(permissions_server.url, "noinbox"))  # may not subscribe to any reply inbox
    with pytest.raises(PermissionDeniedError, match="subscribe to '_inbox"):  # its start asks whether its id is taken
        await within(client.astart(), "the start", timeout=20)
    client = NATSAgent("c", config=config(permissions_server.url, "noinbox", **{"agent.duplicate_id": "allow"}))
    async with worker, client:
        with pytest.raises(PermissionDeniedError) as caught:
            await within(client.send_task("work", 1, timeout=60), "the request", timeout=20)
        assert caught.value.operation == "subscribe"
        assert caught.value.subject.startswith("_inbox.")


# ---------------------------------------------------------------------------------------------------------------
# Connection failures, named

async def expect_not_connected(cfg: AgentConfig, *reasons: str) -> str:
    agent = NATSAgent("x", config=cfg)
    started = time.monotonic()
    with pytest.raises(NotConnectedError) as caught:
        await within(agent.astart(), "the failed start", timeout=30)
    assert time.monotonic() - started <= cfg["nats.connect_timeout"] + 1.5  # one try per server, no retry loop
    for reason in reasons:
        assert reason in str(caught.value)
    return str(caught.value)


async def test_a_wrong_password_names_the_authorization_violation() -> None:
    with NATSServer(user="agent", password="right") as server:
        await expect_not_connected(config(server.url, **{"nats.user": "agent", "nats.password": "wrong"}),
                                   "Authorization Violation")


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "cert", "key", "other_ca")}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    trustme.CA().cert_pem.write_to_path(paths["other_ca"])
    return paths


async def test_a_wrong_tls_ca_names_the_certificate_failure(tls_files: dict[str, str]) -> None:
    with NATSServer(tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as server:
        await expect_not_connected(config(server.url, **{"nats.tls_ca": tls_files["other_ca"]}), "certificate verify failed")
        agent = NATSAgent("ok", config=config(server.url, **{"nats.tls_ca": tls_files["ca"]}))
        async with agent:  # the right CA connects
            assert agent.nc is not None and agent.nc.is_connected


async def test_a_plaintext_url_to_a_tls_server_says_the_server_requires_tls(tls_files: dict[str, str]) -> None:
    with NATSServer(tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as server:
        await expect_not_connected(config(server.url.replace("tls://", "nats://")), "certificate verify failed",
                                   "the server requires TLS")


async def test_an_unreachable_server_is_named_within_the_connect_timeout() -> None:
    await expect_not_connected(config(f"nats://127.0.0.1:{free_port()}"), "connection refused")


@pytest.mark.parametrize("key", ["nats.tls_ca", "nats.tls_cert", "nats.tls_key"])
async def test_a_missing_tls_file_is_a_config_error_naming_it(tls_files: dict[str, str], key: str, tmp_path: Path) -> None:
    values = {"nats.tls_ca": tls_files["ca"], "nats.tls_cert": tls_files["cert"], "nats.tls_key": tls_files["key"]}
    values[key] = str(tmp_path / "missing.pem")
    agent = NATSAgent("x", config=config("tls://127.0.0.1:4222", **values))
    with pytest.raises(ConfigError, match=f"{key}: no such file .*missing.pem"):
        await agent.astart()


# ---------------------------------------------------------------------------------------------------------------
# Slow consumers

def flood(port: int, subject: str, then: list[tuple[str, bytes]], count: int = 3000, size: int = 8000) -> None:
    """From a plain socket (its own thread), publish count messages of size bytes to subject, then the then messages."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        chunk = f"PUB {subject} {size}\r\n".encode() + b"x" * size + b"\r\n"
        for _ in range(count):
            sock.sendall(chunk)
        for to, data in then:
            sock.sendall(f"PUB {to} {len(data)}\r\n".encode() + data + b"\r\n")
        sock.sendall(b"PING\r\n")
        sock.recv(64)


async def test_a_server_side_slow_consumer_fails_the_pending_requests_typed(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text("max_pending: 65536\nmax_payload: 16384\n")
    with NATSServer(extra_args=["-c", str(conf)]) as server:
        agent = NATSAgent("slow", config=config(server.url))
        blocked = threading.Event()

        async def on_flood(topic: str, message: dict[str, Any]) -> None:
            if blocked.is_set():
                return
            blocked.set()
            # Holds the loop (the bug this provokes) while another socket floods this agent and then answers its request.
            thread = threading.Thread(target=flood, args=(server.port, "flood.in", [(inbox[0], b"lost")]))
            thread.start()
            thread.join(60)

        agent.subscribe("flood.in", on_flood)
        responder = await nats.connect(server.url)
        inbox: list[str] = []

        async def take(msg: Any) -> None:
            inbox.append(msg.reply)

        await responder.subscribe("agents.test.task.svc.default", cb=take)
        await subscribed(responder)
        try:
            async with agent:
                request = asyncio.ensure_future(agent.send_task("svc", 1, timeout=60))
                await eventually(lambda: inbox, what="the request at the responder")
                await responder.publish("flood.in", encode(new_message("event", "go", source_id="t", source_type="t")))
                with pytest.raises(SlowConsumerError) as caught:
                    await within(request, "the request cut off with its connection", timeout=45)
                assert caught.value.side == "server"
                metrics = agent.get_metrics()
                assert metrics["slow_consumer_disconnects"] >= 1
                assert metrics["disconnects"] >= 1
        finally:
            await responder.close()


async def test_nats_py_slow_consumer_drops_are_counted_and_logged(nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    agent = NATSAgent("a", config=config(nats_url))
    async with agent:
        nc = agent.nc
        assert nc is not None
        sub = await nc.subscribe("tiny", pending_msgs_limit=1)  # nobody reads it: the second message is dropped
        await subscribed(nc)
        with caplog.at_level(logging.WARNING, logger="agentcore.agent"):
            for _ in range(3):
                await nc.publish("tiny", b"x")
            await eventually(lambda: agent.get_metrics().get("slow_consumer_dropped", 0) >= 1, what="a drop counted")
        assert any("dropped a message on tiny" in r.getMessage() and "sid" in r.getMessage() for r in caplog.records)
        await sub.unsubscribe()


# ---------------------------------------------------------------------------------------------------------------
# The event-loop watchdog

async def test_the_watchdog_names_an_async_handler_that_blocks_the_loop(nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def sleepy_handler(message: dict[str, Any]) -> str:
        time.sleep(0.6)  # the bug: a blocking call inside an async handler
        return "late"

    worker = NATSAgent("w", config=config(nats_url, **{"agent.loop_lag_warn": 0.1}))
    worker.add_capability("sleepy", sleepy_handler)
    client = NATSAgent("c", config=config(nats_url, **{"agent.loop_lag_warn": 0}))  # off: only the worker reports
    async with worker, client:
        with caplog.at_level(logging.WARNING, logger="agentcore.agent"):
            assert await client.send_task("sleepy", 1) == "late"
            await eventually(lambda: worker.get_metrics()["loop_lag_events"] >= 1, what="the lag event")
        metrics = worker.get_metrics()
        assert metrics["loop_lag_max"] >= 0.3
        warnings = [r.getMessage() for r in caplog.records if "event loop was held" in r.getMessage()]
        assert len(warnings) == 1 and "agent w:" in warnings[0]
        assert "sleepy_handler" in warnings[0] and "agents.test.task.sleepy" in warnings[0]
        status = await client.request("agents.test.control.w", {"command": "status"}, type="query")
        assert status["loop_lag_events"] >= 1  # heartbeats and status carry it
        assert client.get_metrics()["loop_lag_events"] == 0
