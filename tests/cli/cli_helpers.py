"""Helpers of the `agentcore` command's tests (tests/cli/conftest.py holds the fixtures)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agentcore import NATSAgent

ROOT = Path(__file__).resolve().parents[2]
# -P: the working directory (a checkout, say) is not put on sys.path, so the command is the installed one.
CLI = [sys.executable, "-P", "-m", "agentcore"]
_CLEARED = ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CREDS", "NATS_NKEY", "NATS_CA", "NATS_CERT",
            "NATS_KEY", "AGENT_ID")


def command_env(url: str | None, **extra: str) -> dict[str, str]:
    """The environment a command runs in: the test's server as NATS_URL, no credentials of the machine's."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    if url is not None:
        env["NATS_URL"] = url
    env.update(extra)
    return env


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert the command failed with exactly one line on stderr (no traceback) and return it."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentcore: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def read_line(proc: subprocess.Popen[str], stream: str = "stdout", contains: str = "", timeout: float = 20.0) -> str:
    """Return the next line of a running command's output that contains text (fails after timeout)."""
    pipe = getattr(proc, stream)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = pipe.readline()
        if not line:
            raise AssertionError(f"{stream} ended before a line with {contains!r}; exit {proc.wait(5)}; "
                                 f"stderr: {proc.stderr.read() if stream == 'stdout' and proc.stderr else ''}")
        if contains in line:
            return line.rstrip("\n")
    raise AssertionError(f"no line with {contains!r} within {timeout}s")


def call(agent: NATSAgent, coro: Any, timeout: float = 30.0) -> Any:
    """Run one of agent's coroutines on its own loop from the test's thread."""
    return agent.call(coro, timeout)


def reap(procs: list[subprocess.Popen[str]]) -> None:
    """Kill what is still running of procs, wait for each and close its pipes."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
