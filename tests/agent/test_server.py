"""The local nats-server launcher used by the demo, tests and benchmarks."""

from __future__ import annotations

import nats
import pytest

from agentcore.errors import ServerStartError
from agentcore.server import NATSServer, find_nats_server


def test_binary_comes_from_the_server_extra() -> None:
    assert find_nats_server().endswith("nats-server")


async def test_jetstream_server_persists_messages() -> None:
    with NATSServer(jetstream=True) as server:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="AGENTS", subjects=["agents.js.>"])
            ack = await js.publish("agents.js.task.x", b"persisted")
            assert ack.stream == "AGENTS" and ack.seq == 1
            msg = await js.get_msg("AGENTS", 1)
            assert msg.data == b"persisted"
        finally:
            await nc.close()


def test_restart_keeps_the_port_and_stop_is_idempotent() -> None:
    server = NATSServer().start()
    port = server.port
    server.restart()
    assert server.port == port and server.running
    server.close()
    server.close()
    assert not server.running


def test_a_broken_binary_is_a_clear_error() -> None:
    with pytest.raises(ServerStartError, match="cannot run"):
        NATSServer(binary="/nonexistent/nats-server").start()


def test_a_bad_option_reports_the_server_output() -> None:
    with pytest.raises(ServerStartError, match="exited"):
        NATSServer(extra_args=["--no-such-flag"]).start()


async def test_max_payload_reaches_the_server() -> None:
    server = NATSServer(max_payload=4 * 1024 * 1024).start()
    try:
        nc = await nats.connect(server.url)
        try:
            assert nc.max_payload == 4 * 1024 * 1024
        finally:
            await nc.close()
    finally:
        server.stop()
