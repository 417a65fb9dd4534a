"""Shared by tests/core and tests/agent: tests/ on sys.path (nats_fixtures, helpers), and the nats-server fixtures.

The core twin fixtures (compiled core vs pure-Python twins) are in tests/core/conftest.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

# pytest's default import mode puts this folder on sys.path as it loads this file; say so explicitly, so the
# shared modules import from tests/core and tests/agent under any import mode.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# nats-server fixtures (tests/nats_fixtures.py): real servers on free ports, never a mock broker.
from nats_fixtures import agent_config, make_agent, nats_server, nats_url, raw_nc  # noqa: E402,F401
