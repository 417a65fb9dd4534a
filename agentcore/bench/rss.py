"""The suite "rss" of `agentcore bench`: how much a serving agent's RSS grows over many small tasks.

The agent runs in a child process (``python -m agentcore.bench.rss --serve URL ENV``) in the default configuration
(result cache and duplicate detection on) on the loop agentcore picks for itself (uvloop when installed). A raw
nats-py client here sends it small tasks, each distinct (every one a cache miss), 200 in flight. RSS is VmRSS from
/proc/<pid>/status (Linux only); the peak is sampled every 10 ms. The baseline is taken after a warm-up and after
the agent called glibc's ``malloc_trim(0)``, the end without one: what the allocator keeps of freed memory counts
as growth, so the number errs high. benchmarks/memory_attacks.py runs the same small-task phase after attacks.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ("LIMIT_MB", "STEPS", "Peak", "measure_rss", "rss_mb")

LIMIT_MB = 5.0  # what the growth over 1,000,000 tasks must stay under
STEPS = 11  # progress steps: the warm-up, then every tenth of the tasks
INFLIGHT = 200
STALL = 60.0  # seconds without a single answer: the run failed


def rss_mb(pid: int) -> float:
    """Return the resident set size of pid in MB (Linux: /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Peak:
    """Sample a process's RSS every 10 ms in a thread; keep the highest."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="agentcore-bench-rss")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, RuntimeError):  # the child is gone: the run reports why
                return
            self._stop.wait(0.01)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------ the serving agent (child process)

async def _serve(url: str, env: str) -> None:
    from agentcore import AgentConfig, NATSAgent
    from agentcore.loops import loop_name

    agent = NATSAgent("rss", "bench", AgentConfig({"nats.servers": [url], "nats.environment": env}, environ={}))
    agent.add_capability("small", lambda m: m["payload"]["content"])

    def trim(message: dict[str, Any]) -> int:
        try:
            return int(ctypes.CDLL("libc.so.6").malloc_trim(0))
        except (OSError, AttributeError):  # not glibc: nothing to hand back
            return -1

    agent.add_capability("trim", trim)
    await agent.astart()
    print("ready", loop_name(asyncio.get_running_loop()), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await agent.astop()


# ------------------------------------------------------------------ the sender (this process)

async def _tasks(nc: Any, subject: str, n: int, tick: Callable[[], None] | None = None) -> float:
    """Send n small distinct tasks, INFLIGHT at a time; return the seconds it took to have every answer."""
    import orjson

    from agentcore import new_message

    inbox = nc.new_inbox()
    done = asyncio.Event()
    got, ticked = [0], [0]
    window = asyncio.Semaphore(INFLIGHT)
    every = max(n // 10, 1)

    def ticks(upto: int) -> None:
        while tick is not None and ticked[0] < upto:
            ticked[0] += 1
            tick()

    async def on_reply(msg: Any) -> None:
        got[0] += 1
        window.release()
        if got[0] % every == 0:
            ticks(min(got[0] // every, 10))
        if got[0] == n:
            done.set()

    sub = await nc.subscribe(inbox, cb=on_reply)
    await nc.flush()
    t0 = time.perf_counter()

    async def send() -> None:
        for i in range(n):
            await window.acquire()
            message = new_message("task", i, source_id="rss-bench", source_type="bench", capabilities=["small"])
            await nc.publish(subject, orjson.dumps(message), reply=inbox)

    sender = asyncio.ensure_future(send())
    try:
        seen = -1
        while not done.is_set():  # bounded: a run that stops answering fails instead of hanging
            if got[0] == seen:
                raise RuntimeError(f"the agent stopped answering after {got[0]:,} of {n:,} tasks")
            seen = got[0]
            try:
                await asyncio.wait_for(done.wait(), STALL)
            except asyncio.TimeoutError:
                pass
        await sender
        ticks(10)  # fewer than ten tasks: the progress still ends where it was told
    finally:
        sender.cancel()
        await sub.unsubscribe()
    return time.perf_counter() - t0


async def _request(nc: Any, subject: str) -> Any:
    import orjson

    from agentcore import new_message

    message = new_message("task", None, source_id="rss-bench", source_type="bench")
    return orjson.loads((await nc.request(subject, orjson.dumps(message), timeout=30)).data)


async def measure_rss(url: str, tasks: int, warmup: int, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the agent in a child process, send it warmup then tasks small tasks; return the RSS numbers in MB."""
    import nats

    step = progress or (lambda label: None)
    if not os.path.exists(f"/proc/{os.getpid()}/status"):
        for _ in range(STEPS):
            step("skipped")
        return {"tasks": tasks, "skipped": "RSS is read from /proc, which this system does not have"}
    env = f"bench-rss-{os.getpid()}x{int(time.time() * 1000) % 100000}"
    log = tempfile.TemporaryFile("w+")  # the child's warnings: a pipe nobody reads could fill and block it
    child = subprocess.Popen([sys.executable, "-m", "agentcore.bench.rss", "--serve", url, env], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=log, text=True)
    nc: Any = None
    try:
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        if not ready or ready[0] != "ready":
            child.wait(10)
            log.seek(0)
            raise RuntimeError(f"the agent process did not start (exit {child.returncode}): {log.read()[-2000:]}")
        nc = await nats.connect(url, max_reconnect_attempts=0)
        small, trim = f"agents.{env}.task.small.default", f"agents.{env}.task.trim.default"
        await _tasks(nc, small, warmup)
        step("warm-up")
        await _request(nc, trim)
        before = rss_mb(child.pid)
        with Peak(child.pid) as peak:
            seconds = await _tasks(nc, small, tasks, lambda: step("tasks"))
        after = rss_mb(child.pid)
        await _request(nc, trim)
        after_trim = rss_mb(child.pid)
    finally:
        if nc is not None:
            await nc.close()
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:  # it would not stop: the numbers are still good
            child.kill()
            child.wait(10)
        log.close()
    return {"tasks": tasks, "warmup": warmup, "inflight": INFLIGHT, "loop": ready[1] if len(ready) > 1 else None,
            "before_mb": before, "peak_mb": max(peak.peak, after), "after_mb": after, "after_trim_mb": after_trim,
            "growth_mb": after - before, "seconds": seconds, "tasks_per_s": tasks / seconds, "limit_mb": LIMIT_MB}


def main(argv: list[str] | None = None) -> None:
    """Serve as the measured agent: ``--serve URL ENV`` (what measure_rss starts)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "--serve":
        raise SystemExit("usage: python -m agentcore.bench.rss --serve URL ENVIRONMENT (agentcore bench --suite rss runs it)")
    from agentcore.loops import run

    run(_serve(args[1], args[2]))


if __name__ == "__main__":
    main()
