"""The loop watchdog on a bare event loop: lag measured, the blocking code named, one log line per episode."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from agentcore.core.watchdog import LoopWatchdog
from agentcore.metrics import AgentMetrics
from nats_fixtures import eventually


def blocking_step(seconds: float) -> None:
    time.sleep(seconds)  # what a careless callback does


async def test_a_blocked_loop_is_measured_and_the_code_named_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    watchdog = LoopWatchdog("w", 0.1, AgentMetrics(), None)
    loop = asyncio.get_running_loop()
    watchdog.start(loop)
    try:
        with caplog.at_level(logging.WARNING, logger="agentcore.agent"):
            for _ in range(3):  # three stalls in a row: one episode, one log line, three events
                loop.call_soon(blocking_step, 0.4)
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            await eventually(lambda: watchdog.events >= 3, what="three late wake-ups")
        assert watchdog.gauges()["loop_lag_max"] >= 0.3
        lines = [r.getMessage() for r in caplog.records if "event loop was held" in r.getMessage()]
        assert len(lines) == 1
        assert "blocking_step" in lines[0] and "no handler of this agent was running" in lines[0]
        assert "blocking_step" in watchdog.last_culprit
    finally:
        watchdog.stop()


async def test_a_zero_threshold_turns_it_off() -> None:
    watchdog = LoopWatchdog("w", 0.0, AgentMetrics(), None)
    watchdog.start(asyncio.get_running_loop())
    assert watchdog._timer is None and watchdog._thread is None
    assert watchdog.gauges() == {"loop_lag_max": 0.0, "loop_lag_events": 0}
    watchdog.stop()


async def test_a_restart_leaves_one_watching_thread() -> None:
    import threading

    watchdog = LoopWatchdog("restarted", 0.1, AgentMetrics(), None)
    loop = asyncio.get_running_loop()
    watchdog.start(loop)
    watchdog.stop()
    watchdog.start(loop)
    try:
        await eventually(lambda: sum(t.name == "agentcore-watchdog-restarted" for t in threading.enumerate()) == 1,
                         what="the first start's thread to end")
    finally:
        watchdog.stop()
    await eventually(lambda: not any(t.name == "agentcore-watchdog-restarted" for t in threading.enumerate()),
                     what="the watchdog thread to end after stop")


async def test_agents_sharing_a_loop_log_one_stall_once(caplog: pytest.LogCaptureFixture) -> None:
    dogs = [LoopWatchdog(f"w{i}", 0.1, AgentMetrics(), None) for i in range(3)]
    loop = asyncio.get_running_loop()
    for dog in dogs:
        dog.start(loop)
    try:
        with caplog.at_level(logging.WARNING, logger="agentcore.agent"):
            loop.call_soon(blocking_step, 0.4)
            await eventually(lambda: all(dog.events >= 1 for dog in dogs), what="each agent's late wake-up")
        lines = [r.getMessage() for r in caplog.records if "event loop was held" in r.getMessage()]
        assert len(lines) == 1, lines  # every agent counts the stall; one of them logs it
    finally:
        for dog in dogs:
            dog.stop()


class _Registration:
    pattern = "agents.test.task.slow"


def blocking_handler(seconds: float) -> None:
    time.sleep(seconds)  # the handler that holds the loop


def dispatch(reg: _Registration, seconds: float) -> None:
    blocking_handler(seconds)  # stands for the dispatcher's function that calls handlers


def other_code_then_a_handler() -> None:
    blocking_step(0.35)  # the stall's first part is not a handler (the collector, another agent's step)
    dispatch(_Registration(), 0.6)


async def test_a_handler_that_holds_the_loop_after_other_code_is_the_one_named(caplog: pytest.LogCaptureFixture) -> None:
    watchdog = LoopWatchdog("w", 0.1, AgentMetrics(), dispatch.__code__)
    loop = asyncio.get_running_loop()
    watchdog.start(loop)
    try:
        with caplog.at_level(logging.WARNING, logger="agentcore.agent"):
            loop.call_soon(other_code_then_a_handler)
            await eventually(lambda: watchdog.events >= 1, what="the late wake-up")
        lines = [r.getMessage() for r in caplog.records if "event loop was held" in r.getMessage()]
        assert len(lines) == 1
        assert "handler blocking_handler" in lines[0] and "agents.test.task.slow" in lines[0], lines[0]
    finally:
        watchdog.stop()
