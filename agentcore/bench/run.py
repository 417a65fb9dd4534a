"""Run the measurements in interleaved blocks on each event loop and summarise them as ratios to raw nats-py."""

from __future__ import annotations

import asyncio
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .. import __version__
from .._impl import IMPLEMENTATION
from ..loops import loop_factory
from . import rss
from .measure import METRICS, QUICK, SIZES, SUITES, UV_KINDS, DefaultInstall, measure, steps

__all__ = ("ALL_SUITES", "ALTERNATING", "ALT_METRICS", "FORMAT", "available_loops", "block_ratio", "machine", "run",
           "summarise", "total_steps", "uvloop_installed")

T = TypeVar("T")

FORMAT = 2  # of the saved JSON (1: no "metrics", "alternating" or "rss" yet; read the same)

#: Every suite: the per-loop ones of measure.py, then "uvloop" (the default install on uvloop against raw nats-py
#: on asyncio, loops alternating every round) and "rss" (agentcore.bench.rss).
ALL_SUITES = (*SUITES, "uvloop", "rss")

ALTERNATING = "uvloop/asyncio"  # the "loop" the suite uvloop's rows are filed under

#: The suite uvloop's rows, each over raw nats-py on plain asyncio measured in the same round.
ALT_METRICS: dict[str, tuple[str, bool, str, str]] = {
    "rt_raw@asyncio": ("p50 µs", False, "rt_raw@asyncio", "uvloop"),
    "rt_raw@uvloop": ("p50 µs", False, "rt_raw@asyncio", "uvloop"),
    "rt_default@asyncio": ("p50 µs", False, "rt_raw@asyncio", "uvloop"),
    "rt_default@uvloop": ("p50 µs", False, "rt_raw@asyncio", "uvloop"),
}


def uvloop_installed() -> bool:
    """Return whether uvloop can be imported (the suite uvloop needs it, whatever AGENTCORE_NO_UVLOOP says)."""
    return importlib.util.find_spec("uvloop") is not None


def available_loops() -> list[str]:
    """Return the loops a run compares: uvloop (when installed and not turned off) and asyncio."""
    return ["uvloop", "asyncio"] if loop_factory() is not asyncio.new_event_loop else ["asyncio"]


def _factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _server_version(binary: str | None) -> str | None:
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def machine(server_binary: str | None = None) -> dict[str, Any]:
    """Return what the numbers depend on: machine, load, Python, versions."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "agentcore": __version__,
        "implementation": IMPLEMENTATION,
        "nats_py": _version("nats-py"),
        "uvloop": _version("uvloop"),
        "orjson": _version("orjson"),
        "nats_server": _server_version(server_binary),
    }


def _prefixed(progress: Callable[[str], None] | None, prefix: str) -> Callable[[str], None] | None:
    """Return progress with prefix before each label (None stays None)."""
    if progress is None:
        return None
    report = progress
    return lambda label: report(f"{prefix} {label}")


def total_steps(sizes: dict[str, int], suites: tuple[str, ...], blocks: int, loops: list[str]) -> int:
    """Return how many progress steps run() reports."""
    per_loop = tuple(s for s in suites if s in SUITES)
    n = steps(sizes, per_loop) * blocks * len(loops) if per_loop else 0
    if "uvloop" in suites and uvloop_installed():
        n += sizes["uv_rounds"] * 2 * len(UV_KINDS)
    if "rss" in suites:
        n += rss.STEPS
    return n


def run(url: str | None, *, quick: bool = False, blocks: int | None = None, suites: tuple[str, ...] = ALL_SUITES,
        loops: list[str] | None = None, progress: Callable[[str], None] | None = None,
        total: Callable[[int], None] | None = None, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """Measure the suites and return the results: roundtrip, throughput and stream in blocks (each loop once per
    block, alternating which goes first), then uvloop (rounds alternating the loops) and rss (once).

    url None starts a local nats-server for the run. total(n) is told the number of progress steps first. sizes
    overrides single sizes of the full (or --quick) set, e.g. {"rss_tasks": 100_000}.
    """
    unknown = set(suites) - set(ALL_SUITES)
    if unknown:
        raise ValueError(f"unknown suite {', '.join(sorted(unknown))}: the suites are {', '.join(ALL_SUITES)}")
    sizes = {**(QUICK if quick else SIZES), **(sizes or {})}
    blocks = blocks if blocks is not None else (1 if quick else 3)
    loops = loops or available_loops()
    per_loop = tuple(s for s in suites if s in SUITES)
    server = None
    binary = None
    if url is None:
        from ..server import NATSServer

        server = NATSServer(jetstream=False).start()
        url, binary = server.url, server.binary
    if total is not None:
        total(total_steps(sizes, suites, blocks, loops))
    meta = machine(binary)
    results: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    try:
        for i in range(blocks if per_loop else 0):
            order = loops if i % 2 == 0 else loops[::-1]  # neither loop always runs first
            for loop in order:
                with asyncio.Runner(loop_factory=_factory(loop)) as runner:
                    block = runner.run(measure(url, sizes, per_loop, _prefixed(progress, f"block {i + 1}/{blocks} {loop}")))
                results.append({"block": i + 1, "loop": block["loop"], "metrics": block["metrics"], "extra": block["extra"],
                                "reps": block.get("reps", {})})
        if "uvloop" in suites:
            out["alternating"] = _alternate(url, sizes, progress) if uvloop_installed() else {
                "skipped": "uvloop is not installed (pip install 'agentcore-nats[fast]')"}
        if "rss" in suites:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                out["rss"] = runner.run(rss.measure_rss(url, sizes["rss_tasks"], sizes["rss_warmup"],
                                                        _prefixed(progress, "rss")))
    finally:
        if server is not None:
            server.stop()
    meta["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"format": FORMAT, "source": "agentcore bench", "meta": meta, "server": "local" if server is not None else url,
            "quick": quick, "sizes": sizes, "suites": list(suites), "loops": loops if per_loop else [],
            "metrics": {name: list(spec) for name, spec in METRICS.items()}, "blocks": results,
            **summarise(results, loops if per_loop else []), **out}


class _LoopThread:
    """An event loop of one kind running in its own thread, kept across rounds (idle in epoll while the other works)."""

    def __init__(self, loop: str) -> None:
        self.loop = _factory(loop)()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=f"agentcore-bench-{loop}")
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def _alternate(url: str, sizes: dict[str, int], progress: Callable[[str], None] | None) -> dict[str, Any]:
    """The suite uvloop: rt_raw and rt_default on a uvloop and an asyncio loop kept open, loops alternating each round.

    Each loop runs in its own thread; only one measures at a time (this thread waits for it), so they never compete.
    """
    rounds, per_round = sizes["uv_rounds"], sizes["uv_per_round"]
    threads = {loop: _LoopThread(loop) for loop in ("uvloop", "asyncio")}
    sides: dict[str, DefaultInstall] = {}
    blocks: list[dict[str, Any]] = []
    try:
        for loop, thread in threads.items():
            sides[loop] = thread.call(DefaultInstall(url).open(), 60)
            for kind in UV_KINDS:  # warm up and prove each path works
                thread.call(sides[loop].block(kind, 100))
        for i in range(rounds):
            metrics: dict[str, float] = {}
            for loop in (("uvloop", "asyncio") if i % 2 == 0 else ("asyncio", "uvloop")):
                for kind in (UV_KINDS if i // 2 % 2 == 0 else UV_KINDS[::-1]):  # no kind always first on a loop
                    metrics[f"{kind}@{loop}"] = statistics.median(threads[loop].call(sides[loop].block(kind, per_round))) * 1e6
                    if progress is not None:
                        progress(f"{ALTERNATING} round {i + 1}/{rounds} {loop} {kind}")
            blocks.append({"block": i + 1, "loop": ALTERNATING, "metrics": metrics})
    finally:
        for loop, side in sides.items():
            threads[loop].call(side.close(), 60)
        for thread in threads.values():
            thread.close()
    return {"metrics": {name: list(spec) for name, spec in ALT_METRICS.items()}, "blocks": blocks,
            "summary": summarise(blocks, [ALTERNATING], ALT_METRICS)["summary"][ALTERNATING]}


def block_ratio(block: dict[str, Any], name: str, base: str) -> float | None:
    """Return one block's ratio of metric name to its baseline: the median of the repetitions' paired ratios where
    the block kept every repetition's rate, else the ratio of the two metrics (None without a baseline).

    Pairing each repetition with raw nats-py's in the same repetition (run next to it) takes out the load the box
    had at the time: in one-way runs of raw nats-py against itself, the standard deviation of a block's ratio was
    20-37% smaller than as the ratio of the two medians (benchmarks/oneway_noise.py).
    """
    reps = block.get("reps") or {}
    mine, raw = reps.get(name), reps.get(base)
    if mine and raw and len(mine) == len(raw) and all(raw):
        return float(statistics.median([a / b for a, b in zip(mine, raw)]))
    metrics = block["metrics"]
    if name not in metrics or not metrics.get(base):
        return None
    return float(metrics[name] / metrics[base])


def summarise(blocks: list[dict[str, Any]], loops: list[str],
              metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return per loop and metric the median over blocks and the median of each block's ratio to raw nats-py
    (block_ratio).

    A ratio is agent/raw for both kinds of metric; for rates (higher is better) above 1.0 is better, for
    latencies (lower is better) below 1.0 is better. "cross" holds each uvloop metric over asyncio's raw one.
    metrics (name -> unit, higher is better, baseline, suite) defaults to measure.METRICS.
    """
    spec = METRICS if metrics is None else metrics
    summary: dict[str, dict[str, Any]] = {}
    for loop in loops:
        mine = [b for b in blocks if b["loop"] == loop]
        rows: dict[str, Any] = {}
        for name, (unit, higher, base, _suite) in spec.items():
            values = [b["metrics"][name] for b in mine if name in b["metrics"]]
            if not values:
                continue
            ratios = [r for r in (block_ratio(b, name, base) for b in mine) if r is not None]
            rows[name] = {"unit": unit, "higher_is_better": higher, "baseline": base, "median": statistics.median(values),
                          "ratio": statistics.median(ratios) if name != base and ratios else None,
                          "ratio_range": [min(ratios), max(ratios)] if name != base and ratios else None}
        summary[loop] = rows
    cross: dict[str, float] = {}
    if "uvloop" in summary and "asyncio" in summary:
        fast, plain = summary["uvloop"], summary["asyncio"]
        for name, (_unit, _higher, base, _suite) in spec.items():
            if name in fast and base in plain:  # a raw row: raw nats-py on uvloop over raw nats-py on asyncio
                cross[name] = fast[name]["median"] / plain[base]["median"]
    return {"summary": summary, "cross": cross}
