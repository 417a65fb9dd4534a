"""A2A SendMessage round trip served by a NATSAgent (agent.serve_a2a) vs the standalone A2ANatsServer, with a bare
nats-py request/reply as the floor.

One process, one local nats-server: the same executor (answering a Message at once) served both ways under two
prefixes, unmodified a2a-sdk clients from ClientFactory with agentcore's transport on a connection of their own,
interleaved blocks so machine noise hits every path alike; prints medians, p99 and the ratios.

    python benchmarks/a2a_agent_roundtrip.py [blocks] [calls_per_block]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def main(blocks: int, calls: int) -> None:
    import nats
    from a2a_echo import message_echo
    from a2a.client import ClientConfig, ClientFactory
    from a2a.helpers import new_text_message
    from a2a.server.request_handlers import DefaultRequestHandler
    from a2a.server.tasks import InMemoryTaskStore
    from a2a.types.a2a_pb2 import Role, SendMessageRequest

    from agentcore import NATSAgent
    from agentcore.a2a import BINDING_URI, A2ANatsServer, register
    from agentcore.server import NATSServer


    with NATSServer() as server:
        agent = NATSAgent("bench-a2a", "bench", {"nats.servers": [server.url], "nats.environment": "bench",
                                                 "agent.heartbeat_interval": 60.0})
        agent.serve_a2a(message_echo(), name="agent")
        await agent.astart()
        card = agent.a2a_card()
        solo_card = type(card)()
        solo_card.CopyFrom(card)
        solo_card.supported_interfaces[0].url = card.supported_interfaces[0].url.replace(".agent", ".solo")
        solo_nc = await nats.connect(server.url)
        handler = DefaultRequestHandler(agent_executor=message_echo(), task_store=InMemoryTaskStore(), agent_card=solo_card)
        solo = A2ANatsServer(solo_nc, handler, solo_card, "agents.bench.a2a-protocol.solo")
        await solo.start()
        echo_nc = await nats.connect(server.url)

        async def echo(msg: Any) -> None:
            await echo_nc.publish(msg.reply, msg.data)

        await echo_nc.subscribe("bench.echo", cb=echo)
        await echo_nc.flush()
        client_nc = await nats.connect(server.url)
        factory = ClientFactory(ClientConfig(supported_protocol_bindings=[BINDING_URI], streaming=False))
        register(factory, client_nc)
        clients = {"agent": factory.create(card), "solo": factory.create(solo_card)}
        request = SendMessageRequest(message=new_text_message("hello", role=Role.ROLE_USER))
        body = b'{"message": {"messageId": "m-1", "role": "ROLE_USER", "parts": [{"text": "hello"}]}}'

        def a2a(name: str) -> Callable[[], Awaitable[Any]]:
            async def call() -> None:
                async for _ in clients[name].send_message(request):
                    pass
            return call

        async def raw() -> None:
            await client_nc.request("bench.echo", body, timeout=5)

        paths: dict[str, Callable[[], Awaitable[Any]]] = {"serve_a2a": a2a("agent"), "A2ANatsServer": a2a("solo"),
                                                           "raw nats-py": raw}
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for call in paths.values():  # warm-up
            for _ in range(50):
                await call()
        for _ in range(blocks):
            for name, call in paths.items():
                for _ in range(calls):
                    started = time.perf_counter()
                    await call()
                    samples[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(s) * 1e6 for name, s in samples.items()}
        for name, s in samples.items():
            p99 = sorted(s)[int(len(s) * 0.99)] * 1e6
            print(f"{name:14s} p50 {medians[name]:8.0f} us   p99 {p99:8.0f} us   ({len(s)} calls)")
        print(f"serve_a2a / A2ANatsServer: {medians['serve_a2a'] / medians['A2ANatsServer']:.2f}")
        print(f"serve_a2a / raw nats-py:   {medians['serve_a2a'] / medians['raw nats-py']:.2f}")
        await solo.stop()
        await handler.aclose()
        for nc in (solo_nc, echo_nc, client_nc):
            await nc.close()
        await agent.astop()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*(args or [10, 200])))
