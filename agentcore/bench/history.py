"""The pytest-benchmark suites' history: each session's measurements saved as a bench run (`agentcore bench --json`'s format).

benchmarks/conftest.py wires the two hooks below. A session that measured anything writes one file
``pytest-<UTC time>.json`` into the history folder (benchmarks/results/history/ unless ``--bench-history DIR`` or
$AGENTCORE_BENCH_HISTORY says otherwise; ``off`` saves nothing), with machine and version info. What it holds, as the
metrics of one block on the loop the harness runs (uvloop when installed):

- every pytest-benchmark row, ``<module>::<test>[<params>]``: its median in µs per round. Within a group the row whose
  params say ``raw`` (else one starting with ``raw``) is the baseline of the others, so its ratio is to raw nats-py
  measured in the same session; rows of a group without one (compiled vs pure, MCP stdio vs NATS) have no ratio.
- every harness.interleaved() call (the ``*_ratio`` tests), ``<module>::<test>[<kind>]``: each kind's p50 in µs,
  kinds interleaved in blocks, over kind ``raw`` (else the first ``raw*``); the p99 goes into the block's extra.

``agentcore bench --compare FILE`` and ``python -m agentcore.bench.report FILE`` read these files as they read its own.
$AGENTCORE_BENCH_QUICK=1 makes interleaved() tiny (a smoke, what the tests run); the file then says quick.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ("ENV", "QUICK_ENV", "add_option", "build", "quick", "record_interleaved", "save")

ENV = "AGENTCORE_BENCH_HISTORY"
QUICK_ENV = "AGENTCORE_BENCH_QUICK"

_interleaved: list[tuple[str, dict[str, tuple[float, float, int]]]] = []
# When and under what load the session started (benchmarks/conftest.py imports this module as pytest starts).
_STARTED = (datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            list(os.getloadavg()) if hasattr(os, "getloadavg") else None)


def quick() -> bool:
    """Return whether $AGENTCORE_BENCH_QUICK asks for a smoke instead of a measurement."""
    return os.environ.get(QUICK_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _current_test() -> str:
    """Return ``<module>::<test>`` of the test running now (pytest sets $PYTEST_CURRENT_TEST), else "interleaved"."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    if "::" not in current:
        return "interleaved"
    path, test = current.split("::", 1)
    return f"{Path(path).stem}::{test}"


def record_interleaved(stats: dict[str, tuple[float, float, int]], test: str | None = None) -> None:
    """Keep one interleaved() result (kind -> p50 µs, p99 µs, calls) for the session's history file."""
    _interleaved.append((test or _current_test(), dict(stats)))


def _baseline(names: dict[str, list[str]]) -> str | None:
    """Return the name whose id parts say raw (else start with raw), or None: names maps a name to its id parts."""
    for exact in (True, False):
        for name, parts in names.items():
            if any(p == "raw" if exact else p.startswith("raw") for p in parts):
                return name
    return None


def _ids(name: str) -> list[str]:
    return name.rsplit("[", 1)[1].rstrip("]").split("-") if name.endswith("]") else []


def build(benchmarks: list[Any], interleaved: list[tuple[str, dict[str, tuple[float, float, int]]]],
          source: str, exitstatus: int | None = None) -> dict[str, Any] | None:
    """Return the bench run of a session's pytest-benchmark rows and interleaved() results, None when there are none."""
    from .run import FORMAT, available_loops, machine, summarise

    spec: dict[str, list[Any]] = {}
    metrics: dict[str, float] = {}
    extra: dict[str, float] = {}
    groups: dict[str, dict[str, list[str]]] = {}
    for bench in benchmarks:
        if not bench or bench.has_error:  # disabled or failed: nothing measured
            continue
        module = Path(bench.fullname.split("::", 1)[0]).stem
        name = f"{module}::{bench.name}"
        metrics[name] = bench.stats.median * 1e6
        groups.setdefault(bench.group or module, {})[name] = _ids(bench.name)
        for key, value in bench.extra_info.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                extra[f"{name}:{key}"] = value
    for group, names in groups.items():
        base = _baseline(names)
        for name in names:
            spec[name] = ["median µs", False, base or name, group]
    for test, stats in interleaved:
        names = {f"{test}[{kind}]": [kind] for kind in stats}
        base = _baseline(names)
        for (name, _parts), (p50, p99, _calls) in zip(names.items(), stats.values()):
            spec[name] = ["p50 µs", False, base or name, test]
            metrics[name] = p50
            extra[f"{name}:p99"] = p99
    if not metrics:
        return None
    try:
        from ..server import find_nats_server

        binary: str | None = find_nats_server()
    except Exception:  # no binary here: the run still says everything else
        binary = None
    loop = available_loops()[0]  # what harness.LoopBench runs on
    blocks = [{"block": 1, "loop": loop, "metrics": metrics, "extra": extra}]
    meta = machine(binary)
    meta["loadavg_after"] = meta["loadavg"]
    meta["date"], meta["loadavg"] = _STARTED
    meta["pytest_exitstatus"] = exitstatus
    return {"format": FORMAT, "source": source, "meta": meta, "server": "local", "quick": quick(), "sizes": {},
            "suites": sorted({s[3] for s in spec.values()}), "loops": [loop], "metrics": spec, "blocks": blocks,
            **summarise(blocks, [loop], {n: tuple(s) for n, s in spec.items()})}


def add_option(parser: Any, default: Path) -> None:
    """Add --bench-history to pytest (the folder; default $AGENTCORE_BENCH_HISTORY, else default)."""
    parser.addoption("--bench-history", metavar="DIR", default=os.environ.get(ENV) or str(default),
                     help=f"save this session's measurements as a bench run in DIR (default ${ENV}, else {default}; "
                          "'off': none)")


def save(session: Any, exitstatus: int) -> Path | None:
    """Write the session's history file (a pytest_sessionfinish hook's body); return its path, None when nothing was."""
    folder = session.config.getoption("--bench-history")
    measured, _interleaved[:] = list(_interleaved), []
    bench_session = getattr(session.config, "_benchmarksession", None)  # pytest-benchmark's, None when it is off
    rows = list(getattr(bench_session, "benchmarks", None) or [])
    if not folder or folder.lower() == "off":
        return None
    modules = sorted({Path(str(item.fspath)).stem for item in session.items})
    results = build(rows, measured, f"pytest benchmarks: {', '.join(modules)}", int(exitstatus))
    if results is None:
        return None
    os.makedirs(folder, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(folder) / f"pytest-{stamp}.json"
    if path.exists():
        path = Path(folder) / f"pytest-{stamp}-{os.getpid()}.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(f"\nbench history: saved {path} (python -m agentcore.bench.report {path})", file=sys.stderr)
    return path
