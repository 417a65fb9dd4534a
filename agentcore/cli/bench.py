"""`agentcore bench`: measure agentcore against raw nats-py in the same run, print ratios, save and compare runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO

from ..bench.report import common, compare, load, table
from ..bench.run import ALL_SUITES, run

__all__ = ("bench",)

EXIT_REGRESSED = 3


class Progress:
    """A one-line progress bar on a terminal (rich is not a dependency); elsewhere one line per finished block."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.total = 0
        self.done = 0
        self.started = time.monotonic()
        self._block = ""

    def start(self, total: int) -> None:
        self.total = max(total, 1)

    def step(self, label: str) -> None:
        self.done += 1
        block = label.rsplit(" ", 1)[0]
        if self.tty:
            filled = self.width * self.done // self.total
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total} {time.monotonic() - self.started:4.0f}s {label:<40}")
            self.stream.flush()
        elif block != self._block:
            self._block = block
            self.stream.write(f"bench: {block} ({self.done}/{self.total})\n")
            self.stream.flush()

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def bench(args: argparse.Namespace) -> int:
    """Run the suites (or read a saved run: --load), print the tables, save (--json) and compare (--compare) runs."""
    old: dict[str, Any] | None = None
    saved: dict[str, Any] | None = None
    try:  # read first: a missing or broken file fails before minutes of measuring
        old = load(args.compare) if args.compare else None
        saved = load(args.load) if args.load else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    url = args.server or os.environ.get("NATS_URL") or None
    suites = tuple(s for part in (args.suites or [",".join(ALL_SUITES)]) for s in part.split(",") if s)
    unknown = sorted(set(suites) - set(ALL_SUITES))
    if unknown:
        print(f"error: unknown suite {', '.join(unknown)} (the suites: {', '.join(ALL_SUITES)})", file=sys.stderr)
        return 2
    if saved is not None:
        results = saved
    else:
        progress = Progress()
        try:
            results = run(url, quick=args.quick, blocks=args.blocks, suites=suites, loops=args.loops,
                          progress=progress.step, total=progress.start,
                          sizes={"rss_tasks": args.rss_tasks} if args.rss_tasks else None)
        finally:
            progress.end()
    print(table(results))
    if args.json and saved is None:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
        print(f"\nsaved to {args.json}", file=sys.stderr)
    if old is not None and not common(old, results):
        print(f"\nnothing to compare: no ratio of {args.compare} was measured in this run")
    elif old is not None:
        flagged = compare(old, results)
        if flagged:
            print(f"\nworse than {args.compare} by more than 10%:", *flagged, sep="\n  ")
            if args.fail_on_regression:
                return EXIT_REGRESSED
        else:
            print(f"\nno ratio more than 10% worse than {args.compare}")
    return 0
