"""Every agent suite (tests/agent, tests/security) passes on the pure-Python twins too: one item per file, run to the end.

Each file runs in its own subprocess with AGENTCORE_NO_EXTENSIONS=1 (the core is chosen at import time, so it
cannot be switched inside this process). A failure names the failing tests of that file.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import agent_suites, run_on_pure_core

pytestmark = pytest.mark.skipif(bool(os.environ.get("AGENTCORE_NO_EXTENSIONS")),
                                reason="AGENTCORE_NO_EXTENSIONS=1: this whole run is on the pure core already")


def test_the_environment_selects_the_pure_core() -> None:
    probe = subprocess.run([sys.executable, "-P", "-c", "import agentcore; print(agentcore.implementation)"],
                           env={**os.environ, "AGENTCORE_NO_EXTENSIONS": "1"}, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "pure", probe.stdout + probe.stderr


def test_every_agent_suite_is_covered() -> None:
    assert len(agent_suites()) >= 15 and "tests/agent/test_persistence.py" in agent_suites()
    assert "tests/security/test_relay.py" in agent_suites() and "tests/security/test_replies.py" in agent_suites()


@pytest.mark.timeout(600)  # a whole file, where the ini's 120 s is per test
@pytest.mark.parametrize("suite", agent_suites(), ids=lambda path: path.rpartition("/")[2].removesuffix(".py"))
def test_agent_suite_passes_on_the_pure_core(suite: str) -> None:
    run = run_on_pure_core(suite)
    assert run.returncode == 0, run.report()
    assert not run.failed, run.report()
