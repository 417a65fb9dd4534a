"""The guide's deployment: the Dockerfile's entry command serves outside Docker too, and compose.yaml mirrors the guide.

No Docker engine runs here: the image's entry command runs as the image would run it (from a folder holding only
examples/, the installed package, NATS_URL), three times for the three replicas.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from cli_helpers import ROOT, command_env, read_line, reap


def _final_stage() -> list[str]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[start:]


def _instruction(stage: list[str], name: str) -> list[str]:
    found = [line for line in stage if line.startswith(name + " ")]
    assert len(found) == 1, found
    return list(json.loads(found[0][len(name) + 1 :]))


def test_the_image_installs_the_wheel_and_runs_as_a_non_root_user() -> None:
    stage = _final_stage()
    text = "\n".join(stage)
    assert "pip install --no-cache-dir /wheels/agentcore_nats-*.whl" in text  # the wheel, by its distribution name
    assert re.search(r"^USER (?!root)\w+", text, re.M) and "useradd" in text
    assert "COPY examples ./examples" in text and "WORKDIR /app" in text
    assert _instruction(stage, "ENTRYPOINT") + _instruction(stage, "CMD") == ["agentcore", "run", "examples.worker:build"]


def _entry_command() -> list[str]:
    stage = _final_stage()
    command = _instruction(stage, "ENTRYPOINT") + _instruction(stage, "CMD")
    script = Path(sysconfig.get_path("scripts")) / command[0]
    return ([str(script)] if script.exists() else [sys.executable, "-m", "agentcore"]) + command[1:]


def test_the_entry_command_serves_three_replicas_with_distinct_instances(tmp_path: Path, nats_url: str, cli) -> None:
    app = tmp_path / "app"  # the image's WORKDIR: examples/ and nothing else of the checkout
    shutil.copytree(ROOT / "examples", app / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    env = command_env(nats_url)
    replicas = [subprocess.Popen(_entry_command(), cwd=app, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, bufsize=1) for _ in range(3)]
    try:
        banners = [read_line(proc, contains="serving") for proc in replicas]
        assert all(b.startswith("agent worker (worker, instance ") for b in banners)
        found = json.loads(cli("discover", "--json").stdout)
        assert [info["id"] for info in found] == ["worker"] * 3
        instances = {info["instance"] for info in found}
        assert len(instances) == 3 and instances == {b.split("instance ")[1].split(")")[0] for b in banners}
        results = [json.loads(cli("send", "summarize", json.dumps({"text": f"task {i}"})).stdout) for i in range(6)]
        assert all(r["words"] == 2 for r in results)
        for proc in replicas:
            proc.send_signal(signal.SIGTERM)  # what `docker stop` sends
        for proc in replicas:
            assert proc.wait(20) == 0
            assert proc.stdout is not None and proc.stdout.read().rstrip().endswith("agent worker stopped")
    finally:
        reap(replicas)


def test_compose_mirrors_the_guide() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    nats, agent = compose["services"]["nats"], compose["services"]["agent"]
    assert nats["image"].startswith("nats:") and {"4222:4222", "8222:8222"} <= set(nats["ports"])
    command = " ".join(nats["command"])
    assert "--jetstream" in command and "-m 8222" in command  # JetStream, and monitoring on the published port
    assert agent["build"] == "." and (ROOT / "Dockerfile").exists()
    assert "NATS_URL=nats://nats:4222" in agent["environment"] and agent["depends_on"] == ["nats"]
    assert agent["deploy"]["replicas"] == 3
    assert "nats-data" in compose["volumes"]


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed on this machine (`docker compose version` fails)")
    proc = subprocess.run([docker, "compose", "-f", str(ROOT / "compose.yaml"), "config", "--quiet"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
