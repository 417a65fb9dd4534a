"""MCP over an open bus: forged responses, spoofed cancellations and what a host does not expose (a plain nats-py
client attacks a host serving a real MCP server process written with the SDK)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from mcp import ClientSession
from mcp.shared.exceptions import MCPError as SDKError

from agentcore import MCPPromptNotFoundError, MCPResourceNotFoundError, MCPTimeoutError, MCPToolNotFoundError, NATSAgent
from agentcore.envelope import encode, new_message
from agentcore.mcp import MCPClient, nats_client_transport
from agentcore.mcp.hosting import error_from_rpc
from nats_fixtures import eventually, subscribed, within

TOOLS_SERVER = str(Path(__file__).parent.parent / "agent" / "mcp_servers" / "tools_server.py")
REQUESTS = "agents.test.mcp.tools.requests"


@pytest.fixture
async def tools_client() -> AsyncIterator[MCPClient]:
    client = MCPClient(server_command=sys.executable, server_args=[TOOLS_SERVER])
    await client.connect()
    yield client
    await client.close()


async def host_and_caller(make_agent: Any, client: MCPClient, **lists: Any) -> tuple[NATSAgent, NATSAgent]:
    host, caller = await make_agent("mcp-host"), await make_agent("mcp-caller")
    await host.aregister_mcp_server("tools", client, **lists)
    return host, caller


def response(request: dict[str, Any], rpc: dict[str, Any], *, source: str = "mcp-host", correlation: str | None = None) -> bytes:
    return encode(new_message("result", rpc, source_id=source, correlation_id=correlation or request["id"]))


async def test_forged_mcp_responses_never_win(make_agent: Any, raw_nc: nats.NATS, tools_client: MCPClient) -> None:
    """The bystander sees each call and answers its reply subject first: with another correlationId, with another
    JSON-RPC id, with progress under another token, with what is not an envelope. The caller takes none of it."""
    _, caller = await host_and_caller(make_agent, tools_client, tools=["slow"])

    async def forge(msg: Any) -> None:
        request = orjson.loads(msg.data)
        rpc_id = request["payload"]["content"]["id"]
        forged = {"jsonrpc": "2.0", "id": rpc_id, "result": {"content": [{"type": "text", "text": "forged"}]}}
        for data in (response(request, forged, correlation="not-" + request["id"]),
                     response(request, {**forged, "id": "other"}),
                     response(request, {"jsonrpc": "2.0", "method": "notifications/progress",
                                        "params": {"progressToken": "other", "progress": 99}}),
                     b"not an envelope"):
            await raw_nc.publish(msg.reply, data)

    await raw_nc.subscribe(REQUESTS, cb=forge)
    await subscribed(raw_nc)
    progress: list[Any] = []
    for _ in range(10):
        result = await caller.call_mcp_tool("tools", "slow", {"seconds": 0.02}, progress=lambda *a: progress.append(a))
        assert result == [{"type": "text", "text": "slept 0.02"}]
    assert caller.get_metrics()["replies_rejected"] == 40
    assert all(p[0] != 99 for p in progress) and len(progress) == 20  # the server's two per call, no forged one


async def test_an_answer_from_another_host_than_the_one_that_took_the_call_is_dropped(
        make_agent: Any, raw_nc: nats.NATS, tools_client: MCPClient) -> None:
    """Once the host that took the call has spoken (its first progress note), the rest must come from it."""
    _, caller = await host_and_caller(make_agent, tools_client, tools=["slow"])
    sent = [0]

    async def on_progress(msg: Any) -> None:  # the attacker reads the caller's response subjects too
        envelope = orjson.loads(msg.data)
        if envelope["source"]["id"] != "mcp-host" or envelope["payload"]["content"].get("method") != "notifications/progress":
            return
        if envelope["payload"]["content"]["params"]["progress"] != 0:
            return
        request_id = envelope["correlationId"]
        forged = {"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": "forged"}]}}
        await raw_nc.publish(msg.subject, encode(new_message("result", forged, source_id="other-host", correlation_id=request_id)))
        sent[0] += 1

    await raw_nc.subscribe("agents.test.mcp.mcp-caller.responses.>", cb=on_progress)
    await subscribed(raw_nc)
    for _ in range(3):
        assert await caller.call_mcp_tool("tools", "slow", {"seconds": 0.1}, progress=lambda *a: None) == [
            {"type": "text", "text": "slept 0.1"}]
    assert sent[0] == 3 and caller.get_metrics()["replies_rejected"] == 3


async def test_a_spoofed_cancel_does_not_drop_another_callers_call(make_agent: Any, raw_nc: nats.NATS,
                                                                  tools_client: MCPClient) -> None:
    host, caller = await host_and_caller(make_agent, tools_client, tools=["slow", "wait_cancel"])

    async def cancel_it(msg: Any) -> None:
        request = orjson.loads(msg.data)
        rpc_id = request["payload"]["content"]["id"]
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rpc_id, "reason": "spoofed"}}
        await raw_nc.publish("agents.test.mcp.tools.cancel",
                             encode(new_message("event", note, source_id="mallory", correlation_id=request["id"])))
        # The caller's own id with another JSON-RPC id does not name this call either.
        note = {**note, "params": {"requestId": "not-" + str(rpc_id)}}
        await raw_nc.publish("agents.test.mcp.tools.cancel",
                             encode(new_message("event", note, source_id="mcp-caller", correlation_id=request["id"])))

    sub = await raw_nc.subscribe(REQUESTS, cb=cancel_it)
    await subscribed(raw_nc)
    assert await caller.call_mcp_tool("tools", "slow", {"seconds": 0.3}) == [{"type": "text", "text": "slept 0.3"}]
    await eventually(lambda: host.get_metrics().get("mcp_cancels_rejected") == 2, what="both cancellations refused")
    assert host.get_metrics().get("mcp_calls_cancelled", 0) == 0
    await sub.unsubscribe()

    # The caller's own cancellation (its call timed out) still stops the call on the host.
    with pytest.raises(MCPTimeoutError):
        await caller.call_mcp_tool("tools", "wait_cancel", {}, timeout=0.3)
    await eventually(lambda: host.get_metrics().get("mcp_calls_cancelled") == 1, what="the caller's own cancel honoured")


async def test_allow_lists_cover_resources_templates_and_prompts(make_agent: Any, tools_client: MCPClient) -> None:
    """tools, resources (URIs and templates) and prompts each have their list; a kind left out exposes nothing."""
    _, caller = await host_and_caller(make_agent, tools_client, tools=["add"], resources=["greeting://{name}"])
    async with nats_client_transport(caller, "tools") as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.capabilities.resources is not None and init.capabilities.prompts is None  # no prompt listed
            assert [t.name for t in (await session.list_tools()).tools] == ["add"]
            assert (await session.list_resources()).resources == []  # config://app is not listed
            templates = await session.list_resource_templates()
            assert [t.uri_template for t in templates.resource_templates] == ["greeting://{name}"]
            assert (await session.read_resource("greeting://nats")).contents[0].text == "hello, nats"
            for uri in ("config://app", "greeting://a/b"):  # not listed; not what {name} (one segment) expands to
                with pytest.raises(SDKError) as refused:
                    await session.read_resource(uri)
                assert refused.value.error.message == f"Unknown resource: {uri}"
                assert refused.value.error.data["kind"] == "resource_not_found"
            with pytest.raises(SDKError) as refused:
                await session.get_prompt("review", {"code": "x"})
            assert refused.value.error.code == -32601  # prompts are not offered at all
            with pytest.raises(SDKError, match="unknown tool 'echo'"):
                await session.call_tool("echo", {"text": "x"})
    with pytest.raises(MCPToolNotFoundError):
        await caller.call_mcp_tool("tools", "secret", {})


async def test_prompt_and_completion_allow_lists(make_agent: Any, tools_client: MCPClient) -> None:
    from mcp.types import PromptReference, ResourceTemplateReference

    _, caller = await host_and_caller(make_agent, tools_client, prompts=["review"], resources=["config://app"])
    async with nats_client_transport(caller, "tools") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            assert (await session.list_tools()).tools == []  # tools left out: none exposed
            assert [p.name for p in (await session.list_prompts()).prompts] == ["review"]
            assert [str(r.uri) for r in (await session.list_resources()).resources] == ["config://app"]
            assert (await session.list_resource_templates()).resource_templates == []
            done = await session.complete(PromptReference(name="review"), {"name": "language", "value": "py"})
            assert done.completion.values == ["python", "pyrex"]
            with pytest.raises(SDKError, match="Unknown resource: greeting://{name}"):
                await session.complete(ResourceTemplateReference(uri="greeting://{name}"), {"name": "name", "value": "n"})
            with pytest.raises(SDKError, match="Unknown prompt: other"):
                await session.complete(PromptReference(name="other"), {"name": "language", "value": "py"})


async def test_without_allow_lists_everything_is_exposed(make_agent: Any, tools_client: MCPClient) -> None:
    _, caller = await host_and_caller(make_agent, tools_client)
    async with nats_client_transport(caller, "tools") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            assert "secret" in {t.name for t in (await session.list_tools()).tools}
            assert (await session.read_resource("config://app")).contents[0].text == '{"mode": "test"}'
            assert [p.name for p in (await session.list_prompts()).prompts] == ["review"]


def test_refusals_map_to_typed_errors() -> None:
    for kind, cls in (("resource_not_found", MCPResourceNotFoundError), ("prompt_not_found", MCPPromptNotFoundError),
                      ("tool_not_found", MCPToolNotFoundError)):
        error = error_from_rpc({"code": -32602, "message": "Unknown", "data": {"kind": kind}}, server_id="tools", tool=None,
                               source="mcp-host")
        assert type(error) is cls and error.code == -32602 and error.server_id == "tools"


async def test_a_forged_response_does_not_reach_an_sdk_session(make_agent: Any, raw_nc: nats.NATS, tools_client: MCPClient) -> None:
    _, caller = await host_and_caller(make_agent, tools_client, tools=["slow"])

    async def forge(msg: Any) -> None:
        request = orjson.loads(msg.data)
        rpc = request["payload"]["content"]
        if rpc.get("method") != "tools/call":
            return
        forged = {"jsonrpc": "2.0", "id": rpc["id"], "result": {"content": [{"type": "text", "text": "forged"}]}}
        await raw_nc.publish(msg.reply, response(request, forged, correlation="not-" + request["id"]))

    await raw_nc.subscribe(REQUESTS, cb=forge)
    await subscribed(raw_nc)
    async with nats_client_transport(caller, "tools") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            result = await within(session.call_tool("slow", {"seconds": 0.05}), "the call")
            assert result.content[0].text == "slept 0.05"
    assert caller.get_metrics()["replies_rejected"] == 1
