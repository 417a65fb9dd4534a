"""`agentcore bench`: a smoke of the whole command (no timing assertions), comparing runs, the RESULTS.md renderer."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentcore.bench.measure import _RT_KINDS, METRICS, SIZES, _rotated
from agentcore.bench.report import compare, load
from agentcore.bench.run import ALT_METRICS, block_ratio, summarise, uvloop_installed


def test_bench_quick_runs_every_suite_and_saves_json(cli, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    proc = cli("bench", "--quick", "--json", str(out), timeout=300)  # against the test's server ($NATS_URL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rt_sync" in proc.stdout and "vs raw" in proc.stdout
    saved = load(str(out))  # the loader validates the format
    assert saved["meta"]["python"] and saved["meta"]["agentcore"] and saved["meta"]["nats_py"]
    assert saved["quick"] is True and saved["server"] != "local"
    for loop in saved["loops"]:  # every metric measured on every loop, each agent metric with its ratio to raw
        rows = saved["summary"][loop]
        assert set(rows) == set(METRICS)
        assert all(row["ratio"] is not None for name, row in rows.items() if name != row["baseline"])
    for block in saved["blocks"]:  # every repetition's rate kept for the paired ratios, one per repetition
        assert set(block["reps"]) == {name for name, spec in METRICS.items() if spec[3] in ("throughput", "stream")}
        assert all(len(rates) == saved["sizes"]["oneway_reps"] for name, rates in block["reps"].items()
                   if name.startswith("oneway"))
    # The targets in the same run: uvloop against raw nats-py on asyncio, RSS over (here few) tasks.
    if uvloop_installed():
        assert set(saved["alternating"]["summary"]) == set(ALT_METRICS)
        assert saved["alternating"]["summary"]["rt_default@uvloop"]["ratio"] > 0
    rss = saved["rss"]
    assert rss["tasks"] == 2000 and rss["after_mb"] > 0 and "growth_mb" in rss
    for goal in ("guide style round trip", "one-way throughput", "pipelined", "(pipe_rawreq / pipe_rawenv)", "(pipe_guide)",
                 "RSS growth over 2,000 tasks"):
        assert goal in proc.stdout
    assert "bench: rss" in proc.stderr  # the progress covers every suite

    # The same run compared with itself flags nothing; the renderer turns it into a RESULTS.md section.
    same = cli("bench", "--quick", "--suite", "roundtrip", "--compare", str(out), "--fail-on-regression", timeout=300)
    assert same.returncode in (0, 3), same.stdout + same.stderr  # a quick run is noise: only that it compares
    assert "10%" in same.stdout
    rendered = subprocess.run([sys.executable, "-m", "agentcore.bench.report", str(out)], capture_output=True, text=True,
                              timeout=60, check=True).stdout
    assert rendered.startswith("## agentcore bench") and "| rt_sync |" in rendered and "| RSS growth over" in rendered


def test_compare_flags_a_ratio_more_than_ten_percent_worse() -> None:
    def run(ratio_sync: float, ratio_oneway: float) -> dict:
        rows = {"rt_sync": {"ratio": ratio_sync, "higher_is_better": False},
                "oneway_agent": {"ratio": ratio_oneway, "higher_is_better": True}}
        return {"summary": {"asyncio": rows}}

    old = run(1.00, 1.00)
    assert compare(old, run(1.05, 0.95)) == []  # within 10%
    flagged = compare(old, run(1.20, 0.80))  # a latency ratio up 20%, a rate ratio down 20%
    assert [line.split(":")[0] for line in flagged] == ["asyncio rt_sync", "asyncio oneway_agent"]
    assert compare(old, run(0.80, 1.30)) == []  # better is never flagged
    assert compare(copy.deepcopy(old), old) == []


def test_progress_is_one_rewritten_line_on_a_terminal_and_block_lines_elsewhere() -> None:
    import io

    from agentcore.cli.bench import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, tty in ((Terminal(), True), (io.StringIO(), False)):
        progress = Progress(stream)
        progress.start(4)
        for label in ("block 1/2 uvloop rt_raw", "block 1/2 uvloop rt_sync", "block 2/2 asyncio rt_raw",
                      "block 2/2 asyncio rt_sync"):
            progress.step(label)
        progress.end()
        text = stream.getvalue()
        if tty:
            assert text.count("\r") == 4 and "4/4" in text and text.endswith("\n")
        else:
            assert text.splitlines() == ["bench: block 1/2 uvloop (1/4)", "bench: block 2/2 asyncio (3/4)"]


def test_round_trip_rounds_rotate_so_no_kind_runs_twice_in_a_row_and_each_takes_every_place() -> None:
    rounds = SIZES["rt_rounds"]
    sequence = [kind for rnd in range(rounds) for kind in _rotated(_RT_KINDS, rnd)]
    assert all(a != b for a, b in zip(sequence, sequence[1:]))
    assert all(sorted(_rotated(_RT_KINDS, rnd)) == sorted(_RT_KINDS) for rnd in range(rounds))
    places = {kind: [_rotated(_RT_KINDS, rnd).index(kind) for rnd in range(rounds)] for kind in _RT_KINDS}
    assert all(sorted(set(p)) == list(range(len(_RT_KINDS))) and len(set(p.count(i) for i in set(p))) == 1
               for p in places.values())


def test_a_block_ratio_pairs_each_repetition_with_raw_where_the_block_kept_them() -> None:
    kept = {"loop": "asyncio", "metrics": {"oneway_raw": 100.0, "oneway_agent": 110.0},
            "reps": {"oneway_raw": [100.0, 50.0, 100.0], "oneway_agent": [110.0, 60.0, 130.0]}}
    # Each repetition over raw's in the same repetition (1.1, 1.2, 1.3), not the medians' ratio (1.1).
    assert block_ratio(kept, "oneway_agent", "oneway_raw") == 1.2
    older = {"loop": "asyncio", "metrics": {"oneway_raw": 100.0, "oneway_agent": 110.0}}  # saved before reps were kept
    assert block_ratio(older, "oneway_agent", "oneway_raw") == 1.1
    assert block_ratio({"loop": "asyncio", "metrics": {"oneway_agent": 1.0}}, "oneway_agent", "oneway_raw") is None
    uneven = {**kept, "reps": {"oneway_raw": [100.0], "oneway_agent": [110.0, 60.0]}}
    assert block_ratio(uneven, "oneway_agent", "oneway_raw") == 1.1
    row = summarise([kept, older], ["asyncio"])["summary"]["asyncio"]["oneway_agent"]
    assert row["ratio_range"] == [1.1, 1.2] and row["median"] == 110.0


def test_the_loader_refuses_repetitions_that_are_not_lists_of_numbers(tmp_path: Path) -> None:
    saved = json.loads((Path(__file__).parents[2] / "benchmarks" / "results" / "bench-s14-first-2026-12-02.json").read_text())
    saved["blocks"][0]["reps"] = {"oneway_raw": ["fast"]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="repetitions"):
        load(str(bad))
