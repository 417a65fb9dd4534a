"""The cost of signed identities: a signed round trip (both sides sign, both verify) against an unsigned one, same run.

"agent" is the default configuration with the result cache off (the dispatch path alone); "signed" is the same
with identity.seed, identity.trusted and identity.require set on both agents: every request and reply is signed
with ed25519 (nkeys/PyNaCl) and verified, bound to its source.id, checked for freshness and against the replay set.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from agentcore import AgentConfig
from agentcore.server import NATSServer
from harness import KindBench, interleaved, opened, summarise_pair

nkeys = pytest.importorskip("nkeys")

CONTENT = {"text": "summarise the quarterly numbers for the board " * 4, "lang": "en"}


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as s:
        yield s


class Pair(KindBench):
    async def _setup(self) -> Callable[[], Awaitable[Any]]:
        values: dict[str, Any] = {"nats.servers": [self.url], "nats.environment": f"bench-{self.kind}",
                                  "agent.heartbeat_interval": 60.0, "cache.enabled": False}
        if self.kind == "signed":
            from agentcore.transport.identity import Signer

            seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
            key = Signer(seed.encode()).public_key
            values.update({"identity.seed": seed, "identity.require": True,
                           "identity.trusted": {"bench-worker": key, "bench-client": key}})
        client = await summarise_pair(self, AgentConfig(values, environ={}))
        subject = client.topics.task("summarise")

        async def call() -> Any:
            return await client.request(subject, CONTENT, timeout=5)

        return call


@pytest.fixture(scope="module")
def pairs(server: NATSServer) -> Iterator[dict[str, KindBench]]:
    yield from opened({kind: Pair(server.url, kind) for kind in ("agent", "signed")})


def test_signed_ratio(pairs: dict[str, KindBench]) -> None:
    """Interleave unsigned and signed blocks so machine noise hits both alike; print p50/p99 and the ratio."""
    stats = interleaved(pairs, blocks=20, per_block=250)
    base = stats["agent"]
    print(f"\nround trip over {base[2]} calls each: unsigned agent p50 {base[0]:.1f} µs p99 {base[1]:.1f} µs")
    p50, p99, _ = stats["signed"]
    print(f"  signed       p50 {p50:.1f} µs p99 {p99:.1f} µs; ratio p50 {p50 / base[0]:.3f}x p99 {p99 / base[1]:.3f}x")
