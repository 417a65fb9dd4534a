"""An example worker agent, the Docker image's entry point: `agentcore run examples.worker:build`.

It serves three capabilities: `echo` (the content back), `summarize` ({"text": ...} -> the first words and a
count) and `count` ({"to": N} -> the numbers 1..N streamed one chunk each). Its id is $AGENT_ID, else "worker";
replicas that share the id share the work (one queue group per capability) and differ by instance id.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from agentcore import AgentConfig, NATSAgent


async def echo(message: dict[str, Any]) -> Any:
    """Return the task's content unchanged."""
    return message["payload"]["content"]


async def summarize(message: dict[str, Any]) -> dict[str, Any]:
    """Return the first eight words of content["text"] and how many words it has."""
    content = message["payload"]["content"]
    words = str(content.get("text", "") if isinstance(content, dict) else content).split()
    return {"summary": " ".join(words[:8]) + (" ..." if len(words) > 8 else ""), "words": len(words)}


def build(config: AgentConfig | None = None) -> NATSAgent:
    """Return the worker (not started): `agentcore run` starts it and stops it on Ctrl-C or SIGTERM."""
    agent = NATSAgent(os.environ.get("AGENT_ID", "worker"), "worker", config or AgentConfig())

    async def count(message: dict[str, Any]) -> None:
        content = message["payload"]["content"]
        to = int(content.get("to", 5)) if isinstance(content, dict) else 5

        async def numbers() -> Any:
            for i in range(1, to + 1):
                yield f"{i}\n"
                await asyncio.sleep(0.05)  # a model producing tokens, say

        # The stream is the answer; chunk_size=1 sends each item as soon as it is made (items coalesce up to it).
        await agent.stream_response(message["id"], numbers(), chunk_size=1)

    agent.add_capability("echo", echo)
    agent.add_capability("summarize", summarize)
    agent.add_capability("count", count, cache=False)
    return agent
