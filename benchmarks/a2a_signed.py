"""A2A SendMessage round trip over NATS: unsigned vs signed identities (client signs, agent verifies and signs its
answer, client verifies), and a 2.5 MB message offered and pulled (docs/a2a-binding.md §9, §10.1).

One process, one event loop, a local nats-server: two A2ANatsServer instances over the same kind of
DefaultRequestHandler (an executor answering a Message at once), one plain, one with Signer/Verifier. Unmodified
a2a-sdk clients from ClientFactory call them in interleaved blocks so machine noise hits both alike; it prints
medians, p99 and the ratio.

    python benchmarks/a2a_signed.py [blocks] [calls_per_block]

Needs the extras a2a and identity.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from typing import Any

PREFIX = "agents.bench.a2a-protocol.echo"


async def main(blocks: int, per_block: int) -> None:
    import nats
    from a2a_echo import message_echo
    import nkeys
    from a2a.client import ClientConfig, ClientFactory
    from a2a.helpers import new_text_message
    from a2a.server.request_handlers import DefaultRequestHandler
    from a2a.server.tasks import InMemoryTaskStore
    from a2a.types.a2a_pb2 import (
        AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Role, SendMessageRequest,
    )

    from agentcore import AgentConfig
    from agentcore.a2a import BINDING_URI, PROTOCOL_VERSION, A2ANatsServer, NatsTransport, url_for
    from agentcore.metrics import AgentMetrics
    from agentcore.server import NATSServer
    from agentcore.transport.identity import Signer, Verifier


    def seed() -> bytes:
        return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))

    agent, user = Signer(seed()), Signer(seed())
    trusted = {"agent": agent.public_key, "user": user.public_key}

    def verifier(me: str, own: Signer) -> Verifier:
        return Verifier(me, AgentConfig({"identity.trusted": trusted, "identity.require": True}), AgentMetrics(), own)

    with NATSServer() as server:
        def card(prefix: str) -> AgentCard:
            return AgentCard(name="echo", description="echoes", version="1.0.0", capabilities=AgentCapabilities(),
                             default_input_modes=["text/plain"], default_output_modes=["text/plain"],
                             skills=[AgentSkill(id="echo", name="echo", description="echoes", tags=["echo"])],
                             supported_interfaces=[AgentInterface(url=url_for(server.url, prefix),
                                                                  protocol_binding=BINDING_URI,
                                                                  protocol_version=PROTOCOL_VERSION)])

        nc = await nats.connect(server.url)
        servers = []
        for prefix, options in ((PREFIX, {}), (PREFIX + "-signed", {"signer": agent, "verifier": verifier("agent", agent)})):
            handler = DefaultRequestHandler(agent_executor=message_echo(), task_store=InMemoryTaskStore(), agent_card=card(prefix))
            servers.append(A2ANatsServer(nc, handler, card(prefix), prefix, **options))
            await servers[-1].start()
        client_nc = await nats.connect(server.url)

        def client(prefix: str, **options: Any) -> Any:
            factory = ClientFactory(ClientConfig(supported_protocol_bindings=[BINDING_URI], streaming=False))
            factory.register(BINDING_URI, lambda c, u, _cfg: NatsTransport(client_nc, c, u, **options))
            return factory.create(card(prefix))

        clients = {"unsigned": client(PREFIX),
                   "signed": client(PREFIX + "-signed", signer=user, verifier=verifier("user", user), agent_id="agent")}

        async def once(c: Any, text: str) -> None:
            async for event in c.send_message(SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))):
                assert event.HasField("message")

        for c in clients.values():
            for _ in range(50):
                await once(c, "warm up")
        times: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(blocks):
            for name, c in clients.items():
                for _ in range(per_block):
                    start = time.perf_counter()
                    await once(c, "summarise the quarterly numbers")
                    times[name].append(time.perf_counter() - start)
        for name, samples in times.items():
            samples.sort()
            print(f"{name:>9}: median {statistics.median(samples) * 1e6:8.1f} us  "
                  f"p99 {samples[int(len(samples) * 0.99)] * 1e6:8.1f} us  n={len(samples)}")
        ratio = statistics.median(times["signed"]) / statistics.median(times["unsigned"])
        print(f"signed / unsigned median: {ratio:.2f}")

        big = "x" * 2_500_000  # over the default 1 MiB max_payload: the request and the answer are offered and pulled
        large: list[float] = []
        for _ in range(10):
            start = time.perf_counter()
            await once(clients["unsigned"], big)
            large.append(time.perf_counter() - start)
        print(f"2.5 MB SendMessage (request and answer pulled): median {statistics.median(large) * 1e3:.1f} ms, n=10")
        for s in servers:
            await s.stop()
        await client_nc.close()
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10, int(sys.argv[2]) if len(sys.argv) > 2 else 200))
