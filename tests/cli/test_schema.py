"""`agentcore schema`: AsyncAPI 3 (validated against AsyncAPI's own JSON Schema) and tool definitions, live and from a module.

tests/data/asyncapi-3.0.0.schema.json is the AsyncAPI 3.0.0 JSON Schema as the AsyncAPI project publishes it
(spec-json-schemas, Apache-2.0): no PyPI package ships it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from agentcore import NATSAgent
from cli_helpers import command_env, one_error_line

ASYNCAPI_SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "asyncapi-3.0.0.schema.json").read_text())


def _valid_asyncapi(document: dict[str, Any]) -> None:
    errors = sorted(jsonschema.Draft7Validator(ASYNCAPI_SCHEMA).iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def test_the_validator_catches_a_broken_document() -> None:
    """The vendored schema is read and applied: a document without info fails it."""
    validator = jsonschema.Draft7Validator(ASYNCAPI_SCHEMA)
    assert not validator.is_valid({"asyncapi": "3.0.0"})
    assert validator.is_valid({"asyncapi": "3.0.0", "info": {"title": "t", "version": "1"}})


def test_schema_of_the_live_environment_is_valid_asyncapi(cli: Callable[..., Any], worker: NATSAgent, tmp_path: Path) -> None:
    proc = cli("schema")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    _valid_asyncapi(document)
    assert document["asyncapi"] == "3.0.0"
    assert set(document["operations"]) == set(worker.capabilities)
    assert document["channels"]["echo_tasks"]["address"] == f"agents.{worker.environment}.task.echo.{{specificity}}"
    assert document["operations"]["echo"]["bindings"]["nats"]["queue"] == "echo"

    out = tmp_path / "env.yaml"
    proc = cli("schema", "--format", "yaml", "-o", str(out), "--title", "my agents")
    assert proc.returncode == 0 and not proc.stdout, proc.stderr
    from_yaml = yaml.safe_load(out.read_text())
    _valid_asyncapi(from_yaml)
    assert from_yaml["info"]["title"] == "my agents"


def test_schema_tools_in_each_shape(cli: Callable[..., Any], worker: NATSAgent) -> None:
    mcp = json.loads(cli("schema", "--tools").stdout)
    assert {t["name"] for t in mcp} == set(worker.capabilities) and all("inputSchema" in t for t in mcp)
    openai = json.loads(cli("schema", "--tools", "openai").stdout)
    assert {t["function"]["name"] for t in openai} == set(worker.capabilities)
    assert all(t["type"] == "function" and "parameters" in t["function"] for t in openai)
    anthropic = json.loads(cli("schema", "--tools", "anthropic").stdout)
    assert {t["name"] for t in anthropic} == set(worker.capabilities) and all("input_schema" in t for t in anthropic)
    only = json.loads(cli("schema", "echo", "--tools").stdout)  # agents with echo: the worker, all of its capabilities
    assert "echo" in {t["name"] for t in only}


def test_schema_from_a_module_needs_no_server(cli: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "contracted.py").write_text(
        "from agentcore import NATSAgent\n"
        "agent = NATSAgent('contracted', 'translator')\n"
        "agent.add_capability('translate', lambda m: m, input_schema={'type': 'object', 'required': ['text'],\n"
        "    'properties': {'text': {'type': 'string'}}}, output_schema={'type': 'string'})\n")
    env = command_env("nats://127.0.0.1:1")  # nothing listens there: the module's agent is never started
    proc = cli("schema", "--app", "contracted:agent", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    _valid_asyncapi(document)
    task = document["components"]["messages"]["translate_task"]["payload"]
    assert task["properties"]["payload"]["properties"]["content"]["required"] == ["text"]
    tools = json.loads(cli("schema", "--app", "contracted:agent", "--tools", "anthropic", cwd=tmp_path, env=env).stdout)
    assert tools == [{"name": "translate", "description": "Send a task to the translate capability",
                      "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}}]


def test_schema_with_no_agents_says_so(cli: Callable[..., Any]) -> None:
    line = one_error_line(cli("schema", "--env", "empty", "--timeout", "0.2"))
    assert "no agents answered" in line and "'empty'" in line
