#!/usr/bin/env python3
"""What the agent's answer costs a pipelined raw nats-py requester: two raw responders, only the answer differs.

Usage: python benchmarks/answer_size.py [--pairs 21] [--n 6000] [--inflight 200]

The pipelined rows of `agentcore bench` compare the agent, which answers with the guide's result envelope (about 520
bytes for the benchmark's content), with a raw nats-py responder answering `{"ok": content}` (about 230 bytes). Both
responders here are raw nats-py on one loop with the requester, as in `agentcore bench`: each runs `orjson.loads` and
dumps `{"ok": content}`; one responds with those bytes, the other with one result envelope the agent would send for
the same task (made once by agentcore's encoder, so the same for every request), so only the answers differ: what the
requester (its `orjson.loads` of each answer, as in `agentcore bench`), the server and the sockets do with them, not the
work to make them. Runs alternate (which goes first alternates too); it prints req/s medians and the median of each
pair's ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import nats
import orjson

from agentcore._impl import encode_result
from agentcore.bench.measure import envelopes
from agentcore.server import NATSServer


async def main(pairs: int, n: int, inflight: int) -> None:
    with NATSServer() as server:
        requester, responder = await nats.connect(server.url), await nats.connect(server.url)
        data = envelopes("size", 1)[0]
        task = orjson.loads(data)
        blob = encode_result({"id": "echo-size", "type": "bench"}, task["source"]["id"], task["id"], None,
                             task["payload"]["content"])

        async def small(msg: Any) -> None:
            d = orjson.loads(msg.data)
            await msg.respond(orjson.dumps({"ok": d["payload"]["content"]}))

        async def large(msg: Any) -> None:
            d = orjson.loads(msg.data)
            orjson.dumps({"ok": d["payload"]["content"]})  # the same work as small(); only the bytes sent differ
            await msg.respond(blob)

        await responder.subscribe("size.small", cb=small)
        await responder.subscribe("size.large", cb=large)
        await responder.flush()

        async def pipe(subject: str, count: int) -> float:
            it = iter(range(count))

            async def lane() -> None:
                for _ in it:
                    orjson.loads((await requester.request(subject, data, timeout=30)).data)

            t0 = time.perf_counter()
            await asyncio.gather(*(lane() for _ in range(inflight)))
            return count / (time.perf_counter() - t0)

        first = len(orjson.dumps({"ok": task["payload"]["content"]}))
        for subject in ("size.small", "size.large"):  # warm up
            await pipe(subject, 400)
        rates: dict[str, list[float]] = {"size.small": [], "size.large": []}
        for i in range(pairs):
            for subject in (("size.small", "size.large") if i % 2 == 0 else ("size.large", "size.small")):
                rates[subject].append(await pipe(subject, n))
        ratios = [large / small for small, large in zip(rates["size.small"], rates["size.large"])]
        ok = '{"ok": ...}'
        print(f"answers {ok} of {first} B: {statistics.median(rates['size.small']):,.0f} req/s; the agent's envelope of "
              f"{len(blob)} B: "
              f"{statistics.median(rates['size.large']):,.0f} req/s; large/small median {statistics.median(ratios):.3f} "
              f"(range {min(ratios):.3f}-{max(ratios):.3f}, {pairs} pairs)")
        await requester.close()
        await responder.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=21)
    parser.add_argument("--n", type=int, default=6_000, help="requests per run")
    parser.add_argument("--inflight", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.pairs, args.n, args.inflight))
