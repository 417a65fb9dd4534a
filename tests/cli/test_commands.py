"""The commands that ask and print: --version, discover, ping/status/pause/resume/shutdown, send, config check, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest

from agentcore import NATSAgent, __version__
from agentcore.server import free_port
from cli_helpers import CLI, ROOT, call, command_env, one_error_line
from nats_fixtures import subscribed


def test_version_and_help_start_fast_without_loading_nats() -> None:
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=30)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0 and proc.stdout.strip() == f"agentcore-nats {__version__}"
    assert elapsed < 2.0  # ~0.1 s here; generous for a loaded CI box
    probe = subprocess.run([sys.executable, "-c", "import sys, agentcore.cli; agentcore.cli.build_parser(); "
                            "print(sorted(m for m in ('nats', 'asyncio', 'agentcore.agent') if m in sys.modules))"],
                           capture_output=True, text=True, timeout=30)
    assert probe.stdout.strip() == "[]", probe.stderr
    helped = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=30)
    for command in ("server", "discover", "ping", "status", "pause", "resume", "shutdown", "send", "tail", "run", "config",
                    "demo"):
        assert f"    {command}" in helped.stdout
    assert subprocess.run([sys.executable, "-P", "-m", "agentcore.cli", "--version"], capture_output=True, text=True,
                          timeout=30).stdout.strip() == f"agentcore-nats {__version__}"


def test_a_usage_error_exits_2() -> None:
    proc = subprocess.run([*CLI, "ping"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "the following arguments are required: agent" in proc.stderr


def test_discover_lists_the_live_agents(cli, worker: NATSAgent) -> None:
    proc = cli("discover")
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert header.split() == ["ID", "INSTANCE", "TYPE", "CAPABILITIES", "STATUS", "IN-FLIGHT", "QUEUED", "P50"]
    assert row.split()[:7] == ["worker", worker.describe()["instance"], "worker", "echo,summarize,count", "running", "0", "0"]
    as_json = json.loads(cli("discover", "summarize", "--json").stdout)
    assert [(a["id"], a["instance"]) for a in as_json] == [("worker", worker.describe()["instance"])]
    nobody = cli("discover", "nothing")
    assert nobody.returncode == 0 and nobody.stdout == "" and "no agents with nothing answered" in nobody.stderr


def test_control_commands_through_the_cli(cli, worker: NATSAgent) -> None:
    ping = cli("ping", "worker")
    assert ping.returncode == 0 and ping.stdout.startswith("worker: pong (running) in "), ping.stderr
    status = cli("status", "worker")
    assert "capabilities        echo, summarize, count" in status.stdout and "instance" in status.stdout
    assert json.loads(cli("status", "worker", "--json").stdout)["id"] == "worker"
    refused = cli("pause", "worker")  # a stranger's pause is refused, with its reason, in one line
    assert refused.returncode != 0 and "control.allow" in refused.stderr and worker.status == "running"
    assert cli("pause", "worker", "--as", "operator").stdout == "worker: paused\n" and worker.status == "paused"
    assert cli("resume", "worker", "--as", "operator").stdout == "worker: running\n" and worker.status == "running"
    assert cli("shutdown", "worker", "--as", "operator").stdout == "worker: stopping\n"
    worker.call(worker.wait_stopped(), timeout=10)  # the worker stops on its own loop thread, which keeps running
    assert worker.status == "stopped"
    assert one_error_line(cli("ping", "worker")) == ("agentcore: no agent worker in environment 'dev' (subject root 'agents') "
                                                     f"on {worker.config['nats.servers'][0]}")


async def test_as_names_the_commands_agent_id(nats_url: str) -> None:
    """A control.allow list names ids: --as lets the command speak as one of them."""
    nc = await nats.connect(nats_url)
    seen: list[dict[str, object]] = []

    async def answer(msg: object) -> None:
        envelope = json.loads(msg.data)  # type: ignore[attr-defined]
        seen.append(envelope["source"])
        reply = {**envelope, "id": "r1", "type": "result", "correlationId": envelope["id"],
                 "source": {"id": "guarded", "type": "worker"}, "payload": {"content": {"pong": True, "status": "running"}}}
        await nc.publish(msg.reply, json.dumps(reply).encode())  # type: ignore[attr-defined]

    await nc.subscribe("agents.dev.control.guarded", cb=answer)
    await subscribed(nc)
    proc = await _run_async([*CLI, "ping", "guarded", "--as", "ops-console"], command_env(nats_url))
    await nc.close()
    assert proc.returncode == 0, proc.stderr
    assert seen == [{"id": "ops-console", "type": "cli"}]


async def _run_async(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import asyncio

    proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return subprocess.CompletedProcess(args, proc.returncode or 0, out.decode(), err.decode())


def test_send_prints_the_result(cli, worker: NATSAgent, tmp_path: Path) -> None:
    assert json.loads(cli("send", "echo", '{"text": "hi"}').stdout) == {"text": "hi"}
    assert cli("send", "echo", '"plain text"').stdout == "plain text\n"  # a string result prints as it is
    assert cli("send", "echo", "[1, 2]", "--json").stdout == "[1,2]\n"
    task = tmp_path / "task.json"
    task.write_text('{"text": "one two three"}')
    assert json.loads(cli("send", "summarize", f"@{task}").stdout) == {"summary": "one two three", "words": 3}
    assert json.loads(cli("send", "summarize", "@-", input='{"text": "from stdin"}').stdout)["words"] == 2
    assert "is not JSON" in one_error_line(cli("send", "echo", "hello"))
    assert "cannot read the task content from" in one_error_line(cli("send", "echo", f"@{tmp_path / 'absent.json'}"))
    t0 = time.perf_counter()
    assert one_error_line(cli("send", "nothing", "1")).startswith("agentcore: no agent serves 'nothing' in environment 'dev'")
    assert time.perf_counter() - t0 < 10  # no responders at once, not the 30 s timeout


def test_send_reports_a_handler_error_in_one_line(cli, nats_url: str) -> None:
    from agentcore import AgentConfig

    def fail(message: object) -> None:
        raise ValueError("bad input")

    agent = NATSAgent("fragile", config=AgentConfig({"nats.servers": [nats_url]}, environ={}))
    agent.add_capability("fragile", fail)
    assert agent.start()
    try:
        line = one_error_line(cli("send", "fragile", "{}"))
        assert "handler_error" in line and "bad input" in line
    finally:
        agent.stop()


def test_env_and_subject_prefix_reach_other_products(cli, nats_url: str) -> None:
    from agentcore import AgentConfig

    agent = NATSAgent("acme-worker", config=AgentConfig({"nats.servers": [nats_url], "nats.environment": "prod",
                                                          "nats.subject_prefix": "acme"}, environ={}))
    agent.add_capability("echo", lambda m: m["payload"]["content"])
    assert agent.start()
    try:
        assert cli("discover").stdout == ""  # agents.dev: nobody
        found = cli("discover", "--env", "prod", "--subject-prefix", "acme", "--json")
        assert [a["id"] for a in json.loads(found.stdout)] == ["acme-worker"]
        assert cli("send", "echo", "7", "-e", "prod", "--subject-prefix", "acme").stdout == "7\n"
        assert call(agent, agent.discover(include_self=True))[0]["id"] == "acme-worker"
    finally:
        agent.stop()


def test_a_command_without_a_server_fails_at_once_in_one_line(nats_url: str) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, "discover", "--server", url], capture_output=True, text=True, timeout=60,
                          env=command_env(nats_url))
    assert time.perf_counter() - t0 < 5.0
    assert one_error_line(proc) == f"agentcore: agent {proc.stderr.split()[2]} cannot connect to {url}: " \
                                   "connection refused (no nats-server listens there)"


def test_credentials_options_reach_the_connection(tmp_path: Path) -> None:
    from agentcore.server import NATSServer

    with NATSServer(user="ops", password="s3cret") as server:
        env = command_env(None)
        refused = subprocess.run([*CLI, "discover", "-s", server.url, "--user", "ops", "--password", "wrong"],
                                 capture_output=True, text=True, timeout=60, env=env)
        assert "Authorization Violation" in one_error_line(refused)
        ok = subprocess.run([*CLI, "discover", "-s", server.url, "--user", "ops", "--password", "s3cret"],
                            capture_output=True, text=True, timeout=60, env=env)
        assert ok.returncode == 0, ok.stderr
        from_env = subprocess.run([*CLI, "discover", "-s", server.url], capture_output=True, text=True, timeout=60,
                                  env={**env, "NATS_USER": "ops", "NATS_PASSWORD": "s3cret"})
        assert from_env.returncode == 0, from_env.stderr


def test_config_check(cli, tmp_path: Path) -> None:
    good = tmp_path / "nats_config.yaml"
    good.write_text("messaging:\n  provider: nats\nnats:\n  servers: [nats://localhost:4222]\n  environment: prod\n"
                    "  password: hunter2\n")
    proc = cli("config", "check", str(good))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"{good}: ok (environment prod, servers nats://localhost:4222)"
    assert "nats.password = ***" in proc.stdout and "hunter2" not in proc.stdout
    assert json.loads(cli("config", "check", str(good), "--json").stdout)["settings"]["nats.environment"] == "prod"

    typo = tmp_path / "typo.yaml"
    typo.write_text("nats:\n  enviroment: prod\n")
    assert one_error_line(cli("config", "check", str(typo))) == (
        f"agentcore: {typo}: unknown configuration key 'nats.enviroment' (did you mean 'nats.environment'?)")
    failed = cli("config", "check", str(typo), "--json")
    assert failed.returncode == 1 and json.loads(failed.stdout)["ok"] is False
    assert "cannot read configuration file" in one_error_line(cli("config", "check", str(tmp_path / "absent.yaml")))


def test_python_dash_m_agentcore_runs_the_command(cli) -> None:
    assert cli("--version", cwd=ROOT).stdout.startswith("agentcore-nats ")


@pytest.mark.parametrize("args", [["run", "examples.worker"], ["run", "examples.worker:missing"], ["run", "nowhere.at.all:x"]])
def test_run_names_a_bad_target_in_one_line(cli, args: list[str]) -> None:
    line = one_error_line(cli(*args))
    assert {"examples.worker": "is not module:attr", "examples.worker:missing": "has no attribute missing",
            "nowhere.at.all:x": "no module named nowhere"}[args[1]] in line
