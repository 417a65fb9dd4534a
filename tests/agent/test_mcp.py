"""MCP over NATS against a real nats-server and real MCP server processes written with the SDK (tests/mcp_servers)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession
from mcp.shared.exceptions import MCPError as SDKError
from mcp.server.mcpserver import Context, MCPServer

from agentcore import (
    MCPError,
    MCPResultTooLargeError,
    MCPServerDiedError,
    MCPServerNotFoundError,
    MCPTimeoutError,
    MCPToolError,
    MCPToolNotFoundError,
    NATSAgent,
    NoRespondersError,
    RequestTimeoutError,
)
from agentcore.mcp import MCPClient, nats_client_transport
from nats_fixtures import eventually, subscribed

TOOLS_SERVER = str(Path(__file__).parent / "mcp_servers" / "tools_server.py")


@pytest.fixture
async def mcp_clients() -> AsyncIterator[Callable[..., Any]]:
    """Start MCP server processes (tests/mcp_servers/tools_server.py) and close them after the test."""
    clients: list[MCPClient] = []

    async def make(env: dict[str, str] | None = None) -> MCPClient:
        client = MCPClient(server_command=sys.executable, server_args=[TOOLS_SERVER], env=env)
        clients.append(client)
        await client.connect()
        return client

    yield make
    await asyncio.gather(*(c.close() for c in clients))


@pytest.fixture
async def pair(make_agent: Callable[..., Any], mcp_clients: Callable[..., Any]) -> tuple[NATSAgent, NATSAgent, MCPClient]:
    """A host serving the tools server as "tools" (with an allow-list) and a caller, on separate connections."""
    host, client = await asyncio.gather(make_agent("mcp-host"), mcp_clients())
    caller = await make_agent("mcp-caller")
    await host.aregister_mcp_server("tools", client, tools=["add", "echo", "fail", "slow", "wait_cancel", "pid", "big", "lookup"],
                                    resources=["config://app", "greeting://{name}"], prompts=["review"])
    return host, caller, client


async def test_mcp_client_talks_to_a_server_process_over_stdio(mcp_clients: Callable[..., Any]) -> None:
    client = await mcp_clients()
    names = await client.tool_names()
    assert {"add", "echo", "secret", "slow"} <= set(names)
    result = await client.call_tool("add", {"a": 2, "b": 40})
    assert not result.is_error and result.content[0].text == "42"
    assert client.initialize_result.server_info.name == "test-tools"
    await client.close()
    assert not client.connected


async def test_mcp_client_as_async_context_manager() -> None:
    async with MCPClient(sys.executable, [TOOLS_SERVER]) as client:
        assert (await client.call_tool("echo", {"text": "hi"})).content[0].text == "hi"
    assert not client.connected


async def test_mcp_client_that_cannot_start_raises() -> None:
    with pytest.raises(MCPError):
        await MCPClient(sys.executable, ["-c", "import sys; sys.exit(3)"]).connect(timeout=10)


async def test_list_and_call_across_two_agents(pair: tuple[NATSAgent, NATSAgent, MCPClient]) -> None:
    host, caller, _ = pair
    tools = await caller.list_mcp_tools("tools")
    by_name = {t["name"]: t for t in tools}
    assert "add" in by_name and by_name["add"]["inputSchema"]["required"] == ["a", "b"]
    assert await caller.call_mcp_tool("tools", "add", {"a": 1, "b": 2}) == [{"type": "text", "text": "3"}]
    raw = await caller.call_mcp_tool("tools", "add", {"a": 5, "b": 5}, raw=True)
    assert raw["structuredContent"] == {"result": 10} and raw.get("isError") is False
    assert caller.get_metrics()["mcp_calls"] == 2
    assert host.get_metrics()["mcp_calls_served"] == 2


async def test_the_wire_carries_mcp_json_rpc_unchanged(pair: tuple[NATSAgent, NATSAgent, MCPClient], raw_nc: Any) -> None:
    host, caller, _ = pair
    seen: list[Any] = []

    async def spy(msg: Any) -> None:
        seen.append((msg.subject, msg.data))

    await raw_nc.subscribe("agents.test.mcp.>", cb=spy)
    await subscribed(raw_nc)
    await caller.call_mcp_tool("tools", "echo", {"text": "wire"})
    await eventually(lambda: len(seen) >= 2, what="the spy saw the request and the response")
    import orjson

    requests = [(s, orjson.loads(d)) for s, d in seen if s.endswith(".requests")]
    responses = [(s, orjson.loads(d)) for s, d in seen if ".responses." in s]
    assert len(requests) == len(responses) == 1, seen
    (req_subject, req), (resp_subject, resp) = requests[0], responses[0]
    assert req_subject == "agents.test.mcp.tools.requests"
    rpc = req["payload"]["content"]
    assert rpc["jsonrpc"] == "2.0" and rpc["method"] == "tools/call" and rpc["params"] == {"name": "echo", "arguments": {"text": "wire"}}
    assert req["replyTo"] == resp_subject == f"agents.test.mcp.mcp-caller.responses.{rpc['id']}"
    answer = resp["payload"]["content"]
    assert answer["jsonrpc"] == "2.0" and answer["id"] == rpc["id"] and answer["result"]["content"] == [{"type": "text", "text": "wire"}]


async def test_allow_list_hides_and_refuses_other_tools(pair: tuple[NATSAgent, NATSAgent, MCPClient]) -> None:
    host, caller, client = pair
    assert "secret" in await client.tool_names()  # the server has it ...
    assert "secret" not in {t["name"] for t in await caller.list_mcp_tools("tools")}  # ... the bus does not see it
    with pytest.raises(MCPToolNotFoundError):
        await caller.call_mcp_tool("tools", "secret", {})


async def test_each_error_kind_is_typed(pair: tuple[NATSAgent, NATSAgent, MCPClient]) -> None:
    host, caller, _ = pair
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(MCPServerNotFoundError) as nobody:
        await caller.call_mcp_tool("nobody-hosts-this", "add", {"a": 1, "b": 1}, timeout=30)
    assert loop.time() - t0 < 1.0  # failed fast, not at the timeout
    assert isinstance(nobody.value, NoRespondersError)

    with pytest.raises(MCPToolNotFoundError) as unknown:
        await caller.call_mcp_tool("tools", "no_such_tool", {})
    assert unknown.value.tool == "no_such_tool" and unknown.value.server_id == "tools"

    with pytest.raises(MCPToolError) as failed:
        await caller.call_mcp_tool("tools", "fail", {"reason": "bad input"})
    assert "refused: bad input" in str(failed.value) and failed.value.content[0]["type"] == "text"
    raw = await caller.call_mcp_tool("tools", "fail", {"reason": "x"}, raw=True)
    assert raw["isError"] is True  # raw=True leaves isError to the caller

    with pytest.raises(MCPTimeoutError) as slow:
        await caller.call_mcp_tool("tools", "slow", {"seconds": 30}, timeout=0.3)
    assert isinstance(slow.value, RequestTimeoutError)

    with pytest.raises(MCPResultTooLargeError):
        await caller.call_mcp_tool("tools", "big", {"size": 2 * 1024 * 1024})
    # The host still serves after all of that.
    assert await caller.call_mcp_tool("tools", "add", {"a": 2, "b": 2}) == [{"type": "text", "text": "4"}]


async def test_200_concurrent_calls_are_correlated(pair: tuple[NATSAgent, NATSAgent, MCPClient]) -> None:
    _, caller, _ = pair
    results = await asyncio.gather(*(caller.call_mcp_tool("tools", "echo", {"text": f"call-{i}"}) for i in range(200)))
    assert [r[0]["text"] for r in results] == [f"call-{i}" for i in range(200)]


async def test_two_hosting_replicas_share_calls(make_agent: Callable[..., Any], mcp_clients: Callable[..., Any]) -> None:
    (host1, host2, caller), (client1, client2) = await asyncio.gather(
        asyncio.gather(make_agent("replica-1"), make_agent("replica-2"), make_agent("caller")),
        asyncio.gather(mcp_clients(), mcp_clients()),
    )
    await asyncio.gather(host1.aregister_mcp_server("tools", client1), host2.aregister_mcp_server("tools", client2))
    pids = await asyncio.gather(*(caller.call_mcp_tool("tools", "pid", {}, raw=True) for _ in range(60)))
    seen = {p["structuredContent"]["result"] for p in pids}
    assert len(seen) == 2  # both server processes answered
    served = [h.get_metrics()["mcp_calls_served"] for h in (host1, host2)]
    assert sum(served) == 60 and min(served) > 0


async def test_killed_server_process_gives_a_clear_error_and_the_agent_keeps_serving(
    make_agent: Callable[..., Any], mcp_clients: Callable[..., Any]
) -> None:
    host, caller = await asyncio.gather(make_agent("host"), make_agent("caller"))
    doomed, healthy = await asyncio.gather(mcp_clients(), mcp_clients())
    await host.aregister_mcp_server("doomed", doomed)
    await host.aregister_mcp_server("healthy", healthy)
    host.add_capability("ping", lambda message: "pong")
    pid = (await caller.call_mcp_tool("doomed", "pid", {}, raw=True))["structuredContent"]["result"]

    started = asyncio.Event()
    call = asyncio.ensure_future(caller.call_mcp_tool("doomed", "slow", {"seconds": 30}, progress=lambda *_: started.set()))
    await asyncio.wait_for(started.wait(), 10)  # the call is running inside the server process
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(MCPServerDiedError) as died:
        await asyncio.wait_for(call, 10)
    assert "doomed" in str(died.value)

    # The host stops advertising the dead server (so replicas would take its calls) and serves the rest.
    await eventually(lambda: "doomed" not in host.hosted_mcp_servers(), what="host drops the dead server")
    assert await caller.call_mcp_tool("healthy", "add", {"a": 1, "b": 1}) == [{"type": "text", "text": "2"}]

    async def unsubscribed() -> bool:  # nobody on the bus serves "doomed" any more: no responders, at once
        try:
            await caller.call_mcp_tool("doomed", "add", {"a": 1, "b": 1}, timeout=5)
        except MCPServerNotFoundError:
            return True
        except MCPError:
            return False  # still subscribed: the host answers that it no longer serves it
        raise AssertionError("the dead server answered a call")

    await eventually(unsubscribed, what="the host to leave the dead server's queue group")
    with pytest.raises(MCPServerNotFoundError):
        await caller.call_mcp_tool("doomed", "add", {"a": 1, "b": 1})
    assert await caller.send_task("ping", {}) == "pong"
    assert host.get_metrics()["mcp_servers_died"] == 1


async def test_discovery_shows_hosted_servers_and_tools(pair: tuple[NATSAgent, NATSAgent, MCPClient]) -> None:
    host, caller, _ = pair
    (info,) = await caller.discover(expected=1, timeout=5)
    assert info["id"] == "mcp-host"
    servers = info["mcp_servers"]
    assert set(servers) == {"tools"} and servers["tools"]["alive"] is True
    assert "add" in servers["tools"]["tools"] and "secret" not in servers["tools"]["tools"]


async def test_progress_notifications_travel(pair: tuple[NATSAgent, NATSAgent, MCPClient]) -> None:
    _, caller, _ = pair
    seen: list[tuple[Any, Any, Any]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    assert await caller.call_mcp_tool("tools", "slow", {"seconds": 0.01}, progress=on_progress) == [{"type": "text", "text": "slept 0.01"}]
    await eventually(lambda: len(seen) == 2, what="both progress notifications")
    assert seen == [(0, 2, "started"), (2, 2, "finished")]


async def test_cancellation_reaches_the_server(make_agent: Callable[..., Any], mcp_clients: Callable[..., Any], tmp_path: Path) -> None:
    marker = tmp_path / "cancelled"
    host, caller = await asyncio.gather(make_agent("host"), make_agent("caller"))
    await host.aregister_mcp_server("tools", await mcp_clients(env={"CANCEL_MARKER": str(marker)}))
    started = asyncio.Event()
    call = asyncio.ensure_future(caller.call_mcp_tool("tools", "wait_cancel", {}, progress=lambda *_: started.set()))
    await asyncio.wait_for(started.wait(), 10)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(marker.exists, what="the server saw notifications/cancelled")
    await eventually(lambda: host.get_metrics().get("mcp_calls_cancelled") == 1, what="host counted the cancellation")
    assert await caller.call_mcp_tool("tools", "add", {"a": 1, "b": 1}) == [{"type": "text", "text": "2"}]


async def test_opt_in_result_cache(make_agent: Callable[..., Any], mcp_clients: Callable[..., Any]) -> None:
    host, caller = await asyncio.gather(make_agent("host"), make_agent("caller"))
    await host.aregister_mcp_server("tools", await mcp_clients(), cache={"lookup": 60.0})
    first = await caller.call_mcp_tool("tools", "lookup", {"key": "k"})
    again = await caller.call_mcp_tool("tools", "lookup", {"key": "k"})
    other = await caller.call_mcp_tool("tools", "lookup", {"key": "j"})
    assert first == again == [{"type": "text", "text": "k=1"}]
    assert other == [{"type": "text", "text": "j=2"}]  # different arguments ran the tool
    # Not opted in: echo runs every time, and neither call touches the cache counters below.
    assert [await caller.call_mcp_tool("tools", "echo", {"text": "x"}) for _ in range(2)] == [[{"type": "text", "text": "x"}]] * 2
    metrics = host.get_metrics()
    assert metrics["mcp_cache_hits"] == 1 and metrics["mcp_cache_misses"] == 2


async def test_sdk_client_session_over_nats_unmodified(pair: tuple[NATSAgent, NATSAgent, MCPClient]) -> None:
    _, caller, _ = pair
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with nats_client_transport(caller, "tools") as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.server_info.name == "test-tools"
            listed = await session.list_tools()
            assert "add" in {t.name for t in listed.tools} and "secret" not in {t.name for t in listed.tools}
            result = await session.call_tool("add", {"a": 20, "b": 22})
            assert result.content[0].text == "42" and result.structured_content == {"result": 42}
            slow = await session.call_tool("slow", {"seconds": 0.01}, progress_callback=on_progress)
            assert slow.content[0].text == "slept 0.01"
            many = await asyncio.gather(*(session.call_tool("echo", {"text": str(i)}) for i in range(50)))
            assert [r.content[0].text for r in many] == [str(i) for i in range(50)]
            failed = await session.call_tool("fail", {"reason": "no"})
            assert failed.is_error
    await eventually(lambda: progress == [0, 2], what="progress through the SDK session")


async def test_in_process_sdk_server_served_over_nats(make_agent: Callable[..., Any]) -> None:
    server = MCPServer("in-process")

    @server.tool()
    def multiply(a: int, b: int) -> int:
        """Multiply."""
        return a * b

    @server.tool()
    async def count(n: int, ctx: Context) -> int:
        """Count to n, reporting progress."""
        for i in range(n):
            await ctx.report_progress(i + 1, n)
        return n

    host, caller = await asyncio.gather(make_agent("host"), make_agent("caller"))
    client = await host.serve_mcp_server("calc", server)
    try:
        assert await caller.call_mcp_tool("calc", "multiply", {"a": 6, "b": 7}) == [{"type": "text", "text": "42"}]
        seen: list[float] = []
        await caller.call_mcp_tool("calc", "count", {"n": 3}, progress=lambda p, t, m: seen.append(p))
        await eventually(lambda: seen == [1, 2, 3], what="in-process progress")
        async with nats_client_transport(caller, "calc") as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                assert (await session.call_tool("multiply", {"a": 3, "b": 3})).content[0].text == "9"
    finally:
        await client.close()


async def test_sdk_session_sees_no_host_as_an_error(make_agent: Callable[..., Any]) -> None:
    caller = await make_agent("caller")
    async with nats_client_transport(caller, "absent") as (read, write):
        async with ClientSession(read, write) as session:
            # An SDK session hears the SDK's own error type; its data names the kind (MCPServerNotFoundError's).
            with pytest.raises(SDKError) as exc_info:
                await session.initialize()
            assert "no agent hosts MCP server 'absent'" in str(exc_info.value)
            assert exc_info.value.error.data["kind"] == "server_not_found"


async def test_demo_mcp_step(agent_config: Callable[..., Any]) -> None:
    from agentcore.demos.mcp import run_mcp_demo

    lines: list[str] = []
    report = await run_mcp_demo(agent_config(), lines.append, calls=20)
    assert report["word_count"] == [{"type": "text", "text": "7"}]
    assert report["progress"] == ["1/3", "2/3", "3/3"] and report["cache_hits"] == 2
    assert report["p50_ms"] > 0 and any("p50" in line for line in lines)


async def test_sdk_session_cancellation_travels_over_nats(
    make_agent: Callable[..., Any], mcp_clients: Callable[..., Any], tmp_path: Path
) -> None:
    marker = tmp_path / "cancelled"
    host, caller = await asyncio.gather(make_agent("host"), make_agent("caller"))
    await host.aregister_mcp_server("tools", await mcp_clients(env={"CANCEL_MARKER": str(marker)}))
    started = asyncio.Event()

    async def on_progress(*_: Any) -> None:
        started.set()

    async with nats_client_transport(caller, "tools") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            call = asyncio.ensure_future(session.call_tool("wait_cancel", {}, progress_callback=on_progress))
            await asyncio.wait_for(started.wait(), 10)
            call.cancel()  # the session sends notifications/cancelled; the transport routes it to the host
            with pytest.raises(asyncio.CancelledError):
                await call
            await eventually(marker.exists, what="the server saw the SDK session's cancellation")
            assert (await session.call_tool("add", {"a": 1, "b": 1})).content[0].text == "2"


async def test_discovery_names_the_tools_as_soon_as_an_agent_registered_before_start_serves(
    make_agent: Callable[..., Any], mcp_clients: Callable[..., Any]
) -> None:
    host, client = await asyncio.gather(make_agent("early-host", start=False), mcp_clients())
    host.register_mcp_server("tools", client, tools=["add", "echo"])  # sync, before the agent has a connection
    assert host.hosted_mcp_servers() == {"tools": ["add", "echo"]}
    await host.astart()
    caller = await make_agent("caller")
    (info,) = await caller.discover(expected=1, timeout=5)  # no request has reached the host yet
    assert info["id"] == "early-host" and sorted(info["mcp_servers"]["tools"]["tools"]) == ["add", "echo"]
    assert await caller.call_mcp_tool("tools", "add", {"a": 1, "b": 2}) == [{"type": "text", "text": "3"}]


async def test_registering_a_client_that_is_not_connected_says_so(make_agent: Callable[..., Any]) -> None:
    host = await make_agent("host", start=False)
    with pytest.raises(MCPError, match="'tools'.*not connected"):
        host.register_mcp_server("tools", MCPClient(sys.executable, [TOOLS_SERVER]))
    assert host.hosted_mcp_servers() == {}


async def test_sdk_session_reads_resources_gets_prompts_and_completes_over_nats(pair: tuple[NATSAgent, NATSAgent, MCPClient]) -> None:
    _, caller, _ = pair
    from mcp.types import PromptReference

    async with nats_client_transport(caller, "tools") as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            caps = init.capabilities
            assert caps.tools is not None and caps.resources is not None and caps.prompts is not None and caps.completions is not None
            assert not caps.resources.subscribe  # server-initiated notifications do not travel: not offered
            resources = await session.list_resources()
            assert [(str(r.uri), r.mime_type) for r in resources.resources] == [("config://app", "application/json")]
            templates = await session.list_resource_templates()
            assert [t.uri_template for t in templates.resource_templates] == ["greeting://{name}"]
            config = await session.read_resource("config://app")
            assert config.contents[0].text == '{"mode": "test"}'
            hello = await session.read_resource("greeting://nats")
            assert hello.contents[0].text == "hello, nats"
            prompts = await session.list_prompts()
            assert [(p.name, [a.name for a in p.arguments or ()]) for p in prompts.prompts] == [("review", ["code", "language"])]
            prompt = await session.get_prompt("review", {"code": "x = 1", "language": "rust"})
            assert prompt.messages[0].role == "user" and prompt.messages[0].content.text == "Review this rust code:\nx = 1"
            done = await session.complete(PromptReference(name="review"), {"name": "language", "value": "py"})
            assert done.completion.values == ["python", "pyrex"]
            # The server's own JSON-RPC errors come back unchanged (code, message, data).
            with pytest.raises(SDKError) as missing:
                await session.get_prompt("review", {"language": "rust"})
            assert missing.value.error.message == "Missing required arguments: {'code'}" and missing.value.error.data is None
            # A resource the host does not expose (allow-list) is refused as the server refuses one it does not have.
            with pytest.raises(SDKError) as hidden:
                await session.read_resource("nope://x")
            assert hidden.value.error.code == -32602 and hidden.value.error.message == "Unknown resource: nope://x"
            assert hidden.value.error.data["uri"] == "nope://x"
            # Methods that would touch the host's shared session are refused, naming the server.
            with pytest.raises(SDKError) as refused, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the SDK marks logging as deprecated in its newest protocol version
                await session.set_logging_level("debug")
            assert refused.value.error.code == -32601 and "'tools'" in refused.value.error.message
            # The allow-list still holds on the same session.
            assert "secret" not in {t.name for t in (await session.list_tools()).tools}
            with pytest.raises(SDKError, match="unknown tool 'secret' on MCP server 'tools'"):
                await session.call_tool("secret", {})
    with pytest.raises(MCPToolNotFoundError):
        await caller.call_mcp_tool("tools", "secret", {})


async def test_a_server_without_resources_or_prompts_is_not_offered_them(make_agent: Callable[..., Any]) -> None:
    from mcp.server import Server

    bare = Server("bare")  # the low-level server: only what it has handlers for
    host, caller = await asyncio.gather(make_agent("host"), make_agent("caller"))
    client = await host.serve_mcp_server("bare", bare)
    try:
        async with nats_client_transport(caller, "bare") as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                assert init.capabilities.resources is None and init.capabilities.prompts is None
                with pytest.raises(SDKError) as refused:
                    await session.list_resources()
                assert refused.value.error.code == -32601 and "'bare'" in refused.value.error.message
    finally:
        await client.close()


async def test_a_host_stopping_mid_call_answers_with_a_clear_error(make_agent: Callable[..., Any], mcp_clients: Callable[..., Any]) -> None:
    host, caller, client = await asyncio.gather(make_agent("host"), make_agent("caller"), mcp_clients())
    await host.aregister_mcp_server("tools", client)
    started, sdk_started = asyncio.Event(), asyncio.Event()

    async def sdk_started_cb(*_: Any) -> None:
        sdk_started.set()

    call = asyncio.ensure_future(caller.call_mcp_tool("tools", "slow", {"seconds": 30}, progress=lambda *_: started.set()))
    async with nats_client_transport(caller, "tools") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            sdk_call = asyncio.ensure_future(session.call_tool("slow", {"seconds": 30}, progress_callback=sdk_started_cb))
            await asyncio.wait_for(asyncio.gather(started.wait(), sdk_started.wait()), 10)
            await host.astop(timeout=0.1)  # the calls outlive the drain timeout and are cut short
            with pytest.raises(MCPServerDiedError, match="agent host stopped while serving tool 'slow' of MCP server 'tools'"):
                await asyncio.wait_for(call, 5)
            with pytest.raises(SDKError, match="agent host stopped while serving tool 'slow'") as sdk_error:
                await asyncio.wait_for(sdk_call, 5)
            assert sdk_error.value.error.data["kind"] == "host_stopped"
    assert caller.get_metrics()["mcp_calls_pending"] == 0


async def test_a_caller_stopping_mid_call_fails_its_calls_at_once(make_agent: Callable[..., Any], mcp_clients: Callable[..., Any]) -> None:
    host, caller, client = await asyncio.gather(make_agent("host"), make_agent("caller"), mcp_clients())
    await host.aregister_mcp_server("tools", client)
    started = asyncio.Event()
    call = asyncio.ensure_future(caller.call_mcp_tool("tools", "slow", {"seconds": 30}, progress=lambda *_: started.set()))
    await asyncio.wait_for(started.wait(), 10)
    await caller.astop(timeout=0.1)
    with pytest.raises(MCPError, match="agent caller stopped before MCP server 'tools' \\(tool 'slow'\\) answered"):
        await asyncio.wait_for(call, 5)
    assert caller.get_metrics()["mcp_calls_pending"] == 0


async def test_a_timeout_leaves_nothing_behind(pair: tuple[NATSAgent, NATSAgent, MCPClient]) -> None:
    host, caller, _ = pair
    with pytest.raises(MCPTimeoutError, match="MCP server 'tools' \\(tool 'slow'\\) within 0.2s") as timed_out:
        await caller.call_mcp_tool("tools", "slow", {"seconds": 30}, timeout=0.2)
    assert timed_out.value.server_id == "tools" and timed_out.value.tool == "slow"
    assert caller.get_metrics()["mcp_calls_pending"] == 0  # no future, no timer left on the caller
    # The caller's cancellation stopped the call on the host, and nothing of it is left there either.
    await eventually(lambda: host.get_metrics().get("mcp_calls_cancelled") == 1, what="host cancelled the timed-out call")
    assert host.get_metrics()["in_flight"] == 0  # the host handles no call any more
    subs = [key for key in caller.nc._subs.values() if "responses" in key.subject]
    assert len(subs) == 1  # one wildcard response subscription per agent, not one per call


async def test_many_callers_on_separate_agents_at_once(make_agent: Callable[..., Any], mcp_clients: Callable[..., Any]) -> None:
    host, client = await asyncio.gather(make_agent("host"), mcp_clients())
    await host.aregister_mcp_server("tools", client)
    callers = await asyncio.gather(*(make_agent(f"caller-{n}") for n in range(6)))

    async def burst(n: int, agent: NATSAgent) -> list[str]:
        results = await asyncio.gather(*(agent.call_mcp_tool("tools", "echo", {"text": f"{n}:{i}"}) for i in range(40)))
        return [r[0]["text"] for r in results]

    answers = await asyncio.gather(*(burst(n, agent) for n, agent in enumerate(callers)))
    assert answers == [[f"{n}:{i}" for i in range(40)] for n in range(6)]
    assert host.get_metrics()["mcp_calls_served"] == 240
    assert all(agent.get_metrics()["mcp_calls_pending"] == 0 for agent in callers)


async def test_a_caller_that_vanishes_does_not_leave_work_on_the_host(
    make_agent: Callable[..., Any], mcp_clients: Callable[..., Any], raw_nc: Any, tmp_path: Path
) -> None:
    from agentcore.envelope import encode, new_message

    marker = tmp_path / "cancelled"
    host = await make_agent("host")
    await host.aregister_mcp_server("tools", await mcp_clients(env={"CANCEL_MARKER": str(marker)}))
    # A request whose caller never cancels and never listens: only its timeout (0.3 s) bounds the work.
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "wait_cancel", "arguments": {}}}
    envelope = new_message("query", rpc, source_id="ghost", source_type="worker", reply_to="agents.test.mcp.ghost.responses.1",
                           timeout_ms=300.0, capabilities=["mcp"])
    await raw_nc.publish("agents.test.mcp.tools.requests", encode(envelope))
    await eventually(marker.exists, what="the server was told to stop the call")
    await eventually(lambda: host.get_metrics()["in_flight"] == 0, what="nothing left in flight on the host")
