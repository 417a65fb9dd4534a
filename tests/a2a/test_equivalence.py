"""Spec §5.1: the NATS binding and a2a-sdk's own JSON-RPC app, serving the same executor, answer alike; and so does
the HTTP bridge (the SDK's JSON-RPC app forwarding over NATS), so an HTTP-only client reaches a NATS agent.

The HTTP sides run in-process (httpx.ASGITransport over the SDK's create_jsonrpc_routes and card routes); the NATS
agents are A2ANatsServer on a real nats-server. Each scenario runs through an unmodified a2a-sdk Client on all
three and the answers are compared with the ids and timestamps, which differ by nature, left out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest


import httpx
import nats
from a2a.client import Client, ClientCallContext, ClientConfig, ClientFactory
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types.a2a_pb2 import AgentInterface, GetTaskRequest, ListTasksRequest, SubscribeToTaskRequest
from a2a.utils.errors import A2AError, TaskNotFoundError, VersionNotSupportedError
from a2a_support import PREFIX, Echo, card, text_request
from google.protobuf.json_format import MessageToDict
from nats_fixtures import within
from starlette.applications import Starlette

from agentcore.a2a import BINDING_URI, A2ANatsServer, NatsTransport, register, url_for
from agentcore.a2a.bridge import bridge_routes

BRIDGE = "http://http-agent.test"  # the SDK's own JSON-RPC app (and the card both clients start from)
FORWARDER = "http://bridge.test"  # the bridge: the SDK's JSON-RPC app answering through NATS
VOLATILE = {"id", "taskId", "contextId", "messageId", "artifactId", "timestamp"}


def _plain(value: Any) -> Any:
    """The answer without what differs between two runs by nature (generated ids, times)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@asynccontextmanager
async def both(nats_url: str, *, streaming: bool) -> AsyncIterator[dict[str, Client]]:
    """One client per path, each against its own DefaultRequestHandler over the same executor class."""
    agent_card = card(nats_url)
    agent_card.supported_interfaces.append(AgentInterface(url=BRIDGE + "/", protocol_binding="JSONRPC",
                                                          protocol_version="1.0"))
    handlers = [DefaultRequestHandler(agent_executor=Echo(), task_store=InMemoryTaskStore(), agent_card=agent_card)
                for _ in range(3)]
    nats_handler, http_handler, bridged_handler = handlers
    app = Starlette(routes=[*create_agent_card_routes(agent_card), *create_jsonrpc_routes(http_handler, "/")])
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BRIDGE)
    server_nc, client_nc = await nats.connect(nats_url), await nats.connect(nats_url)
    servers = [A2ANatsServer(server_nc, nats_handler, agent_card, PREFIX),
               A2ANatsServer(server_nc, bridged_handler, agent_card, PREFIX + "-bridged")]
    for server in servers:
        await server.start()
    bridge_card = card(nats_url)
    bridge_card.supported_interfaces.append(AgentInterface(url=FORWARDER + "/", protocol_binding="JSONRPC",
                                                           protocol_version="1.0"))
    forwarding = NatsTransport(client_nc, None, url_for(nats_url, PREFIX + "-bridged"), timeout=10.0)
    bridge = httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=bridge_routes(bridge_card, forwarding))),
                               base_url=FORWARDER)
    try:
        over_nats = ClientFactory(ClientConfig(supported_protocol_bindings=[BINDING_URI], httpx_client=http,
                                             streaming=streaming))
        register(over_nats, client_nc, timeout=10.0)
        over_http = ClientFactory(ClientConfig(supported_protocol_bindings=["JSONRPC"], httpx_client=http,
                                             streaming=streaming))
        over_bridge = ClientFactory(ClientConfig(supported_protocol_bindings=["JSONRPC"], httpx_client=bridge,
                                                 streaming=streaming))
        # Every client is built from the card as an HTTP side serves it (/.well-known/agent-card.json).
        yield {"nats": await over_nats.create_from_url(BRIDGE), "jsonrpc": await over_http.create_from_url(BRIDGE),
               "bridge": await over_bridge.create_from_url(FORWARDER)}
    finally:
        for server in servers:
            await server.stop()
        for handler in handlers:
            await handler.aclose()
        await forwarding.close()
        await bridge.aclose()
        await http.aclose()
        await client_nc.close()
        await server_nc.close()


async def _outcome(call: Callable[[], Any]) -> Any:
    """What a call gave: its answers (ProtoJSON as dicts, volatile fields dropped) or the class of its error."""
    try:
        return _plain(await call())
    except A2AError as exc:
        return type(exc)


def _scenarios(client: Client) -> dict[str, Callable[[], Any]]:
    async def send() -> Any:
        return [MessageToDict(e) async for e in client.send_message(text_request("same on both"))]

    async def get_unknown() -> Any:
        return MessageToDict(await client.get_task(GetTaskRequest(id="no-such-task")))

    async def old_version() -> Any:
        context = ClientCallContext(service_parameters={"A2A-Version": "0.3"})
        return MessageToDict(await client.get_task(GetTaskRequest(id="no-such-task"), context=context))

    async def listed() -> Any:
        return MessageToDict(await client.list_tasks(ListTasksRequest(include_artifacts=True)))

    async def subscribe_unknown() -> Any:
        return [MessageToDict(e) async for e in client.subscribe(SubscribeToTaskRequest(id="no-such-task"))]

    return {"send": send, "list": listed, "get_unknown": get_unknown, "old_version": old_version,
            "subscribe_unknown": subscribe_unknown}


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "blocking"])
async def test_nats_the_sdks_jsonrpc_app_and_the_bridge_answer_alike(nats_url: str, streaming: bool) -> None:
    async with both(nats_url, streaming=streaming) as clients:
        assert isinstance(clients["nats"]._transport, NatsTransport)  # INTERNAL: the factory chose NATS from the card
        seen: dict[str, Any] = {}
        names = ["send", "list", "get_unknown", "old_version"] + (["subscribe_unknown"] if streaming else [])
        for name in names:
            answers = {kind: await within(_outcome(_scenarios(client)[name]), f"{name} over {kind}")
                       for kind, client in clients.items()}
            assert answers["nats"] == answers["jsonrpc"] == answers["bridge"], name
            seen[name] = answers["nats"]
        assert seen["get_unknown"] is TaskNotFoundError and seen["old_version"] is VersionNotSupportedError
        assert seen.get("subscribe_unknown", TaskNotFoundError) is TaskNotFoundError
        assert len(seen["send"]) == (4 if streaming else 1)  # Task, working, artifact, completed; or the Task
        assert len(seen["list"]["tasks"]) == 1
