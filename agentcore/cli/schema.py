"""`agentcore schema`: the AsyncAPI 3 document of an environment's capabilities, or the capabilities as LLM tools.

What it describes comes from live discovery of the environment (--server, --env) or from an agent a module builds
(--app module:attr, never started); agentcore.schema_export writes both shapes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ..schema_export import asyncapi_document, tool_definitions
from .output import emit
from .serve import _agent_from, _import
from .session import connected

__all__ = ("schema",)


def schema(args: argparse.Namespace) -> int:
    """Write the AsyncAPI document (or, with --tools, the tool definitions) of the agents found."""
    agents, environment = asyncio.run(_agents(args))
    if not agents:
        print(f"agentcore: no agents answered within {args.timeout}s in environment {environment!r}", file=sys.stderr)
        return 1
    document: Any = (tool_definitions(agents, style=args.tools) if args.tools
                     else asyncapi_document(agents, environment, title=args.title))
    text = (yaml.safe_dump(document, sort_keys=False, allow_unicode=True) if args.format == "yaml"
            else json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        emit(text.rstrip("\n"))
    return 0


async def _agents(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    """Return the discovery answers to describe and their environment: the module's agent, or the live ones."""
    if args.app:
        agent = await _agent_from(_import(args.app), _AsTarget(args))
        return [agent.describe()], agent.environment
    async with connected(args) as client:
        return await client.discover(args.capability, timeout=args.timeout), client.environment


class _AsTarget(argparse.Namespace):
    """The schema command's arguments seen as `agentcore run`'s (its target is --app)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(**vars(args))
        self.target = args.app
