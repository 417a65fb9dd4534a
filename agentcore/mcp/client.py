"""MCPClient: one MCP server (a subprocess over stdio, or an in-process SDK server) behind the official SDK's ClientSession."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import anyio
from pydantic import TypeAdapter
from mcp import ClientSession, StdioServerParameters
from mcp import types as mcp_types
from mcp.client.stdio import stdio_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.message import SessionMessage

from ..errors import MCPError, MCPServerDiedError

__all__ = ("MCPClient",)

log = logging.getLogger("agentcore.mcp")

ProgressCallback = ProgressFnT  # async (progress, total, message) -> None

# A request sent as it came (method and params untouched) and its result handed back as it came.
_RawRequest = mcp_types.Request[dict[str, Any] | None, str]
_RAW_RESULT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])

# Messages the relay may hold between the server's stdout and the session; enough that the relay never
# becomes the bottleneck of many concurrent calls, small enough to keep back-pressure.
_RELAY_BUFFER = 256


class MCPClient:
    """Run an MCP server and talk to it with the MCP SDK's ClientSession (usable as `async with`).

    `MCPClient(server_command="python", server_args=["-m", "my_server"])` starts the server as a subprocess
    over stdio; `MCPClient.in_process(server)` serves an SDK server object (MCPServer or the low-level
    Server) in this process without one.
    """

    def __init__(
        self,
        server_command: str | None = None,
        server_args: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        cwd: str | None = None,
        name: str | None = None,
    ) -> None:
        self.server_command = server_command
        self.server_args = list(server_args or [])
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name or server_command or "mcp-server"
        self._server: Any = None  # an in-process SDK server, for in_process()
        self._session: ClientSession | None = None
        self._initialize_result: mcp_types.InitializeResult | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closing: asyncio.Event | None = None
        self._died = asyncio.Event()
        self._death_callbacks: list[Callable[[MCPClient], Any]] = []
        self._tools: list[mcp_types.Tool] | None = None

    @classmethod
    def in_process(cls, server: Any, *, name: str | None = None) -> MCPClient:
        """Return a client of an SDK server object (MCPServer or low-level Server) run in this process."""
        client = cls(name=name or getattr(server, "name", None) or "in-process")
        client._server = server
        return client

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        """Return True while the session to the server is up."""
        return self._session is not None and not self._died.is_set()

    @property
    def alive(self) -> bool:
        """Return False once the server has gone (its process ended or its streams closed)."""
        return not self._died.is_set()

    @property
    def initialize_result(self) -> mcp_types.InitializeResult:
        """Return the server's answer to the MCP handshake."""
        if self._initialize_result is None:
            raise MCPError(f"MCP client {self.name} is not connected")
        return self._initialize_result

    @property
    def session(self) -> ClientSession:
        """Return the SDK ClientSession (for MCP features this class does not wrap)."""
        if self._session is None or self._died.is_set():
            raise MCPServerDiedError(f"MCP server {self.name} is not running") if self._died.is_set() else MCPError(
                f"MCP client {self.name} is not connected"
            )
        return self._session

    def on_died(self, callback: Callable[[MCPClient], Any]) -> None:
        """Call callback(client) once when the server goes away without close() having been called."""
        self._death_callbacks.append(callback)

    async def wait_died(self) -> None:
        """Wait until the server has gone."""
        await self._died.wait()

    async def connect(self, timeout: float = 30.0) -> MCPClient:
        """Start the server (or attach to the in-process one) and do the MCP handshake."""
        if self._runner is not None:
            return self
        if self._server is None and not self.server_command:
            raise MCPError("MCPClient needs server_command (or use MCPClient.in_process(server))")
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._closing = asyncio.Event()
        self._died = asyncio.Event()
        # The SDK's transports are anyio context managers that must be entered and left by one task; a
        # runner task owns them, so connect() and close() may come from anywhere.
        self._runner = loop.create_task(self._run(), name=f"mcp-client-{self.name}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except BaseException:
            await self.close()
            raise
        if self.initialize_result.capabilities.tools is not None:
            # Listed now, so an agent hosting this client can advertise the tool names from the moment it serves.
            try:
                await asyncio.wait_for(self.list_tools(), timeout)
            except Exception as exc:  # listed again on first use
                log.warning("MCP server %s did not list its tools at connect: %s", self.name, exc)
        return self

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if self._server is not None:
            from mcp.client._memory import InMemoryTransport

            return InMemoryTransport(self._server)
        params = StdioServerParameters(command=self.server_command or "", args=self.server_args, env=self.env, cwd=self.cwd)
        return stdio_client(params)

    async def _run(self) -> None:
        assert self._ready is not None and self._closing is not None
        ready = self._ready
        try:
            async with self._transport() as (read, write):
                relay_send, relay_read = anyio.create_memory_object_stream[SessionMessage | Exception](_RELAY_BUFFER)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._relay, read, relay_send)
                    async with ClientSession(relay_read, write) as session:
                        self._initialize_result = await session.initialize()
                        self._session = session
                        ready.set_result(None)
                        closing = asyncio.ensure_future(self._closing.wait())
                        died = asyncio.ensure_future(self._died.wait())
                        try:
                            await asyncio.wait([closing, died], return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            closing.cancel()
                            died.cancel()
                    tg.cancel_scope.cancel()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(MCPError(f"could not start MCP server {self.name}: {type(exc).__name__}: {exc}"))
            else:
                log.debug("MCP client %s ended with %r", self.name, exc)
        finally:
            self._session = None
            if not ready.done():
                ready.set_exception(MCPServerDiedError(f"MCP server {self.name} ended during the handshake"))
            self._mark_died()

    async def _relay(self, source: Any, sink: Any) -> None:
        # Sits between the transport and the session only to notice the end of the server's stream: the
        # moment the process dies, not the next time someone calls it.
        try:
            async with sink:
                async for item in source:
                    await sink.send(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            pass
        finally:
            if self._closing is not None and not self._closing.is_set():
                log.warning("MCP server %s went away", self.name)
            self._mark_died()

    def _mark_died(self) -> None:
        if self._died.is_set():
            return
        self._died.set()
        if self._closing is not None and self._closing.is_set():
            return  # closed on purpose: not a death
        for callback in self._death_callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("MCP client %s death callback failed", self.name)

    async def close(self) -> None:
        """End the session and stop the server process."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._closing is not None:
            self._closing.set()
        try:
            await asyncio.wait_for(asyncio.shield(runner), 10.0)
        except asyncio.TimeoutError:
            runner.cancel()
            with contextlib.suppress(BaseException):
                await runner
        except Exception:
            pass

    async def __aenter__(self) -> MCPClient:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ MCP operations

    async def list_tools(self) -> list[mcp_types.Tool]:
        """Return every tool of the server (following pagination)."""
        session = self.session
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        while True:
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            result = await self._guard(session.list_tools(params=params))
            tools.extend(result.tools)
            cursor = result.next_cursor
            if not cursor:
                break
        self._tools = tools
        return tools

    @property
    def tools(self) -> list[mcp_types.Tool] | None:
        """Return the tools as last listed (at connect or by list_tools()), or None if never listed."""
        return self._tools

    async def tool_names(self, *, refresh: bool = False) -> list[str]:
        """Return the names of the server's tools (listed once, then remembered)."""
        if self._tools is None or refresh:
            await self.list_tools()
        return [tool.name for tool in self._tools or ()]

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        progress_callback: ProgressCallback | None = None,
        timeout: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> mcp_types.CallToolResult:
        """Call a tool and return the SDK's CallToolResult (is_error set when the tool reported an error).

        meta goes to the server as the request's params._meta (trace context: traceparent, tracestate, baggage).
        """
        session = self.session
        call = (session.call_tool(name, arguments or {}, read_timeout_seconds=timeout, progress_callback=progress_callback)
                if meta is None else
                session.call_tool(name, arguments or {}, read_timeout_seconds=timeout, progress_callback=progress_callback,
                                  meta=cast(Any, meta)))  # the SDK's RequestParamsMeta: a dict of its keys
        result: mcp_types.CallToolResult = await self._guard(call)
        return result

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        progress_callback: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send any client request (resources/read, prompts/get, ...) with params as given; return the raw result.

        The server validates params and answers as it would any client; its JSON-RPC error is raised as the
        SDK's MCPError, unchanged.
        """
        session = self.session
        request = _RawRequest(method=method, params=dict(params) if params is not None else None)
        result: dict[str, Any] = await self._guard(
            session.send_request(request, _RAW_RESULT, request_read_timeout_seconds=timeout, progress_callback=progress_callback)
        )
        return result

    async def _guard(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except Exception as exc:
            if self._died.is_set() or getattr(getattr(exc, "error", None), "code", None) == mcp_types.CONNECTION_CLOSED:
                raise MCPServerDiedError(f"MCP server {self.name} died: {exc}") from exc
            raise

    def __repr__(self) -> str:
        state = "connected" if self.connected else ("dead" if self._runner and self._died.is_set() else "idle")
        return f"<MCPClient {self.name} {state}>"

