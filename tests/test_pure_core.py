"""The agent layers on the pure-Python twins: the integration suites pass with AGENTCORE_NO_EXTENSIONS=1 too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_agent_suites_pass_on_the_pure_core() -> None:
    env = {**os.environ, "AGENTCORE_NO_EXTENSIONS": "1"}
    suites = ["tests/test_agent.py", "tests/test_negotiation.py", "tests/test_connectivity.py", "tests/test_topics.py"]
    proc = subprocess.run(
        # -P: the source checkout must not shadow the installed package (a wheel under cibuildwheel, say).
        [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *suites,
         "-o", "addopts=", "--no-header", "-W", "ignore"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
    # The same environment really selects the twins.
    probe = subprocess.run([sys.executable, "-c", "import agentcore; print(agentcore.implementation)"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "pure"
