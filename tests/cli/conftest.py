"""Fixtures of the `agentcore` command's tests: commands run in subprocesses against a real nats-server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentcore import AgentConfig, NATSAgent
from cli_helpers import CLI, ROOT, command_env, reap


@pytest.fixture
def cli(nats_url: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `agentcore ARGS` to its end (against the test's server unless env says otherwise)."""

    def run(*args: str, input: str | None = None, timeout: float = 60, cwd: Path = ROOT, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], input=input, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env=env if env is not None else command_env(nats_url))

    return run


@pytest.fixture
def start_command(nats_url: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start `agentcore ARGS` in the background (line-buffered pipes); anything still running is killed afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.Popen[str]:
        proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                cwd=cwd, env=env if env is not None else command_env(nats_url))
        started.append(proc)
        return proc

    yield start
    reap(started)


@pytest.fixture
def worker(nats_url: str) -> Iterator[NATSAgent]:
    """The example worker (examples/worker.py), started on its own thread in this process."""
    sys.path.insert(0, str(ROOT))
    try:
        from examples.worker import build
    finally:
        sys.path.remove(str(ROOT))
    # pause, resume and shutdown are taken only from control.allow: the tests send them --as operator.
    agent = build(AgentConfig({"nats.servers": [nats_url], "agent.heartbeat_interval": 60.0,
                               "control.allow": ["operator"]}, environ={}))
    assert agent.start()
    yield agent
    if agent.status != "stopped":
        agent.stop()
