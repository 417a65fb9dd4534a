"""request_stream, MCP calls and negotiation cfps larger than max_payload go as offers the other side pulls."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentcore.mcp import MCPClient
from nats_fixtures import within

BIG = "q" * 2_500_000  # over the default 1 MB max_payload
TOOLS_SERVER = str(Path(__file__).parent / "mcp_servers" / "tools_server.py")


async def test_request_stream_with_a_task_larger_than_max_payload(make_agent: Any) -> None:
    async def count(message: dict[str, Any]) -> bool:
        text = message["payload"]["content"]

        async def parts() -> AsyncIterator[str]:
            yield f"{len(text)}"
            yield f":{text[:3]}"

        await worker.stream_response(message["id"], parts())
        return True

    worker = await make_agent("worker", capabilities={"count": count})
    client = await make_agent("client")
    async with client.request_stream(client.topics.task("count"), BIG, idle_timeout=30) as receiver:
        chunks = [chunk async for chunk in receiver]
    assert b"".join(c.data for c in chunks).decode() == f"{len(BIG)}:qqq"
    assert client.get_metrics()["large_requests_streamed"] == 1
    assert worker.get_metrics()["large_requests_pulled"] == 1


@pytest.fixture
async def mcp_client() -> AsyncIterator[MCPClient]:
    client = MCPClient(server_command=sys.executable, server_args=[TOOLS_SERVER])
    await client.connect()
    yield client
    await client.close()


async def test_an_mcp_call_larger_than_max_payload(make_agent: Any, mcp_client: MCPClient) -> None:
    host = await make_agent("mcp-host")
    caller = await make_agent("mcp-caller")
    await host.aregister_mcp_server("tools", mcp_client)
    result = await within(caller.call_mcp_tool("tools", "length", {"text": BIG}, timeout=30), "the MCP answer")
    assert result[0]["text"] == str(len(BIG))
    assert host.get_metrics()["large_requests_pulled"] == 1


async def test_a_negotiation_cfp_larger_than_max_payload(make_agent: Any) -> None:
    seen: list[int] = []

    async def handle(negotiation: dict[str, Any]) -> dict[str, Any]:
        seen.append(len(negotiation["proposal"]["document"]))
        return {"accept": True, "terms": {"cost": 1}}

    worker = await make_agent("w1", start=False)
    worker.register_a2a_handler("review", handle)
    await worker.astart()
    coordinator = await make_agent("coordinator", "coordinator")
    result = await coordinator.negotiate_with_agents(target_agents=["w1"], negotiation_type="review",
                                                     proposal={"document": BIG}, timeout=30.0)
    assert result["state"] == "finalized" and result["accepted"] == ["w1"]
    assert seen == [len(BIG)]
