"""RSS of a serving agent (in its own process) before, during and after each memory attack of docs/limits.md.

    python benchmarks/memory_attacks.py [--tasks N] [--ttl SECONDS]

A local nats-server (default max_payload, 1 MB) and a victim agent in a child process with the default
configuration (except cache.ttl, so the sweep is seen within the run). A plain nats-py client attacks:
a 60 MB offer whose ~1 MB frames never include frame 0, frames with gaps to a stream consumer, 1,000 distinct
results of 900 KB (the result cache), 300 tasks with 900 KB answers and their duplicates (the duplicate store),
then N small tasks. After each attack an honest 2 MB request must still be answered. RSS is read from
/proc/<pid>/status (VmRSS); the peak is sampled every 10 ms during the attack. "after malloc_trim" is the RSS
once the victim called glibc's malloc_trim(0): what the allocator keeps of memory Python already freed (many
900 KB blocks freed by the handlers' threads stay in glibc's per-thread arenas) is not held by the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import nats
import orjson

from agentcore import AgentConfig, NATSAgent
from agentcore.bench.rss import Peak
from agentcore.bench.rss import rss_mb as rss
from agentcore.envelope import decode, encode, new_message
from agentcore.server import NATSServer
from agentcore.transport.frames import ENVELOPE, H_CTL, H_KIND, H_SEQ, H_STREAM

MB = 1024 * 1024


# ------------------------------------------------------------------ the victim (child process)

async def serve(url: str, ttl: float) -> None:
    config = AgentConfig({"nats.servers": [url], "nats.environment": "bench", "cache.ttl": ttl}, environ={})
    agent = NATSAgent("victim", "worker", config)
    draining: set[asyncio.Task[Any]] = set()

    async def consume(message: dict[str, Any]) -> dict[str, Any]:
        """Open a stream consumer (as one that sent a task with routing.stream) and say where it listens."""
        receiver = agent.receive_stream(window=16)
        receiver.stamp(new_message("task", None, source_id="victim", message_id=receiver.task_id))
        await receiver.__aenter__()

        async def drain() -> None:
            try:
                async for _ in receiver:
                    pass
            except Exception as exc:  # the attack's frames abort it: the error is what the consumer sees
                print(f"consumer: {type(exc).__name__}: {exc}", file=sys.stderr)

        task = asyncio.ensure_future(drain())
        draining.add(task)
        task.add_done_callback(draining.discard)
        return {"inbox": receiver.reply_to, "task_id": receiver.task_id}

    agent.add_capability("echo", lambda m: len(m["payload"]["content"]))
    agent.add_capability("big", lambda m: "r" * 900_000 + str(m["payload"]["content"]))
    agent.add_capability("small", lambda m: m["payload"]["content"])
    agent.add_capability("metrics", lambda m: agent.get_metrics())
    agent.add_capability("consume", consume)

    async def produce(message: dict[str, Any]) -> None:
        try:
            await agent.stream_response(message["id"], iter([f"{n:03d}" for n in range(300)]), chunk_size=3,
                                        idle_timeout=1.0)
        except Exception as exc:  # the attacker never grants honest credit: the producer gives up
            print(f"producer: {type(exc).__name__}: {exc}", file=sys.stderr)

    agent.add_capability("produce", produce)
    agent.add_capability("trim", lambda m: ctypes.CDLL("libc.so.6").malloc_trim(0))  # hand freed heap back to the OS
    await agent.astart()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await agent.astop()


# ------------------------------------------------------------------ the attacker (parent)

def subject(capability: str) -> str:
    return f"agents.bench.task.{capability}.default"


async def request(nc: nats.NATS, capability: str, content: Any, *, message_id: str | None = None,
                  reply: str | None = None, timeout: float = 30.0) -> Any:
    message = new_message("task", content, source_id="attacker", message_id=message_id)
    if reply is not None:
        await nc.publish(subject(capability), encode(message), reply=reply)
        return None
    return decode((await nc.request(subject(capability), encode(message), timeout=timeout)).data)["payload"]


async def honest(url: str) -> None:
    """An honest agent's 2 MB request must still be answered."""
    client = NATSAgent("honest", "client", AgentConfig({"nats.servers": [url], "nats.environment": "bench"}, environ={}))
    await client.astart()
    try:
        assert await client.send_task("echo", "h" * 2_000_000, timeout=30) == 2_000_000
    finally:
        await client.astop()


async def offer_without_frame_0(nc: nats.NATS) -> Any:
    """Offer a 60 MB request and serve the pull ~1 MB frames 1..400, never frame 0."""
    ctl, inbox = nc.new_inbox(), nc.new_inbox()
    envelope = new_message("task", None, source_id="attacker")
    pulled: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_pull(msg: Any) -> None:
        if msg.reply and not pulled.done():
            pulled.set_result(msg.reply)

    await nc.subscribe(ctl, cb=on_pull)
    answer = await nc.subscribe(inbox, max_msgs=1)
    envelope["payload"] = {"content": None, "stream": {"pull": ctl, "size": 60 * MB}}
    await nc.publish(subject("echo"), encode(envelope), reply=inbox)
    dest = await asyncio.wait_for(pulled, 10)
    frame = b"f" * (MB - 2048)
    for seq in range(1, 401):
        await nc.publish(dest, frame, headers={H_STREAM: envelope["id"], H_SEQ: str(seq), H_KIND: ENVELOPE, H_CTL: ctl})
    reply = decode((await answer.next_msg(timeout=30)).data)
    return reply["payload"]["error"]


async def gap_frames(nc: nats.NATS) -> str:
    """Frames 1..400 of ~900 KB (gaps: frame 0 never comes) to a stream consumer of the victim."""
    where = (await request(nc, "consume", None))["content"]
    ctl = nc.new_inbox()  # the producer's control inbox, as a real producer's frames would name it
    for seq in range(1, 401):
        await nc.publish(where["inbox"], b"g" * 900_000,
                         headers={H_STREAM: where["task_id"], H_SEQ: str(seq), H_KIND: "bytes", H_CTL: ctl})
    await nc.flush()
    return "sent 400 frames"


async def forged_credit(nc: nats.NATS) -> str:
    """Ask a victim producer for a stream with window 4, never grant credit, forge Ack/Window of 10^9 once."""
    inbox = nc.new_inbox()
    frames: list[Any] = []
    last = [time.monotonic()]

    async def on_frame(msg: Any) -> None:
        frames.append(msg)
        last[0] = time.monotonic()
        if len(frames) == 1:
            await nc.publish(msg.headers[H_CTL], b"", headers={"Agent-Ack": str(10**9), "Agent-Window": str(10**9)})

    sub = await nc.subscribe(inbox, cb=on_frame)
    task = new_message("task", None, source_id="attacker")
    task["routing"]["stream"] = {"window": 4}
    await nc.publish(subject("produce"), encode(task), reply=inbox)
    while not frames or time.monotonic() - last[0] < 2.0:  # (a benchmark) until the producer has stopped sending
        await asyncio.sleep(0.1)
    await sub.unsubscribe()
    return f"{len(frames)} frames pushed with window 4"


async def cache_fill(nc: nats.NATS, n: int = 1000) -> str:
    """1,000 distinct requests whose results are 900 KB each."""
    for start in range(0, n, 20):
        await asyncio.gather(*(request(nc, "big", i) for i in range(start, min(start + 20, n))))
    return f"{n} results of 900 KB"


async def duplicates(nc: nats.NATS, n: int = 300) -> str:
    """300 tasks with 900 KB answers asked at one inbox, then each again with the same id."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    codes: dict[str, int] = {}
    for round_ in range(2):
        for i in range(n):
            await request(nc, "big", i + 10_000, message_id=f"dup-{i}", reply=inbox)
            payload = decode((await sub.next_msg(timeout=30)).data)["payload"]
            code = (payload.get("error") or {}).get("reason") or ("answered" if round_ == 0 else "replayed")
            codes[code] = codes.get(code, 0) + 1
    await sub.unsubscribe()
    return f"answers: {codes}"


async def small_tasks(nc: nats.NATS, n: int) -> str:
    """n small distinct tasks, 200 in flight at a time."""
    inbox = nc.new_inbox()
    done = asyncio.Event()
    got = [0]
    window = asyncio.Semaphore(200)

    async def on_reply(msg: Any) -> None:
        got[0] += 1
        window.release()
        if got[0] == n:
            done.set()

    await nc.subscribe(inbox, cb=on_reply)
    t0 = time.perf_counter()
    for i in range(n):
        await window.acquire()
        message = new_message("task", i, source_id="attacker")
        await nc.publish(subject("small"), encode(message), reply=inbox)
    await asyncio.wait_for(done.wait(), 600)
    return f"{n} tasks in {time.perf_counter() - t0:.1f} s"


async def attack(args: argparse.Namespace) -> None:
    with NATSServer() as server:
        log = tempfile.TemporaryFile("w+")  # the victim's warnings: a pipe nobody reads could fill and block it
        env = dict(os.environ)
        if args.mmap_threshold is not None:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        victim = subprocess.Popen([sys.executable, __file__, "--serve", server.url, "--ttl", str(args.ttl)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        assert victim.stdout is not None and victim.stdout.readline().strip() == "ready"
        nc = await nats.connect(server.url, max_reconnect_attempts=0)
        rows: list[tuple[str, float, float, float, float, str]] = []

        async def trimmed() -> float:
            await request(nc, "trim", None)
            return rss(victim.pid)

        try:
            await honest(server.url)  # warm up: one honest request of each path before the baseline
            await cache_fill(nc, 5)
            attacks = [
                ("60 MB offer, frames 1..400 of ~1 MB, never frame 0", offer_without_frame_0),
                ("400 gap frames of 900 KB to a stream consumer", gap_frames),
                ("forged credit (Agent-Ack, Agent-Window 10^9) to a producer with window 4", forged_credit),
                ("1,000 distinct results of 900 KB (result cache)", cache_fill),
                ("300 tasks with 900 KB answers + their duplicates", duplicates),
            ]
            for name, run in attacks:
                before = rss(victim.pid)
                with Peak(victim.pid) as peak:
                    outcome = await run(nc)
                await honest(server.url)
                after = rss(victim.pid)
                rows.append((name, before, peak.peak, after, await trimmed(), str(outcome)))
            before = rss(victim.pid)
            await asyncio.sleep(args.ttl * 1.5)  # (a benchmark, not a test) results expire and the sweep drops them
            metrics = (await request(nc, "metrics", None))["content"]
            after = rss(victim.pid)
            rows.append((f"after cache.ttl ({args.ttl:g} s) with no reads", before, before, after, await trimmed(),
                         f"cache_bytes {metrics.get('cache_bytes')}, duplicate_bytes {metrics.get('duplicate_bytes')}"))
            await small_tasks(nc, 20_000)  # warm up the small-task path before its baseline
            before = await trimmed()
            with Peak(victim.pid) as peak:
                outcome = await small_tasks(nc, args.tasks)
            after = rss(victim.pid)
            rows.append((f"{args.tasks:,} small tasks", before, peak.peak, after, await trimmed(), outcome))
            metrics = (await request(nc, "metrics", None))["content"]
        finally:
            await nc.close()
            assert victim.stdin is not None
            victim.stdin.close()
            victim.wait(30)
        print(f"victim: default config, cache.ttl {args.ttl:g} s, MALLOC_MMAP_THRESHOLD_ {env.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
        print("| attack | RSS before | peak | after | after malloc_trim | outcome |")
        print("|---|---|---|---|---|---|")
        for name, before, top, after, trim, outcome in rows:
            print(f"| {name} | {before:.1f} MB | {top:.1f} MB | {after:.1f} MB | {trim:.1f} MB | {outcome} |")
        keys = ("cache_bytes", "cache_evictions", "cache_expired", "duplicate_bytes", "duplicates_not_kept",
                "pull_limit_aborts", "stream_limit_aborts", "queued_bytes", "messages_processed")
        print(orjson.dumps({k: metrics.get(k) for k in keys}).decode())
        log.seek(0)
        said = [line for line in log.read().splitlines() if line.startswith(("consumer:", "producer:"))
                or "refused the message offered" in line]
        print("victim said:", *(line[:300] for line in said[-4:]), sep="\n  ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000, help="small tasks in the last run (default 1,000,000)")
    parser.add_argument("--ttl", type=float, default=10.0, help="the victim's cache.ttl in seconds (default 10)")
    parser.add_argument("--mmap-threshold", type=int, default=None, metavar="BYTES",
                        help="run the victim with MALLOC_MMAP_THRESHOLD_=BYTES (glibc: large blocks mmapped, so freed at once)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.ttl))
    else:
        asyncio.run(attack(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
