"""The event-loop watchdog: how late the loop runs a periodic timer, and which code held it when it was late.

A timer on the loop notes each wake-up; how much later than asked it ran is the loop's lag (a blocking call in
an async handler, say ``time.sleep``, holds every other message, ping and heartbeat that long). The loop
cannot look at itself while it is held, so a small daemon thread looks in: when the loop has not woken for
longer than the threshold, it reads the loop thread's current Python frames (``sys._current_frames``) and
keeps the name of the handler running there (it looks again while the stall lasts, and a handler it sees names
the stall). The loop logs the episode, once, when it wakes up again.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import weakref
from types import CodeType, FrameType
from typing import Any

from ..metrics import AgentMetrics

__all__ = ("LoopWatchdog",)

log = logging.getLogger("agentcore.agent")


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{getattr(code, 'co_qualname', code.co_name)} ({code.co_filename}:{frame.f_lineno})"


def describe_stack(frame: FrameType | None, handler_code: CodeType | tuple[CodeType, ...] | None) -> str:
    """Return who runs in frame: the handler the dispatcher called (and where it is), or the innermost function.

    handler_code is the code of the dispatcher's function that calls handlers (or several such codes)."""
    frames: list[FrameType] = []
    while frame is not None and len(frames) < 200:
        frames.append(frame)
        frame = frame.f_back
    if not frames:
        return "unknown code"
    inner = _where(frames[0])
    codes = handler_code if isinstance(handler_code, tuple) else (handler_code,)
    for i, f in enumerate(frames):
        if f.f_code in codes and i > 0:
            called = frames[i - 1]
            try:  # the dispatcher's frame knows the registration: its pattern names the capability or topic
                reg = f.f_locals.get("reg")
                pattern = f" for {reg.pattern}" if reg is not None else ""
            except Exception:  # reading another thread's frame is best effort
                pattern = ""
            where = _where(called)
            return f"handler {where}{pattern}" + (f", in {inner}" if called is not frames[0] else "")
    return f"{inner} (no handler of this agent was running: other code on this loop, the garbage collector, or a " \
           "machine short of CPU)"


# The stall last logged on each loop (loop time from, to): agents sharing a loop see the same stall, one logs it.
_LOGGED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[float, float]] = weakref.WeakKeyDictionary()


def _seen_on(loop: asyncio.AbstractEventLoop, start: float, end: float) -> bool:
    """Return whether a stall from start to end overlaps the one last logged on loop (and record it if not)."""
    logged = _LOGGED.get(loop)
    if logged is not None and start < logged[1] and logged[0] < end:
        return True
    _LOGGED[loop] = (start, end)
    return False


class LoopWatchdog:
    """Measure the loop's lag with a periodic timer; log an episode above threshold once, naming the code that held it."""

    def __init__(self, agent_id: str, threshold: float, metrics: AgentMetrics,
                 handler_code: CodeType | tuple[CodeType, ...] | None) -> None:
        self.agent_id = agent_id
        self.threshold = threshold
        self.interval = min(max(threshold / 2, 0.01), 0.1)  # wake-ups: 10 a second at most, cheap
        self.lag_max = 0.0  # seconds, since start
        self.events = 0  # wake-ups later than the threshold
        self.last_culprit = ""  # what held the loop in the latest event
        self._metrics = metrics
        self._handler_code = handler_code
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._beat = 0.0  # time.monotonic() of the last wake-up, read by the thread
        self._culprit: str | None = None  # what the thread saw holding the loop in the current stall
        self._in_episode = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_thread = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start measuring on loop (called on the loop's thread)."""
        if self.threshold <= 0 or self._timer is not None:
            return
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()  # its own per start: a thread of an earlier start ends on the old one
        self._beat = time.monotonic()
        self._due = loop.time() + self.interval
        self._timer = loop.call_at(self._due, self._tick)
        self._thread = threading.Thread(target=self._watch, args=(self._stop,), name=f"agentcore-watchdog-{self.agent_id}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop measuring (the thread ends at its next wake-up)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop.set()
        self._thread = None

    def gauges(self) -> dict[str, Any]:
        """Return loop_lag_max (seconds) and loop_lag_events for get_metrics() and heartbeats."""
        return {"loop_lag_max": round(self.lag_max, 6), "loop_lag_events": self.events}

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        lag = max(now - self._due, 0.0)
        self._beat = time.monotonic()
        if lag > self.lag_max:
            self.lag_max = lag
        if lag >= self.threshold:
            self.events += 1
            culprit = self._culprit or "code the watchdog did not catch (many short steps, or it ended before a look)"
            self.last_culprit = culprit
            if not self._in_episode:  # once per episode: a handler that blocks on every message must not flood the log
                self._in_episode = True
                if _seen_on(loop, now - lag, now):
                    return self._next(loop, now)  # another agent on this loop logged this very stall
                advice = ("a blocking call in an async handler holds every message, ping and heartbeat; make it async "
                          "or sync (sync handlers run in threads)") if culprit.startswith("handler ") else \
                    "every message, ping and heartbeat waited"
                log.warning("agent %s: the event loop was held for %.3fs (agent.loop_lag_warn %.3fs) by %s: %s",
                            self.agent_id, lag, self.threshold, culprit, advice)
        else:
            self._in_episode = False
        self._next(loop, now)

    def _next(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        self._culprit = None
        self._due = now + self.interval
        self._timer = loop.call_at(self._due, self._tick)

    def _watch(self, stop: threading.Event) -> None:
        named = 0.0  # the beat whose stall a handler was already found holding: no more looks at it
        while not stop.wait(self.interval):
            beat = self._beat
            if beat == named or time.monotonic() - beat < self.threshold:
                continue
            # Look on every wake-up while the stall lasts: its first part may be the collector or another agent's
            # step, and the handler that holds the loop for the rest must still be the one named.
            frame = sys._current_frames().get(self._loop_thread)
            try:
                culprit = describe_stack(frame, self._handler_code)
            finally:
                del frame
            if culprit.startswith("handler "):
                named = beat
            elif self._culprit is not None and self._culprit.startswith("handler "):
                continue  # a handler seen earlier in this stall names it, not what ran after it
            if self._beat == beat:  # the loop has not woken meanwhile: this look belongs to the current stall
                self._culprit = culprit
