"""Saved bench runs: the pytest-benchmark suites' history, the loader, comparing, RESULTS.md's generated sections."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agentcore.bench import history
from agentcore.bench.report import append, common, compare, load, markdown, regenerate, validate
from cli_helpers import CLI, ROOT, command_env


def test_a_pytest_benchmark_suite_saves_its_history_as_a_bench_run(tmp_path: Path) -> None:
    """A real suite (its own nats-server) in a subprocess, interleaved() cut to a smoke: the file loads and compares."""
    folder = tmp_path / "history"
    env = command_env(None, **{history.QUICK_ENV: "1"})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/bench_roundtrip.py",
                           "--bench-history", str(folder)], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [saved] = list(folder.iterdir())
    run = load(str(saved))  # the loader `agentcore bench --compare` uses validates it
    assert run["source"] == "pytest benchmarks: bench_roundtrip" and run["quick"] is True
    assert run["meta"]["python"] and run["meta"]["nats_py"] and run["meta"]["pytest_exitstatus"] == 0
    [loop] = run["loops"]
    rows = run["summary"][loop]
    # The interleaved ratio test and the pytest-benchmark rows, each agent row over raw nats-py of the same session.
    for test in ("bench_roundtrip::test_roundtrip_ratio", "bench_roundtrip::test_roundtrip"):
        assert rows[f"{test}[raw]"]["ratio"] is None
        for kind in ("agent", "agent_cache"):
            assert rows[f"{test}[{kind}]"]["baseline"] == f"{test}[raw]" and rows[f"{test}[{kind}]"]["ratio"] > 0
    assert run["blocks"][0]["extra"]["bench_roundtrip::test_roundtrip_ratio[agent]:p99"] > 0

    # agentcore bench shows it and compares it with another saved run (here itself: nothing flagged).
    shown = subprocess.run([*CLI, "bench", "--load", str(saved), "--compare", str(saved), "--fail-on-regression"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=command_env(None))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "test_roundtrip_ratio[agent]" in shown.stdout and "no ratio more than 10% worse" in shown.stdout
    assert markdown(run).startswith("## pytest benchmarks: bench_roundtrip, ")


def test_results_md_is_generated_from_the_saved_runs() -> None:
    """Every generated section of benchmarks/RESULTS.md is what its saved run renders to (none typed by hand)."""
    path = ROOT / "benchmarks" / "RESULTS.md"
    assert "<!-- agentcore-bench: " in path.read_text(encoding="utf-8")
    stale = regenerate(str(path), check=True)
    assert stale == [], f"regenerate: python -m agentcore.bench.report --update benchmarks/RESULTS.md ({stale})"


def test_add_then_update_keeps_a_section_equal_to_its_run(tmp_path: Path) -> None:
    saved = ROOT / "benchmarks" / "results" / "bench-2026-11-30.json"
    (tmp_path / "runs").mkdir()
    run_path = tmp_path / "runs" / "run.json"
    run_path.write_text(saved.read_text(encoding="utf-8"), encoding="utf-8")
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nwritten by hand\n", encoding="utf-8")
    append(str(md), str(run_path), "a run")
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nwritten by hand\n") and "<!-- agentcore-bench: runs/run.json | a run -->" in text
    assert "## a run" in text and regenerate(str(md), check=True) == []
    md.write_text(text.replace("| rt_sync |", "| rt_sync (typed) |"), encoding="utf-8")  # a hand edit
    assert regenerate(str(md), check=True) == ["runs/run.json"]
    assert regenerate(str(md)) == ["runs/run.json"] and md.read_text(encoding="utf-8") == text
    cmd = subprocess.run([sys.executable, "-m", "agentcore.bench.report", "--update", str(md), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert cmd.returncode == 0, cmd.stderr


def _run(**ratios: float) -> dict[str, Any]:
    blocks = [{"block": 1, "loop": "asyncio", "metrics": {"rt_raw": 100.0, **{k: 100.0 * v for k, v in ratios.items()}}}]
    from agentcore.bench.run import summarise

    return {"format": 2, "meta": {}, "loops": ["asyncio"], "blocks": blocks, **summarise(blocks, ["asyncio"])}


def test_the_loader_says_why_a_file_is_not_a_run(tmp_path: Path) -> None:
    good = _run(rt_sync=1.0)
    assert validate(copy.deepcopy(good)) == good
    for broken, why in ((["a list"], "not a JSON object"), ({**good, "format": 99}, "format 99"),
                        ({**good, "blocks": None}, "'blocks'"),
                        ({**good, "blocks": [{"loop": "asyncio", "metrics": {"rt_raw": "fast"}}]}, "not a number"),
                        ({**good, "blocks": [{"loop": "uvloop", "metrics": {}}]}, "'loops' does not list"),
                        ({**good, "metrics": {"x": ["µs"]}}, "'metrics'")):
        with pytest.raises(ValueError, match="not a saved bench run") as caught:
            validate(broken)
        assert why in str(caught.value)
    path = tmp_path / "bad.json"
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="is not JSON"):
        load(str(path))
    proc = subprocess.run([*CLI, "bench", "--compare", str(path)], capture_output=True, text=True, timeout=60,
                          env=command_env(None))
    assert proc.returncode == 2 and "is not JSON" in proc.stderr  # before any measuring


def test_compare_covers_the_uvloop_rounds_and_rss_growth() -> None:
    def run(ratio: float, growth: float) -> dict[str, Any]:
        alternating = {"summary": {"rt_default@uvloop": {"ratio": ratio, "higher_is_better": False}}}
        return {"summary": {}, "alternating": alternating, "rss": {"growth_mb": growth, "tasks": 1_000_000}}

    old = run(0.9, 0.8)
    assert common(old, run(0.9, 0.8)) == 2 and compare(old, run(0.95, 1.5)) == []  # within 10%; RSS within 1 MB
    assert [line.split(":")[0] for line in compare(old, run(1.2, 3.0))] == ["uvloop/asyncio rt_default@uvloop",
                                                                            "rss growth_mb"]
    assert common({"summary": {}}, run(0.9, 0.8)) == 0  # nothing in common: nothing can be judged


def test_history_takes_the_raw_row_of_each_group_as_baseline() -> None:
    def row(name: str, group: str | None, median: float) -> Any:
        stats = SimpleNamespace(median=median)
        return SimpleNamespace(name=name, fullname=f"benchmarks/bench_x.py::{name}", group=group, stats=stats,
                               has_error=False, extra_info={"calls": 200, "note": "text"})

    rows = [row("test_rt[raw_headers]", "rt", 2e-3), row("test_rt[raw]", "rt", 1e-3), row("test_rt[agent]", "rt", 1.5e-3),
            row("test_neg[agent-5]", "neg-5", 4e-3), row("test_neg[raw-5]", "neg-5", 2e-3),
            row("test_core[c-extension]", "core", 1e-6), row("test_core[pure-python]", "core", 1e-5)]
    run = history.build(rows, [("bench_x::test_ratio", {"raw_js": (100.0, 200.0, 50), "agent_js": (120.0, 260.0, 50)})],
                        "pytest benchmarks: bench_x", 0)
    assert run is not None
    rows_out = validate(json.loads(json.dumps(run)))["summary"][run["loops"][0]]
    assert rows_out["bench_x::test_rt[agent]"]["baseline"] == "bench_x::test_rt[raw]"  # exactly raw before raw_*
    assert rows_out["bench_x::test_rt[agent]"]["ratio"] == pytest.approx(1.5)
    assert rows_out["bench_x::test_neg[agent-5]"]["ratio"] == pytest.approx(2.0)
    assert rows_out["bench_x::test_core[pure-python]"]["ratio"] is None  # no raw row in the group: no ratio
    assert rows_out["bench_x::test_ratio[agent_js]"]["ratio"] == pytest.approx(1.2)
    assert run["blocks"][0]["extra"]["bench_x::test_rt[raw]:calls"] == 200
    assert history.build([], [], "nothing", 0) is None


def test_history_can_be_turned_off(tmp_path: Path) -> None:
    config = SimpleNamespace(getoption=lambda name: "off", invocation_params=SimpleNamespace(args=()))
    history.record_interleaved({"raw": (1.0, 2.0, 3)}, "bench_x::test_ratio")
    assert history.save(SimpleNamespace(config=config, items=[]), 0) is None
    config = SimpleNamespace(getoption=lambda name: str(tmp_path))
    assert history.save(SimpleNamespace(config=config, items=[]), 0) is None  # the off session's record was dropped
    assert not os.listdir(tmp_path)


def test_without_uvloop_the_uvloop_suite_says_so(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentcore.bench import run as bench_run
    from agentcore.bench.report import table

    monkeypatch.setattr(bench_run, "uvloop_installed", lambda: False)
    steps: list[str] = []
    totals: list[int] = []
    results = bench_run.run(nats_url, quick=True, suites=("uvloop",), progress=steps.append, total=totals.append)
    assert results["alternating"] == {"skipped": "uvloop is not installed (pip install 'agentcore-nats[fast]')"}
    assert totals == [0] and steps == [] and results["blocks"] == [] and results["loops"] == []
    assert "not measured: uvloop is not installed" in table(validate(json.loads(json.dumps(results))))


def test_an_unknown_suite_is_refused_before_measuring(nats_url: str) -> None:
    proc = subprocess.run([*CLI, "bench", "--suite", "roundtrip,nope"], capture_output=True, text=True, timeout=60,
                          env=command_env(nats_url))
    assert proc.returncode == 2 and "unknown suite nope" in proc.stderr and not proc.stdout
