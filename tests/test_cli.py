"""The two README commands: the demo runs end to end, and .ci/run uses exactly the README's test command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv .venv"))
    assert command in readme


def test_demo_starts_its_own_server_and_runs_agents() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    proc = subprocess.run([sys.executable, "-m", "agentcore.cli", "demo", "--tasks", "20"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "started a local nats-server" in out
    for worker in ("summarizer-1", "summarizer-2", "summarizer-3", "analyst-1"):
        assert f"discovered {worker}" in out
    assert "round trip p50" in out and "shared by the queue group" in out
    assert "finalized" in out and "sent the job to the winner" in out  # the negotiation step
    assert "mcp: word_count -> 7" in out  # the MCP step
    assert "JetStream stream AGENTS_DEMO-DURABLE keeps 5" in out and "answered all 5" in out  # the persistence step
    assert "-> paused, running" in out and "from summarizer-1 -> refused (forbidden" in out  # control, allowed and not
    assert "stopped the local nats-server" in out


def test_demo_uses_nats_url_when_given(nats_url: str) -> None:
    env = {**os.environ, "NATS_URL": nats_url}
    proc = subprocess.run([sys.executable, "-m", "agentcore.cli", "demo", "--tasks", "5"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "started a local nats-server" not in proc.stdout
    assert nats_url in proc.stdout
    assert "persistence: skipped" in proc.stdout and "JetStream" in proc.stdout  # this server runs without -js
