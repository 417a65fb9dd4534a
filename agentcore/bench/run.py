"""Run the measurements in interleaved blocks on each event loop and summarise them as ratios to raw nats-py."""

from __future__ import annotations

import asyncio
import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from .. import __version__
from .._impl import IMPLEMENTATION
from ..loops import loop_factory
from .measure import METRICS, QUICK, SIZES, SUITES, measure, steps

__all__ = ("FORMAT", "available_loops", "machine", "run", "summarise")

FORMAT = 1  # of the saved JSON


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


def run(url: str | None, *, quick: bool = False, blocks: int | None = None, suites: tuple[str, ...] = SUITES,
        loops: list[str] | None = None, progress: Callable[[str], None] | None = None,
        total: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Measure the suites in blocks (each loop once per block, alternating which goes first); return the results.

    url None starts a local nats-server for the run. total(n) is told the number of progress steps first.
    """
    sizes = dict(QUICK if quick else SIZES)
    blocks = blocks if blocks is not None else (1 if quick else 3)
    loops = loops or available_loops()
    server = None
    binary = None
    if url is None:
        from ..server import NATSServer

        server = NATSServer(jetstream=False).start()
        url, binary = server.url, server.binary
    if total is not None:
        total(steps(sizes, suites) * blocks * len(loops))
    meta = machine(binary)
    results: list[dict[str, Any]] = []
    try:
        for i in range(blocks):
            order = loops if i % 2 == 0 else loops[::-1]  # neither loop always runs first
            for loop in order:
                label = (lambda kind, loop=loop, i=i: progress(f"block {i + 1}/{blocks} {loop} {kind}")) if progress else None
                with asyncio.Runner(loop_factory=_factory(loop)) as runner:
                    block = runner.run(measure(url, sizes, suites, label))
                results.append({"block": i + 1, "loop": block["loop"], "metrics": block["metrics"], "extra": block["extra"]})
    finally:
        if server is not None:
            server.stop()
    meta["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"format": FORMAT, "meta": meta, "server": "local" if server is not None else url, "quick": quick,
            "sizes": sizes, "suites": list(suites), "loops": loops, "blocks": results, **summarise(results, loops)}


def summarise(blocks: list[dict[str, Any]], loops: list[str]) -> dict[str, Any]:
    """Return per loop and metric the median over blocks and the median of each block's ratio to raw nats-py.

    A ratio is agent/raw for both kinds of metric; for rates (higher is better) above 1.0 is better, for
    latencies (lower is better) below 1.0 is better. "cross" holds each uvloop metric over asyncio's raw one.
    """
    summary: dict[str, dict[str, Any]] = {}
    for loop in loops:
        mine = [b["metrics"] for b in blocks if b["loop"] == loop]
        rows: dict[str, Any] = {}
        for name, (unit, higher, base, _suite) in METRICS.items():
            values = [m[name] for m in mine if name in m]
            if not values:
                continue
            ratios = [m[name] / m[base] for m in mine if name in m and m.get(base)]
            rows[name] = {"unit": unit, "higher_is_better": higher, "baseline": base, "median": statistics.median(values),
                          "ratio": statistics.median(ratios) if name != base and ratios else None,
                          "ratio_range": [min(ratios), max(ratios)] if name != base and ratios else None}
        summary[loop] = rows
    cross: dict[str, float] = {}
    if "uvloop" in summary and "asyncio" in summary:
        fast, plain = summary["uvloop"], summary["asyncio"]
        for name, (_unit, _higher, base, _suite) in METRICS.items():
            if name in fast and base in plain:  # a raw row: raw nats-py on uvloop over raw nats-py on asyncio
                cross[name] = fast[name]["median"] / plain[base]["median"]
    return {"summary": summary, "cross": cross}
