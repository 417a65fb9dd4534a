"""NATS as a transport for the MCP SDK: an unmodified ClientSession reaches a server hosted anywhere on the bus.

    async with nats_client_transport(agent, "tools") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            await session.call_tool("add", {"a": 1, "b": 2})

The other direction, an in-process SDK server (MCPServer or the low-level Server) served over NATS without a
subprocess, is `await agent.serve_mcp_server("tools", server)`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
from mcp import types as mcp_types
from mcp.shared.message import SessionMessage

from ..errors import MCPError, MCPServerNotFoundError, MCPTimeoutError
from .hosting import CONNECTION_CLOSED, REQUEST_TIMEOUT, MCP, rpc_error

__all__ = ("nats_client_transport",)

log = logging.getLogger("agentcore.mcp")

_BUFFER = 1024


class _CarriesMCP(Protocol):
    """An agent, as far as the transport cares: it carries its MCP component."""

    @property
    def _mcp(self) -> MCP: ...


def _error_response(rpc_id: Any, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MCPTimeoutError):
        return rpc_error(rpc_id, REQUEST_TIMEOUT, str(exc), "timeout")
    if isinstance(exc, MCPServerNotFoundError):
        return rpc_error(rpc_id, CONNECTION_CLOSED, str(exc), "server_not_found")
    if isinstance(exc, MCPError) and exc.code is not None:
        return rpc_error(rpc_id, exc.code, str(exc), None)
    return rpc_error(rpc_id, CONNECTION_CLOSED, f"{type(exc).__name__}: {exc}", None)


@contextlib.asynccontextmanager
async def nats_client_transport(agent: _CarriesMCP | MCP, server_id: str, *, timeout: float = 300.0) -> AsyncIterator[tuple[Any, Any]]:
    """Yield (read, write) streams of SessionMessage that carry an MCP session to server_id over NATS.

    Requests go out as they are (JSON-RPC inside the envelope), responses and progress notifications come
    back unchanged, a notifications/cancelled from the session cancels the call on its host. timeout bounds
    each request in case the session itself sets none.
    """
    component = agent if isinstance(agent, MCP) else agent._mcp
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](_BUFFER)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](_BUFFER)
    sent: dict[Any, str] = {}  # JSON-RPC id -> request envelope id, to route cancellations

    def deliver(rpc_id: Any, item: Any) -> None:
        if isinstance(item, BaseException):
            sent.pop(rpc_id, None)
            item = _error_response(rpc_id, item)
        elif "id" in item and ("result" in item or "error" in item):
            sent.pop(rpc_id, None)
        try:
            message = mcp_types.jsonrpc_message_adapter.validate_python(item, by_name=False)
        except ValueError as exc:
            log.warning("MCP transport to %s got an invalid JSON-RPC message: %s", server_id, exc)
            return
        try:
            read_send.send_nowait(SessionMessage(message))
        except anyio.WouldBlock:
            log.warning("MCP transport to %s: session not reading; dropped a message", server_id)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def writer() -> None:
        async with write_recv:
            async for session_message in write_recv:
                data = session_message.message.model_dump(by_alias=True, mode="json", exclude_unset=True)
                method = data.get("method")
                if method is not None and "id" in data:
                    rpc_id = data["id"]
                    try:
                        sent[rpc_id] = await component.send(server_id, data, functools.partial(deliver, rpc_id), timeout)
                    except Exception as exc:  # e.g. a request too large for the server's max_payload
                        deliver(rpc_id, exc)
                elif method == "notifications/cancelled":
                    rpc_id = (data.get("params") or {}).get("requestId")
                    request_id = sent.pop(rpc_id, None)
                    if request_id is not None:
                        await component.cancel(server_id, request_id, rpc_id, str((data.get("params") or {}).get("reason") or "cancelled"))
                # Other notifications (initialized, roots changed) concern the session the host already holds.

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        try:
            yield read_recv, write_send
        finally:
            for request_id in sent.values():
                component.forget(request_id)
            tg.cancel_scope.cancel()
            await write_send.aclose()
            await read_send.aclose()

