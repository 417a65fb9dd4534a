"""An environment's contracts exported from discovery results: an AsyncAPI 3 document and LLM tool definitions.

Both read what ``agent.discover()`` returns (each agent's ``capabilities`` and, where given, ``contracts``), so
they describe whatever is live on the bus, not only this process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .services import VERSION

__all__ = ("asyncapi_document", "tool_definitions", "TOOL_STYLES")

#: The shapes tool_definitions() writes.
TOOL_STYLES = ("mcp", "openai", "anthropic")

_ANY: dict[str, Any] = {}  # the schema of a capability without a contract: any JSON value


def _capabilities(agents: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return capability -> {"agents": [...ids], "input", "output", "description"} merged over agents."""
    found: dict[str, dict[str, Any]] = {}
    for agent in agents:
        contracts = agent.get("contracts") or {}
        for cap in agent.get("capabilities") or []:
            entry = found.setdefault(cap, {"agents": []})
            entry["agents"].append(agent.get("id"))
            for key, value in (contracts.get(cap) or {}).items():
                entry.setdefault(key, value)
    return dict(sorted(found.items()))


def _envelope(kind: str, content: Mapping[str, Any], *, result: bool = False) -> dict[str, Any]:
    """Return the JSON Schema of an agentcore envelope of type kind whose payload.content is content."""
    payload: dict[str, Any] = {"type": "object", "required": ["content"], "properties": {"content": dict(content)}}
    if result:
        payload["properties"]["error"] = {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}
    return {
        "type": "object",
        "required": ["id", "timestamp", "type", "source", "payload"],
        "properties": {
            "id": {"type": "string"},
            "timestamp": {"type": "number", "description": "seconds since the epoch"},
            "version": {"type": "string"},
            "type": {"const": kind},
            "source": {"type": "object", "required": ["id", "type"],
                       "properties": {"id": {"type": "string"}, "type": {"type": "string"}}},
            "target": {"type": ["string", "null"]},
            "replyTo": {"type": ["string", "null"]},
            "correlationId": {"type": ["string", "null"], "description": "the id of the task answered"},
            "context": {"type": ["object", "null"]},
            "routing": {"type": ["object", "null"]},
            "payload": payload,
        },
    }


def asyncapi_document(agents: Iterable[Mapping[str, Any]], environment: str, *, title: str | None = None) -> dict[str, Any]:
    """Return an AsyncAPI 3.0 document of the environment's task subjects and message formats, from discovery results."""
    caps = _capabilities(agents)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for cap, entry in caps.items():
        task_msg, result_msg = f"{cap}_task", f"{cap}_result"
        messages[task_msg] = {"name": task_msg, "title": f"{cap} task", "contentType": "application/json",
                              "payload": _envelope("task", entry.get("input", _ANY))}
        messages[result_msg] = {"name": result_msg, "title": f"{cap} result", "contentType": "application/json",
                                "payload": _envelope("result", entry.get("output", _ANY), result=True)}
        channels[f"{cap}_tasks"] = {
            "address": f"agents.{environment}.task.{cap}.{{specificity}}",
            "description": f"tasks for {cap}, served in queue group {cap} by {', '.join(map(str, entry['agents']))}",
            "parameters": {"specificity": {"description": "a routing token; 'default' unless the sender narrows it"}},
            "messages": {"task": {"$ref": f"#/components/messages/{task_msg}"}},
        }
        channels[f"{cap}_results"] = {
            "address": None,  # the requester's reply inbox (or its replyTo)
            "description": f"results of {cap} tasks, sent to the request's NATS reply subject",
            "messages": {"result": {"$ref": f"#/components/messages/{result_msg}"}},
        }
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{cap}_tasks"},
            "messages": [{"$ref": f"#/channels/{cap}_tasks/messages/task"}],
            "reply": {"channel": {"$ref": f"#/channels/{cap}_results"},
                      "messages": [{"$ref": f"#/channels/{cap}_results/messages/result"}]},
            "bindings": {"nats": {"queue": cap, "bindingVersion": "0.1.0"}},
        }
        if entry.get("description"):
            operation["summary"] = entry["description"]
        operations[cap] = operation
    return {
        "asyncapi": "3.0.0",
        "info": {"title": title or f"agentcore environment {environment}", "version": VERSION,
                 "description": "Capabilities served by the agents that answered discovery."},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def tool_definitions(agents: Iterable[Mapping[str, Any]], *, style: str = "mcp") -> list[dict[str, Any]]:
    """Return the capabilities as LLM tool definitions: style "mcp" (name, description, inputSchema), "openai"
    (function tools) or "anthropic" (name, description, input_schema)."""
    tools = []
    for cap, entry in _capabilities(agents).items():
        schema = entry.get("input") or {"type": "object"}
        description = entry.get("description") or f"Send a task to the {cap} capability"
        if style == "openai":
            tools.append({"type": "function", "function": {"name": cap, "description": description, "parameters": schema}})
        elif style == "anthropic":
            tools.append({"name": cap, "description": description, "input_schema": schema})
        elif style == "mcp":
            tool: dict[str, Any] = {"name": cap, "description": description, "inputSchema": schema}
            if "output" in entry:
                tool["outputSchema"] = entry["output"]
            tools.append(tool)
        else:
            raise ValueError(f"style must be one of {', '.join(TOOL_STYLES)}, not {style!r}")
    return tools
