"""The long-running commands, read live: server, tail, send --stream, and run module:attr stopped by a signal."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import nats
import pytest

from agentcore import AgentConfig, NATSAgent
from agentcore.server import NATSServer, free_port
from cli_helpers import call, command_env, one_error_line, read_line


def test_server_runs_a_local_nats_server_with_jetstream_until_ctrl_c(start_command) -> None:
    proc = start_command("server", "--port", "0", "--monitor-port", str(free_port()))
    first = read_line(proc, contains="nats-server listening on")
    url = first.split()[3]
    assert url.startswith("nats://127.0.0.1:") and "JetStream store" in first and "monitoring http://" in first
    assert read_line(proc, contains="export NATS_URL=") == f"use it: export NATS_URL={url}   (Ctrl-C stops the server)"

    async def jetstream_is_on() -> int:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().account_info()).limits.max_streams
        finally:
            await nc.close()

    assert asyncio.run(jetstream_is_on()) is not None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
    assert proc.stdout.read().strip() == "nats-server stopped"


def test_server_on_a_busy_port_says_so_in_one_line(cli) -> None:
    with NATSServer() as busy:
        line = one_error_line(cli("server", "--port", str(busy.port)))
    assert line == f"agentcore: port {busy.port} on 127.0.0.1 is in use (another nats-server?): --port 0 picks a free one"


def test_send_stream_prints_chunks_as_they_come(start_command, worker: NATSAgent) -> None:
    proc = start_command("send", "count", '{"to": 4}', "--stream")
    t0 = time.monotonic()
    assert read_line(proc) == "1"
    first = time.monotonic() - t0
    assert proc.poll() is None  # still streaming: the rest is 3 x 50 ms away
    assert [read_line(proc) for _ in range(3)] == ["2", "3", "4"]
    assert proc.wait(20) == 0
    assert time.monotonic() - t0 > first + 0.1


def test_send_stream_json_and_a_missing_capability(cli, worker: NATSAgent) -> None:
    chunks = [json.loads(line) for line in cli("send", "count", '{"to": 2}', "--stream", "--json").stdout.splitlines()]
    assert "".join(c["data"] for c in chunks) == "1\n2\n" and all(c["kind"] == "text" for c in chunks)
    assert "no agent serves 'nowhere'" in one_error_line(cli("send", "nowhere", "{}", "--stream"))


def test_tail_shows_tasks_results_events_and_status_live(start_command, cli, worker: NATSAgent) -> None:
    proc = start_command("tail", "--replies", "--count", "4")
    read_line(proc, "stderr", contains="watching agents.dev.task.>, agents.dev.result.>, agents.dev.event.>")
    assert cli("send", "echo", '{"text": "watched"}').returncode == 0
    call(worker, worker.publish_event("deploy", "done", {"version": 3}))
    lines = [read_line(proc) for _ in range(3)]
    kinds = [line.split()[1] for line in lines]
    assert kinds == ["task", "reply", "event"], lines
    assert "task.echo.default" in lines[0] and '{"text":"watched"}' in lines[0]
    assert "worker -> cli-" in lines[1] and "re=" in lines[1]
    assert "event.deploy.done" in lines[2] and '{"version":3}' in lines[2]
    call(worker, worker.pause())  # announces its status
    status = read_line(proc)
    assert status.split()[1:4] == ["status", "status.worker", f"worker/{worker.describe()['instance']}"] and "paused" in status
    assert proc.wait(20) == 0  # --count 4


def test_tail_filters_by_pattern_type_and_agent_and_speaks_json(start_command, cli, worker: NATSAgent) -> None:
    events = start_command("tail", "event.deploy.*", "--json", "--count", "1")
    by_type = start_command("tail", "--type", "event", "--agent", "worker", "--count", "1")
    for proc in (events, by_type):
        read_line(proc, "stderr", contains="watching")
    assert cli("send", "echo", "1").returncode == 0  # a task: neither tail shows it
    call(worker, worker.publish_event("other", "x", 1))  # another event: only the by-type tail shows it
    call(worker, worker.publish_event("deploy", "done", {"version": 4}))
    record = json.loads(read_line(events))
    assert record["subject"] == "agents.dev.event.deploy.done" and record["kind"] == "event"
    assert record["message"]["payload"]["content"] == {"version": 4}
    assert "event.other.x" in read_line(by_type)
    assert events.wait(20) == 0 and by_type.wait(20) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_serves_an_agent_until_a_signal(start_command, cli, nats_url: str, sig: signal.Signals) -> None:
    proc = start_command("run", "examples.worker:build", env=command_env(nats_url, AGENT_ID="runner"))
    banner = read_line(proc, contains="serving")
    assert banner.startswith("agent runner (worker, instance ") and "echo, summarize, count" in banner
    assert json.loads(cli("send", "summarize", '{"text": "a b c"}').stdout)["words"] == 3
    proc.send_signal(sig)
    assert proc.wait(20) == 0
    rest = proc.stdout.read()
    assert "stopping agent runner (draining its work)" in rest and rest.rstrip().endswith("agent runner stopped")
    assert one_error_line(cli("ping", "runner")).startswith("agentcore: no agent runner")


def test_run_passes_config_file_and_options_to_a_factory(start_command, cli, tmp_path: Path, nats_url: str) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("nats:\n  environment: staging\nagent:\n  instance: pod-1\ncontrol:\n  allow: [operator]\n")
    proc = start_command("run", "examples.worker:build", "--config", str(config), "--server", nats_url)
    assert "in environment 'staging'" in read_line(proc, contains="serving")
    found = json.loads(cli("discover", "--env", "staging", "--json").stdout)
    assert [(a["id"], a["instance"]) for a in found] == [("worker", "pod-1")]
    assert cli("shutdown", "worker", "--env", "staging", "--as", "operator").returncode == 0  # a shutdown command ends `run` too
    assert proc.wait(20) == 0 and "agent worker stopped" in proc.stdout.read()


def test_run_an_agent_object_and_say_why_options_cannot_reach_it(cli, start_command, tmp_path: Path, nats_url: str) -> None:
    (tmp_path / "ready.py").write_text(
        "from agentcore import NATSAgent\nagent = NATSAgent('ready', 'worker')\nagent.add_capability('echo', lambda m: 1)\n")
    line = one_error_line(cli("run", "ready:agent", "--env", "prod", cwd=tmp_path))
    assert "ready:agent is an agent built already: --env need a function that takes config=" in line
    proc = start_command("run", "ready:agent", cwd=tmp_path)  # NATS_URL reaches the agent the module built
    read_line(proc, contains="agent ready (worker")
    assert cli("send", "echo", "0").stdout == "1\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_run_a_module_that_started_its_agent_itself(start_command, cli, tmp_path: Path) -> None:
    """The guide's style: the module calls agent.start() (its own loop thread); run waits, and stops it on a signal."""
    (tmp_path / "guide.py").write_text(
        "from agentcore import NATSAgent\nagent = NATSAgent('guide', 'worker')\nagent.add_capability('echo', lambda m: 2)\n"
        "assert agent.start()\n")
    proc = start_command("run", "guide:agent", cwd=tmp_path)
    read_line(proc, contains="agent guide (worker")
    assert cli("send", "echo", "0").stdout == "2\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0 and "agent guide stopped" in proc.stdout.read()


def test_run_reports_a_start_that_fails(cli, tmp_path: Path, nats_url: str) -> None:
    first = NATSAgent("solo", config=AgentConfig({"nats.servers": [nats_url]}, environ={}))
    assert first.start()
    try:
        (tmp_path / "strict.py").write_text(
            "from agentcore import NATSAgent\n"
            "def build(config):\n    config.set('agent.duplicate_id', 'error')\n    return NATSAgent('solo', 'worker', config)\n")
        line = one_error_line(cli("run", "strict:build", cwd=tmp_path))
        assert "another live agent already uses the id 'solo'" in line
    finally:
        first.stop()


def test_the_demo_takes_server_and_env(cli, nats_url: str) -> None:
    proc = cli("demo", "--tasks", "5", "--server", nats_url, "--env", "show", env=command_env(None), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"on {nats_url} (environment 'show')" in proc.stdout and "started a local nats-server" not in proc.stdout


def test_commands_ignore_a_subprocess_leftover(start_command) -> None:
    """A killed command leaves nothing that blocks the next one: fixtures kill what is still running."""
    proc = start_command("tail")
    read_line(proc, "stderr", contains="watching")
    assert isinstance(proc, subprocess.Popen)
