"""Every agent suite (tests/agent, tests/security) passes on the pure-Python twins too: one item per file, run to the end.

The files run in one subprocess with AGENTCORE_NO_EXTENSIONS=1 (the core is chosen at import time, so it cannot be
switched inside this process): one interpreter start and one import of pytest and agentcore, where a subprocess
per file spent about 2 s on each of them. Each file's item fails with the failing tests of that file.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import PureRun, agent_suites, run_on_pure_core

pytestmark = pytest.mark.skipif(bool(os.environ.get("AGENTCORE_NO_EXTENSIONS")),
                                reason="AGENTCORE_NO_EXTENSIONS=1: this whole run is on the pure core already")


def test_the_environment_selects_the_pure_core() -> None:
    probe = subprocess.run([sys.executable, "-P", "-c", "import agentcore; print(agentcore.implementation)"],
                           env={**os.environ, "AGENTCORE_NO_EXTENSIONS": "1"}, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "pure", probe.stdout + probe.stderr


def test_every_agent_suite_is_covered() -> None:
    assert len(agent_suites()) >= 15 and "tests/agent/test_persistence.py" in agent_suites()
    assert "tests/security/test_relay.py" in agent_suites() and "tests/security/test_replies.py" in agent_suites()


PURE_TIMEOUT = 900.0  # every selected file at once, where the ini's 120 s is per test


@pytest.fixture(scope="module")
def pure_run(request: pytest.FixtureRequest) -> PureRun:
    """One run on the pure core of every agent suite this session selected."""
    selected = sorted({item.callspec.params["suite"] for item in request.session.items
                       if getattr(item, "originalname", "") == "test_agent_suite_passes_on_the_pure_core"})
    return run_on_pure_core(*selected, timeout=PURE_TIMEOUT)


@pytest.mark.timeout(PURE_TIMEOUT + 60)  # the first item waits for the whole run
@pytest.mark.parametrize("suite", agent_suites(), ids=lambda path: path.rpartition("/")[2].removesuffix(".py"))
def test_agent_suite_passes_on_the_pure_core(suite: str, pure_run: PureRun) -> None:
    # Exit 1: tests failed, and the summary must name them; any other exit is the run itself failing.
    assert pure_run.returncode == 0 or (pure_run.returncode == 1 and pure_run.failed), pure_run.report()
    assert not pure_run.failed_in(suite), pure_run.report(suite)
    assert pure_run.ran.get(suite), f"no test of {suite} ran:\n" + pure_run.report()
