"""Load a saved bench run, print it as tables, compare two runs, keep it as a generated Markdown section (RESULTS.md).

A run is what ``agentcore bench --json`` saves or what the pytest-benchmark suites save in their history folder
(agentcore.bench.history); both have the same format. ``python -m agentcore.bench.report FILE`` prints a run's
Markdown section. A generated section of a Markdown file sits between two comments that name its run (a path relative
to the Markdown file) and title::

    <!-- agentcore-bench: results/bench-2026-11-30.json | agentcore bench, 2026-11-30 -->
    ... what markdown() renders from that run ...
    <!-- /agentcore-bench -->

``--update benchmarks/RESULTS.md`` rewrites every such section from its run (``--check``: only says which are stale,
exit 1); ``--add benchmarks/RESULTS.md RUN.json [--title T]`` appends a new one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from numbers import Real
from typing import Any

from .goals import HEAD as GOALS_HEAD
from .goals import NOTE as GOALS_NOTE
from .goals import goals
from .measure import METRICS
from .run import ALTERNATING, ALT_METRICS, FORMAT, summarise

__all__ = ("append", "common", "compare", "load", "main", "markdown", "metrics_of", "regenerate", "table", "validate")

WORSE = 1.10  # a ratio more than 10% worse than the saved one is flagged
RSS_SLACK_MB = 1.0  # RSS growth is flagged when it rose by more than this and by more than 10%


def validate(results: Any, where: str = "the run") -> dict[str, Any]:
    """Return results when it has the saved format's shape, else raise ValueError saying what is wrong."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{where} is not a saved bench run: {why}")

    if not isinstance(results, dict):
        raise bad("not a JSON object")
    if results.get("format") not in range(1, FORMAT + 1):
        raise bad(f"format {results.get('format')!r}, this version reads 1 to {FORMAT}")
    for key, kind in (("meta", dict), ("loops", list), ("blocks", list), ("summary", dict)):
        if not isinstance(results.get(key), kind):
            raise bad(f"{key!r} missing or not a {kind.__name__}")
    spec = results.get("metrics", {})
    if not isinstance(spec, dict) or not all(isinstance(v, list) and len(v) == 4 for v in spec.values()):
        raise bad("'metrics' is not name -> [unit, higher_is_better, baseline, suite]")
    for block in [*results["blocks"], *(results.get("alternating") or {}).get("blocks", [])]:
        if not isinstance(block, dict) or not isinstance(block.get("loop"), str) or not isinstance(block.get("metrics"), dict):
            raise bad("a block without its loop or metrics")
        if not all(isinstance(v, Real) for v in block["metrics"].values()):
            raise bad(f"a block of {block['loop']} with a metric that is not a number")
        reps = block.get("reps", {})
        if not isinstance(reps, dict) or not all(isinstance(r, list) and all(isinstance(v, Real) for v in r)
                                                 for r in reps.values()):
            raise bad(f"a block of {block['loop']} whose repetitions are not lists of numbers")
    for block in results["blocks"]:
        if block["loop"] not in results["loops"]:
            raise bad(f"a block of loop {block['loop']!r}, which 'loops' does not list")
    return results


def load(path: str) -> dict[str, Any]:
    """Read and validate a saved run."""
    with open(path, encoding="utf-8") as f:
        try:
            results = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from exc
    return validate(results, path)


def metrics_of(results: dict[str, Any]) -> dict[str, tuple[str, bool, str, str]]:
    """Return the run's metrics (name -> unit, higher is better, baseline, suite); format 1 runs used METRICS."""
    spec = results.get("metrics")
    return {name: (v[0], bool(v[1]), v[2], v[3]) for name, v in spec.items()} if spec else dict(METRICS)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}"


def _ratio(row: dict[str, Any]) -> str:
    if row["ratio"] is None:
        return ""
    text = f"{row['ratio']:.2f}x"
    if row["ratio_range"] is not None and row["ratio_range"][0] != row["ratio_range"][1]:
        text += f" ({row['ratio_range'][0]:.2f}-{row['ratio_range'][1]:.2f})"
    return text


def _main_grid(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The per-loop table: per metric, each loop's median and ratio to raw, and uvloop over raw on asyncio."""
    loops: list[str] = results["loops"]
    spec = metrics_of(results)
    summed = summarise(results["blocks"], loops, spec)  # from the blocks: a file saved earlier reads the same
    both = "uvloop" in loops and "asyncio" in loops
    head = ["metric", "unit"]
    for loop in loops:
        head += [f"{loop} median", f"{loop} vs raw"]
    if both:
        head.append("uvloop vs raw asyncio")
    rows = []
    for name, (unit, higher, _base, _suite) in spec.items():
        cells = [name, unit + ("↑" if higher else "↓")]
        seen = False
        for loop in loops:
            row = summed["summary"].get(loop, {}).get(name)
            cells += ["", ""] if row is None else [_fmt(row["median"]), _ratio(row)]
            seen = seen or row is not None
        if both:
            cross = summed["cross"].get(name)
            cells.append("" if cross is None else f"{cross:.2f}x")
        if seen:
            rows.append(cells)
    return head, rows


def _alternating_grid(results: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    blocks = (results.get("alternating") or {}).get("blocks")
    if not blocks:
        return None
    summary = summarise(blocks, [ALTERNATING], ALT_METRICS)["summary"][ALTERNATING]
    rows = [[name, unit + "↓", _fmt(summary[name]["median"]), _ratio(summary[name])]
            for name, (unit, _higher, _base, _suite) in ALT_METRICS.items() if name in summary]
    return ["round trip", "unit", "median", "vs raw asyncio"], rows


def _about(results: dict[str, Any]) -> str:
    m = results["meta"]
    load = f"load average {m['loadavg'][0]:.1f} at start" if m.get("loadavg") else "load unknown"
    if m.get("loadavg_after"):
        load += f", {m['loadavg_after'][0]:.1f} at the end"
    per_loop = len(results["blocks"]) // max(len(results["loops"]), 1)
    sizes = "quick" if results.get("quick") else "full sizes"
    blocks = f"{per_loop} block{'s' if per_loop != 1 else ''} per loop, " if per_loop else ""
    return (f"{results.get('source', 'agentcore bench')}: agentcore {m['agentcore']} ({m['implementation']}), Python "
            f"{m['python']} {m['python_implementation']}, nats-py {m['nats_py']}, uvloop {m['uvloop'] or 'not installed'}, "
            f"{m['nats_server'] or 'nats-server ?'}; {m['platform']}, {m['cpus']} CPUs, {load}; {blocks}"
            f"suites {', '.join(results.get('suites') or ['?'])} ({sizes}), {m['date']}")


_NOTE = ("vs raw: the metric over raw nats-py's (its baseline) measured in the same block on the same loop (median over "
         "blocks; range in brackets). ↓ lower is better, ↑ higher is better: below 1.0x is better for ↓ rows, above 1.0x "
         "for ↑ rows.")
_PAIRED_NOTE = (" A throughput or stream row's ratio in a block is the median over the block's repetitions of its rate over "
                "raw nats-py's in the same repetition.")
_PYTEST_NOTE = ("vs raw: the row over the raw nats-py row of its group, measured in the same session: pytest-benchmark "
                "rows (median µs per round) ran one after another, the kinds of a *_ratio test (p50 µs) interleaved in "
                "blocks. ↓ lower is better.")
_CROSS_NOTE = " uvloop vs raw asyncio: the metric on uvloop over its baseline on plain asyncio (medians of separate blocks)."
_ALT_NOTE = ("Round trips with loops alternating every round (which goes first alternates too): each row over raw nats-py "
             "on plain asyncio measured in the same round (median over rounds; range in brackets). rt_default: a raw "
             "nats-py requester -> the guide's sync process_message + publish_result in the default configuration.")


def _rss_line(results: dict[str, Any]) -> str | None:
    r = results.get("rss")
    if not r:
        return None
    if "growth_mb" not in r:
        return f"RSS: not measured ({r.get('skipped', '?')})."
    return (f"RSS of a serving agent (default configuration, {r['loop']}, own process) over {r['tasks']:,} small distinct "
            f"tasks, {r['inflight']} in flight, after {r['warmup']:,} to warm up: {r['before_mb']:.1f} -> "
            f"{r['after_mb']:.1f} MB ({r['growth_mb']:+.1f} MB; peak {r['peak_mb']:.1f} MB, {r['after_trim_mb']:.1f} MB "
            f"after malloc_trim), {r['seconds']:.1f} s ({r['tasks_per_s']:,.0f} tasks/s).")


def _text_grid(head: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [head, *rows]]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return lines


def _md_grid(head: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < left else "---:" for i in range(len(head))) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _parts(results: dict[str, Any], grid: Any) -> list[str]:
    out: list[str] = []
    if results["blocks"]:
        both = "uvloop" in results["loops"] and "asyncio" in results["loops"]
        note = _PYTEST_NOTE if str(results.get("source", "")).startswith("pytest") else _NOTE
        paired = _PAIRED_NOTE if any(b.get("reps") for b in results["blocks"]) else ""
        out += [*grid(*_main_grid(results)), "", note + paired + (_CROSS_NOTE if both else ""), ""]
    alternating = _alternating_grid(results)
    if alternating is not None:
        out += [*grid(*alternating), "", _ALT_NOTE, ""]
    rss = _rss_line(results)
    if rss is not None:
        out += [rss, ""]
    targets = goals(results)
    if targets:
        out += [*grid(GOALS_HEAD, targets, len(GOALS_HEAD)), "", GOALS_NOTE, ""]
    return out


def table(results: dict[str, Any]) -> str:
    """Return the run as plain-text tables."""
    return "\n".join([_about(results), "", *_parts(results, _text_grid)]).rstrip()


def markdown(results: dict[str, Any], title: str | None = None) -> str:
    """Return the run as a Markdown section (what RESULTS.md holds, generated, never typed)."""
    heading = title or f"{results.get('source', 'agentcore bench')}, {results['meta']['date'][:10]}"
    return "\n".join([f"## {heading}", "", f"Generated by `python -m agentcore.bench.report` from the saved run. "
                      f"{_about(results)}.", "", *_parts(results, _md_grid)])


def _flag(label: str, name: str, before: dict[str, Any] | None, row: dict[str, Any], worse: float) -> str | None:
    if row.get("ratio") is None or before is None or not before.get("ratio"):
        return None
    # A latency ratio got worse when it rose, a rate ratio when it fell.
    change = row["ratio"] / before["ratio"] if not row["higher_is_better"] else before["ratio"] / row["ratio"]
    if change <= worse:
        return None
    return f"{label} {name}: {before['ratio']:.2f}x -> {row['ratio']:.2f}x vs raw ({(change - 1) * 100:.0f}% worse)"


def _sections(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Return (label, new rows, old rows) per loop of new and for the suite uvloop's rows."""
    sections = [(loop, rows, old.get("summary", {}).get(loop, {})) for loop, rows in new["summary"].items()]
    sections.append((ALTERNATING, (new.get("alternating") or {}).get("summary") or {},
                     (old.get("alternating") or {}).get("summary") or {}))
    return sections


def common(old: dict[str, Any], new: dict[str, Any]) -> int:
    """Return how many ratios (and RSS growth) both runs have: what compare() can judge."""
    n = sum(1 for _label, rows, before in _sections(old, new) for name, row in rows.items()
            if row.get("ratio") is not None and (before.get(name) or {}).get("ratio"))
    return n + int("growth_mb" in (new.get("rss") or {}) and "growth_mb" in (old.get("rss") or {}))


def compare(old: dict[str, Any], new: dict[str, Any], worse: float = WORSE) -> list[str]:
    """Return one line per ratio to raw that got more than (worse - 1) worse from old to new, and for RSS growth."""
    flagged = []
    for label, rows, before in _sections(old, new):
        for name, row in rows.items():
            line = _flag(label, name, before.get(name), row, worse)
            if line is not None:
                flagged.append(line)
    grew, had = (new.get("rss") or {}).get("growth_mb"), (old.get("rss") or {}).get("growth_mb")
    if grew is not None and had is not None and grew > had + RSS_SLACK_MB and grew > had * worse:
        flagged.append(f"rss growth_mb: {had:+.1f} -> {grew:+.1f} MB over {new['rss']['tasks']:,} tasks")
    return flagged


# ------------------------------------------------------------------ RESULTS.md's generated sections

_SECTION = re.compile(r"<!-- agentcore-bench: (?P<path>[^|>]+?)(?: \| (?P<title>[^>]*?))? -->\n(?P<body>.*?)"
                      r"<!-- /agentcore-bench -->", re.S)


def _block(path: str, title: str | None, body: str) -> str:
    return f"<!-- agentcore-bench: {path}{' | ' + title if title else ''} -->\n{body}<!-- /agentcore-bench -->"


def _section(markdown_path: str, run_path: str, title: str | None) -> str:
    """Return the generated section for the run at run_path (relative to the Markdown file's folder)."""
    run = load(os.path.join(os.path.dirname(os.path.abspath(markdown_path)), run_path))
    return _block(run_path, title, markdown(run, title).rstrip("\n") + "\n")


def regenerate(markdown_path: str, check: bool = False) -> list[str]:
    """Regenerate every generated section of the file; return the runs whose sections were stale (and, unless check, now are not)."""
    with open(markdown_path, encoding="utf-8") as f:
        text = f.read()
    stale: list[str] = []

    def fresh(match: re.Match[str]) -> str:
        section = _section(markdown_path, match["path"], match["title"])
        if section != match[0]:
            stale.append(match["path"])
        return section

    new = _SECTION.sub(fresh, text)
    if stale and not check:
        with open(markdown_path, "w", encoding="utf-8") as f:
            f.write(new)
    return stale


def append(markdown_path: str, run_path: str, title: str | None = None) -> None:
    """Append the run as a generated section (run_path is stored relative to the Markdown file's folder)."""
    relative = os.path.relpath(os.path.abspath(run_path), os.path.dirname(os.path.abspath(markdown_path)))
    section = _section(markdown_path, relative, title)
    with open(markdown_path, encoding="utf-8") as f:
        text = f.read()
    with open(markdown_path, "w", encoding="utf-8") as f:
        f.write(text.rstrip("\n") + "\n\n" + section + "\n")


def main(argv: list[str] | None = None) -> int:
    """Print a saved run's Markdown section, or regenerate (--update) or extend (--add) RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m agentcore.bench.report", description=main.__doc__)
    parser.add_argument("file", nargs="?", help="a run saved with agentcore bench --json or by the pytest-benchmark suites")
    parser.add_argument("--title", help="the section's title (default: what made the run and its date)")
    parser.add_argument("--update", metavar="MARKDOWN", help="regenerate every generated section of MARKDOWN from its run")
    parser.add_argument("--check", action="store_true", help="with --update: change nothing, exit 1 if a section is stale")
    parser.add_argument("--add", metavar="MARKDOWN", help="append FILE to MARKDOWN as a generated section")
    args = parser.parse_args(argv)
    try:
        if args.update:
            stale = regenerate(args.update, check=args.check)
            for line in stale:
                print(("stale: " if args.check else "regenerated: ") + line, file=sys.stderr)
            return 1 if args.check and stale else 0
        if not args.file:
            parser.error("name a saved run, or --update MARKDOWN")
        if args.add:
            append(args.add, args.file, args.title)
            return 0
        print(markdown(load(args.file), args.title))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
