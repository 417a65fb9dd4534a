"""The agent side of MCP over NATS: host MCP servers for the bus and call the tools others host.

Wire design (MCP's JSON-RPC messages travel unchanged as the envelope's payload.content):

- a call goes to ``agents.{env}.mcp.{server_id}.requests``, served by every host of that id in one queue
  group; its envelope's replyTo (and NATS reply) is ``agents.{env}.mcp.{caller}.responses.{request_id}``;
- the host answers there with the JSON-RPC response (or JSON-RPC error, whose data.kind names the
  failure), preceded by any ``notifications/progress`` the server sent for the call;
- cancellation is a ``notifications/cancelled`` on ``agents.{env}.mcp.{server_id}.cancel`` (all hosts
  hear it; the one running the call stops it) with correlationId = the request envelope's id;
- nobody listening: NATS answers the reply subject with a 503 status at once, so callers fail fast.

The MCP SDK is an optional extra: nothing here imports it at module level.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from .._impl import ContentCache, canonical_hash, validate_token
from ..core.records import NO_REPLY, TASK
from ..envelope import IdGenerator, decode, encode, new_message
from ..errors import (
    AgentCoreError,
    EnvelopeError,
    MCPError,
    MCPPromptNotFoundError,
    MCPResourceNotFoundError,
    MCPResultTooLargeError,
    MCPServerDiedError,
    MCPServerNotFoundError,
    MCPTimeoutError,
    MCPToolError,
    MCPToolNotFoundError,
)
from ..transport.tracecontext import CURRENT
from ..transport.offload import publish_request
from .exposure import Exposure

if TYPE_CHECKING:
    from mcp import types as mcp_types
    from nats.aio.client import Client as NATSClient
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from ..core.host import Host
    from .client import MCPClient, ProgressCallback

__all__ = ("MCP",)

log = logging.getLogger("agentcore.mcp")

JSONRPC = "2.0"
# JSON-RPC error codes (the MCP SDK's values, repeated so this module needs no SDK import).
INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR, CONNECTION_CLOSED = -32600, -32601, -32602, -32603, -32000
REQUEST_TIMEOUT = -32001

# error.data.kind of a JSON-RPC error -> the exception the caller gets.
_KINDS: dict[str, type[MCPError]] = {
    "server_not_found": MCPServerNotFoundError,
    "tool_not_found": MCPToolNotFoundError,
    "resource_not_found": MCPResourceNotFoundError,
    "prompt_not_found": MCPPromptNotFoundError,
    "tool_error": MCPToolError,
    "timeout": MCPTimeoutError,
    "server_died": MCPServerDiedError,
    "result_too_large": MCPResultTooLargeError,
    "host_stopped": MCPServerDiedError,
}
# payload.error.code of an agentcore error result -> the exception the caller gets.
_ENVELOPE_CODES: dict[str, type[MCPError]] = {
    "payload_too_large": MCPResultTooLargeError,
    "expired": MCPTimeoutError,
}

# Requests passed to the hosted server unchanged when it advertises the capability (value).
_FORWARDED: dict[str, str] = {
    "resources/list": "resources",
    "resources/templates/list": "resources",
    "resources/read": "resources",
    "prompts/list": "prompts",
    "prompts/get": "prompts",
    "completion/complete": "completions",
}

_request_ids = IdGenerator()
#: The seed of the tool-result caches' keys: a secret of this process, so nobody outside can search offline for
#: arguments whose key is another call's.
_KEY_SEED = secrets.randbits(64)

Sink = Callable[[Any], None]  # receives a JSON-RPC message (dict) or an exception for one request


def rpc_error(rpc_id: Any, code: int, message: str, kind: str | None = None, **data: Any) -> dict[str, Any]:
    """Return a JSON-RPC error response (data.kind names the agentcore failure, when there is one)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if kind is not None or data:
        error["data"] = {"kind": kind, **data} if kind is not None else data
    return {"jsonrpc": JSONRPC, "id": rpc_id, "error": error}


def error_from_rpc(error: Mapping[str, Any], *, server_id: str, tool: str | None, source: str | None) -> MCPError:
    """Return the typed exception for a JSON-RPC error object."""
    data = error.get("data")
    kind = data.get("kind") if isinstance(data, dict) else None
    cls = _KINDS.get(kind or "", MCPError)
    text = str(error.get("message", "MCP error"))
    return cls(text, server_id=server_id, tool=tool, code=error.get("code"), data=data, source=source)


@dataclass(eq=False)
class _Hosted:
    server_id: str
    client: MCPClient
    exposure: Exposure
    cache_ttls: dict[str, float]
    caches: dict[str, ContentCache] = field(default_factory=dict)
    tools: list[mcp_types.Tool] | None = None  # the SDK's Tool objects, allow-list applied
    inflight: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    callers: dict[str, tuple[str, Any]] = field(default_factory=dict)  # request id -> (caller's source.id, JSON-RPC id)
    handlers: list[tuple[str, Callable[..., Any]]] = field(default_factory=list)
    withdrawn: bool = False  # unregistered: calls cut short get an error, not the silence of a cancellation

    def exposes(self, name: str) -> bool:
        return self.exposure.tool(name)


@dataclass(eq=False, slots=True)
class _Pending:
    server_id: str
    sink: Sink
    timer: asyncio.TimerHandle | None
    tool: str | None
    rpc_id: Any = None  # the JSON-RPC id the answer must carry
    progress_token: Any = None  # the token progress notifications must carry (None: none expected)
    host: str | None = None  # the source.id of the host that answered first: the rest must come from it too


class MCP:
    """The MCP feature of an agent: host MCP servers for the bus (register_mcp_server) and call the tools others host."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._hosted: dict[str, _Hosted] = {}  # server id -> what this agent serves under it
        self._ever_hosted = False  # discovery keeps saying "mcp_servers" (maybe empty) once one was hosted
        self._pending: dict[str, _Pending] = {}  # request envelope id -> a call of ours waiting for its answer
        self._responses: tuple[NATSClient, Subscription] | None = None  # the inbox all our answers arrive on
        self._lock: asyncio.Lock | None = None  # one subscribe of that inbox at a time (made on first use)

    # ------------------------------------------------------------------ lifecycle (Component)

    async def start(self) -> None:
        """Nothing to set up: the hosted servers' registrations are synced with the rest, the inbox on first call."""

    def reconnected(self) -> None:
        """Nothing to do: nats-py restores the response inbox's subscription by itself."""

    def drain(self) -> None:
        """Nothing held: calls being served end with their handlers."""

    async def stop(self) -> None:
        """Fail the calls still waiting (their answers can no longer arrive) and forget the response inbox."""
        host = self._host
        for request_id, entry in list(self._pending.items()):
            self.forget(request_id)
            entry.sink(MCPError(f"agent {host.agent_id} stopped before MCP server {entry.server_id!r}{_about(entry.tool)} answered",
                                server_id=entry.server_id, tool=entry.tool))
        self._responses = None

    def describe(self) -> dict[str, Any]:
        """Return the hosted servers, their tools and liveness for discovery answers and heartbeats ({} when none)."""
        if not self._ever_hosted:
            return {}
        return {
            "mcp_servers": {
                sid: {"tools": [t.name for t in (h.tools or ())], "alive": h.client.alive}
                for sid, h in self._hosted.items()
            }
        }

    def gauges(self) -> dict[str, float]:
        """Report the MCP calls this agent still waits for."""
        return {"mcp_calls_pending": len(self._pending)}

    # ------------------------------------------------------------------ hosting

    def register_mcp_server(
        self,
        server_id: str,
        client: MCPClient,
        *,
        tools: Iterable[str] | None = None,
        cache: Mapping[str, float] | None = None,
        resources: Iterable[str] | None = None,
        prompts: Iterable[str] | None = None,
    ) -> None:
        """Serve a connected MCPClient's tools, resources and prompts to the bus under server_id.

        tools, resources and prompts are allow-lists, each of its own kind (resources holds URIs and URI
        templates: a template allows the URIs it matches, and lists itself among the templates). With none of
        them, everything the server offers is exposed; with any of them, only what is listed: a kind left out
        exposes nothing. What is not exposed is neither listed nor served over NATS (refused as not found).
        cache maps tool names to a time-to-live in seconds: identical calls (same canonical arguments) within
        it are answered from the content-hash cache (opt in only for pure lookups).
        """
        host = self._host
        validate_token(server_id)
        if server_id in self._hosted:
            raise MCPError(f"agent {host.agent_id} already hosts MCP server {server_id!r}", server_id=server_id)
        if not client.connected:
            raise MCPError(f"cannot host MCP server {server_id!r}: its client {client.name} is not connected "
                           "(await client.connect() first, or use aregister_mcp_server())", server_id=server_id)
        ttls = {str(name): float(ttl) for name, ttl in (cache or {}).items()}
        hosted = _Hosted(server_id, client, Exposure(tools, resources, prompts), ttls)
        if client.tools is not None:  # listed at connect: discovery names them from the start, before any request
            hosted.tools = [t for t in client.tools if hosted.exposes(t.name)]
        elif client.initialize_result.capabilities.tools is None:
            hosted.tools = []  # a server without tools (resources or prompts only)
        self._hosted[server_id] = hosted
        self._ever_hosted = True

        async def serve(message: dict[str, Any]) -> Any:
            return await self._serve(hosted, message)

        async def cancel(message: dict[str, Any]) -> Any:
            return self._on_cancel(hosted, message)

        requests = host.topics.mcp_requests(server_id)
        cancels = host.topics.mcp_cancel(server_id)
        host.register(requests, serve, kind=TASK, queue=f"mcp-{server_id}")
        # Not a system registration (those skip the in-flight count); a high priority puts it first in the queue.
        host.register(cancels, cancel, kind=TASK)
        hosted.handlers = [(requests, serve), (cancels, cancel)]
        client.on_died(lambda _c: self._server_died(hosted))
        host.metrics.counters["mcp_servers_hosted"] += 1
        if host.connection.usable:
            host.schedule_sync()
            if hosted.tools is None and host.on_loop_thread():
                host.spawn(asyncio.ensure_future(self._prefetch_tools(hosted)))  # not eagerly: register returns first

    async def aregister_mcp_server(
        self, server_id: str, client: MCPClient, *, tools: Iterable[str] | None = None, cache: Mapping[str, float] | None = None,
        resources: Iterable[str] | None = None, prompts: Iterable[str] | None = None,
    ) -> None:
        """Register like register_mcp_server(), then return once the tools are listed and the bus has the interest."""
        if not client.connected:
            await client.connect()
        self.register_mcp_server(server_id, client, tools=tools, cache=cache, resources=resources, prompts=prompts)
        hosted = self._hosted[server_id]
        if hosted.tools is None:
            await self._refresh_tools(hosted)
        await self._host.sync()

    async def serve_mcp_server(self, server_id: str, server: Any, *, tools: Iterable[str] | None = None,
                               cache: Mapping[str, float] | None = None, resources: Iterable[str] | None = None,
                               prompts: Iterable[str] | None = None) -> MCPClient:
        """Expose an in-process SDK server (MCPServer or low-level Server) on the bus, no subprocess; return its client."""
        from .client import MCPClient

        client = MCPClient.in_process(server, name=server_id)
        await client.connect()
        await self.aregister_mcp_server(server_id, client, tools=tools, cache=cache, resources=resources, prompts=prompts)
        return client

    def unregister_mcp_server(self, server_id: str) -> MCPClient | None:
        """Stop serving server_id (the client stays open; close it yourself) and return its client."""
        hosted = self._hosted.pop(server_id, None)
        if hosted is None:
            return None
        hosted.withdrawn = True
        host = self._host
        for subject, handler in hosted.handlers:
            host.unregister(subject, handler)
        if host.connection.usable:
            host.schedule_sync()  # leave the queue group now, so replicas take the calls
        if hosted.client.alive:
            # A dead server's calls fail by themselves with MCPServerDiedError; a live one's are cut short here.
            for task in list(hosted.inflight.values()):
                task.cancel()
        return hosted.client

    def hosted_mcp_servers(self) -> dict[str, list[str]]:
        """Return the hosted server ids and the tool names each exposes (as discovery shows them)."""
        return {sid: [t.name for t in (h.tools or ())] for sid, h in self._hosted.items()}

    async def _prefetch_tools(self, hosted: _Hosted) -> None:
        try:
            await self._refresh_tools(hosted)
        except Exception as exc:  # listed again on the first request; discovery shows no tools until then
            log.debug("could not list the tools of MCP server %s: %s", hosted.server_id, exc)

    async def _refresh_tools(self, hosted: _Hosted) -> None:
        tools = await hosted.client.list_tools()
        hosted.tools = [t for t in tools if hosted.exposes(t.name)]

    def _server_died(self, hosted: _Hosted) -> None:
        # Leave the queue group at once, so replicas with a live server take the calls; calls in flight
        # already get MCPServerDiedError from the client.
        host = self._host
        if self._hosted.get(hosted.server_id) is not hosted:
            return
        log.error("agent %s: MCP server %s died; no longer serving it", host.agent_id, hosted.server_id)
        host.metrics.counters["mcp_servers_died"] += 1
        loop = host.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.unregister_mcp_server, hosted.server_id)

    async def _serve(self, hosted: _Hosted, message: dict[str, Any]) -> Any:
        host = self._host
        rpc = message["payload"]["content"]
        if not isinstance(rpc, dict) or rpc.get("jsonrpc") != JSONRPC or not isinstance(rpc.get("method"), str):
            return rpc_error(rpc.get("id") if isinstance(rpc, dict) else None, INVALID_REQUEST, "payload.content is not a JSON-RPC 2.0 message")
        rpc_id = rpc.get("id")
        if rpc_id is None:
            return NO_REPLY  # a notification (e.g. notifications/initialized): the hosted session already did that
        method: str = rpc["method"]
        params = rpc.get("params") or {}
        if not isinstance(params, dict):  # a stranger's params may be anything JSON holds
            return rpc_error(rpc_id, INVALID_PARAMS, f"params of {method[:100]!r} must be an object, got {type(params).__name__}")
        host.metrics.counters["mcp_requests_served"] += 1
        if method == "ping":
            return {"jsonrpc": JSONRPC, "id": rpc_id, "result": {}}
        if method == "initialize":
            init = hosted.client.initialize_result.model_dump(by_alias=True, mode="json", exclude_none=True)
            init["capabilities"] = self._capabilities(hosted)
            return {"jsonrpc": JSONRPC, "id": rpc_id, "result": init}
        what = f"tool {params.get('name')!r}" if method == "tools/call" else method
        work: Awaitable[Any]
        if method == "tools/call":
            work = self._host_call(hosted, message, params)
        elif method == "tools/list":
            work = self._host_list_tools(hosted)
        elif method in _FORWARDED and _FORWARDED[method] in self._capabilities(hosted):
            work = self._host_forward(hosted, message, method, params)
        else:
            served = ", ".join(["initialize", "ping", "tools/list", "tools/call"]
                               + [m for m, cap in _FORWARDED.items() if cap in self._capabilities(hosted)])
            return rpc_error(rpc_id, METHOD_NOT_FOUND, f"method {method!r} is not served over NATS by MCP server "
                             f"{hosted.server_id!r} (served: {served})", serverId=hosted.server_id)
        # Every call runs as its own task, so a notifications/cancelled or unregistering can stop just that one.
        task = asyncio.ensure_future(work)
        hosted.inflight[message["id"]] = task
        hosted.callers[message["id"]] = (message["source"]["id"], rpc_id)
        try:
            # Shielded: when this handler is cancelled, answer at once instead of waiting for the server to
            # acknowledge the call's cancellation (by then the stopping agent's connection may be closed).
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # This handler itself is being cancelled: the agent is stopping past its drain timeout.
                # Answer rather than leave the caller to its timeout; the connection still sends until drained.
                task.cancel()
                if host.status not in ("stopping", "stopped"):
                    raise
                current.uncancel()
                return rpc_error(rpc_id, CONNECTION_CLOSED, f"agent {host.agent_id} stopped while serving {what} of MCP "
                                 f"server {hosted.server_id!r}", "host_stopped", serverId=hosted.server_id, host=host.agent_id)
            if hosted.withdrawn:
                return rpc_error(rpc_id, CONNECTION_CLOSED, f"agent {host.agent_id} stopped serving MCP server "
                                 f"{hosted.server_id!r} during {what}", "server_died", serverId=hosted.server_id, host=host.agent_id)
            host.metrics.counters["mcp_calls_cancelled"] += 1
            return NO_REPLY  # cancelled by the caller: MCP says a cancelled request gets no response
        except _RPCFailure as failure:
            return rpc_error(rpc_id, failure.code, failure.text, failure.kind, **failure.data, serverId=hosted.server_id)
        except MCPServerDiedError as exc:
            text = f"MCP server {hosted.server_id!r} on agent {host.agent_id} died during {what}: {exc.__cause__ or exc}"
            return rpc_error(rpc_id, CONNECTION_CLOSED, text, "server_died", serverId=hosted.server_id, host=host.agent_id)
        except MCPError as exc:
            return rpc_error(rpc_id, exc.code or INTERNAL_ERROR, str(exc), None)
        except Exception as exc:
            error = getattr(exc, "error", None)  # the SDK's MCPError carries the server's JSON-RPC error: pass it on as is
            if error is not None and isinstance(getattr(error, "code", None), int):
                return {"jsonrpc": JSONRPC, "id": rpc_id, "error": error.model_dump(by_alias=True, mode="json", exclude_none=True)}
            raise
        finally:
            hosted.inflight.pop(message["id"], None)
            hosted.callers.pop(message["id"], None)
        return {"jsonrpc": JSONRPC, "id": rpc_id, "result": result}

    def _capabilities(self, hosted: _Hosted) -> dict[str, Any]:
        """Return what the host serves of hosted's capabilities (initialize's answer over NATS)."""
        served: dict[str, Any] = {}
        advertised = hosted.client.initialize_result.capabilities
        # No subscribe or listChanged: server-initiated notifications other than a call's progress do not travel.
        for name in ("tools", "resources", "prompts", "completions"):
            if getattr(advertised, name, None) is not None:
                served[name] = {}
        return hosted.exposure.capabilities(served)

    async def _host_list_tools(self, hosted: _Hosted) -> dict[str, Any]:
        if hosted.tools is None:
            await self._refresh_tools(hosted)
        return {"tools": [t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in hosted.tools or ()]}

    async def _host_forward(self, hosted: _Hosted, message: dict[str, Any], method: str, params: Mapping[str, Any]) -> Any:
        refused = hosted.exposure.refusal(method, params)
        if refused is not None:
            self._host.metrics.counters["mcp_requests_refused"] += 1
            kind, text, what = refused
            raise _RPCFailure(INVALID_PARAMS, text, kind, **what)
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        destination = message.get("replyTo")
        progress = self._progress_sender(destination, token, message) if token is not None and destination else None
        result = await hosted.client.request(method, params, progress_callback=progress, timeout=_deadline(message))
        return hosted.exposure.filter(method, result)

    async def _host_call(self, hosted: _Hosted, message: dict[str, Any], params: Mapping[str, Any]) -> Any:
        counters = self._host.metrics.counters
        name = params.get("name")
        if not isinstance(name, str):
            raise _RPCFailure(INVALID_PARAMS, "tools/call needs params.name", None)
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise _RPCFailure(INVALID_PARAMS, f"tools/call params.arguments must be an object, got {type(arguments).__name__}", None)
        if not hosted.exposes(name):
            counters["mcp_requests_refused"] += 1
            raise _RPCFailure(INVALID_PARAMS, f"unknown tool {name!r} on MCP server {hosted.server_id!r}", "tool_not_found")
        if hosted.tools is None or name not in {t.name for t in hosted.tools}:
            await self._refresh_tools(hosted)  # the server may have gained tools since we listed them
            if name not in {t.name for t in hosted.tools or ()}:
                raise _RPCFailure(INVALID_PARAMS, f"unknown tool {name!r} on MCP server {hosted.server_id!r}", "tool_not_found")
        cache, key = None, 0
        if name in hosted.cache_ttls:
            cache = hosted.caches.get(name)
            if cache is None:
                cache = hosted.caches[name] = ContentCache(max_entries=4096, ttl=hosted.cache_ttls[name],
                                                           max_bytes=self._host.config["cache.max_bytes"])
            key = canonical_hash([name, arguments], _KEY_SEED)
            cached = cache.get(key)
            if cached is not None:
                counters["mcp_cache_hits"] += 1
                return cached
            counters["mcp_cache_misses"] += 1
        progress = None
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        destination = message.get("replyTo")
        if token is not None and destination:
            progress = self._progress_sender(destination, token, message)
        # The trace context of this call goes on to the server in params._meta (MCP's convention; with OpenTelemetry
        # configured the SDK writes its own client span's there instead).
        result = await hosted.client.call_tool(name, arguments, progress_callback=progress, timeout=_deadline(message),
                                               meta=CURRENT.get())
        data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        if cache is not None and not result.is_error:
            cache.sweep()  # the expired go as new results come, read again or not (it costs only those dropped)
            cache.put(key, data, len(orjson.dumps(data)))  # callers choose the arguments: bounded by bytes too
        counters["mcp_calls_served"] += 1
        return data

    def _progress_sender(self, destination: str, token: Any, request: dict[str, Any]) -> ProgressCallback:
        host = self._host

        async def send(progress: float, total: float | None = None, message: str | None = None) -> None:
            params: dict[str, Any] = {"progressToken": token, "progress": progress}
            if total is not None:
                params["total"] = total
            if message is not None:
                params["message"] = message
            note = {"jsonrpc": JSONRPC, "method": "notifications/progress", "params": params}
            envelope = new_message("event", note, source_id=host.agent_id, source_type=host.agent_type,
                                   target=request["source"]["id"], correlation_id=request["id"])
            try:
                await host.connection.publish(destination, encode(envelope))
            except AgentCoreError as exc:
                log.debug("agent %s could not forward MCP progress: %s", host.agent_id, exc)

        return send

    def _on_cancel(self, hosted: _Hosted, message: dict[str, Any]) -> Any:
        """Stop the call a notifications/cancelled names, when it comes from the caller that made the call."""
        request_id = message.get("correlationId") or ""
        task = hosted.inflight.get(request_id)
        if task is None or task.done():
            return NO_REPLY  # over already, or never ours (all hosts of the server id hear every cancel)
        caller, rpc_id = hosted.callers[request_id]
        note = message["payload"]["content"]
        params = note.get("params") if isinstance(note, dict) else None
        named = params.get("requestId", rpc_id) if isinstance(params, dict) else rpc_id
        if message["source"]["id"] != caller or named != rpc_id:
            self._host.metrics.counters["mcp_cancels_rejected"] += 1
            log.warning("agent %s ignored a cancellation of call %s of MCP server %s: not from the caller that made it",
                        self._host.agent_id, request_id, hosted.server_id)
            return NO_REPLY
        task.cancel()
        return NO_REPLY

    # ------------------------------------------------------------------ calling

    async def call_mcp_tool(
        self,
        server_id: str,
        tool_name: str,
        arguments: dict[str, Any] | None = None,
        timeout: float = 30.0,
        *,
        progress: Callable[[float, float | None, str | None], Any] | None = None,
        raw: bool = False,
    ) -> Any:
        """Call a tool of an MCP server hosted by some agent on the bus and return its content as plain data.

        The result is the MCP content list ([{"type": "text", "text": ...}, ...]); raw=True returns the whole
        CallToolResult as a dict and does not raise on isError. progress(progress, total, message) is called
        for the server's progress notifications. Raises MCPServerNotFoundError (nobody hosts server_id, at
        once), MCPToolNotFoundError, MCPToolError (the tool reported isError), MCPTimeoutError,
        MCPServerDiedError or MCPResultTooLargeError.
        """
        counters = self._host.metrics.counters
        params: dict[str, Any] = {"name": tool_name, "arguments": arguments or {}}
        counters["mcp_calls"] += 1
        tracer = self._host.connection.tracer
        if tracer is None:
            result = await self._call(server_id, "tools/call", params, timeout, progress=progress, tool=tool_name)
        else:  # an execute_tool span around the call; the request carries its context
            scope = tracer.tool(server_id, tool_name, None)
            try:
                result = await self._call(server_id, "tools/call", params, timeout, progress=progress, tool=tool_name)
            except BaseException as exc:
                scope.error(exc)
                raise
            finally:
                scope.end()
        if raw:
            return result
        if result.get("isError"):
            content = result.get("content") or []
            text = "; ".join(str(c.get("text")) for c in content if isinstance(c, dict) and c.get("type") == "text") or "tool reported an error"
            counters["mcp_tool_errors"] += 1
            raise MCPToolError(f"tool {tool_name!r} of MCP server {server_id!r} failed: {text}", content=content, result=result,
                               server_id=server_id, tool=tool_name)
        return result.get("content", [])

    async def list_mcp_tools(self, server_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Return the tools (name, description, inputSchema, ...) an MCP server exposes on the bus."""
        result = await self._call(server_id, "tools/list", {}, timeout)
        return list(result.get("tools", []))

    async def _call(
        self, server_id: str, method: str, params: dict[str, Any], timeout: float, *,
        progress: Callable[..., Any] | None = None, tool: str | None = None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        progress_tasks: set[asyncio.Future[Any]] = set()

        def sink(item: Any) -> None:
            if future.done():
                return
            if isinstance(item, BaseException):
                future.set_exception(item)
            elif "method" in item and "id" not in item:
                if item["method"] == "notifications/progress" and progress is not None:
                    p = item.get("params") or {}
                    outcome = progress(p.get("progress"), p.get("total"), p.get("message"))
                    if asyncio.iscoroutine(outcome):
                        task = asyncio.ensure_future(outcome)
                        progress_tasks.add(task)
                        task.add_done_callback(progress_tasks.discard)
            elif "error" in item:
                future.set_exception(error_from_rpc(item["error"], server_id=server_id, tool=tool, source=None))
            else:
                future.set_result(item.get("result"))

        rpc: dict[str, Any] = {"jsonrpc": JSONRPC, "id": None, "method": method, "params": params}
        request_id = await self.send(server_id, rpc, sink, timeout, progress=progress is not None, tool=tool)
        try:
            return await future
        except asyncio.CancelledError:
            await self.cancel(server_id, request_id, rpc["id"], "cancelled by the caller")
            raise
        except MCPTimeoutError:
            await self.cancel(server_id, request_id, rpc["id"], "timed out")
            raise
        finally:
            self.forget(request_id)

    # The SDK transport (transport.py) drives calls through send, cancel and forget.

    async def send(self, server_id: str, rpc: dict[str, Any], sink: Sink, timeout: float, *,
                   progress: bool = False, tool: str | None = None) -> str:
        """Publish a JSON-RPC request to server_id's hosts; everything that comes back for it goes to sink.

        Return the request envelope's id (what a cancellation names). rpc["id"] None means: use that id.
        """
        host = self._host
        host.connection.require()  # NotConnectedError before anything is set up
        await self._ensure_responses()
        request_id = _request_ids()
        if rpc.get("id") is None:
            rpc["id"] = request_id
        if progress:
            params = rpc.setdefault("params", {})
            meta = params.setdefault("_meta", {})
            meta.setdefault("progressToken", request_id)
        trace = CURRENT.get()
        if trace is not None:  # MCP's convention: the trace context in params._meta too (the NATS headers carry it)
            rpc.setdefault("params", {}).setdefault("_meta", {}).update(trace)
        reply = host.topics.mcp_responses(host.agent_id, request_id)
        envelope = new_message(
            "query", rpc, source_id=host.agent_id, source_type=host.agent_type, reply_to=reply,
            timeout_ms=timeout * 1000.0, capabilities=["mcp"], message_id=request_id,
        )
        data = encode(envelope)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout, self._expire, request_id, server_id, timeout)
        meta = (rpc.get("params") or {}).get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        self._pending[request_id] = _Pending(server_id, sink, timer, tool, rpc["id"], token)
        try:
            # Larger than max_payload: offered, and pulled whole by the hosting agent.
            await publish_request(host.connection, host.topics.mcp_requests(server_id), envelope, data, reply, timeout,
                                  host.spawn)
        except BaseException:
            self.forget(request_id)
            raise
        return request_id

    def _expire(self, request_id: str, server_id: str, timeout: float) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            self._host.metrics.counters["mcp_timeouts"] += 1
            entry.sink(MCPTimeoutError(f"no answer from MCP server {server_id!r}{_about(entry.tool)} within {timeout}s",
                                       server_id=server_id, tool=entry.tool))

    def forget(self, request_id: str) -> None:
        """Stop waiting for the answer to request_id (no error is delivered; a late answer is dropped)."""
        entry = self._pending.pop(request_id, None)
        if entry is not None and entry.timer is not None:
            entry.timer.cancel()

    async def cancel(self, server_id: str, request_id: str, rpc_id: Any, reason: str) -> None:
        """Tell server_id's hosts to stop the call sent as request_id (MCP notifications/cancelled)."""
        host = self._host
        self.forget(request_id)
        note = {"jsonrpc": JSONRPC, "method": "notifications/cancelled", "params": {"requestId": rpc_id, "reason": reason}}
        envelope = new_message("event", note, source_id=host.agent_id, source_type=host.agent_type, correlation_id=request_id,
                               priority=10)
        try:
            await host.connection.publish(host.topics.mcp_cancel(server_id), encode(envelope))
        except Exception as exc:  # the connection may be closing; the host's own timeout still bounds the work
            log.debug("agent %s could not send an MCP cancellation: %s", host.agent_id, exc)

    async def _ensure_responses(self) -> None:
        nc = self._host.connection.require()
        current = self._responses
        if current is not None and current[0] is nc:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            current = self._responses
            if current is not None and current[0] is nc:
                return
            subject = self._host.topics.mcp_responses_all(self._host.agent_id)
            sub = await nc.subscribe(subject, cb=self._on_response)
            self._responses = (nc, sub)

    async def _on_response(self, msg: Msg) -> None:
        host = self._host
        request_id = msg.subject.rpartition(".")[2]
        entry = self._pending.get(request_id)
        if entry is None:
            return  # late: the call already timed out or was cancelled
        if msg.headers and msg.headers.get("Status") == "503":
            self.forget(request_id)
            host.metrics.counters["mcp_no_host"] += 1
            entry.sink(MCPServerNotFoundError(f"no agent hosts MCP server {entry.server_id!r}", server_id=entry.server_id, tool=entry.tool))
            return
        try:
            envelope = decode(msg.data)
        except EnvelopeError as exc:
            self._reject(request_id, f"a malformed MCP response: {exc}")
            return
        payload = envelope["payload"]
        source = envelope["source"]["id"]
        rpc = payload.get("content")
        verifier = host.connection.verifier
        if verifier is not None:  # identities are verified: the response must be signed by the key of the source it names
            reason = verifier.check(msg.subject, msg.reply, msg.headers, msg.data, source)
            if reason is not None:
                verifier.refuse(reason, source, msg.subject)
                self._reject(request_id, f"a response claiming {source} whose signed identity fails ({reason})")
                return
        if not self._answers(entry, request_id, envelope, rpc):
            self._reject(request_id, f"a response from {source} that does not answer the call")
            return
        entry.host = source  # the host that took the call: whatever else comes for it comes from that host
        error = payload.get("error")
        if error is not None:
            self.forget(request_id)
            code = str(error.get("code"))
            cls = _ENVELOPE_CODES.get(code, MCPError)
            entry.sink(cls(f"MCP server {entry.server_id!r}{_about(entry.tool)} on agent {source}: {code}: {error.get('message', '')}",
                           server_id=entry.server_id, tool=entry.tool,
                           data=error, source=source))
            return
        assert isinstance(rpc, dict)
        if "id" in rpc and ("result" in rpc or "error" in rpc):
            self.forget(request_id)  # the final answer; progress notifications come before it
        entry.sink(rpc)

    @staticmethod
    def _answers(entry: _Pending, request_id: str, envelope: dict[str, Any], rpc: Any) -> bool:
        """Return whether envelope answers the call entry waits for (an error result, a progress note, the response).

        It must correlate with the request envelope, come from the host that answered first (when one did), and
        carry the call's JSON-RPC id (a response) or its progress token (a progress notification).
        """
        if envelope.get("correlationId") != request_id or (entry.host is not None and envelope["source"]["id"] != entry.host):
            return False
        if envelope["payload"].get("error") is not None:
            return True
        if not isinstance(rpc, dict):
            return False
        if "result" in rpc or "error" in rpc:
            return "id" in rpc and rpc["id"] == entry.rpc_id
        if rpc.get("method") == "notifications/progress" and "id" not in rpc:
            params = rpc.get("params")
            return entry.progress_token is not None and isinstance(params, dict) and params.get("progressToken") == entry.progress_token
        return False

    def _reject(self, request_id: str, what: str) -> None:
        counters = self._host.metrics.counters
        counters["replies_rejected"] += 1
        if counters["replies_rejected"] % 1000 == 1:
            log.warning("agent %s dropped %s (MCP call %s)", self._host.agent_id, what, request_id)


def _deadline(message: Mapping[str, Any]) -> float | None:
    """Return how long the host may work on a request: a little more than the caller's timeout, counted from now.

    A backstop for a caller that vanished without cancelling; a caller that times out cancels first. Counted
    from receipt rather than the caller's timestamp, so clock skew between machines cannot cut a call short.
    """
    timeout_ms = (message.get("routing") or {}).get("timeout")
    return timeout_ms / 1000.0 * 1.1 + 0.25 if isinstance(timeout_ms, (int, float)) and timeout_ms > 0 else None


def _about(tool: str | None) -> str:
    return f" (tool {tool!r})" if tool else ""


class _RPCFailure(Exception):
    def __init__(self, code: int, text: str, kind: str | None, **data: Any) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.kind = kind
        self.data = data

