"""The performance targets a bench run is held against, one line each: what was asked, what was measured, met or not.

The targets are the ones the project set itself for the guide's style and throughput (docs/performance.md): the guide's
sync path within 1.10x of raw nats-py's round trip, one-way and pipelined throughput at least raw nats-py's (aiming at
2x one-way), the default install's round trip on uvloop at most 0.80x raw nats-py's on plain asyncio, and a serving
agent's RSS growing less than 5 MB over 1,000,000 small tasks.
"""

from __future__ import annotations

import statistics
from typing import Any

from .run import block_ratio

__all__ = ("HEAD", "NOTE", "goals")

HEAD = ["goal", "target", "measured", "verdict"]
NOTE = ("Goals: rt_default is a raw nats-py requester -> the guide's sync process_message + publish_result in the default "
        "configuration (rt_sync: the same with the result cache off); throughput rows are over a raw nats-py subscriber "
        "(orjson.loads, and respond when pipelined) in the same block; the default install row sets the agent on uvloop "
        "against raw nats-py on plain asyncio in alternating rounds; RSS is a serving agent's own process.")


def _ratio(row: dict[str, Any] | None) -> str:
    if row is None or row.get("ratio") is None:
        return "?"
    text = f"{row['ratio']:.2f}x"
    low, high = row.get("ratio_range") or (None, None)
    return text + (f" ({low:.2f}-{high:.2f})" if low is not None and low != high else "")


def _per_loop(results: dict[str, Any], name: str, limit: float, higher: bool) -> tuple[str, bool] | None:
    """Return "loop ratio, ..." for name on every loop and whether every loop meets limit; None when not measured."""
    rows = [(loop, results["summary"].get(loop, {}).get(name)) for loop in results["loops"]]
    rows = [(loop, row) for loop, row in rows if row is not None and row.get("ratio") is not None]
    if not rows:
        return None
    met = all(row["ratio"] >= limit if higher else row["ratio"] <= limit for _loop, row in rows)
    return ", ".join(f"{loop} {_ratio(row)}" for loop, row in rows), met


def _same_answer(results: dict[str, Any], name: str = "pipe_rawreq") -> tuple[str, bool] | None:
    """Return name over pipe_rawenv per loop (median of the blocks' ratios) and whether each is >= 1.0."""
    cells, met = [], True
    for loop in results["loops"]:
        ratios = [r for r in (block_ratio(b, name, "pipe_rawenv") for b in results["blocks"] if b["loop"] == loop)
                  if r is not None]
        if ratios:
            ratio = statistics.median(ratios)
            cells.append(f"{loop} {_ratio({'ratio': ratio, 'ratio_range': [min(ratios), max(ratios)]})}")
            met = met and ratio >= 1.0
    return (", ".join(cells), met) if cells else None


def goals(results: dict[str, Any]) -> list[list[str]]:
    """Return [goal, target, measured, verdict] for each target the run measured (nothing for a pytest history run)."""
    out: list[list[str]] = []
    quick = bool(results.get("quick"))

    def verdict(met: bool, more: str = "") -> str:
        if quick:
            return "quick run: not a measurement"
        return ("met" if met else "not met") + more

    guide = "rt_default" if any("rt_default" in results["summary"].get(loop, {}) for loop in results["loops"]) else "rt_sync"
    found = _per_loop(results, guide, 1.10, higher=False)
    if found:
        out.append([f"guide style round trip p50 ({guide}) vs raw", "<= 1.10x", found[0], verdict(found[1])])
    for name, what in (("oneway_agent", "one-way throughput"), ("pipe_rawreq", "pipelined, raw requester -> agent"),
                       ("pipe_agent", "pipelined, agent -> agent"),
                       ("oneway_default", "one-way throughput, default configuration (duplicate detection on)"),
                       ("pipe_default", "pipelined, raw requester -> the guide's agent, default configuration"),
                       ("pipe_guide", "pipelined, agent (send_task) -> the guide's agent, both in the default configuration")):
        found = _per_loop(results, name, 1.0, higher=True)
        if found:
            best = max(results["summary"][loop][name]["ratio"] for loop in results["loops"]
                       if results["summary"].get(loop, {}).get(name, {}).get("ratio") is not None)
            toward = f"; {best / 2:.0%} of the 2x moonshot" if name == "oneway_agent" else ""
            out.append([f"{what} ({name}) vs raw", ">= 1.0x" + (" (2x)" if name == "oneway_agent" else ""), found[0],
                        verdict(found[1], toward)])
        if name in ("pipe_rawreq", "pipe_default"):
            same = _same_answer(results, name)
            if same:
                who = "agent" if name == "pipe_rawreq" else "the guide's agent, default configuration,"
                out.append([f"pipelined, raw requester -> {who} vs a raw responder sending the agent's answer, the guide's "
                            f"result envelope ({name} / pipe_rawenv)", ">= 1.0x", same[0], verdict(same[1])])
    alternating = results.get("alternating") or {}
    row = (alternating.get("summary") or {}).get("rt_default@uvloop")
    what = f"default install: {'rt_default' if row is not None else guide} on uvloop vs raw on asyncio"
    if row is not None and row.get("ratio") is not None:
        out.append([what, "<= 0.80x", _ratio(row), verdict(row["ratio"] <= 0.80)])
    elif results.get("cross", {}).get(guide) is not None:
        ratio = results["cross"][guide]
        out.append([what + " (block medians)", "<= 0.80x", f"{ratio:.2f}x", verdict(ratio <= 0.80)])
    elif alternating.get("skipped"):
        out.append([what, "<= 0.80x", "not measured: " + alternating["skipped"], "?"])
    rss = results.get("rss")
    if rss and "growth_mb" in rss:
        note = "" if rss["tasks"] >= 1_000_000 else f" (only {rss['tasks']:,} tasks)"
        out.append([f"RSS growth over {rss['tasks']:,} tasks", f"< {rss['limit_mb']:g} MB",
                    f"{rss['growth_mb']:+.1f} MB ({rss['before_mb']:.1f} -> {rss['after_mb']:.1f} MB)",
                    verdict(rss["growth_mb"] < rss["limit_mb"], note)])
    elif rss and rss.get("skipped"):
        out.append(["RSS growth", "< 5 MB", "not measured: " + rss["skipped"], "?"])
    return out
