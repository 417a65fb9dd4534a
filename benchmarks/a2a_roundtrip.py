"""A2A SendMessage round trip: over NATS (agentcore.a2a) vs over HTTP JSON-RPC (a2a-sdk's app under uvicorn).

One server process serves the same DefaultRequestHandler (an executor answering a Message at once) both ways:
A2ANatsServer on a local nats-server, and create_jsonrpc_routes + the card routes under uvicorn on 127.0.0.1.
The client process uses unmodified a2a-sdk clients from ClientFactory (our transport vs JsonRpcTransport), in
interleaved blocks so machine noise hits both alike; it prints medians, p99 and the ratio.

    python benchmarks/a2a_roundtrip.py [blocks] [calls_per_block]

Needs the extra a2a plus starlette, sse-starlette and uvicorn (a2a-sdk[http-server], uvicorn).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import statistics
import sys
import time
from typing import Any

PREFIX = "agents.bench.a2a-protocol.echo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _card(nats_url: str, http_url: str) -> Any:
    from a2a.types.a2a_pb2 import AgentCapabilities, AgentCard, AgentInterface, AgentSkill

    from agentcore.a2a import BINDING_URI, PROTOCOL_VERSION, url_for

    return AgentCard(
        name="echo", description="echoes", version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=url_for(nats_url, PREFIX), protocol_binding=BINDING_URI, protocol_version=PROTOCOL_VERSION),
            AgentInterface(url=http_url, protocol_binding="JSONRPC", protocol_version=PROTOCOL_VERSION)],
        capabilities=AgentCapabilities(streaming=False), default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="echo", description="echoes the text", tags=["echo"])])


def _serve(nats_url: str, http_port: int, ready: Any) -> None:
    """The server process: both interfaces over one handler, in one event loop."""
    import nats
    from a2a_echo import message_echo
    import uvicorn
    from a2a.server.request_handlers import DefaultRequestHandler
    from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
    from a2a.server.tasks import InMemoryTaskStore
    from starlette.applications import Starlette

    from agentcore.a2a import A2ANatsServer


    async def main() -> None:
        card = _card(nats_url, f"http://127.0.0.1:{http_port}/")
        handler = DefaultRequestHandler(agent_executor=message_echo(), task_store=InMemoryTaskStore(), agent_card=card)
        nc = await nats.connect(nats_url)
        await A2ANatsServer(nc, handler, card, PREFIX).start()

        async def echo(msg: Any) -> None:  # the floor: a bare nats-py request/reply of a similar body
            await nc.publish(msg.reply, msg.data)

        await nc.subscribe("bench.echo", cb=echo)
        app = Starlette(routes=[*create_agent_card_routes(card), *create_jsonrpc_routes(handler, "/")])
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=http_port, log_level="warning",
                                               access_log=False))
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        ready.set()
        await serving

    asyncio.run(main())


async def _bench(nats_url: str, http_port: int, blocks: int, per_block: int) -> None:
    import httpx
    import nats
    from a2a.client import ClientConfig, ClientFactory
    from a2a.helpers import new_text_message
    from a2a.types.a2a_pb2 import Role, SendMessageRequest

    from agentcore.a2a import BINDING_URI, register

    card = _card(nats_url, f"http://127.0.0.1:{http_port}/")
    nc = await nats.connect(nats_url)
    http = httpx.AsyncClient(headers={"A2A-Version": "1.0"})
    nats_factory = ClientFactory(ClientConfig(supported_protocol_bindings=[BINDING_URI], streaming=False))
    register(nats_factory, nc)
    http_factory = ClientFactory(ClientConfig(supported_protocol_bindings=["JSONRPC"], streaming=False,
                                              httpx_client=http))
    clients: dict[str, Any] = {"raw-nats": None, "nats": nats_factory.create(card), "jsonrpc": http_factory.create(card)}
    body = b'{"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "summarise the quarterly numbers"}]}}'

    async def once(client: Any) -> None:
        if client is None:
            await nc.request("bench.echo", body, timeout=5)
            return
        request = SendMessageRequest(message=new_text_message("summarise the quarterly numbers", role=Role.ROLE_USER))
        async for event in client.send_message(request):
            assert event.HasField("message")

    for client in clients.values():  # warm up every path
        for _ in range(50):
            await once(client)
    samples: dict[str, list[float]] = {kind: [] for kind in clients}
    for _ in range(blocks):
        for kind, client in clients.items():
            for _ in range(per_block):
                start = time.perf_counter()
                await once(client)
                samples[kind].append((time.perf_counter() - start) * 1e6)
    for kind, values in samples.items():
        values.sort()
        p99 = values[int(len(values) * 0.99) - 1]
        print(f"{kind:8s} round trip over {len(values)} calls: p50 {statistics.median(values):.0f} µs, "
              f"p99 {p99:.0f} µs")
    print(f"ratio jsonrpc/nats p50: {statistics.median(samples['jsonrpc']) / statistics.median(samples['nats']):.2f}")
    print(f"ratio nats/raw-nats p50: {statistics.median(samples['nats']) / statistics.median(samples['raw-nats']):.2f}")
    await http.aclose()
    await nc.close()


def main() -> None:
    """Start nats-server and the server process, then run the interleaved client."""
    from agentcore.server import NATSServer

    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    per_block = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    with NATSServer() as nats_server:
        http_port = _free_port()
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        server = context.Process(target=_serve, args=(nats_server.url, http_port, ready), daemon=True)
        server.start()
        try:
            if not ready.wait(60):
                raise SystemExit("the server process did not start")
            asyncio.run(_bench(nats_server.url, http_port, blocks, per_block))
        finally:
            server.terminate()
            server.join(10)


if __name__ == "__main__":
    main()
