"""The event loops agentcore makes itself: uvloop when it is installed (extra "fast"), else asyncio's.

Only loops agentcore creates are chosen here: the agent's own loop thread (``NATSAgent.start()``), the
``agentcore`` command, its demo and ``agentcore bench``. Code that runs an agent on its own loop
(``await agent.astart()``) keeps whatever loop it chose. ``AGENTCORE_NO_UVLOOP=1`` or the config key
``agent.uvloop: false`` keeps asyncio's loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .config import AgentConfig

__all__ = ("loop_factory", "loop_name", "new_event_loop", "run", "uvloop_wanted")

T = TypeVar("T")


def uvloop_wanted(config: AgentConfig | None = None) -> bool:
    """Return whether agentcore's own loops should be uvloop's (AGENTCORE_NO_UVLOOP and agent.uvloop say no)."""
    if os.environ.get("AGENTCORE_NO_UVLOOP", "").strip().lower() not in ("", "0", "false", "no", "off"):
        return False
    return config is None or bool(config["agent.uvloop"])


def loop_factory(config: AgentConfig | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """Return what makes agentcore's event loops: uvloop.new_event_loop when installed and wanted, else asyncio's."""
    if uvloop_wanted(config):
        try:
            import uvloop
        except ImportError:  # not installed (the extra "fast" brings it): asyncio's loop
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def new_event_loop(config: AgentConfig | None = None) -> asyncio.AbstractEventLoop:
    """Return a new event loop of the kind loop_factory() makes."""
    return loop_factory(config)()


def run(main: Coroutine[Any, Any, T], config: AgentConfig | None = None) -> T:
    """Run main to completion on a new loop of the kind loop_factory() makes (asyncio.run's semantics)."""
    with asyncio.Runner(loop_factory=loop_factory(config)) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """Return "uvloop" or "asyncio" for loop (what benchmarks and status report)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
