"""Capability contracts: schemas checked both ways, published in discovery and the service API, exported."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import nats
import pytest
from pydantic import BaseModel

from agentcore import ConfigError, RemoteError
from agentcore.errors import InvalidMessageError
from agentcore.schema_export import asyncapi_document, tool_definitions

SUM_IN = {"type": "object", "required": ["numbers"],
          "properties": {"numbers": {"type": "array", "items": {"type": "number"}}}}
SUM_OUT = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}


class Greeting(BaseModel):
    name: str


async def total(message: dict[str, Any]) -> Any:
    """Add up a list of numbers."""
    numbers = message["payload"]["content"]["numbers"]
    return {"total": sum(numbers)} if numbers != [13] else {"total": "unlucky"}


def greet(message: dict[str, Any]) -> str:
    return f"hello {message['payload']['content']['name']}"


async def test_checked_both_ways(make_agent: Any) -> None:
    worker = await make_agent("c-w", "math", start=False)
    worker.add_capability("sum", total, input_schema=SUM_IN, output_schema=SUM_OUT)
    worker.add_capability("greet", greet, input_schema=Greeting)  # a pydantic model, sync handler
    await worker.astart()
    client = await make_agent("c-c", "client")
    assert await client.send_task("sum", {"numbers": [1, 2, 3.5]}) == {"total": 6.5}
    assert await client.send_task("greet", {"name": "ada"}) == "hello ada"
    with pytest.raises(InvalidMessageError) as bad:
        await client.send_task("sum", {"numbers": [1, "two"]})
    assert "content.numbers[1]" in bad.value.remote_message and "number" in bad.value.remote_message
    with pytest.raises(InvalidMessageError, match="content: 'numbers' is a required property"):
        await client.send_task("sum", {})
    with pytest.raises(InvalidMessageError, match="content.name"):
        await client.send_task("greet", {"name": 7})
    with pytest.raises(RemoteError) as out:
        await client.send_task("sum", {"numbers": [13]})
    assert out.value.code == "result_invalid" and "result.total" in out.value.remote_message
    metrics = worker.get_metrics()
    assert metrics["contract_inputs_refused"] == 3 and metrics["contract_results_refused"] == 1


async def test_published_and_exported(make_agent: Any, raw_nc: nats.NATS) -> None:
    worker = await make_agent("c-p", "math", start=False)
    worker.add_capability("sum", total, input_schema=SUM_IN, output_schema=SUM_OUT)
    worker.add_capability("echo", lambda m: m)
    await worker.astart()
    client = await make_agent("c-q", "client")
    agents = await client.discover(expected=1)
    assert agents[0]["contracts"]["sum"]["input"] == SUM_IN
    assert agents[0]["contracts"]["sum"]["description"] == "Add up a list of numbers."

    info = json.loads((await raw_nc.request("$SRV.INFO.math.c-p", b"", timeout=2)).data)
    meta = {e["name"]: e["metadata"] for e in info["endpoints"]}
    assert json.loads(meta["sum"]["input_schema"]) == SUM_IN and json.loads(meta["sum"]["output_schema"]) == SUM_OUT
    assert "input_schema" not in meta["echo"]

    doc = asyncapi_document(agents, "test")
    assert doc["asyncapi"] == "3.0.0"
    assert doc["channels"]["sum_tasks"]["address"] == "agents.test.task.sum.{specificity}"
    assert doc["operations"]["sum"]["bindings"]["nats"]["queue"] == "sum"
    task_schema = doc["components"]["messages"]["sum_task"]["payload"]
    jsonschema.Draft202012Validator.check_schema(task_schema)
    # a task the worker would accept is valid against the document's message schema, a broken one is not
    from agentcore.envelope import new_message
    good = new_message("task", {"numbers": [1]}, source_id="x", source_type="y")
    jsonschema.validate(json.loads(json.dumps(good)), task_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(json.dumps(new_message("task", {"numbers": "1"}, source_id="x", source_type="y"))), task_schema)
    for ref in _refs(doc):  # every reference resolves inside the document
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]

    mcp = {t["name"]: t for t in tool_definitions(agents)}
    assert mcp["sum"] == {"name": "sum", "description": "Add up a list of numbers.", "inputSchema": SUM_IN, "outputSchema": SUM_OUT}
    assert mcp["echo"]["inputSchema"] == {"type": "object"}
    openai = {t["function"]["name"]: t for t in tool_definitions(agents, style="openai")}
    assert openai["sum"]["type"] == "function" and openai["sum"]["function"]["parameters"] == SUM_IN


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_bad_contracts_are_refused_at_declaration() -> None:
    from agentcore import NATSAgent
    agent = NATSAgent("c-x", "t", {"nats.environment": "test"})
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        agent.add_capability("x", total, input_schema={"type": "nonsense"})
    with pytest.raises(ConfigError, match="give it a handler"):
        agent.add_capability("y", None, input_schema=SUM_IN)
